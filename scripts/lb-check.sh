#!/usr/bin/env bash
# Checks the load-balancer configuration of docs/DEPLOYMENT.md for real: nginx (Debian's,
# installed when missing) in front of 2 wshub instances on one private Redis, no sticky
# sessions (round-robin), WebSocket upgrades proxied.
#
# Usage: scripts/lb-check.sh [CLIENTS=6]
#
# CLIENTS WebSocket clients connect through nginx and subscribe to a topic; both instances
# must have got some of them (no stickiness). Then one publication is made on each instance
# directly (HTTP API), and every client must receive both: the clients on A get B's through
# Redis and the reverse. Exits 0 only then.
#
# nginx runs unprivileged (as nobody when started as root) on a free port, with its
# configuration, logs and temporary files in a temporary directory, in the foreground; it,
# the instances and Redis are stopped on exit. Not part of scripts/test.sh (it installs nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
CLIENTS=${1:-6}
need_apt_package nginx nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
WORK=$(mktemp -d)
at_exit 'rm -rf "$WORK"'
KEY=lb-check-key

cargo build --release --quiet -p wshub
start_redis "$WORK/redis"
start_wshub "$WORK/a.log" --shards 1 --redis "redis://127.0.0.1:$REDIS_PORT" --api-key "$KEY"
A=$PORT
start_wshub "$WORK/b.log" --shards 1 --redis "redis://127.0.0.1:$REDIS_PORT" --api-key "$KEY"
B=$PORT
LB=$(free_port)

# The configuration of docs/DEPLOYMENT.md ("nginx"), with this run's ports and paths.
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log info;
events { worker_connections 1024; }
http {
    access_log $WORK/nginx/access.log;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;

    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      close;
    }
    upstream wshub {
        # Round-robin, no ip_hash / sticky: any instance can serve any client.
        server 127.0.0.1:$A max_fails=1 fail_timeout=5s;
        server 127.0.0.1:$B max_fails=1 fail_timeout=5s;
    }
    server {
        listen 127.0.0.1:$LB;
        location / {
            proxy_pass http://wshub;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
        }
    }
}
EOF
RUN_AS=()
if [[ $(id -u) -eq 0 ]]; then
    chown -R nobody:nogroup "$WORK/nginx"
    chmod 755 "$WORK"
    RUN_AS=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
fi
"${RUN_AS[@]}" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx.out" 2>&1 &
NGINX_PID=$!
track_pid "$NGINX_PID"
nginx_up() { curl -sf "http://127.0.0.1:$LB/health" >/dev/null; }
if ! wait_until --while-alive "$NGINX_PID" "$START_TIMEOUT" nginx_up; then
    echo "nginx did not answer on 127.0.0.1:$LB" >&2
    cat "$WORK/nginx.out" "$WORK/nginx/error.log" >&2 || true
    exit 1
fi
echo "nginx (pid $NGINX_PID, $(id -un "$(stat -c %u /proc/"$NGINX_PID")")) on 127.0.0.1:$LB in front of wshub on :$A and :$B, Redis on :$REDIS_PORT"
sleep 1.2 # each instance has seen the other's heartbeat

python3 - "$LB" "$A" "$B" "$KEY" "$CLIENTS" <<'PY'
import base64, json, os, socket, struct, sys, time, urllib.request
lb, a, b, key, clients = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])

def ws_connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    nonce = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, nonce)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise SystemExit("connection closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit("no 101 through the proxy: %r" % head[:200])
    return s

def send_text(s, text):
    data, mask = text.encode(), os.urandom(4)
    assert len(data) < 126
    s.sendall(bytes([0x81, 0x80 | len(data)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(data)))

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    return buf

def recv_text(s):
    while True:
        b0, b1 = recv_exact(s, 2)
        n = b1 & 0x7F
        if n == 126: n = struct.unpack(">H", recv_exact(s, 2))[0]
        elif n == 127: n = struct.unpack(">Q", recv_exact(s, 8))[0]
        payload = recv_exact(s, n)
        if b0 & 0x0F == 0x1:
            return json.loads(payload)

def stats(port):
    return json.load(urllib.request.urlopen("http://127.0.0.1:%d/stats" % port, timeout=5))

def publish(port, text):
    body = json.dumps({"topic": "lb", "data": {"text": text}}).encode()
    req = urllib.request.Request("http://127.0.0.1:%d/api/publish" % port, data=body,
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 202, resp.status

# /stats counts its own HTTP connection too: take the figures before the clients as the base.
base_a, base_b = stats(a)["connections"], stats(b)["connections"]
socks = []
for i in range(clients):
    s = ws_connect(lb)
    assert recv_text(s)["type"] == "welcome"
    send_text(s, '{"type":"subscribe","topic":"lb","id":1}')
    while recv_text(s).get("type") != "ack":
        pass
    socks.append(s)
on_a, on_b = stats(a)["connections"] - base_a, stats(b)["connections"] - base_b
print("%d clients through nginx: %d on instance A, %d on instance B" % (clients, on_a, on_b))
if on_a == 0 or on_b == 0:
    raise SystemExit("FAIL: nginx did not spread the clients over both instances")
time.sleep(0.2)  # an ack comes before the instance's SUBSCRIBE reaches Redis (within ~20 ms)
publish(a, "from A")
publish(b, "from B")
for i, s in enumerate(socks):
    got = sorted(recv_text(s)["data"]["text"] for _ in range(2))
    if got != ["from A", "from B"]:
        raise SystemExit("FAIL: client %d got %r" % (i, got))
print("every client got the publication made on A and the one made on B: OK")
PY
echo "lb-check: OK"

#!/usr/bin/env bash
# Makes a self-signed certificate for local development of wss:// (never for production):
# valid for localhost, 127.0.0.1 and ::1, 825 days, an ECDSA P-256 key.
#
# Usage: scripts/gencert.sh DIR
# Writes DIR/cert.pem and DIR/key.pem (mode 600), then prints how to use them:
#   wshub --tls-cert DIR/cert.pem --tls-key DIR/key.pem
# Clients must trust DIR/cert.pem (e.g. `curl --cacert DIR/cert.pem https://localhost:8080/health`).
set -euo pipefail

if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
if ! command -v openssl >/dev/null; then
    # A fresh machine may lack it (the test suite calls this script): Debian's package.
    echo "$0: installing openssl (Debian package)" >&2
    if [[ $(id -u) -eq 0 ]]; then as_root=(); else as_root=(sudo); fi
    "${as_root[@]}" apt-get update -qq >&2 &&
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl >&2 ||
        { echo "$0: openssl is needed and could not be installed" >&2; exit 1; }
fi

DIR=$1
mkdir -p "$DIR"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$DIR/key.pem" -out "$DIR/cert.pem" -days 825 \
    -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" 2>/dev/null
chmod 644 "$DIR/cert.pem"
echo "wrote $DIR/cert.pem and $DIR/key.pem" >&2
echo "run:   wshub --tls-cert $DIR/cert.pem --tls-key $DIR/key.pem" >&2
echo "check: curl --cacert $DIR/cert.pem https://localhost:8080/health" >&2

#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. unit and integration tests of every workspace crate (real sockets on 127.0.0.1;
#      tests/cluster*.rs start private redis-servers, and tests/examples.rs private
#      PostgreSQL clusters for the use case: Debian's redis-server and postgresql,
#      installed here when missing, since under CI=true those tests fail without them);
#   2. RFC 6455 conformance with the Autobahn|Testsuite (installs itself on first use);
#   3. the web demo in headless Chromium (installs Chromium and playwright-core on first use);
#   4. smoke runs of every load-tool subcommand (hold, fanout, echo) against real servers,
#      over ws:// and wss://, checking their JSON for zero loss and zero failures (not
#      timings), and a small run of the memory script (checks the tooling works; its
#      figure is not asserted).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
# Debian's redis-server for tests/cluster*.rs (under CI=true those tests fail without it).
need_apt_package redis-server redis-server
# The package's own service is not needed (the tests start private servers on free
# ports); it is left as the package set it up.

# Debian keeps PostgreSQL's server binaries off PATH, under /usr/lib/postgresql/<major>/bin
# (tests/common/postgres_server.rs looks there).
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  echo "== installing postgresql (Debian package) for the use case tests"
  as_root apt-get update
  # The tests make private clusters (initdb in a temporary directory, as the package's
  # `postgres` user when run as root). The package would create a cluster of its own and
  # start it on port 5432: told not to, beforehand, so no service is started.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common
  as_root sed -i -E 's/^#? *create_main_cluster *=.*/create_main_cluster = false/' \
    /etc/postgresql-common/createcluster.conf
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
fi

echo "== cargo test"
cargo test --workspace --all-targets
echo "== autobahn"
scripts/autobahn.sh
echo "== browser test of the web demo"
scripts/browser-test.sh
echo "== load tool smoke"
scripts/smoke-load.sh
echo "== memory script smoke (2,000 idle connections)"
scripts/mem-per-conn.sh 2000
echo "== all tests passed"

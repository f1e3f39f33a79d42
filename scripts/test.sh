#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. unit and integration tests of every workspace crate (real sockets on 127.0.0.1;
#      tests/cluster.rs starts private redis-servers: Debian's redis-server, installed
#      here when missing, since under CI=true those tests fail without it);
#   2. RFC 6455 conformance with the Autobahn|Testsuite (installs itself on first use);
#   3. the web demo in headless Chromium (installs Chromium and playwright-core on first use);
#   4. smoke runs of every load-tool subcommand (hold, fanout, echo) against real servers,
#      over ws:// and wss://, checking their JSON for zero loss and zero failures (not
#      timings), and a small run of the memory script (checks the tooling works; its
#      figure is not asserted).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
# Debian's redis-server for tests/cluster.rs (under CI=true those tests fail without it).
need_apt_package redis-server redis-server
# The package's own service is not needed (the tests start private servers on free
# ports); it is left as the package set it up.

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

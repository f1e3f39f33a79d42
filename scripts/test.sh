#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. unit and integration tests of every workspace crate (real sockets on 127.0.0.1);
#   2. RFC 6455 conformance with the Autobahn|Testsuite (installs itself on first use);
#   3. a small run of the memory script with the load tool (checks the tooling works;
#      the figure it prints is not asserted).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --workspace --all-targets
echo "== autobahn"
scripts/autobahn.sh
echo "== memory script smoke (2,000 idle connections)"
scripts/mem-per-conn.sh 2000
echo "== all tests passed"

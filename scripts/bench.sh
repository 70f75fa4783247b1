#!/usr/bin/env bash
# Benchmarks (not tests). Each starts a private, durable PostgreSQL cluster (fsync on, as in
# production), measures commguard and a baseline on that same cluster in the same run, and prints
# both with their ratio.
#
#   scripts/bench.sh event-store [--writers 16] [--seconds 20]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pg.sh

what=${1:-}; shift || true
writers=16; seconds=20; stream_length=10
while [ $# -gt 0 ]; do
  case $1 in
    --writers) writers=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --stream-length) stream_length=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

PG_BIN_DIR=$(ensure_pg_bin); export PG_BIN_DIR
cluster=$(mktemp -d /tmp/commguard-bench-XXXXXX)
trap 'stop_cluster "$cluster"' EXIT
start_cluster "$cluster" bench
admin=$(cluster_url "$cluster")
export PGOPTIONS="-c client_min_messages=warning"
psql() { "$PG_BIN_DIR/psql" "$@"; }

pgbench_tps() {
  # Baseline: single-row INSERT transactions from the same number of clients.
  psql -q "$admin" -c "DROP TABLE IF EXISTS pgbench_rows; CREATE TABLE pgbench_rows (id bigserial PRIMARY KEY, v text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
  echo "INSERT INTO pgbench_rows (v) VALUES ('benchmark');" > "$cluster/insert.sql"
  "$PG_BIN_DIR/pgbench" -n -c "$writers" -j 2 -T "$seconds" -f "$cluster/insert.sql" "$admin" 2>/dev/null \
    | awk '/^tps/ { print $3; exit }'
}

case $what in
  event-store)
    cargo build --release --bench event_store >&2
    bin=$(ls -t target/release/deps/event_store-* | grep -v '\.d$' | head -n 1)
    psql -q "$admin" -c "CREATE DATABASE bench"
    base=$(pgbench_tps)
    result=$(DATABASE_URL="${admin/\/postgres\?//bench?}" "$bin" --writers "$writers" --seconds "$seconds" --stream-length "$stream_length")
    appends=$(echo "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["appends_per_sec"])')
    catchup=$(echo "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["catch_up_events_per_sec"])')
    echo "commguard: $result"
    echo "pgbench single-row insert, $writers clients, ${seconds}s: $base tps"
    python3 - "$appends" "$base" "$catchup" <<'PY'
import sys
appends, base, catchup = map(float, sys.argv[1:])
print(f"appends/s {appends:.0f} = {appends / base:.2f} x pgbench insert tps (target >= 0.50)")
print(f"catch-up {catchup:.0f} events/s (target >= 100000)")
PY
    ;;
  *)
    echo "usage: scripts/bench.sh event-store [--writers N] [--seconds S]" >&2
    exit 2
    ;;
esac

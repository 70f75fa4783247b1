#!/usr/bin/env bash
# Fault runs (not tests): 16 MCP sessions send SMS through a real `commguard serve` on 127.0.0.1
# while the server is killed or its database stopped; then the store is checked against what the
# callers were told. Bounded in time, stops by itself, touches only a private cluster.
#
#   scripts/chaos.sh crash     [--seconds 30] [--kills 5]   SIGKILL the server every few seconds, restart it
#   scripts/chaos.sh postgres  [--seconds 30] [--outage 10] stop PostgreSQL for --outage seconds mid-run
#   scripts/chaos.sh api       [--seconds 600] [--examples 20] schemathesis over /admin/api/openapi.json,
#                              master token then an org token (scripts/chaos/api.py); --seconds per run
#
# Prints: acknowledged sends, found in the store, missing, duplicated, unconfirmed answers and how
# many of those were recorded, and leaked reservations (limit counters minus recorded actions)
# once the intents of dead instances are reconciled (OUTBOUND_INTENT_LEASE_SECONDS=2 here).
# `crash` then stops the server and checks that every projection equals its rebuild from zero
# (`commguard replay`, scripts/chaos/converge.py) and that `commguard audit verify` prints OK.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pg.sh

what=${1:-}; shift || true
seconds=30; kills=5; outage=10; sessions=16; examples=20
[ "${1:-}" = api ] && seconds=600
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --kills) kills=$2; shift 2 ;;
    --outage) outage=$2; shift 2 ;;
    --sessions) sessions=$2; shift 2 ;;
    --examples) examples=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case $what in crash|postgres|api) ;; *) echo "usage: scripts/chaos.sh crash|postgres|api [options]" >&2; exit 2 ;; esac

PG_BIN_DIR=$(ensure_pg_bin); export PG_BIN_DIR
cargo build --release --bin commguard >&2
cluster=$(mktemp -d /tmp/commguard-chaos-XXXXXX)
data=$(mktemp -d /tmp/commguard-chaos-data-XXXXXX); chmod 755 "$data"
server=
cleanup() { [ -n "$server" ] && kill -9 "$server" 2>/dev/null; wait 2>/dev/null; stop_cluster "$cluster"; rm -rf "$data"; }
trap cleanup EXIT
start_cluster "$cluster" bench
admin=$(cluster_url "$cluster")
"$PG_BIN_DIR/psql" -q "$admin" -c "CREATE DATABASE chaos"
url="${admin/\/postgres\?//chaos?}"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

start_server() {
  DATABASE_URL="$url" HOST=127.0.0.1 PORT=$port MASTER_SECURITY_TOKEN=$token COMMGUARD_DATA_DIR=$data \
    HTTP_RATE_LIMIT_PER_IP=1000000000 HTTP_RATE_LIMIT_GLOBAL=1000000000 BRUTE_FORCE_MAX_FAILURES=1000000000 \
    DEFAULT_MAX_ACTIONS_PER_MINUTE=100000000 DEFAULT_MAX_ACTIONS_PER_HOUR=100000000 DEFAULT_MAX_ACTIONS_PER_DAY=100000000 \
    DEFAULT_MAX_SPEND_PER_DAY=100000000 DEFAULT_MAX_SPEND_PER_MONTH=100000000 OUTBOUND_INTENT_LEASE_SECONDS=2 \
    RUST_LOG=warn target/release/commguard serve 2>>"$data/server.log" &
  server=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
start_server
if [ "$what" = api ]; then
  # schemathesis in its own venv (not the e2e one): scripts/chaos/api-requirements.txt.
  venv=${CHAOS_API_VENV:-target/chaos-api-venv}
  ensure_venv scripts/chaos/api-requirements.txt "$venv"
  # Absolute: api.py runs schemathesis from its output directory.
  venv=$(cd "$venv" && pwd)
  mkdir -p target/chaos-api && out=$(cd target/chaos-api && pwd)
  status=0
  CHAOS_URL="http://127.0.0.1:$port" CHAOS_TOKEN=$token CHAOS_PSQL="$PG_BIN_DIR/psql" CHAOS_DB="$url" \
    CHAOS_ST="$venv/bin/schemathesis" CHAOS_EXAMPLES=$examples CHAOS_SECONDS=$seconds CHAOS_OUT=$out \
    "$venv/bin/python" scripts/chaos/api.py || status=$?
  if grep -q "panicked" "$data/server.log"; then echo "the server panicked:" >&2; grep -m5 panicked "$data/server.log" >&2; status=1; fi
  # A failed run shows what the server logged about it (the log goes with the data directory).
  if [ "$status" -ne 0 ]; then echo "the server's errors:" >&2; grep -m20 "ERROR" "$data/server.log" >&2 || true; fi
  kill "$server"; wait "$server" 2>/dev/null || true; server=
  exit $status
fi
export CHAOS_URL="http://127.0.0.1:$port" CHAOS_TOKEN=$token CHAOS_SECONDS=$seconds CHAOS_SESSIONS=$sessions
python3 scripts/chaos/driver.py > "$data/driver.json" &
driver=$!
sleep 3
case $what in
  crash)
    every=$(python3 -c "print(max(1.0, ($seconds - 6) / $kills))")
    for _ in $(seq 1 "$kills"); do
      sleep "$every"
      kill -9 "$server"; wait "$server" 2>/dev/null || true
      start_server
    done
    ;;
  postgres)
    sleep 3
    run_pg "$PG_BIN_DIR/pg_ctl" -D "$cluster/data" -m fast -w stop >/dev/null
    sleep "$outage"
    run_pg "$PG_BIN_DIR/pg_ctl" -D "$cluster/data" -l "$cluster/postgres.log" -w -t 60 start >/dev/null
    ;;
esac
wait "$driver"
# Intents of killed instances are reconciled by the live one after the lease; give it time.
sleep 8
status=0
python3 scripts/chaos/check.py "$data/driver.json" "$PG_BIN_DIR/psql" "$url" || status=$?
kill "$server"; wait "$server" 2>/dev/null || true; server=
if [ "$what" = crash ]; then
  echo "kills survived: $kills"
  # Stopping closed the sessions (events the stopping server no longer projects): a server with
  # no sessions catches every projection up to the head, then is killed (it appends nothing).
  start_server
  behind="SELECT COUNT(*) FROM projection_checkpoints WHERE position < (SELECT MAX(position) FROM events)"
  for _ in $(seq 1 600); do [ "$("$PG_BIN_DIR/psql" -qAt "$url" -c "$behind")" = 0 ] && break; sleep 0.1; done
  kill -9 "$server"; wait "$server" 2>/dev/null || true; server=
  # Server stopped: every projection must equal its rebuild from zero, and the chains verify.
  DATABASE_URL="$url" MASTER_SECURITY_TOKEN=$token COMMGUARD_DATA_DIR=$data RUST_LOG=warn \
    python3 scripts/chaos/converge.py "$PG_BIN_DIR/psql" "$url" target/release/commguard || status=$?
fi
exit $status

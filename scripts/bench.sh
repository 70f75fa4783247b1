#!/usr/bin/env bash
# Benchmarks (not tests). Each starts a private, durable PostgreSQL cluster (fsync on, as in
# production), measures commguard and a baseline on that same cluster in the same run, and prints
# both with their ratio.
#
#   scripts/bench.sh event-store [--writers 16] [--seconds 20]
#     (EVENT_STORE_BENCH=<a built benches/event_store.rs>: measure that build instead of this tree's)
#   scripts/bench.sh mcp [--writers 16] [--seconds 20] [--idle 1000]  (COMMGUARD_BIN=<build>: that server)
#   scripts/bench.sh send [--writers 16] [--seconds 20] [--fill 1000000] [--sequential 500] [--agents 1]
#     (--agents N: the concurrent sessions spread over N agents of the org; the targets are one agent's)
#     (BENCH_BASELINE=<another commguard binary>: A/B/A against it; BENCH_BINARIES="<bin> <bin> ...":
#     each in turn; no fill then. BENCH_PG_STATS=1: the statements per send of the concurrent phase and what a send writes (WAL, rows per table),
#     BENCH_PG_STATS=sequential: of the sequential sends; BENCH_PERF=<dir>: `perf record -g`
#     of the server and the cluster during the sequential sends, into <dir>/perf-<phase>.data, and
#     during the concurrent phase, into <dir>/perf-<phase>-send.data; BENCH_PERF_CALLGRAPH="--call-graph
#     dwarf" for call graphs of the server, whose build keeps no frame pointers (then
#     scripts/lib/perf_components.py <dir>/perf-<phase>-send.data: the server's CPU by component); BENCH_FLOOR=1: after the
#     phases (this tree's build alone, without BENCH_BINARIES; no fill then), the floor under a send:
#     the send's three statements replayed by pgbench with no server, see floor());
#     BENCH_LATENCIES=<file>: every concurrent send's start and latency (µs), to see where the
#     tail falls in time (the last phase's, with several binaries); BENCH_STALLS=<dir>: each phase's
#     latencies and the machine's context switches, for scripts/lib/stalls.py (what the stalls of
#     all sessions at once waited on). Hooks: BENCH_BEFORE_SEQUENTIAL,
#     BENCH_AFTER_SEQUENTIAL, BENCH_BEFORE_SEND are shell commands run around those phases, with
#     BENCH_CLUSTER the cluster's directory (its socket and postgres.log)
#   scripts/bench.sh as-of [--writers 4] [--seconds 10] [--fill 1000000]
#   scripts/bench.sh feed [--fill 1000000] [--seed 2000]  (BENCH_BINARIES="<bin> <bin> ...": each in turn, one fill)
#   scripts/bench.sh anomaly [--fill 1000000] [--runs 200]
#   scripts/bench.sh erase [--fill 1000000] [--seed 10000] [--idle 200000]
#   scripts/bench.sh replay [--fill 1000000]  (BENCH_BINARIES="<bin> <bin> ...": each in turn, twice, one fill;
#     REPLAY_PROJECTION=all: every projection instead of the audit view)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/pg.sh

what=${1:-}; shift || true
writers=16; agents=1; seconds=20; stream_length=10; idle=1000; fill=1000000; seed=2000; sequential=500; runs=200
if [ "$what" = as-of ]; then writers=4; seconds=10; fi
if [ "$what" = erase ]; then seed=10000; idle=200000; fi
while [ $# -gt 0 ]; do
  case $1 in
    --writers) writers=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --stream-length) stream_length=$2; shift 2 ;;
    --idle) idle=$2; shift 2 ;;
    --fill) fill=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --sequential) sequential=$2; shift 2 ;;
    --agents) agents=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

PG_BIN_DIR=$(ensure_pg_bin); export PG_BIN_DIR
cluster=$(mktemp -d /tmp/commguard-bench-XXXXXX)
trap 'stop_cluster "$cluster"' EXIT
start_cluster "$cluster" bench
admin=$(cluster_url "$cluster")
# For the BENCH_BEFORE_*/BENCH_AFTER_* hooks: the cluster's directory (socket, postgres.log).
export BENCH_CLUSTER="$cluster"
if [ -n "${BENCH_PG_STATS:-}" ]; then
  # Profiling aid: BENCH_PG_STATS=1 prints the statements the server ran, by calls.
  { echo "shared_preload_libraries = 'pg_stat_statements'"; echo "pg_stat_statements.track_planning = on"
    echo "pg_stat_statements.track = all"; } >> "$cluster/data/postgresql.conf"
  run_pg "$PG_BIN_DIR/pg_ctl" -D "$cluster/data" -l "$cluster/postgres.log" -w -t 60 restart >/dev/null
fi
export PGOPTIONS="-c client_min_messages=warning"
psql() { "$PG_BIN_DIR/psql" "$@"; }

# BENCH_PG_STATS=1: the statements run between reset and print, by calls.
pg_stats_reset() {
  [ -n "${BENCH_PG_STATS:-}" ] || return 0
  psql -q "$1" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
}
# BENCH_PG_STATS=1, send mode: the same statements per send (sends = MessageSent events stored),
# with exec and plan time in microseconds per send; the first line sums the top-level statements.
# The counts start at the concurrent phase (the client resets them through BENCH_BEFORE_SEND), so
# only the sends stored since the reset are counted.
pg_stats_per_send() {
  [ -n "${BENCH_PG_STATS:-}" ] || return 0
  [ "${BENCH_PG_STATS:-}" != sequential ] || return 0
  psql "$1" -f "$cluster/per-send.sql" >&2
  # What a send writes: WAL records, full-page images and bytes (the whole cluster's, beside
  # pgbench's per single-row insert), and the rows each table gained, changed or lost (HOT: an
  # update that wrote no index entry). Backends report table counts within a second of going idle.
  sleep 2
  psql "$1" -f "$cluster/writes-per-send.sql" >&2
}
# The WAL of pgbench's single-row insert, per transaction (BENCH_PG_STATS: pgbench_tps sets it).
base_wal=""
# The statement profile per send (pg_stats_per_send; BENCH_PG_STATS=sequential runs it after the
# sequential phase instead, through the bench client's hook).
cat > "$cluster/per-send.sql" <<'SQL'
WITH n AS (SELECT GREATEST(count(*), 1)::numeric AS sends FROM events WHERE event_type = 'MessageSent'
                             AND occurred_at >= (SELECT stats_reset FROM pg_stat_statements_info)),
      s AS (SELECT * FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()))
    SELECT round(sum(calls) / n.sends, 2) AS calls_per_send, round(sum(total_exec_time)::numeric * 1000 / n.sends, 1) AS exec_us,
        round(sum(total_plan_time)::numeric * 1000 / n.sends, 1) AS plan_us, round(sum(rows) / n.sends, 2) AS rows_per_send,
        sum(plans) AS plans, true AS top, 'ALL TOP-LEVEL STATEMENTS (' || n.sends || ' sends)' AS query
      FROM s, n WHERE toplevel GROUP BY n.sends
    UNION ALL (
    SELECT round(calls / n.sends, 2), round(total_exec_time::numeric * 1000 / n.sends, 1),
        round(total_plan_time::numeric * 1000 / n.sends, 1), round(rows / n.sends, 2), plans, toplevel,
        left(regexp_replace(query, '\s+', ' ', 'g'), 110)
      FROM s, n ORDER BY total_exec_time + total_plan_time DESC LIMIT 45);
SQL
cat > "$cluster/writes-per-send.sql" <<'SQL'
WITH n AS (SELECT GREATEST(count(*), 1)::numeric AS sends FROM events WHERE event_type = 'MessageSent'
                             AND occurred_at >= (SELECT stats_reset FROM pg_stat_wal))
SELECT round(wal_records / n.sends, 1) AS wal_records_per_send, round(wal_fpi / n.sends, 2) AS full_pages_per_send,
       round(wal_bytes / n.sends) AS wal_bytes_per_send
  FROM pg_stat_wal, n;
WITH n AS (SELECT GREATEST(count(*), 1)::numeric AS sends FROM events WHERE event_type = 'MessageSent'
                             AND occurred_at >= (SELECT stats_reset FROM pg_stat_wal))
SELECT COALESCE((SELECT 'toast of ' || o.relname FROM pg_class o WHERE o.reltoastrelid = t.relid), t.relname) AS "table",
       round(t.n_tup_ins / n.sends, 2) AS inserted, round(t.n_tup_upd / n.sends, 2) AS updated,
       round(t.n_tup_hot_upd / n.sends, 2) AS hot, round(t.n_tup_del / n.sends, 2) AS deleted,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = t.relid) AS indexes
  FROM pg_stat_all_tables t, n
 WHERE t.schemaname IN ('public', 'pg_toast') AND t.n_tup_ins + t.n_tup_upd + t.n_tup_del > 0
 ORDER BY t.n_tup_ins + t.n_tup_upd + t.n_tup_del DESC;
SQL
pg_stats_print() {
  [ -n "${BENCH_PG_STATS:-}" ] || return 0
  # track = all: statements inside functions (reserve_actions' PL/pgSQL) are listed too (toplevel
  # false); plans = how often a statement was planned (a generic plan is planned once).
  psql "$1" -c "SELECT calls, round(mean_exec_time::numeric, 3) AS mean_ms, round(total_exec_time::numeric) AS total_ms,
      plans, round(total_plan_time::numeric) AS plan_ms, rows, toplevel AS top,
      left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS query
    FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 40" >&2
}

# utime + stime (clock ticks) of the cluster: the postmaster, its live children, and its exited
# children (cutime + cstime) — the same sum the send benchmark takes.
pg_cluster_ticks() {
  python3 - "$(head -n 1 "$cluster/data/postmaster.pid")" <<'PY'
import os, sys
pm = sys.argv[1]
def fields(pid):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()
f = fields(pm)
total = sum(int(f[i]) for i in (11, 12, 13, 14))
for pid in filter(str.isdigit, os.listdir("/proc")):
    g = fields(pid)
    if g and g[1] == pm:
        total += int(g[11]) + int(g[12])
print(total)
PY
}

wait_healthy() {
  # Until the server `$server` answers on $port; fails at once if it exited (a build that refuses
  # this database's migrations, a port taken) instead of waiting for ever.
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
    kill -0 "$server" 2>/dev/null || { echo "the server (pid $server) exited before it was healthy" >&2; exit 1; }
    sleep 0.2
  done
}

pgbench_tps() {
  # Baseline: single-row INSERT transactions from the same number of clients. Sets $base (tps)
  # and $base_pg_ms (Postgres CPU per transaction, ms).
  psql -q "$admin" -c "DROP TABLE IF EXISTS pgbench_rows; CREATE TABLE pgbench_rows (id bigserial PRIMARY KEY, v text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
  echo "INSERT INTO pgbench_rows (v) VALUES ('benchmark');" > "$cluster/insert.sql"
  local before after out
  [ -z "${BENCH_PG_STATS:-}" ] || psql -q "$admin" -c "SELECT pg_stat_reset_shared('wal')" >/dev/null
  before=$(pg_cluster_ticks)
  out=$("$PG_BIN_DIR/pgbench" -n -c "$writers" -j 2 -T "$seconds" -f "$cluster/insert.sql" "$admin" 2>/dev/null)
  after=$(pg_cluster_ticks)
  base=$(echo "$out" | awk '/^tps/ { print $3; exit }')
  local txs; txs=$(echo "$out" | awk '/number of transactions actually processed/ { split($NF, a, "/"); print a[1]; exit }')
  base_pg_ms=$(python3 -c "print(f'{($after - $before) * 10 / max($txs, 1):.3f}')")
  if [ -n "${BENCH_PG_STATS:-}" ]; then
    base_wal=$(psql -qAt "$admin" -c "SELECT round(wal_records / $txs::numeric, 1) || ' WAL records, ' || round(wal_bytes / $txs::numeric) || ' bytes per transaction' FROM pg_stat_wal")
    echo "pgbench single-row insert: $base_wal" >&2
  fi
}

pgbench_one_ms() {
  # Baseline of a lone send: the mean latency of one client's single-row INSERT transactions
  # (one durable commit each, one round trip), 5 s.
  "$PG_BIN_DIR/pgbench" -n -c 1 -j 1 -T 5 -f "$cluster/insert.sql" "$admin" 2>/dev/null \
    | awk '/^latency average/ { print $4; exit }'
}

case $what in
  event-store)
    # EVENT_STORE_BENCH=FILE: measure that build of benches/event_store.rs (e.g. a copy of
    # another branch's) instead of building this tree's. (COMMGUARD_BIN is the server binary:
    # this mode does not start a server, the store is linked into the bench.)
    if [ -n "${EVENT_STORE_BENCH:-}" ]; then
      bin=$EVENT_STORE_BENCH
    else
      cargo build --release --bench event_store >&2
      bin=$(ls -t target/release/deps/event_store-* | grep -v '\.d$' | head -n 1)
    fi
    psql -q "$admin" -c "CREATE DATABASE bench"
    pgbench_tps
    pg_stats_reset "${admin/\/postgres\?//bench?}"
    result=$(DATABASE_URL="${admin/\/postgres\?//bench?}" "$bin" --writers "$writers" --seconds "$seconds" --stream-length "$stream_length" 2> "$cluster/event_store.err")
    cat "$cluster/event_store.err" >&2
    feed=$(sed -n 's/^feed read alone.* \([0-9]*\) events\/s$/\1/p' "$cluster/event_store.err")
    pg_stats_print "${admin/\/postgres\?//bench?}"
    appends=$(echo "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["appends_per_sec"])')
    catchup=$(echo "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["catch_up_events_per_sec"])')
    echo "commguard: $result"
    echo "pgbench single-row insert, $writers clients, ${seconds}s: $base tps"
    python3 - "$appends" "$base" "$catchup" "${feed:-0}" <<'PY'
import sys
appends, base, catchup, feed = map(float, sys.argv[1:])
print(f"appends/s {appends:.0f} = {appends / base:.2f} x pgbench insert tps (target >= 0.50)")
print(f"catch-up {catchup:.0f} events/s (target >= 100000)")
if feed:
    print(f"catch-up {catchup:.0f} events/s = {catchup / feed:.2f} x the feed read alone, {feed:.0f} events/s (target >= 0.50)")
PY
    ;;
  mcp)
    # COMMGUARD_BIN=FILE: measure that server build instead of this tree's.
    if [ -n "${COMMGUARD_BIN:-}" ]; then cargo build --release --bench mcp >&2; else cargo build --release --bin commguard --bench mcp >&2; fi
    bin=$(ls -t target/release/deps/mcp-* | grep -v '\.d$' | head -n 1)
    psql -q "$admin" -c "CREATE DATABASE bench"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    data=$(mktemp -d /tmp/commguard-bench-data-XXXXXX); chmod 755 "$data"
    DATABASE_URL="${admin/\/postgres\?//bench?}" HOST=127.0.0.1 PORT=$port MASTER_SECURITY_TOKEN=$token \
      COMMGUARD_DATA_DIR=$data HTTP_RATE_LIMIT_PER_IP=1000000000 HTTP_RATE_LIMIT_GLOBAL=1000000000 \
      MCP_MAX_SESSIONS=$((idle + 100)) RUST_LOG=warn "${COMMGUARD_BIN:-target/release/commguard}" serve &
    server=$!
    trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; stop_cluster "$cluster"; rm -rf "$data"' EXIT
    wait_healthy
    rss_idle=$(awk '/VmRSS/ { print $2 }' "/proc/$server/status")
    "$bin" --url "http://127.0.0.1:$port" --token "$token" --sessions "$writers" --seconds "$seconds" \
      --idle "$idle" --hold 5 --server-pid "$server" > "$cluster/mcp.json" &
    client=$!
    until [ -s "$cluster/mcp.json" ]; do sleep 0.2; done
    sleep 1
    rss_held=$(awk '/VmRSS/ { print $2 }' "/proc/$server/status")
    wait $client
    echo "commguard: $(cat "$cluster/mcp.json")"
    python3 - "$cluster/mcp.json" "$rss_idle" "$rss_held" "$idle" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rss_idle, rss_held, idle = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
h, p, t = r["health"], r["rpc_ping"], r["comms_ping"]
for name, x in (("GET /health (baseline)", h), ("JSON-RPC ping", p), ("tools/call comms_ping", t)):
    print(f"{name:24} {x['calls_per_sec']:8.0f} calls/s  p50 {x['p50_ms']:.3f} ms  p99 {x['p99_ms']:.3f} ms")
q = r["paired"]
print(f"paired (health and ping alternating in each session, same load): health p50 {q['health_p50_ms']:.3f} p99 {q['health_p99_ms']:.3f} ms; ping p50 {q['ping_p50_ms']:.3f} p99 {q['ping_p99_ms']:.3f} ms")
print(f"auth + session + routing overhead (paired): p50 {q['ping_p50_ms'] - q['health_p50_ms']:.3f} ms, p99 {q['ping_p99_ms'] - q['health_p99_ms']:.3f} ms (target p99 < 0.5 ms)")
print(f"comms_ping / health throughput: {t['calls_per_sec'] / h['calls_per_sec']:.2f} x")
print(f"server RSS: {rss_idle / 1024:.1f} MB idle (target < 30 MB), {rss_held / 1024:.1f} MB with {r['idle_sse_sessions']} SSE sessions open (target < 100 MB)")
steps = [(n, kb) for n, kb in r.get("rss_kb_by_sessions", []) if kb is not None]
if len(steps) > 1:
    print("RSS after the load, by idle SSE sessions: " + ", ".join(f"{n}: {kb / 1024:.1f} MB" for n, kb in steps))
    (n0, kb0), (n1, kb1) = steps[0], steps[-1]
    print(f"per idle SSE session: {(kb1 - kb0) / max(n1 - n0, 1):.1f} KB")
PY
    ;;
  send)
    cargo build --release --bin commguard --bench mcp >&2
    bin=$(ls -t target/release/deps/mcp-* | grep -v '\.d$' | head -n 1)
    psql -q "$admin" -c "CREATE DATABASE bench"
    bench_url="${admin/\/postgres\?//bench?}"
    pgbench_tps
    one_ms=$(pgbench_one_ms)
    token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    data=$(mktemp -d /tmp/commguard-bench-data-XXXXXX); chmod 755 "$data"
    server=
    start_server() {
      port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      DATABASE_URL="$bench_url" HOST=127.0.0.1 PORT=$port MASTER_SECURITY_TOKEN=$token COMMGUARD_DATA_DIR=$data \
        HTTP_RATE_LIMIT_PER_IP=1000000000 HTTP_RATE_LIMIT_GLOBAL=1000000000 \
        DEFAULT_MAX_ACTIONS_PER_MINUTE=100000000 DEFAULT_MAX_ACTIONS_PER_HOUR=100000000 DEFAULT_MAX_ACTIONS_PER_DAY=100000000 \
        DEFAULT_MAX_SPEND_PER_DAY=100000000 DEFAULT_MAX_SPEND_PER_MONTH=100000000 RUST_LOG=warn "${1:-target/release/commguard}" serve &
      server=$!
      wait_healthy
    }
    trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; stop_cluster "$cluster"; rm -rf "$data"' EXIT
    # The caller's hooks; each phase adds its own to these (not to the last phase's).
    hook_before_sequential=${BENCH_BEFORE_SEQUENTIAL:-}; hook_after_sequential=${BENCH_AFTER_SEQUENTIAL:-}
    hook_before_send=${BENCH_BEFORE_SEND:-}
    measure() {
      export BENCH_BEFORE_SEQUENTIAL=$hook_before_sequential BENCH_AFTER_SEQUENTIAL=$hook_after_sequential
      export BENCH_BEFORE_SEND=$hook_before_send
      # Server CPU = utime + stime of the server process; Postgres CPU = utime + stime of the
      # postmaster and all its children (live ones, and exited ones through its cutime + cstime);
      # both over the send phases only (the client reads them before and after each; set-up and
      # consent recording are not counted). Then --sequential sends one at a time from one session.
      if [ "${BENCH_PG_STATS:-}" = sequential ]; then
        # The statements of the sequential sends alone (a lone send: nothing batched).
        export BENCH_BEFORE_SEQUENTIAL="$PG_BIN_DIR/psql -q '$bench_url' -c 'SELECT pg_stat_statements_reset()' >/dev/null"
        export BENCH_AFTER_SEQUENTIAL="$PG_BIN_DIR/psql '$bench_url' -f '$cluster/per-send.sql' >&2"
      elif [ -n "${BENCH_PG_STATS:-}" ]; then
        export BENCH_BEFORE_SEND="$PG_BIN_DIR/psql -q '$bench_url' -c 'SELECT pg_stat_statements_reset(), pg_stat_reset_shared(\$\$wal\$\$), pg_stat_reset()' >/dev/null"
      fi
      if [ -n "${BENCH_PERF:-}" ]; then
        # BENCH_PERF=<dir>: `perf record` of the server and of this cluster's processes (its
        # postmaster and every child then running: the pool's backends, the WAL writer, …) during
        # the sequential sends of each phase, into <dir>/perf-<phase>.data.
        mkdir -p "$BENCH_PERF"
        local pm; pm=$(head -n 1 "$cluster/data/postmaster.pid")
        export BENCH_BEFORE_SEQUENTIAL="${BENCH_BEFORE_SEQUENTIAL:-true}; { perf record -g -F ${BENCH_PERF_HZ:-1999} -p $server,$pm,\$(pgrep -d, -P $pm) -o '$BENCH_PERF/perf-${phase:-0}.data' >/dev/null 2>&1 & echo \$! > '$cluster/perf.pid'; }; sleep 1"
        export BENCH_AFTER_SEQUENTIAL="kill -INT \$(cat '$cluster/perf.pid'); while kill -0 \$(cat '$cluster/perf.pid') 2>/dev/null; do sleep 0.1; done; ${BENCH_AFTER_SEQUENTIAL:-true}"
        # And the concurrent phase's middle, $seconds - 2 s of it, into <dir>/perf-<phase>-send.data.
        export BENCH_BEFORE_SEND="${BENCH_BEFORE_SEND:-true}; { sleep 1; perf record ${BENCH_PERF_CALLGRAPH:--g} -F ${BENCH_PERF_HZ:-1999} -p $server,$pm,\$(pgrep -d, -P $pm) -o '$BENCH_PERF/perf-${phase:-0}-send.data' -- sleep $((seconds > 3 ? seconds - 2 : 1)); } >/dev/null 2>&1 &"
      fi
      if [ -n "${BENCH_STALLS:-}" ]; then
        # BENCH_STALLS=<dir>: every concurrent send's start and latency into <dir>/latencies-<phase>.txt,
        # and the machine's context switches (with their stacks, on the monotonic clock; the
        # offset to realtime beside it) over the phase's middle into <dir>/sched-<phase>.data:
        # scripts/lib/stalls.py takes both and shows what every stall of all sessions waited on.
        mkdir -p "$BENCH_STALLS"
        export BENCH_LATENCIES="$BENCH_STALLS/latencies-${phase:-0}.txt"
        local sched="$BENCH_STALLS/sched-${phase:-0}.data"
        export BENCH_BEFORE_SEND="${BENCH_BEFORE_SEND:-true}; { sleep 1; python3 -c 'import time; print(time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_MONOTONIC))' > '$sched.offset'; perf record -a -m 1024 -k monotonic -e sched:sched_switch -g -o '$sched' -- sleep $((seconds > 6 ? 5 : seconds > 3 ? seconds - 2 : 1)); } >/dev/null 2>&1 &"
      fi
      "$bin" --mode send --url "http://127.0.0.1:$port" --token "$token" --sessions "$writers" --seconds "$seconds" \
        --agents "$agents" --server-pid "$server" --pg-pid "$(head -n 1 "$cluster/data/postmaster.pid")" --sequential "$1" | python3 -c "
import json, sys
r = json.load(sys.stdin)
s, q, i = r['send'], r['sequential'], r['idle_cpu_ms_per_s']
print(f\"idle (nothing sent, 5 s): server CPU {i['server_cpu_ms_per_call']:.1f} ms/s  Postgres CPU {i['pg_cpu_ms_per_call']:.1f} ms/s\")
print(f\"{s['calls_per_sec']:.0f} sends/s = {s['calls_per_sec'] / $base:.2f} x pgbench ($base tps, Postgres CPU $base_pg_ms ms/tx)  p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  server CPU {s['server_cpu_ms_per_call']:.3f} ms/send  Postgres CPU {s['pg_cpu_ms_per_call']:.3f} ms/send\")
if q:
    print(f\"  one session, {q['calls']} sequential sends: p50 {q['p50_ms']:.2f} ms = {q['p50_ms'] / $one_ms:.2f} x one pgbench client's mean latency ($one_ms ms)  p99 {q['p99_ms']:.2f} ms  server CPU {q['server_cpu_ms_per_call']:.3f} ms/send  Postgres CPU {q['pg_cpu_ms_per_call']:.3f} ms/send\")"
    }
    floor() {
      # BENCH_FLOOR=1: the floor under a send. A few sends of build $1 run with every statement
      # logged with its parameters; scripts/lib/floor.py takes the last send's three statements (the
      # agent read, reserve_actions, the append_batch that records it and settles its intent) and
      # pgbench replays them, each its own transaction as in the server, with no server at all: one
      # client's mean latency against the server's lone send, and Postgres CPU per send from
      # $writers clients (each statement for one send: nothing batched, no projections).
      [ -n "${BENCH_FLOOR:-}" ] || return 0
      psql -q "$admin" -c "CREATE DATABASE bench_floor"
      bench_url="${admin/\/postgres\?//bench_floor?}"
      start_server "$1"
      psql -q "$admin" -c "ALTER SYSTEM SET log_min_duration_statement = 0" \
        -c "ALTER SYSTEM SET log_parameter_max_length = -1" -c "SELECT pg_reload_conf()" >/dev/null
      local log_from; log_from=$(wc -c < "$cluster/postgres.log")
      BENCH_BEFORE_SEQUENTIAL= BENCH_AFTER_SEQUENTIAL= BENCH_BEFORE_SEND= "$bin" --mode send \
        --url "http://127.0.0.1:$port" --token "$token" --sessions 1 --seconds 1 --server-pid "$server" \
        --pg-pid "$(head -n 1 "$cluster/data/postmaster.pid")" --sequential 30 >/dev/null
      psql -q "$admin" -c "ALTER SYSTEM RESET log_min_duration_statement" \
        -c "ALTER SYSTEM RESET log_parameter_max_length" -c "SELECT pg_reload_conf()" >/dev/null
      kill $server; wait $server 2>/dev/null || true
      tail -c +$((log_from + 1)) "$cluster/postgres.log" > "$cluster/floor.log"
      python3 scripts/lib/floor.py "$cluster/floor.log" "$cluster" "$writers"
      psql -q "$bench_url" -f "$cluster/floor-setup.sql"
      local args; mapfile -d '' args < "$cluster/floor.args"
      # replay RUN SCRIPT CLIENTS [PGOPTIONS]: pgbench for 5 s (one client) or $seconds, on run
      # RUN's own streams (each run starts its clients' chains afresh: a stream's head moves with
      # every append, and an append at a stale head would insert nothing); sets $out (pgbench's
      # report, -r: each statement's mean latency with its commit), $lone (mean latency, ms),
      # $cpu (Postgres CPU per send, ms), $tps and $appended (events the run appended).
      local out lone cpu tps appended
      replay() {
        local before after txs
        before=$(pg_cluster_ticks)
        out=$(PGOPTIONS="${PGOPTIONS:-} ${4:-}" "$PG_BIN_DIR/pgbench" -n -M prepared -r -c "$3" -j "$((${3} > 1 ? 2 : 1))" \
          -T "$((${3} > 1 ? seconds : 5))" -D run="$1" "${args[@]}" -f "$cluster/$2" "$bench_url")
        after=$(pg_cluster_ticks)
        txs=$(echo "$out" | awk '/number of transactions actually processed/ { split($NF, a, "/"); print a[1]; exit }')
        lone=$(echo "$out" | awk '/^latency average/ { print $4; exit }')
        tps=$(echo "$out" | awk '/^tps/ { printf "%.0f", $3; exit }')
        cpu=$(python3 -c "print(f'{($after - $before) * 10 / max($txs, 1):.3f}')")
        appended=$(psql -qAt "$bench_url" -c "SELECT count(*) FROM events WHERE aggregate_id LIKE 'floor-$1-%'")
        [ "$appended" = "$txs" ] || echo "floor: run $1 ($2) appended $appended events in $txs sends" >&2
      }
      replay 0 floor.sql 1
      local statements; statements=$(echo "$out" | awk '/^ +[0-9.]+ +[0-9]+ +(SELECT)/ { printf "%s%s %.3f", sep, ($4 == "*" ? "reserve_actions" : ($4 == "base," ? "append_batch" : "read")), $1; sep = ", " }')
      local first=$lone
      # The same without waiting for the commits' WAL flush: what the two durable commits cost.
      replay 1 floor.sql 1 "-c synchronous_commit=off"
      echo "floor, one client: $first ms per send ($statements ms); $lone ms with synchronous_commit = off"
      replay 2 floor.sql "$writers"
      echo "floor (the send's three statements from pgbench, no server): $writers clients $tps sends/s, Postgres CPU $cpu ms/send ($appended appended)"
      # A design not built (docs/performance.md, "One statement per send"): the reservation (no
      # intent) and the append (no settle) as one statement with one commit, after the read and,
      # as if the agent's state were cached, without it.
      replay 3 floor-one.sql 1; first=$lone
      replay 4 floor-one.sql "$writers"
      echo "floor as one statement: one client $first ms per send; $writers clients Postgres CPU $cpu ms/send"
      replay 5 floor-cached.sql 1; first=$lone
      replay 6 floor-cached.sql "$writers"
      echo "floor as one statement, no read: one client $first ms per send; $writers clients Postgres CPU $cpu ms/send"
    }
    if [ -n "${BENCH_BASELINE:-}" ] && [ -z "${BENCH_BINARIES:-}" ]; then
      BENCH_BINARIES="$BENCH_BASELINE target/release/commguard $BENCH_BASELINE"
    fi
    # The floor follows the phases of BENCH_BINARIES (of its first build); alone, this tree's.
    if [ -n "${BENCH_FLOOR:-}" ] && [ -z "${BENCH_BINARIES:-}" ]; then
      BENCH_BINARIES=target/release/commguard
    fi
    if [ -n "${BENCH_BINARIES:-}" ]; then
      # A/B/A: BENCH_BASELINE is another build of the server (e.g. main's), measured before and
      # after this build; BENCH_BINARIES lists the builds to measure in that order instead. Each
      # runs on a fresh database of this cluster, so their ratios come from one run on one
      # machine state. No fill.
      phase=0
      for phase_bin in $BENCH_BINARIES; do
        phase=$((phase + 1))
        psql -q "$admin" -c "CREATE DATABASE bench_$phase"
        bench_url="${admin/\/postgres\?//bench_$phase?}"
        start_server "$phase_bin"
        pg_stats_reset "$bench_url"
        echo "$phase ($phase_bin): $(measure "$sequential")"
        pg_stats_per_send "$bench_url"
        kill $server; wait $server 2>/dev/null || true
        # The next phase starts on a quiet cluster: autovacuum of this phase's tables and the
        # checkpoint of its WAL once showed as 20 ms/s of idle Postgres CPU in the next phase.
        psql -q "$admin" -c "DROP DATABASE bench_$phase" -c "CHECKPOINT"
      done
      floor "${BENCH_BINARIES%% *}"
      # pgbench again after the phases: a baseline measured while something else ran (a build)
      # shows here as the two disagreeing; compare each phase with the faster one.
      first=$base
      pgbench_tps
      echo "pgbench before the phases $first tps, after them $base tps (the 'x pgbench' above uses the first)"
      exit 0
    fi
    start_server
    pg_stats_reset "$bench_url"
    echo "empty store:            $(measure "$sequential")"
    pg_stats_per_send "$bench_url"
    [ "$fill" -gt 0 ] || exit 0
    kill $server; wait $server 2>/dev/null || true
    # Fill the store with $fill events of other agents (synthetic rows written directly; they are
    # history that no limit check may read), then measure again.
    psql -q "$bench_url" -c "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
        position, event_id, occurred_at, org_id, prev_hash, hash)
      SELECT 'agent', 'filler-' || (g / 100), g % 100 + 1, 'MessageSent', '1.0', '{\"channel\":\"sms\",\"cost\":7900}',
             '{}', g, gen_random_uuid(), now() - interval '1 day', 'filler', repeat('0', 64), repeat('0', 64)
      FROM generate_series(1, $fill) g" -c "ANALYZE events"
    start_server
    echo "after $fill events: $(measure "$sequential")"
    ;;
  as-of)
    # Point-in-time admin views (docs/admin-api.md#point-in-time-views-as_of) over a store of $fill events: an agent and a
    # contact whose limits and consent changed 24 times (test clock), then $fill synthetic events
    # written directly — most of them on that agent's own stream and its org's, stamped inside the
    # same 24 hours, so a view that walked the streams would read them all. Measured with the
    # settings index (migration 0019), then without it (the baseline of the same run).
    cargo build --release --bin commguard --bench mcp >&2
    bin=$(ls -t target/release/deps/mcp-* | grep -v '\.d$' | head -n 1)
    psql -q "$admin" -c "CREATE DATABASE bench"
    bench_url="${admin/\/postgres\?//bench?}"
    token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    data=$(mktemp -d /tmp/commguard-bench-data-XXXXXX); chmod 755 "$data"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    DATABASE_URL="$bench_url" HOST=127.0.0.1 PORT=$port MASTER_SECURITY_TOKEN=$token COMMGUARD_DATA_DIR=$data \
      COMMGUARD_TEST_CLOCK=true HTTP_RATE_LIMIT_PER_IP=1000000000 HTTP_RATE_LIMIT_GLOBAL=1000000000 \
      RUST_LOG=warn target/release/commguard serve &
    server=$!
    trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; stop_cluster "$cluster"; rm -rf "$data"' EXIT
    wait_healthy
    setup=$("$bin" --mode as-of-setup --url "http://127.0.0.1:$port" --token "$token")
    field() { echo "$setup" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
    agent=$(field agentId); org=$(field orgId); org_admin=$(field admin); contact=$(field contact)
    # Negative positions: below every checkpoint, so no projection reads them.
    psql -q "$bench_url" -c "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
        position, event_id, occurred_at, org_id, prev_hash, hash)
      SELECT s.t, s.id, 1000000 + g, s.e, '1.0', '{\"channel\":\"sms\",\"cost\":7900}', '{}', -g, gen_random_uuid(),
             timestamptz '2026-01-01' + (g % 86400) * interval '1 second', '$org', repeat('0', 64), repeat('0', 64)
        FROM generate_series(1, $fill) g, LATERAL (SELECT
          CASE WHEN g % 10 < 8 THEN 'agent' WHEN g % 10 = 8 THEN 'organization' ELSE 'contact' END AS t,
          CASE WHEN g % 10 < 6 THEN '$agent' WHEN g % 10 < 8 THEN 'filler-' || (g / 1000)
               WHEN g % 10 = 8 THEN '$org' ELSE '$org:filler' || (g / 100) END AS id,
          CASE WHEN g % 10 < 8 THEN 'MessageSent' WHEN g % 10 = 8 THEN 'ActionRefused' ELSE 'ConsentGranted' END AS e) s" \
      -c "ANALYZE events"
    measure() {
      "$bin" --mode as-of --url "http://127.0.0.1:$port" --token "$org_admin" --agent "$agent" --contact "$contact" \
        --sessions "$writers" --seconds "$seconds"
    }
    with=$(measure)
    psql -q "$bench_url" -c "DROP INDEX events_settings"
    without=$(measure)
    echo "with the settings index: $with"
    echo "without it:              $without"
    python3 - "$with" "$without" "$fill" "$writers" <<'PY'
import json, sys
w, wo, fill, n = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"{fill} events, {n} concurrent clients")
for k, label in (("consent_as_of", "/consent?as_of"), ("limits_as_of", "/limits?as_of"), ("consent_live", "/consent (live)"), ("limits_live", "/limits (live)")):
    a, b = w[k], wo[k]
    print(f"{label:18} {a['calls_per_sec']:7.0f}/s  p50 {a['p50_ms']:.2f} ms  p99 {a['p99_ms']:.2f} ms   without index: p99 {b['p99_ms']:.2f} ms ({b['p99_ms'] / a['p99_ms']:.1f} x)")
print(f"target p99 < 20 ms: consent {w['consent_as_of']['p99_ms']:.2f}, limits {w['limits_as_of']['p99_ms']:.2f}")
PY
    ;;
  feed)
    # The auditor feed (docs/admin-api.md#the-event-feed) paged through $fill events, 1000 at a
    # time, with the master token and decryption, against a raw COPY of the same table in the same
    # run. Every event carries a sealed personal field: $seed real DncAdded events (each under its
    # own subject key) are recorded through the admin API, then cloned into $fill rows below them
    # (positions 1..$fill, under the first real transaction's). A clone keeps its original's
    # event id — the field's AAD — so it opens like the original; the unique index on event_id is
    # dropped in this throwaway database to allow it.
    # COMMGUARD_BIN=FILE: measure that build instead (e.g. a copy of an earlier one).
    # BENCH_BINARIES="FILE FILE ...": page the same store with each build in turn (the first one
    # records the seed), each beside its own COPYs. A build refuses a store that a newer build has
    # migrated further than it knows: list older builds before newer ones.
    bin=${COMMGUARD_BIN:-target/release/commguard}
    [ -n "${COMMGUARD_BIN:-}${BENCH_BINARIES:-}" ] || cargo build --release --bin commguard >&2
    binaries=${BENCH_BINARIES:-$bin}
    bin=${binaries%% *}
    psql -q "$admin" -c "CREATE DATABASE bench"
    bench_url="${admin/\/postgres\?//bench?}"
    # Burn transaction ids so that every real position (txid << 12) lies above $fill.
    echo "SELECT txid_current();" > "$cluster/txid.sql"
    "$PG_BIN_DIR/pgbench" -n -c 1 -t $((fill / 4096 + 200)) -f "$cluster/txid.sql" "$bench_url" >/dev/null 2>&1
    token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    data=$(mktemp -d /tmp/commguard-bench-data-XXXXXX); chmod 755 "$data"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    feed_server() {
      DATABASE_URL="$bench_url" HOST=127.0.0.1 PORT=$port MASTER_SECURITY_TOKEN=$token COMMGUARD_DATA_DIR=$data \
        HTTP_RATE_LIMIT_PER_IP=1000000000 HTTP_RATE_LIMIT_GLOBAL=1000000000 RUST_LOG=warn "$1" serve &
      server=$!
      wait_healthy
    }
    trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; stop_cluster "$cluster"; rm -rf "$data"' EXIT
    feed_server "$bin"
    python3 - "$port" "$token" "$seed" <<'PY'
import http.client, json, sys
port, token, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", int(port))
for i in range(seed):
    body = json.dumps({"address": f"+1202{i:07d}", "reason": "bench", "orgId": "default"})
    c.request("POST", "/admin/api/dnc", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse(); text = r.read()
    assert r.status == 200, text
PY
    psql -q "$bench_url" -c "DROP INDEX events_event_id" -c "
      WITH seeded AS (SELECT row_number() OVER (ORDER BY position) - 1 AS i, * FROM events WHERE event_type = 'DncAdded'),
           n AS (SELECT COUNT(*) AS n FROM seeded)
      INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
          position, event_id, occurred_at, org_id, prev_hash, hash)
      SELECT s.aggregate_type, 'bench-clone-' || g, 1, s.event_type, s.event_version, s.payload, s.metadata,
             g, s.event_id, s.occurred_at, s.org_id, s.prev_hash, s.hash
        FROM generate_series(1, $fill) g, n, seeded s WHERE s.i = g % n.n" -c "ANALYZE events"
    total=$(psql -tA "$bench_url" -c "SELECT COUNT(*) FROM events")
    low=$(psql -tA "$bench_url" -c "SELECT MIN(position) FROM events WHERE NOT aggregate_id LIKE 'bench-clone-%'")
    [ "$low" -gt "$fill" ] || { echo "a real position ($low) lies among the clones" >&2; exit 1; }
    cat > "$cluster/page.py" <<'PY'
import http.client, json, os, subprocess, sys, time
port, token, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
raw_s = float(sys.argv[5]) - float(sys.argv[4])
server, postmaster = sys.argv[7], sys.argv[8]
c = http.client.HTTPConnection("127.0.0.1", int(port))
auth = {"Authorization": f"Bearer {token}"}


def stat(pid):
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def cpu_seconds():
    """CPU (utime + stime) of the server, of the cluster (postmaster, live and exited children)
    and of this client, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    f = stat(server)
    srv = (int(f[11]) + int(f[12])) / tick
    f = stat(postmaster)
    pg = sum(int(f[i]) for i in (11, 12, 13, 14))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        g = stat(pid)
        if g and g[1] == postmaster:
            pg += int(g[11]) + int(g[12])
    me = os.times()
    return srv, pg / tick, me.user + me.system


def next_after(body):
    tail = body[body.rindex(b'"nextAfter":') + 12:]
    return int(tail[:tail.index(b",")] if b"," in tail else tail[:tail.index(b"}")])


# The feed as a reader that, like `psql | wc -c` for COPY, does not parse what it moves: every
# page in full, the next `after` read from the page's tail, and the opened personal fields (an
# address in clear) and the erased ones counted in the bytes.
after, seen, opened, erased, nbytes = 0, 0, 0, 0, 0
cpu_before = cpu_seconds()
start = time.perf_counter()
while True:
    c.request("GET", f"/admin/api/events?after={after}&limit=1000", headers=auth)
    r = c.getresponse(); body = r.read()
    assert r.status == 200, body[:500]
    nbytes += len(body)
    n = body.count(b'"redactions":')
    if n == 0:
        break
    seen += n
    # Payloads pass through in their stored (jsonb) form, `"key": value`, opened fields included.
    opened += body.count(b'"address": "+1202') + body.count(b'"address":"+1202')
    erased += body.count(b'[erased]')
    after = next_after(body)
elapsed = time.perf_counter() - start
cpu = [b - a for a, b in zip(cpu_before, cpu_seconds())]
assert seen == total, (seen, total, body[:300])
assert erased == 0 and opened >= total - 100, (opened, erased, total)
load = os.getloadavg()[0]
copy_start = time.perf_counter()
subprocess.run([sys.argv[9], sys.argv[10], "-c", "COPY (SELECT * FROM events) TO STDOUT"], check=True,
               stdout=subprocess.DEVNULL)
raw_after_s = time.perf_counter() - copy_start
feed_rate, raw_rate = seen / elapsed, total / min(raw_s, raw_after_s)
print(f"{total} events ({opened} personal fields opened)")
print(f"feed, limit=1000, master, decrypted: {elapsed:.1f} s = {feed_rate:,.0f} events/s ({nbytes / elapsed / 1e6:.0f} MB/s of JSON)")
print(f"raw COPY (SELECT * FROM events) TO STDOUT: before the feed {raw_s:.1f} s = {total / raw_s:,.0f} events/s "
      f"({int(sys.argv[6]) / raw_s / 1e6:.0f} MB/s), after it {raw_after_s:.1f} s = {total / raw_after_s:,.0f} events/s")
print(f"feed / raw (the faster COPY): {100 * feed_rate / raw_rate:.0f} % (target >= 25 %)")
print(f"CPU per event while paging: server {cpu[0] / seen * 1e6:.1f} us, Postgres {cpu[1] / seen * 1e6:.1f} us, "
      f"this client {cpu[2] / seen * 1e6:.1f} us; wall {elapsed / seen * 1e6:.1f} us; load average {load:.1f}")
# Attribution: the first 100 pages again, as stored (raw=true: no key lookups, no opening).
after, n, start = 0, 0, time.perf_counter()
for _ in range(100):
    c.request("GET", f"/admin/api/events?after={after}&limit=1000&raw=true", headers=auth)
    body = c.getresponse().read()
    if b'"redactions":' not in body:
        break
    n += body.count(b'"redactions":'); after = next_after(body)
print(f"same feed with raw=true (no decryption), first {n} events: {n / (time.perf_counter() - start):,.0f} events/s")
# The same first 100 pages read by a client that parses every page (Python's json), checking each
# DncAdded's address opened: what a script-driven auditor sees, client parsing included.
after, n, start = 0, 0, time.perf_counter()
for _ in range(100):
    c.request("GET", f"/admin/api/events?after={after}&limit=1000", headers=auth)
    page = json.loads(c.getresponse().read())
    if not page["events"]:
        break
    for e in page["events"]:
        if e["eventType"] == "DncAdded":
            fields = e["payload"].get("DncAdded", e["payload"])
            assert fields["address"].startswith("+1202"), e
    n += len(page["events"]); after = page["nextAfter"]
print(f"same feed parsed by a Python json client, first {n} events: {n / (time.perf_counter() - start):,.0f} events/s")
PY
    for bin in $binaries; do
      [ "$binaries" = "${binaries#* }" ] || echo "== $bin"
      if [ "$bin" != "${binaries%% *}" ]; then
        kill $server; wait $server 2>/dev/null || true
        feed_server "$bin"
      fi
      raw_start=$(date +%s.%N)
      raw_bytes=$(psql "$bench_url" -c "COPY (SELECT * FROM events) TO STDOUT" | wc -c)
      raw_end=$(date +%s.%N)
      if [ -n "${BENCH_PERF:-}" ]; then
        # Profiling aid: BENCH_PERF=FILE records the server for 10 s of the decrypted paging.
        perf record -F 499 -g --call-graph dwarf -p "$server" -o "$BENCH_PERF" -- sleep 10 >/dev/null 2>&1 &
      fi
      pg_stats_reset "$bench_url"
      # COPY again right after the feed: with the machine's load moving between runs, the feed is
      # compared with the faster of the two COPYs measured around it.
      python3 "$cluster/page.py" "$port" "$token" "$total" "$raw_start" "$raw_end" "$raw_bytes" "$server" \
          "$(head -n 1 "$cluster/data/postmaster.pid")" "$PG_BIN_DIR/psql" "$bench_url"
      pg_stats_print "$bench_url"
    done
    ;;
  anomaly)
    # The detector's cost per run (prune, read the current windows, evaluate the six rules) on a
    # store holding only the current activity, beside a store holding the same plus $fill events
    # of history (the 30 days before today), both in this cluster; the anomaly projection caught
    # up over each first (benches/anomaly.rs writes the synthetic events and times the runs).
    cargo build --release --bench anomaly >&2
    bin=$(ls -t target/release/deps/anomaly-* | grep -v '\.d$' | head -n 1)
    psql -q "$admin" -c "CREATE DATABASE bench_empty" -c "CREATE DATABASE bench_full"
    result=$("$bin" --empty-url "${admin/\/postgres\?//bench_empty?}" --full-url "${admin/\/postgres\?//bench_full?}" \
      --fill "$fill" --runs "$runs")
    echo "commguard: $result"
    python3 - "$result" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); e, f = r["empty"], r["full"]
for name, x in (("current activity only", e), (f"+ {f['projected'] - e['projected']:,} events of history", f)):
    print(f"{name:32} {x['events']:>9,} events; projection caught up in {x['catch_up_secs']:.1f} s; windows {x['windows_before_prune']:,} -> {x['windows_after_prune']:,} after the first run's prune ({x['first_run_ms']:.1f} ms); {x['readings']} readings")
    print(f"{'':32} detector run: mean {x['mean_ms']:.3f} ms  p50 {x['p50_ms']:.3f} ms  p99 {x['p99_ms']:.3f} ms over {x['runs']} runs")
print(f"detector run with history / without: mean {f['mean_ms'] / e['mean_ms']:.2f} x, p50 {f['p50_ms'] / e['p50_ms']:.2f} x (flat: ~1)")
PY
    ;;
  replay)
    # `commguard replay --projection audit` (docs/cli.md) over $fill synthetic events (2,000 agent
    # streams of 50 orgs, written directly), against the floor of the same run: Postgres alone
    # writing the same rows (`CREATE TABLE … AS SELECT` of the audit columns) and building the
    # same four indexes. BENCH_BINARIES="FILE FILE ...": each build in turn, twice, on one store
    # (COMMGUARD_BIN=FILE: that build alone); a build refuses a store that a newer build has
    # migrated further than it knows, so the builds alternated must know the same migrations.
    bin=${COMMGUARD_BIN:-target/release/commguard}
    [ -n "${COMMGUARD_BIN:-}${BENCH_BINARIES:-}" ] || cargo build --release --bin commguard >&2
    binaries=${BENCH_BINARIES:-$bin}
    psql -q "$admin" -c "CREATE DATABASE bench"
    bench_url="${admin/\/postgres\?//bench?}"
    data=$(mktemp -d /tmp/commguard-bench-data-XXXXXX)
    trap 'stop_cluster "$cluster"; rm -rf "$data"' EXIT
    replay_env=(DATABASE_URL="$bench_url" COMMGUARD_DATA_DIR="$data" RUST_LOG=error
      DATA_ENCRYPTION_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')")
    env "${replay_env[@]}" "${binaries%% *}" migrate >/dev/null
    psql -q "$bench_url" -c "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
        position, event_id, occurred_at, org_id, prev_hash, hash)
      SELECT 'agent', 'agent-' || ((g - 1) % 2000), (g - 1) / 2000 + 1, 'MessageSent', '1.0', '{\"channel\":\"sms\",\"cost\":7900}',
             '{\"actor\":{\"kind\":\"agent\",\"id\":\"bench\"}}', g, gen_random_uuid(), now() - interval '1 day',
             'org-' || (g % 50), repeat('0', 64), repeat('0', 64)
      FROM generate_series(1, $fill) g" -c "ANALYZE events" -c "CHECKPOINT"
    floor() {
      local started; started=$(date +%s.%N)
      psql -q "$bench_url" -c "DROP TABLE IF EXISTS replay_floor" \
        -c "CREATE TABLE replay_floor AS SELECT position, occurred_at, aggregate_type, aggregate_id, sequence, event_type,
                   'allowed'::text AS outcome, org_id, aggregate_id AS agent_id, NULL::text AS subject_ref FROM events" \
        -c "ALTER TABLE replay_floor ADD PRIMARY KEY (position)" \
        -c "CREATE INDEX ON replay_floor (org_id, position)" \
        -c "CREATE INDEX ON replay_floor (agent_id, position) WHERE agent_id IS NOT NULL" \
        -c "CREATE INDEX ON replay_floor (subject_ref, position) WHERE subject_ref IS NOT NULL" -c "CHECKPOINT"
      python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.2f}')" "$started"
    }
    # REPLAY_PROJECTION=all: every projection (`commguard replay`), against the same floor.
    replay_args=(--projection "${REPLAY_PROJECTION:-audit}")
    [ "${REPLAY_PROJECTION:-audit}" != all ] || replay_args=()
    for round in 1 2; do
      for b in $binaries; do
        base=$(floor)
        started=$(date +%s.%N)
        env "${replay_env[@]}" "$b" replay "${replay_args[@]}" >/dev/null 2> "$cluster/replay.err" \
          || { echo "$b: replay failed:" >&2; tail -n 3 "$cluster/replay.err" >&2; exit 1; }
        python3 - "$b" "$started" "$base" "$fill" "${REPLAY_PROJECTION:-audit}" <<'PY'
import sys, time
b, started, base, fill, what = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
secs = time.time() - started
print(f"{b}: replay of {what} over {fill} events {secs:.2f} s ({fill / secs:.0f} events/s) = {secs / base:.2f} x the floor ({base:.2f} s: the same rows and indexes written by Postgres alone)")
PY
        psql -q "$bench_url" -c "CHECKPOINT"
      done
    done
    ;;
  erase)
    # GDPR erasure (docs/tools.md#catalogue, docs/privacy.md#keys-and-crypto-shredding) of a subject with $seed events (default 10,000) among
    # $fill (default 1M), beside the same erasure among ~10 % of that history, in the same run:
    # the cost must follow the subject's keys and projection rows, not history. Twenty subjects are
    # made through the real API (consent on sms and voice, a send, a call, a DNC entry: a subject
    # key, two consent-record keys, two consent rows, a contact counter, a DNC row each); $idle other
    # subjects' keys, consent rows, DNC rows and contact counters (and 1,000 agents in 50 other
    # orgs) are inserted by SQL. Each subject's sealed
    # MessageSent is cloned $seed times (the subject's history); filler events are clones of
    # another event. Clones sit at negative positions, below every projection checkpoint, so the
    # projection runners never read them. Subjects 0-9 are erased with ~10 % of the history (their
    # own 10 x $seed events), 10-19 with all of it (by the org admin; 9 and 19 by the master
    # across every org).
    # auto_explain logs the plans of the erasures' statements; those of phase 2 are printed: each
    # must be an index lookup, none a scan of events.
    cargo build --release --bin commguard >&2
    if [ -n "${BENCH_PG_STATS:-}" ]; then preload="pg_stat_statements,auto_explain"; else preload="auto_explain"; fi
    echo "shared_preload_libraries = '$preload'" >> "$cluster/data/postgresql.conf"
    run_pg "$PG_BIN_DIR/pg_ctl" -D "$cluster/data" -l "$cluster/postgres.log" -w -t 60 restart >/dev/null
    psql -q "$admin" -c "CREATE DATABASE bench"
    bench_url="${admin/\/postgres\?//bench?}"
    token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    data=$(mktemp -d /tmp/commguard-bench-data-XXXXXX); chmod 755 "$data"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    DATABASE_URL="$bench_url" HOST=127.0.0.1 PORT=$port MASTER_SECURITY_TOKEN=$token COMMGUARD_DATA_DIR=$data \
      COMMGUARD_TEST_CLOCK=true DATA_RETENTION_ENABLED=false ANOMALY_DETECTOR_ENABLED=false \
      DEFAULT_MAX_ACTIONS_PER_MINUTE=100000 DEFAULT_MAX_ACTIONS_PER_HOUR=100000 DEFAULT_MAX_ACTIONS_PER_DAY=100000 \
      HTTP_RATE_LIMIT_PER_IP=1000000000 HTTP_RATE_LIMIT_GLOBAL=1000000000 RUST_LOG=warn target/release/commguard serve &
    server=$!
    trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; stop_cluster "$cluster"; rm -rf "$data"' EXIT
    wait_healthy
    admin_token=$(python3 - "$port" "$token" <<'PY'
import http.client, json, sys
port, master = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", port)
def post(path, body, token, headers=None):
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
         "Accept": "application/json, text/event-stream", **(headers or {})}
    c.request("POST", path, json.dumps(body), h)
    r = c.getresponse(); text = r.read()
    assert r.status == 200, (path, r.status, text[:300])
    return r, json.loads(text)
def tool(token, name, args):
    r, _ = post("/mcp", {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}, token)
    sid = r.getheader("mcp-session-id")
    _, reply = post("/mcp", {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name, "arguments": args}},
                    token, {"mcp-session-id": sid})
    result = reply["result"]
    assert not result["isError"], (name, result)
    return json.loads(result["content"][0]["text"])
post("/admin/api/test/clock", {"now": "2026-12-01T16:00:00Z"}, master)
org = tool(master, "comms_create_organization", {"name": "Bench", "slug": "bench", "a2pRegistered": True})
agent = tool(org["adminToken"], "comms_provision_channels", {"displayName": "Bench", "capabilities": {"phone": True}})
for i in range(20):
    to = f"+1202555{i:04d}"
    for channel in ("sms", "voice"):
        tool(agent["securityToken"], "comms_record_consent", {"contactAddress": to, "channel": channel})
    tool(agent["securityToken"], "comms_send_message", {"to": to, "body": f"hello {i}"})
    tool(agent["securityToken"], "comms_make_call", {"to": to})
    post("/admin/api/dnc", {"address": to, "reason": "bench"}, org["adminToken"])
print(org["adminToken"])
PY
)
    # Others' rows in the tables erasure touches: keys, consent rows and DNC rows of $idle other
    # subjects across 50 orgs, and their events' filler.
    psql -q "$bench_url" -c "
      INSERT INTO data_keys (key_id, kind, org_id, subject_ref, generation, wrapped)
        SELECT gen_random_uuid(), 'subject', 'bench-org-' || (g % 50), left(md5(g::text), 32), 1, '\\x00'
        FROM generate_series(1, $idle) g;
      INSERT INTO consents (org_id, subject_ref, agent_id, channel, consent_id, consent_type, status, granted_at,
          grant_event_id, sealed)
        SELECT 'bench-org-' || (g % 50), left(md5(g::text), 32), 'bench-agent', 'sms', gen_random_uuid(), 'express',
               'active', now(), gen_random_uuid(), '{}'
        FROM generate_series(1, $idle) g;
      INSERT INTO dnc_entries (entry_id, org_id, subject_ref, address_type, source, reason, added_by, added_at,
          event_id, position, sealed)
        SELECT gen_random_uuid(), 'bench-org-' || (g % 50), left(md5(g::text), 32), 'phone', 'admin', 'bench',
               'bench', now(), gen_random_uuid(), -g, '{}'
        FROM generate_series(1, $idle) g;
      INSERT INTO usage_counters (scope, key, period, period_start, actions)
        SELECT 'contact', 'bench-agent-' || (g % 1000) || '|' || left(md5(g::text), 32), 'day', current_date, 1
        FROM generate_series(1, $idle) g;
      INSERT INTO agents (agent_id, org_id, display_name, agent_gender, country, status, capabilities, channels,
          mode, provisioned_at, updated_at)
        SELECT 'bench-agent-' || g, 'bench-org-' || (g % 50), 'Bench', 'neutral', 'US', 'active', '{}', '{}',
               'sandbox', now(), now()
        FROM generate_series(1, 1000) g;
      CREATE SEQUENCE bench_position;"
    # clone SOURCE_SQL N PREFIX: N copies of the one event SOURCE_SQL selects, at new negative positions.
    clone() {
      psql -q "$bench_url" -c "
        INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
            position, event_id, occurred_at, org_id, prev_hash, hash)
        SELECT s.aggregate_type, '$3-' || g, 1, s.event_type, s.event_version, s.payload, s.metadata,
               -nextval('bench_position'), gen_random_uuid(), s.occurred_at, s.org_id, s.prev_hash, s.hash
          FROM generate_series(1, $2) g, ($1) s"
    }
    subject_history() { # the subject's MessageSent (sent in subject order), $seed times
      clone "SELECT * FROM events WHERE event_type = 'MessageSent' ORDER BY position OFFSET $1 LIMIT 1" "$seed" "bench-subject-$1"
    }
    filler() {
      clone "SELECT * FROM events WHERE event_type = 'OrganizationCreated' ORDER BY position LIMIT 1" "$1" "bench-fill-$2"
    }
    erase() { # erase subjects $1..$2; prints the seconds each took
      python3 - "$port" "$token" "$admin_token" "$1" "$2" <<'PY'
import http.client, json, sys, time
port, master, admin, first, last = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
c = http.client.HTTPConnection("127.0.0.1", port)
def erase(identifier, token):
    start = time.perf_counter()
    c.request("POST", "/admin/api/subjects/erase", json.dumps({"identifier": identifier}),
              {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse(); body = json.loads(r.read())
    took = time.perf_counter() - start
    assert r.status == 200, body
    return took, body
erase("+12025559999", admin)  # warm-up: a subject with nothing
for i in range(first, last + 1):
    took, body = erase(f"+1202555{i:04d}", master if i in (9, 19) else admin)
    assert body["keysDestroyed"] == 3 and body["projectionRowsPurged"] >= 3, body
    print(f"{i} {body['scope']} {took:.6f} keys={body['keysDestroyed']} rows={body['projectionRowsPurged']} dnc={body['dncSuppressionsKept']}")
PY
    }
    for i in $(seq 0 9); do subject_history "$i"; done
    small=$(( fill / 10 ))
    filler $(( small - 10 * seed > 0 ? small - 10 * seed : 0 )) a
    # Settled before timing: statistics fresh, dirty pages written (a checkpoint flushing the
    # bulk insert would otherwise slow the erasures' commits of one phase only).
    psql -q "$bench_url" -c "VACUUM ANALYZE" -c "CHECKPOINT"
    small_total=$(psql -tA "$bench_url" -c "SELECT COUNT(*) FROM events")
    # auto_explain with timing on for both phases alike (the same overhead on either side).
    psql -q "$bench_url" -c "ALTER SYSTEM SET auto_explain.log_min_duration = 0" \
      -c "ALTER SYSTEM SET auto_explain.log_analyze = on" -c "SELECT pg_reload_conf()" >/dev/null
    sleep 0.5
    small_runs=$(erase 0 9)
    for i in $(seq 10 19); do subject_history "$i"; done
    big_total_before=$(psql -tA "$bench_url" -c "SELECT COUNT(*) FROM events")
    filler $(( fill - big_total_before > 0 ? fill - big_total_before : 0 )) b
    # Settled before timing: statistics fresh, dirty pages written (a checkpoint flushing the
    # bulk insert would otherwise slow the erasures' commits of one phase only).
    psql -q "$bench_url" -c "VACUUM ANALYZE" -c "CHECKPOINT"
    big_total=$(psql -tA "$bench_url" -c "SELECT COUNT(*) FROM events")
    subject_events=$(psql -tA "$bench_url" -c "SELECT COUNT(*) FROM events WHERE aggregate_id LIKE 'bench-subject-19-%'")
    log_from=$(wc -c < "$cluster/postgres.log")
    big_runs=$(erase 10 19)
    psql -q "$bench_url" -c "ALTER SYSTEM RESET auto_explain.log_min_duration" \
      -c "ALTER SYSTEM RESET auto_explain.log_analyze" -c "SELECT pg_reload_conf()" >/dev/null
    tail -c +$((log_from + 1)) "$cluster/postgres.log" > "$cluster/plans.log"
    python3 - "$small_total" "$big_total" "$subject_events" "$cluster/plans.log" "$small_runs" "$big_runs" <<'PY'
import re, statistics, sys
small_total, big_total, subject_events, plans = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def runs(text):
    rows = [line.split() for line in text.strip().splitlines()]
    return [(int(r[0]), r[1], float(r[2]), " ".join(r[3:])) for r in rows]
small, big = runs(sys.argv[5]), runs(sys.argv[6])
print(f"each erased subject: {subject_events} events of its own; keys, consent rows, a counter, a DNC row")
for label, total, rs in (("history ~10 %", small_total, small), ("full history", big_total, big)):
    for i, scope, took, detail in rs:
        print(f"  {label}: {total:>9,} events, subject {i} ({scope:3}): {took * 1000:7.2f} ms  {detail}")
org_small = statistics.median(t for _, s, t, _ in small if s == "org")
org_big = statistics.median(t for _, s, t, _ in big if s == "org")
all_small = [t for _, s, t, _ in small if s == "all"][0]
all_big = [t for _, s, t, _ in big if s == "all"][0]
print(f"erase, org scope, median of 9: {org_small * 1000:.2f} ms at {small_total:,} events, {org_big * 1000:.2f} ms at {big_total:,} events: ratio {org_big / org_small:.2f} for {big_total / small_total:.1f}x the history")
print(f"erase, every org (master): {all_small * 1000:.2f} ms vs {all_big * 1000:.2f} ms: ratio {all_big / all_small:.2f}")
# The plans auto_explain logged for the erasure's own statements (phase 2).
text = open(plans).read()
entries = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", text)
wanted = {
    "scope (every org)": "SELECT org_id FROM data_keys WHERE kind = 'subject' AND subject_ref",
    "grants on the contact streams": "event_type = 'ConsentGranted'",
    "destroy subject keys": "AND subject_ref = $1 AND ($2::text IS NULL OR org_id = $2)",
    "destroy consent keys": "WHERE kind = 'consent' AND consent_id = ANY",
    "purge consent rows": "DELETE FROM consents WHERE org_id = ANY",
    "purge contact counters": "DELETE FROM usage_counters WHERE scope = 'contact'",
    "count kept DNC rows": "SELECT count(*) FROM dnc_entries WHERE org_id = ANY",
}
seq_on_events = False
for name, needle in wanted.items():
    found = [e for e in entries if "plan:" in e and needle.replace("\n", "") in e.replace("\n", "")]
    if not found:
        print(f"  plan of {name}: not logged"); continue
    e = found[-1]
    nodes = [l.strip() for l in e.splitlines() if re.search(r"(Scan|Bitmap|Join|Aggregate|Update on|Delete on|Unique|Append|Result)", l) and "Query Text" not in l]
    duration = re.search(r"duration: ([0-9.]+) ms", e)
    print(f"  plan of {name} ({duration.group(1) if duration else '?'} ms):")
    for n in nodes[:8]:
        print(f"      {re.sub(r' +', ' ', n)[:150]}")
    seq_on_events |= any("Seq Scan on events" in n for n in nodes)
print("a sequential scan of events in the erasure: " + ("YES" if seq_on_events else "none"))
# Database time of those statements, per erasure of phase 2 (the rest of the wall time is HTTP,
# the commits' fsyncs and recording SubjectErased).
spent = 0.0
for e in entries:
    if "plan:" in e and any(n.replace("\n", "") in e.replace("\n", "") for n in wanted.values()):
        m = re.search(r"duration: ([0-9.]+) ms", e)
        spent += float(m.group(1)) if m else 0.0
print(f"the erasure's own statements: {spent / len(big):.2f} ms of database time per erasure (auto_explain)")
PY
    ;;
  *)
    echo "usage: scripts/bench.sh event-store|mcp|send|as-of|feed|anomaly|erase|replay [--writers N] [--seconds S] [--idle N] [--fill N]" >&2
    exit 2
    ;;
esac

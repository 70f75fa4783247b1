#!/usr/bin/env python3
"""The floor under a send (scripts/bench.sh send with BENCH_FLOOR=1).

Reads a Postgres log written with log_min_duration_statement = 0 and log_parameter_max_length = -1
while a server sent messages, takes the three statements of the last send in it (the agent read,
`reserve_actions`, the `append_batch` that records MessageSent and settles its intent) with their
parameters, and writes a pgbench script that runs the same three statements, each its own
transaction as the server runs them:

  <dir>/floor.sql        the script (pgbench -M prepared: every :name is a bound parameter)
  <dir>/floor.args       pgbench's -D arguments, NUL-separated (the captured parameter values)
  <dir>/floor-setup.sql  one chain head per pgbench client and run (runs 0-9, pgbench's -D run=N), so
                         each client appends to its own stream, and each run starts on fresh ones
  <dir>/floor-one.sql, <dir>/floor-cached.sql  the same send as one statement (see below)

What changes per transaction: the reservation's and the event's ids (from a random number, so a
reservation's intent is the one its append settles), the reservation's `now`, and the stream's
sequence. Everything else is the captured send's own bytes.

usage: floor.py LOG DIR CLIENTS
"""
import re
import sys

log_path, out_dir, clients = sys.argv[1], sys.argv[2], int(sys.argv[3])
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \w+ \[\d+\] ", re.M)


def records(text):
    starts = [m.start() for m in RECORD.finditer(text)]
    for a, b in zip(starts, starts[1:] + [len(text)]):
        yield text[a:b].rstrip("\n")


def parameters(detail):
    """`$1 = 'a''b', $2 = NULL, ...` -> ['a'b', None, ...]."""
    values, i = [], detail.index("$1 = ")
    while i < len(detail):
        m = re.compile(r"\$(\d+) = ").match(detail, i)
        if not m:
            break
        i = m.end()
        if detail.startswith("NULL", i):
            values.append(None)
            i += 4
        else:
            assert detail[i] == "'", detail[i : i + 40]
            i += 1
            value = []
            while True:
                j = detail.index("'", i)
                value.append(detail[i:j])
                if detail.startswith("''", j):
                    value.append("'")
                    i = j + 2
                else:
                    i = j + 1
                    break
            values.append("".join(value))
        if detail.startswith(", ", i):
            i += 2
    return values


executed = []  # (query, parameters)
pending = None
for record in records(open(log_path, encoding="utf-8", errors="replace").read()):
    body = RECORD.sub("", record, count=1)
    m = re.match(r"LOG:  duration: [\d.]+ ms  execute [^:]+: (.*)", body, re.S)
    if m:
        pending = m.group(1)
        executed.append((pending, []))
        continue
    if pending is not None and body.startswith("DETAIL:  parameters: "):
        executed[-1] = (pending, parameters(body[len("DETAIL:  parameters: ") :]))
    pending = None


def last(prefix, accept=lambda params: True):
    for query, params in reversed(executed):
        if query.lstrip().startswith(prefix) and accept(params):
            return query, params
    sys.exit(f"floor.py: no executed statement starting {prefix!r} in {log_path}")


read, read_params = last("SELECT a.agent_id")
_, (reservation,) = last("SELECT * FROM reserve_actions(")
append, append_params = last(
    "SELECT base, moved FROM append_batch(", lambda p: len(p) == 18 and p[7] == "{MessageSent}" and p[16] != "{}"
)
assert append_params[5] == "{1}", "the captured append holds one event"

args = {f"r{k}": v for k, v in enumerate(read_params, 1)}
args["res"] = reservation
for k in (1, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 18):
    args[f"a{k}"] = append_params[k - 1]
args["seq"] = "1"
read_sql = re.sub(r"\$(\d+)", lambda m: f":r{m.group(1)}", read.strip())

script = f"""\\set n random(1, 1000000000000000)
\\set next :seq + 1
{read_sql};
SELECT * FROM reserve_actions(jsonb_build_array((:res::jsonb -> 0)
    || jsonb_build_object('id', md5(:n::text)::uuid, 'now', now())));
SELECT base, moved FROM append_batch(:a1::text[], ARRAY['floor-' || :run || '-' || :client_id], ARRAY[:seq::bigint],
    ARRAY[:next::bigint], :a5::text[], :a6::int[], ARRAY[:next::bigint], :a8::text[], :a9::text[], :a10::json[],
    :a11::json[], ARRAY[md5(:n::text || 'e')::uuid], :a13::timestamptz[], :a14::text[], :a15::text[],
    :a16::text[], ARRAY[md5(:n::text)::uuid], :a18::uuid[]);
\\set seq :next
"""
open(f"{out_dir}/floor.sql", "w").write(script)

# What a send would cost in one statement (a design not built: docs/performance.md, "One statement
# per send"): the reservation without its intent and the append without a settle, in one statement
# and one commit, after the read (floor-one.sql) and without it, as if the agent's state came from
# a cache (floor-cached.sql).
one = """SELECT (SELECT r_limit_type FROM reserve_actions(jsonb_build_array(((:res::jsonb -> 0) - 'intent' - 'owner')
    || jsonb_build_object('id', md5(:n::text)::uuid, 'now', now())))),
  (SELECT base FROM append_batch(:a1::text[], ARRAY['floor-' || :run || '-' || :client_id], ARRAY[:seq::bigint],
    ARRAY[:next::bigint], :a5::text[], :a6::int[], ARRAY[:next::bigint], :a8::text[], :a9::text[], :a10::json[],
    :a11::json[], ARRAY[md5(:n::text || 'e')::uuid], :a13::timestamptz[], :a14::text[], :a15::text[],
    :a16::text[], ARRAY[NULL::uuid], :a18::uuid[]));
\\set seq :next
"""
header = "\\set n random(1, 1000000000000000)\n\\set next :seq + 1\n"
open(f"{out_dir}/floor-one.sql", "w").write(f"{header}{read_sql};\n{one}")
open(f"{out_dir}/floor-cached.sql", "w").write(f"{header}{one}")
with open(f"{out_dir}/floor.args", "w") as f:
    for name, value in args.items():
        assert value is not None and "\0" not in value, name
        f.write(f"-D\0{name}={value}\0")
with open(f"{out_dir}/floor-setup.sql", "w") as f:
    f.write(
        "INSERT INTO chain_heads (aggregate_type, aggregate_id, last_sequence, last_hash, appended) "
        f"SELECT 'agent', 'floor-' || r || '-' || c, 1, 'floor', 1 FROM generate_series(0, 9) r, "
        f"generate_series(0, {clients - 1}) c;\n"
    )
print(f"captured: the read ({len(read_params)} parameters), a reservation of {len(reservation)} bytes, "
      f"an append of {sum(len(p or '') for p in append_params)} bytes", file=sys.stderr)

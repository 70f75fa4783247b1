#!/usr/bin/env python3
"""Where the concurrent sends' stalls go: scripts/lib/stalls.py <dir>/latencies-<phase>.txt <dir>/sched-<phase>.data

Reads what `BENCH_STALLS=<dir> scripts/bench.sh send` leaves: every concurrent send's start and
latency, and a `perf record -a -e sched:sched_switch -g` of the machine over the phase's middle
(monotonic clock; `<data>.offset` holds realtime minus monotonic when it started). A stall is a
gap between two consecutive completions of more than --gap-ms (all sessions waiting at once). For
each stall inside the record it prints how busy the CPUs were and every wait in uninterruptible
sleep (D: the disk) that overlapped it, by thread and the user frames that waited; then the waits
summed over all stalls. An idle machine with no D wait is a stall this record cannot explain
(the hypervisor, or waits shorter than --min-wait-ms).
"""
import argparse
import bisect
import collections
import os
import re
import subprocess

SWITCH = re.compile(
    r"\s*(?P<comm>\S.*?)\s+(?P<pid>\d+)/(?P<tid>\d+)\s+\[\d+\]\s+(?P<time>[\d.]+):\s+"
    r"prev_comm=(?P<prev_comm>.*?) prev_pid=(?P<prev>\d+) prev_prio=\d+ prev_state=(?P<state>\S+) "
    r"==> next_comm=.*? next_pid=(?P<next>\d+)"
)


def completions(path):
    """The sends' completion times (µs since 1970) and latencies (µs), each sorted."""
    start, ends, latencies = None, [], []
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                start = int(line.split()[2])
                continue
            began, took = map(int, line.split())
            ends.append(start + began + took)
            latencies.append(took)
    return sorted(ends), sorted(latencies)


def switches(data):
    """(time µs since 1970, tid out, its state, its stack, tid in, names) from the perf record."""
    offset = float(open(data + ".offset").read())
    out = subprocess.run(
        ["perf", "script", "-i", data, "-F", "pid,tid,comm,cpu,time,trace,ip,sym", "--ns"],
        capture_output=True, text=True, check=True,
    ).stdout
    events, names, current = [], {}, None
    for line in out.splitlines():
        m = SWITCH.match(line)
        if m:
            prev = int(m["prev"])
            names[prev] = m["prev_comm"]
            current = [(float(m["time"]) + offset) * 1e6, prev, m["state"], [], int(m["next"])]
            events.append(current)
        elif current is not None and line.strip():
            frame = line.split(None, 1)
            if len(frame) > 1:
                current[3].append(frame[1].strip().split("+0x")[0])
    return events, names


def reason(stack):
    """The kernel function that slept and the first user frames that called into the kernel."""
    frames = [f for f in stack if f != "[unknown]"]
    entry = next((i for i, f in enumerate(frames) if f.startswith("entry_SYSCALL")), None)
    kernel = " < ".join([f for f in frames if f not in ("__schedule", "schedule", "io_schedule")][:2]) or "?"
    user = frames[entry + 1:entry + 4] if entry is not None else []
    return kernel + (" ← " + " < ".join(user) if user else "")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("latencies")
    p.add_argument("sched")
    p.add_argument("--gap-ms", type=float, default=6.0)
    p.add_argument("--min-wait-ms", type=float, default=0.3)
    a = p.parse_args()
    ends, latencies = completions(a.latencies)
    events, names = switches(a.sched)
    if not events:
        raise SystemExit("no sched_switch events in " + a.sched)

    # Each thread's spells on and off the CPU.
    on, off = collections.defaultdict(list), collections.defaultdict(list)
    went_in, went_out = {}, {}
    for t, prev, state, stack, nxt in events:
        if prev in went_in:
            on[prev].append((went_in.pop(prev), t))
        went_out[prev] = (t, state, stack)
        if nxt in went_out:
            t0, st, stk = went_out.pop(nxt)
            off[nxt].append((t0, t, st, stk))
        went_in[nxt] = t

    first, last = events[0][0], events[-1][0]
    gaps = [(x, y) for x, y in zip(ends, ends[1:]) if y - x > a.gap_ms * 1000 and x > first and y < last]
    n = len(latencies)
    window = (last - first) / 1e6
    print(f"{n} sends, p50 {latencies[n // 2] / 1000:.2f} ms, p99 {latencies[int(n * 0.99)] / 1000:.2f} ms; "
          f"record {window:.1f} s: {len(gaps)} stalls over {a.gap_ms:g} ms, "
          f"{sum(y - x for x, y in gaps) / 1000:.1f} ms in all")

    cpus = os.cpu_count() or 1
    total = collections.Counter()
    for x, y in gaps:
        busy = sum(min(e, y) - max(s, x) for tid, spells in on.items() if tid != 0
                   for s, e in spells if min(e, y) > max(s, x))
        waits = []
        for tid, spells in off.items():
            for s, e, state, stack in spells:
                overlap = min(e, y) - max(s, x)
                if state == "D" and overlap > a.min_wait_ms * 1000:
                    why = reason(stack)
                    waits.append((s - x, e - x, names.get(tid, "?"), tid, why))
                    total[why] += overlap / 1000
        print(f"\nstall {(y - x) / 1000:.1f} ms, CPUs {100 * busy / (cpus * (y - x)):.0f} % busy")
        for s, e, name, tid, why in sorted(waits):
            print(f"  D {name}/{tid} from {s / 1000:+.1f} to {e / 1000:+.1f} ms: {why}")
    print("\nwaits in D over all stalls (ms of overlap):")
    for why, ms in total.most_common():
        print(f"  {ms:7.1f}  {why}")


if __name__ == "__main__":
    main()

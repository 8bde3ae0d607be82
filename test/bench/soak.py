#!/usr/bin/env python3
"""Soak: steady requests through molt for a long time while its workers recycle, counting
every request. The bar is zero failures: the benchmark exits non-zero if any request got
anything but a whole 200 (a correctness check, so also in smoke mode; no speed is judged).

The app is the fixture (test/fixtures/apps/pyapp) with 2 workers. Most requests go to `/`;
a tenth go to `/leak?kb=512`, which retains memory for ever, so workers recycle both for
their request count (MOLT_MAX_REQUESTS) and for their memory (MOLT_WORKER_MEMORY). Reports
requests, non-200 responses, connection errors, recycles by reason (molt's `at=recycle`
lines), hard-cap kills, and molt's own RSS (the molt process, not its workers) at the start,
its maximum and at the end, read from /proc every second.

    test/bench/soak.py [--smoke] [--duration SECONDS] [--rate N] [--leak-kb N]

BENCH_SECONDS overrides the duration (default 300 s; smoke 15 s).
"""

import argparse
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402
from loadgen import Load  # noqa: E402

CLIENTS = 8
LEAK_CLIENTS = 2


def settings(smoke):
    return {
        "min_workers": 2,
        "max_workers": 2,
        "memory_limit": "256MB",
        "worker_memory": "40MB",
        # Recycles every few seconds at the default rate (each worker takes half of it).
        "max_requests": 200 if smoke else 500,
        "sample_interval": "500ms",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--duration", type=float,
                   default=float(os.environ.get("BENCH_SECONDS") or (15 if b.SMOKE else 300)))
    p.add_argument("--rate", type=float, default=100.0,
                   help="requests per second in all (a tenth of them to the leaking endpoint)")
    p.add_argument("--leak-kb", type=int, default=512,
                   help="KiB retained by each request to the leaking endpoint")
    args = p.parse_args()
    s = settings(b.SMOKE)
    leak_path = f"/leak?kb={args.leak_kb}"

    molt = b.molt_binary()
    work = b.temp_dir()
    log = os.path.join(work, "molt.log")
    port = b.free_port()
    proc, env = b.start_molt(molt, port, work, ["python3", b.PYAPP], log, ready_workers=2, **s)
    for _ in range(20):
        assert b.http_get(port)[0] == 200
    time.sleep(1)
    rss_start = b.rss_bytes(proc.pid)
    rss = {"max": rss_start, "samples": []}
    done = threading.Event()

    def sample():
        t0 = time.monotonic()
        while not done.wait(1.0):
            try:
                v = b.rss_bytes(proc.pid)
            except OSError:
                continue
            rss["max"] = max(rss["max"], v)
            rss["samples"].append((time.monotonic() - t0, v))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    print(
        f"soak: {args.rate:.0f} requests/s ({CLIENTS} clients on /, {LEAK_CLIENTS} on {leak_path}) "
        f"for {args.duration:.0f}s; MOLT_MAX_REQUESTS={s['max_requests']} "
        f"MOLT_WORKER_MEMORY={s['worker_memory']} MOLT_MEMORY_LIMIT={s['memory_limit']}, 2 workers",
        flush=True,
    )
    leak_rate = args.rate / 10
    started = time.monotonic()
    loads = [
        Load(port, "/", CLIENTS, rate=args.rate - leak_rate).start(),
        Load(port, leak_path, LEAK_CLIENTS, rate=leak_rate).start(),
    ]
    deadline = started + args.duration
    report_every = 5 if b.SMOKE else 30
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(min(report_every, max(0, deadline - time.monotonic())))
        with open(log, errors="replace") as f:
            recycles = f.read().count("at=recycle ")
        print(
            f"  {time.monotonic() - started:.0f}s: {sum(l.ok for l in loads)} ok, "
            f"{sum(l.failed for l in loads)} failed, {recycles} recycles, molt RSS "
            f"{b.mb(rss['samples'][-1][1] if rss['samples'] else rss_start):.1f} MB",
            flush=True,
        )
    for load in loads:
        load.stop()
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    exited = proc.poll()
    rss_end = b.rss_bytes(proc.pid) if exited is None else 0
    b.stop(proc)

    with open(log, errors="replace") as f:
        text = f.read()
    reasons = {}
    for line in text.splitlines():
        if "at=recycle " in line:
            m = re.search(r"\breason=(\S+)", line)
            reason = m.group(1) if m else "?"
            reasons[reason] = reasons.get(reason, 0) + 1
    recycles = sum(reasons.values())
    kills = text.count("at=kill ")
    ok = sum(l.ok for l in loads)
    why = {}
    for load in loads:
        for k, v in load.why.items():
            why[k] = why.get(k, 0) + v
    non_200 = sum(v for k, v in why.items() if k.startswith("status "))
    conn_errors = sum(v for k, v in why.items() if not k.startswith("status "))
    failed = non_200 + conn_errors
    # RSS after the first minute (or tenth of the run) against the end: growth once warm.
    warm_at = min(60, args.duration / 10)
    warm = next((v for t, v in rss["samples"] if t >= warm_at), rss_start)
    headers = [
        "seconds",
        "requests",
        "req/s",
        "non-200",
        "connection errors",
        "recycles",
        "by reason",
        "kills",
        "molt RSS MB start",
        f"after {warm_at:.0f}s",
        "max",
        "end",
        "growth MB",
    ]
    rows = [
        [
            round(elapsed),
            ok + failed,
            (ok + failed) / elapsed,
            non_200,
            conn_errors,
            recycles,
            " ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "-",
            kills,
            b.mb(rss_start),
            b.mb(warm),
            b.mb(rss["max"]),
            b.mb(rss_end),
            b.mb(rss_end - rss_start),
        ]
    ]
    notes = [
        f"Result: {failed} failed of {ok + failed} requests"
        + (f" ({why})" if failed else "")
        + f" across {recycles} recycles; molt's RSS {b.mb(rss_start):.1f} MB at the start, "
        f"{b.mb(rss['max']):.1f} MB at most, {b.mb(rss_end):.1f} MB at the end."
    ]
    if exited is not None:
        notes.append(f"molt exited during the run with status {exited}; its log ends:\n{text[-3000:]}")
    b.report("Soak: steady requests across recycles", headers, rows, "soak.csv", notes)
    if failed or exited is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()

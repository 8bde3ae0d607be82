#!/usr/bin/env python3
"""Recycling under load: the leaking fixture app (test/fixtures/apps/pyapp, /leak) under molt
with a small per-worker cap and a steady load for a few minutes. Reports requests, failed
requests (the bar is zero), memory recycles, hard-cap kills, and the pool's memory maximum
against the usable budget, both as molt sampled it (its debug `at=sample` lines) and as
read from outside (PSS of every worker's process tree from /proc, every 250 ms).

    test/bench/recycle.py [--smoke]     # BENCH_SECONDS overrides the duration
"""

import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402
from loadgen import Load  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS") or (6 if b.SMOKE else 180))
SETTINGS = {
    "memory_limit": "192MB",
    "min_workers": 2,
    "max_workers": 2,
    "worker_memory": "48MB",
    "sample_interval": "500ms",
    "log": "debug",
}
CLIENTS = 8
# 60 requests a second, each retaining 256 KiB: the pool leaks 15 MB/s, and each of the 2
# workers passes its cap every few seconds. A steady rate rather than as fast as possible:
# a leak of hundreds of MB/s outruns any sampling interval and meets the hard cap instead.
RATE = 60
PATH = "/leak?kb=256"


def log_values(text, event, key):
    pattern = re.compile(rf"\b{re.escape(key)}=(\d+)")
    out = []
    for line in text.splitlines():
        if f"at={event} " in line:
            m = pattern.search(line)
            if m:
                out.append(int(m.group(1)))
    return out


def main():
    molt = b.molt_binary()
    work = b.temp_dir()
    log = os.path.join(work, "molt.log")
    port = b.free_port()
    proc, env = b.start_molt(
        molt, port, work, ["python3", b.PYAPP], log, ready_workers=2, **SETTINGS
    )
    status = b.molt_status(env)

    # Outside view: the pool is every process under molt but molt itself.
    outside_max = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.25):
            try:
                pool = b.tree_memory(proc.pid) - b.pss_bytes(proc.pid)
            except OSError:
                continue
            outside_max[0] = max(outside_max[0], pool)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    print(
        f"recycling under load: {RATE} requests/s on {PATH} for {SECONDS}s, "
        f"MOLT_MEMORY_LIMIT={SETTINGS['memory_limit']} MOLT_WORKER_MEMORY={SETTINGS['worker_memory']} "
        f"workers={SETTINGS['min_workers']}",
        flush=True,
    )
    load = Load(port, PATH, CLIENTS, rate=RATE).start()
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        time.sleep(min(10, max(0, deadline - time.monotonic())))
        with open(log, errors="replace") as f:
            recycles = f.read().count("at=recycle ")
        print(f"  {SECONDS - max(0, deadline - time.monotonic()):.0f}s: {load.ok} ok, "
              f"{load.failed} failed, {recycles} recycles", flush=True)
    load.stop()
    done.set()
    sampler.join()
    exited = proc.poll()
    b.stop(proc)

    with open(log, errors="replace") as f:
        text = f.read()
    recycles = len(log_values(text, "recycle", "requests"))
    memory_recycles = sum(
        1 for l in text.splitlines() if "at=recycle " in l and "reason=memory" in l
    )
    kills = text.count("at=kill ")
    pool = log_values(text, "sample", "pool_bytes")
    usable = status["usable"]
    headers = [
        "seconds",
        "requests",
        "failed",
        "recycles (memory)",
        "kills",
        "pool max MB (molt)",
        "pool max MB (/proc)",
        "usable MB",
        "budget MB",
        "soft cap MB",
        "hard cap MB",
    ]
    rows = [
        [
            SECONDS,
            load.ok + load.failed,
            load.failed,
            f"{recycles} ({memory_recycles})",
            kills,
            b.mb(max(pool, default=0)),
            b.mb(outside_max[0]),
            b.mb(usable),
            b.mb(status["budget"]),
            b.mb(status["soft_cap"]),
            b.mb(status["hard_cap"]),
        ]
    ]
    notes = [
        f"Target: zero failed requests across recycles; measured {load.failed} failed of "
        f"{load.ok + load.failed}"
        + (f" ({dict(load.why)})" if load.failed else "")
        + f". Pool maximum {b.mb(max(pool, default=0)):.1f} MB (molt's samples) and "
        f"{b.mb(outside_max[0]):.1f} MB (/proc, between molt's samples) against "
        f"{b.mb(usable):.1f} MB usable."
    ]
    if exited is not None:
        notes.append(f"molt exited during the run with status {exited}; its log ends:\n{text[-3000:]}")
    b.report("Recycling under load (leaking Python app, small cap)", headers, rows, "recycle.csv", notes)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Recycle quality: a day of traffic compressed into minutes (a trough, a peak, a trough)
on an app that leaks and is slow on its first requests, under molt twice, side by side
and under the same load at the same time:

    before   molt as it was: MOLT_RECYCLE_HORIZON=off, no warm-up
    after    MOLT_RECYCLE_HORIZON (9 of the day's 24 "hours") and MOLT_WARMUP_PATH=/warm
             with MOLT_WARMUP_REQUESTS covering the app's slow first requests

The app is the cold-start fixture (test/fixtures/apps/coldstart): every request retains
LEAK_KB KiB for good, and each process's first 5 requests take 500 ms, later ones 50 ms.
Three workers under a per-worker cap; the load follows the day's curve (paced threads,
the same schedule for both). Reports for each side:

- requests and failed requests (the bar is zero; a failed request makes it exit non-zero);
- recycles, and how many fell in the peak (traffic above 70% of its highest) and in the
  troughs (below 30%), from molt's `at=recycle` lines timestamped as they are read;
- the p99 of requests sent within 1 s before to 2 s after each recycle against the p99
  of the rest (the steady state);
- the pool's memory maximum, as molt sampled it and as read from /proc every 250 ms,
  against the usable budget.

    test/bench/recycle_quality.py [--smoke]    # BENCH_DAY (seconds a day lasts), BENCH_DAYS
"""

import math
import os
import re
import sys
import threading
import time
import http.client

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

APP = os.path.join(b.ROOT, "test", "fixtures", "apps", "coldstart", "app.py")
DAY = float(os.environ.get("BENCH_DAY") or (12 if b.SMOKE else 240))
DAYS = float(os.environ.get("BENCH_DAYS") or (1 if b.SMOKE else 3))
# At the peak the three workers are two-thirds busy (50 ms a request), so the load spreads
# over all of them, and a worker reaches its cap about every day and a quarter.
PEAK_RATE = 40.0
THREADS = 8
LEAK_KB = 16
SLOW_REQUESTS = 5
SETTINGS = {
    "memory_limit": "400MB",
    "min_workers": 3,
    "max_workers": 3,
    "worker_memory": "48MB",
    "worker_concurrency": 1,
    "sample_interval": "500ms",
    "log": "debug",
    "mode": "pool",
}
APP_ENV = {"COLD_SLOW_REQUESTS": SLOW_REQUESTS, "COLD_SLOW_MS": 500, "COLD_FAST_MS": 50}
HORIZON_S = DAY * 9 / 24
SIDES = {
    "before": {"recycle_horizon": "off"},
    "after": {
        "recycle_horizon": f"{HORIZON_S:.0f}s",
        "warmup_path": "/warm",
        "warmup_requests": SLOW_REQUESTS,
    },
}
WINDOW_BEFORE, WINDOW_AFTER = 1.0, 2.0


def share(t):
    """Traffic at t seconds into the run, as a share of the peak: 10% at the start of a
    day, the peak at its middle."""
    return 0.55 - 0.45 * math.cos(2 * math.pi * t / DAY)


class DayLoad:
    """Paced GETs following the day's curve; every answer is kept as (sent, seconds, ok)."""

    def __init__(self, port, path, t0):
        self.port, self.path, self.t0 = port, path, t0
        self.samples = []
        self.why = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(THREADS)]

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(40)

    def _run(self, index):
        next_at = self.t0 + index / PEAK_RATE
        conn = None
        while not self._stop.is_set():
            rate = PEAK_RATE * share(next_at - self.t0)
            next_at += THREADS / rate
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            sent = time.monotonic()
            ok, why = False, None
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                why = None if ok else f"status {response.status}"
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as err:
                why = type(err).__name__
                conn.close()
                conn = None
            with self._lock:
                self.samples.append((sent, time.monotonic() - sent, ok))
                if why:
                    self.why[why] = self.why.get(why, 0) + 1


class StampedTail:
    """molt's log lines, stamped with time.monotonic() as they are read (every 20 ms)."""

    def __init__(self, path):
        self.path, self.lines = path, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        offset, partial = 0, ""
        while not self._stop.wait(0.02):
            try:
                with open(self.path, errors="replace") as f:
                    f.seek(offset)
                    data = f.read()
                    offset = f.tell()
            except OSError:
                continue
            *whole, partial = (partial + data).split("\n")
            now = time.monotonic()
            self.lines.extend((now, line) for line in whole)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


class PoolSampler:
    """The most the workers under molt held, read from /proc every 250 ms."""

    def __init__(self, pid):
        self.pid, self.most = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.25):
            try:
                self.most = max(self.most, b.tree_memory(self.pid) - b.pss_bytes(self.pid))
            except OSError:
                pass

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def p99(values):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[max(0, math.ceil(len(values) * 0.99) - 1)]


def field(line, key):
    m = re.search(rf"\b{re.escape(key)}=(\S+)", line)
    return m.group(1) if m else None


def summarize(name, load, tail, sampler, status, t0):
    recycles = [(t, l) for t, l in tail.lines if l.startswith("molt at=recycle ")]
    at_peak = sum(1 for t, _ in recycles if share(t - t0) > 0.7)
    in_trough = sum(1 for t, _ in recycles if share(t - t0) < 0.3)
    lull = sum(1 for _, l in recycles if field(l, "reason") == "lull")
    at_cap = sum(1 for _, l in recycles if field(l, "reason") == "memory")
    windows, steady = [], []
    for sent, seconds, ok in load.samples:
        if not ok:
            continue
        inside = any(t - WINDOW_BEFORE <= sent <= t + WINDOW_AFTER for t, _ in recycles)
        (windows if inside else steady).append(seconds * 1000)
    pool = [int(v) for _, l in tail.lines if "at=sample " in l and (v := field(l, "pool_bytes"))]
    failed = sum(1 for _, _, ok in load.samples if not ok)
    kills = sum(1 for _, l in tail.lines if l.startswith("molt at=kill "))
    steady_p99, window_p99 = p99(steady), p99(windows)
    return {
        "row": [
            name,
            len(load.samples),
            failed,
            len(recycles),
            f"{at_cap}/{lull}",
            at_peak,
            in_trough,
            kills,
            steady_p99,
            window_p99,
            b.ratio(window_p99, steady_p99),
            b.mb(max(pool, default=0)),
            b.mb(sampler.most),
            b.mb(status["usable"]),
        ],
        "failed": failed,
        "why": load.why,
        "over": max(max(pool, default=0), sampler.most) > status["usable"],
    }


def main():
    molt = b.molt_binary()
    work = b.temp_dir()
    print(
        f"recycle quality: a day of {DAY:.0f}s ({DAYS:g} days), {PEAK_RATE:.0f} requests/s at the "
        f"peak, {LEAK_KB} KiB leaked a request, cap {SETTINGS['worker_memory']}, 3 workers; "
        f"after: horizon {HORIZON_S:.0f}s, warm-up {SLOW_REQUESTS} GETs",
        flush=True,
    )
    sides = {}
    for name, extra in SIDES.items():
        log = os.path.join(work, f"molt-{name}.log")
        port = b.free_port()
        env = b.molt_env(port, work, **SETTINGS, **extra)
        env.update({k: str(v) for k, v in APP_ENV.items()})
        proc = b.start([molt, "run", "--", "python3", APP], env=env, log=log)

        def ready(env=env):
            status = b.molt_status(env)
            return status is not None and sum(w["state"] == "ready" for w in status["workers"]) >= 3

        b.wait_until(ready, 60, "3 ready workers", proc, log)
        b.wait_serving(port, proc=proc, log=log)
        sides[name] = {
            "proc": proc,
            "port": port,
            "status": b.molt_status(env),
            "tail": StampedTail(log),
            "sampler": PoolSampler(proc.pid),
        }
    t0 = time.monotonic()
    for side in sides.values():
        side["load"] = DayLoad(side["port"], f"/?kb={LEAK_KB}", t0).start()
    end = t0 + DAY * DAYS
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(30, left))
        done = time.monotonic() - t0
        print(
            f"  {done:.0f}s ({share(done) * 100:.0f}% of the peak): "
            + ", ".join(
                f"{n} {sum(1 for _, l in s['tail'].lines if l.startswith('molt at=recycle '))} recycles"
                for n, s in sides.items()
            ),
            flush=True,
        )
    results = {}
    for name, side in sides.items():
        side["load"].stop()
    for name, side in sides.items():
        time.sleep(0.1)
        side["tail"].stop()
        side["sampler"].stop()
        results[name] = summarize(name, side["load"], side["tail"], side["sampler"], side["status"], t0)
        b.stop(side["proc"])

    headers = [
        "molt",
        "requests",
        "failed",
        "recycles",
        "at cap/in lull",
        "at peak",
        "in troughs",
        "kills",
        "p99 steady ms",
        "p99 recycles ms",
        "ratio",
        "pool max MB (molt)",
        "pool max MB (/proc)",
        "usable MB",
    ]
    rows = [r["row"] for r in results.values()]
    notes = [
        "before: MOLT_RECYCLE_HORIZON=off, no warm-up; after: MOLT_RECYCLE_HORIZON="
        f"{HORIZON_S:.0f}s (9 of the day's 24 hours), MOLT_WARMUP_PATH=/warm, "
        f"MOLT_WARMUP_REQUESTS={SLOW_REQUESTS}. At peak: traffic above 70% of its highest; "
        "in troughs: below 30%. p99 recycles: requests sent from 1 s before to 2 s after a "
        "recycle; steady: the rest.",
    ]
    failed = {n: r for n, r in results.items() if r["failed"]}
    for n, r in failed.items():
        notes.append(f"{n}: {r['failed']} failed requests: {r['why']}")
    over = [n for n, r in results.items() if r["over"]]
    if over:
        notes.append(f"pool over the usable budget: {', '.join(over)}")
    b.report("Recycle quality (a compressed day, a leak, slow first requests)", headers, rows,
             "recycle_quality.csv", notes)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""glibc malloc arenas: the memory of a threaded worker after the same load, with molt's
default MALLOC_ARENA_MAX=2 and with MOLT_MALLOC_ARENA_MAX=off (glibc's own limit, 8 arenas
per CPU).

The worker is test/fixtures/apps/threaded-alloc/app.py (one thread per connection, each
request allocating 2 MiB in 1-8 KiB blocks and keeping one in 64 in a shared cache), behind
molt with one worker that takes THREADS requests at once. The same THREADS clients send the
same REQUESTS requests to each, on keep-alive connections; then the worker's PSS (its whole
tree, as molt measures it) is read. Rounds alternate (off, 2, off, 2, ...); the table gives
medians.

    test/bench/arena.py [--smoke]     # BENCH_ROUNDS, BENCH_REQUESTS, BENCH_THREADS override
"""

import http.client
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS") or (1 if b.SMOKE else 3))
THREADS = int(os.environ.get("BENCH_THREADS") or 16)
REQUESTS = int(os.environ.get("BENCH_REQUESTS") or (480 if b.SMOKE else 4800))
APP = os.path.join(b.ROOT, "test", "fixtures", "apps", "threaded-alloc", "app.py")
# Memory settles for this long after the load before it is read.
SETTLE = 0.5 if b.SMOKE else 2.0


def load(port):
    """THREADS clients, REQUESTS requests in all; returns how many failed."""
    failed = [0] * THREADS

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(REQUESTS // THREADS):
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failed[i] += 1
            except (OSError, http.client.HTTPException):
                failed[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(failed)


def run(molt, work, arena, i):
    port = b.free_port()
    proc, _env = b.start_molt(
        molt,
        port,
        work,
        ["python3", APP],
        os.path.join(work, f"molt-{arena}-{i}.log"),
        min_workers=1,
        max_workers=1,
        worker_concurrency=THREADS,
        malloc_arena_max=arena,
    )
    started = time.monotonic()
    failed = load(port)
    rps = REQUESTS // THREADS * THREADS / (time.monotonic() - started)
    time.sleep(SETTLE)
    workers = [p for p in b.tree(proc.pid) if p != proc.pid]
    pss = sum(b.pss_bytes(p) for p in workers)
    rss = sum(b.rss_bytes(p) for p in workers)
    b.stop(proc)
    return pss, rss, rps, failed


def main():
    b.need("python3")
    molt = b.molt_binary()
    work = b.temp_dir()
    results = {"off": [], "2": []}
    for i in range(ROUNDS):
        for arena in results:
            pss, rss, rps, failed = run(molt, work, arena, i)
            results[arena].append((pss, rss, rps, failed))
            print(
                f"  round {i + 1}/{ROUNDS} MALLOC_ARENA_MAX {arena:<3} worker PSS "
                f"{b.mb(pss):.1f} MB RSS {b.mb(rss):.1f} MB; {rps:.0f} req/s; failed {failed}",
                flush=True,
            )
    headers = [
        "MOLT_MALLOC_ARENA_MAX",
        "worker PSS MB",
        "worker RSS MB",
        "req/s",
        "requests",
        "failed",
        "rounds",
    ]
    rows = []
    for arena, label in (("off", "off (glibc: 8 per CPU)"), ("2", "2 (default)")):
        runs = results[arena]
        rows.append(
            [
                label,
                b.mb(b.median([r[0] for r in runs])),
                b.mb(b.median([r[1] for r in runs])),
                b.median([r[2] for r in runs]),
                REQUESTS // THREADS * THREADS,
                sum(r[3] for r in runs),
                ROUNDS,
            ]
        )
    b.report(
        f"glibc arenas: a threaded worker after {REQUESTS} requests from {THREADS} threads",
        headers,
        rows,
        "arena.csv",
        notes=[
            f"PSS with 2 arenas is {b.ratio(rows[1][1], rows[0][1]):.2f}x the PSS with glibc's "
            f"own limit, after the same requests ({os.cpu_count()} CPUs here)."
        ],
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Start-up and scale-up latency.

1. Exec to $PORT accepting: the time from starting `molt run` to the first TCP connection
   its public port accepts (molt binds before any worker is ready), over many runs, beside
   the same time for the Node upstream started on its own; runs alternate.
2. Burst to the first request served by a newly spawned worker, minus that worker's own
   boot time (molt's `boot_ms`): with one worker busy on a long request, a second request
   must queue, molt scales up, and the request is served by the new worker. What is left
   after the boot time is molt's reaction: noticing the queue, deciding, spawning,
   detecting readiness and dispatching.

    test/bench/startup.py [--smoke]     # BENCH_RUNS overrides the number of runs
"""

import os
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS") or (3 if b.SMOKE else 40))
SCALE_RUNS = max(2, RUNS // 3) if not b.SMOKE else 2


def time_to_accept(argv, env, port, logfile, timeout=10.0):
    """Seconds from exec to the port's first accepted connection."""
    start = time.perf_counter()
    proc = b.start(argv, env=env, log=logfile)
    deadline = start + timeout
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.connect(("127.0.0.1", port))
            elapsed = time.perf_counter() - start
            break
        except OSError:
            if time.perf_counter() > deadline or proc.poll() is not None:
                b.stop(proc)
                raise SystemExit(f"bench: {argv[0]} never accepted on port {port}")
            time.sleep(0.0002)
        finally:
            s.close()
    b.stop(proc)
    return elapsed


def exec_to_accept(molt, work):
    samples = {"molt": [], "node": []}
    for i in range(RUNS):
        port = b.free_port()
        env = b.molt_env(port, work)
        samples["molt"].append(
            time_to_accept([molt, "run", "--", "node", b.UPSTREAM_JS], env, port, os.path.join(work, "accept-molt.log"))
        )
        port = b.free_port()
        samples["node"].append(
            time_to_accept(["node", b.UPSTREAM_JS], {"PORT": str(port)}, port, os.path.join(work, "accept-node.log"))
        )
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{RUNS} runs", flush=True)
    headers = ["process", "runs", "median ms", "p90 ms", "min ms", "max ms"]
    rows = []
    for name, label in (("molt", "molt run (binds before its worker)"), ("node", "node upstream.js alone")):
        ms = sorted(v * 1000 for v in samples[name])
        rows.append([label, len(ms), b.median(ms), ms[int(0.9 * (len(ms) - 1))], ms[0], ms[-1]])
    b.report(
        "Exec to $PORT accepting",
        headers,
        rows,
        "startup-accept.csv",
        notes=[f"Target: $PORT accepting within 20 ms of exec; measured median {rows[0][2]:.2f} ms, p90 {rows[0][3]:.2f} ms."],
    )


def scale_up_once(molt, work, i):
    port = b.free_port()
    logfile = os.path.join(work, f"scale-{i}.log")
    proc, env = b.start_molt(
        molt,
        port,
        work,
        ["node", b.UPSTREAM_JS],
        logfile,
        ready_workers=1,
        min_workers=1,
        max_workers=2,
        worker_concurrency=1,
    )
    first_pid = b.http_get(port, "/pid")[1].decode()
    busy = threading.Thread(target=b.http_get, args=(port, "/sleep?ms=3000", 10.0))
    busy.start()
    b.wait_until(
        lambda: any(w["in_flight"] == 1 for w in (b.molt_status(env) or {"workers": []})["workers"]),
        10,
        "the first worker busy",
        proc,
        logfile,
    )
    start = time.perf_counter()
    status, body = b.http_get(port, "/pid", 10.0)
    served = time.perf_counter() - start
    busy.join()
    b.stop(proc)
    with open(logfile) as f:
        log = f.read()
    boots = [int(m) for m in re.findall(r"at=ready worker=2 .*?boot_ms=(\d+)", log)]
    if status != 200 or body.decode() == first_pid or not boots:
        raise SystemExit(f"bench: the queued request was not served by a new worker:\n{log}")
    return served * 1000, boots[0]


def burst_to_new_worker(molt, work):
    rows = []
    for i in range(SCALE_RUNS):
        served, boot = scale_up_once(molt, work, i)
        rows.append((served, boot, served - boot))
        print(f"  run {i + 1}/{SCALE_RUNS}: served after {served:.1f} ms, worker boot {boot} ms", flush=True)
    headers = ["runs", "burst to served ms (median)", "worker boot ms (median)", "molt's reaction ms (median)", "reaction max ms"]
    table = [[
        len(rows),
        b.median([r[0] for r in rows]),
        b.median([r[1] for r in rows]),
        b.median([r[2] for r in rows]),
        max(r[2] for r in rows),
    ]]
    b.report(
        "Burst to the first request served by a new worker (Node upstream, max 2 workers)",
        headers,
        table,
        "startup-scale.csv",
        notes=["Reaction = time from the queued request to its response, minus the new worker's boot_ms as molt logged it."],
    )


def main():
    b.need("node")
    molt = b.molt_binary()
    work = b.temp_dir()
    print(f"startup: {RUNS} exec-to-accept runs per process, {SCALE_RUNS} scale-up runs", flush=True)
    exec_to_accept(molt, work)
    burst_to_new_worker(molt, work)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Learned concurrency: what MOLT_WORKER_CONCURRENCY=auto (the default) gives each kind of
app, beside the app run bare and under molt with one request per worker (=1, the old
default).

Three fixtures, each with wrk on 20 keep-alive connections:

  io    Node (test/fixtures/apps/node) answering /sleep?ms=100 without blocking: one
        process serves all 20 clients at once.
  cpu   the same Node app on /spin?ms=10, which keeps its process busy: one process serves
        one request at a time, and more processes use more cores.
  one   Unicorn with one child (test/fixtures/apps/ruby-unicorn) on /sleep?ms=20: one
        request at a time per process.

Contenders: bare (the app alone, one process), molt auto, molt fixed 1. Each molt first
runs a warm-up of load, so that the auto limits have settled and the pools have grown; the
rounds then alternate (bare, auto, fixed, bare, ...) and the table gives the medians:
throughput, p99 latency, the workers molt started (warm-up included), and the memory of
the whole process tree (PSS, molt's own included) after the rounds, with throughput and
memory as ratios to bare.

    test/bench/concurrency.py [--smoke]   # BENCH_ROUNDS, BENCH_SECONDS, BENCH_WARMUP override
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS") or (1 if b.SMOKE else 3))
SECONDS = int(os.environ.get("BENCH_SECONDS") or (1 if b.SMOKE else 5))
WARMUP = int(os.environ.get("BENCH_WARMUP") or (2 if b.SMOKE else 15))
CONNECTIONS = 20

APPS = os.path.join(b.ROOT, "test", "fixtures", "apps")
NODE_DIR = os.path.join(APPS, "node")
UNICORN_DIR = os.path.join(APPS, "ruby-unicorn")

FIXTURES = [
    # name, directory, command (with $PORT left for molt or filled in for bare), path
    ("io", NODE_DIR, ["node", "server.js"], "/sleep?ms=100"),
    ("cpu", NODE_DIR, ["node", "server.js"], "/spin?ms=10"),
    ("one", UNICORN_DIR, ["unicorn", "-c", "config/unicorn.rb"], "/sleep?ms=20"),
]


def start_bare(directory, command, port, log):
    # One process, as molt's workers are told with WEB_CONCURRENCY=1.
    proc = b.start(command, env={"PORT": str(port), "WEB_CONCURRENCY": "1"}, log=log, cwd=directory)
    b.wait_serving(port, proc=proc, log=log)
    return proc


def start_molt(molt, directory, command, port, work, log, **settings):
    env = b.molt_env(port, work, **settings)
    proc = b.start([molt, "run", "--", *command], env=env, log=log, cwd=directory)

    def ready():
        status = b.molt_status(env)
        return status is not None and any(w["state"] == "ready" for w in status["workers"])

    b.wait_until(ready, 60, "a ready worker", proc, log)
    b.wait_serving(port, proc=proc, log=log)
    return proc


def spawned(log):
    with open(log, errors="replace") as f:
        return sum(" at=spawn " in line for line in f)


def limits(env):
    status = b.molt_status(env) or {"workers": []}
    return [w.get("limit") for w in status["workers"] if w["state"] == "ready"]


def bench_fixture(molt, work, name, directory, command, path):
    logs = {c: os.path.join(work, f"{name}-{c}.log") for c in ("bare", "auto", "fixed")}
    ports = {c: b.free_port() for c in logs}
    procs = {
        "bare": start_bare(directory, command, ports["bare"], logs["bare"]),
        "auto": start_molt(molt, directory, command, ports["auto"], work, logs["auto"]),
        "fixed": start_molt(
            molt, directory, command, ports["fixed"], work, logs["fixed"], worker_concurrency=1
        ),
    }
    envs = {c: b.molt_env(ports[c], work) for c in ("auto", "fixed")}
    for contender in ("auto", "fixed"):
        b.wrk(ports[contender], CONNECTIONS, WARMUP, path=path)
    results = {c: [] for c in logs}
    memory = {c: [] for c in logs}
    for i in range(ROUNDS):
        for contender in ("bare", "auto", "fixed"):
            r = b.wrk(ports[contender], CONNECTIONS, SECONDS, path=path)
            results[contender].append(r)
            memory[contender].append(b.tree_memory(procs[contender].pid))
            print(
                f"  {name} round {i + 1}/{ROUNDS} {contender:<6} {r['rps']:>8.1f} req/s  "
                f"p99 {r['p99_ms']:.1f} ms  errors {r['errors']}",
                flush=True,
            )
    learned = limits(envs["auto"])
    rows = []
    bare_rps = b.median([r["rps"] for r in results["bare"]])
    bare_mem = b.median(memory["bare"])
    for contender in ("bare", "auto", "fixed"):
        s = b.summarize(results[contender])
        mem = b.median(memory[contender])
        rows.append(
            [
                name,
                {"bare": "bare", "auto": "molt auto", "fixed": "molt fixed 1"}[contender],
                s["rps"],
                b.ratio(s["rps"], bare_rps),
                s["p99_ms"],
                1 if contender == "bare" else spawned(logs[contender]),
                b.mb(mem),
                b.ratio(mem, bare_mem),
                s["errors"],
            ]
        )
    for proc in procs.values():
        b.stop(proc)
    return rows, learned


def main():
    b.need("wrk", "node", "unicorn")
    molt = b.molt_binary()
    b.raise_nofile()
    work = b.temp_dir()
    # The fixtures' directories are the apps' roots; molt finds no molt.toml there.
    for directory in (NODE_DIR, UNICORN_DIR):
        if not os.path.isdir(directory):
            raise SystemExit(f"bench: missing {directory}")
    print(
        f"learned concurrency: wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, {ROUNDS} rounds after "
        f"{WARMUP}s of warm-up, contenders alternating",
        flush=True,
    )
    rows, notes = [], []
    for name, directory, command, path in FIXTURES:
        fixture_rows, learned = bench_fixture(molt, work, name, directory, command, path)
        rows += fixture_rows
        notes.append(f"`{name}` ({path}): molt auto's limits at the end: {learned}")
    headers = [
        "fixture",
        "contender",
        "req/s (median)",
        "vs bare",
        "p99 ms",
        "workers started",
        "memory MB (PSS)",
        "memory vs bare",
        "errors",
    ]
    b.report(
        "Learned concurrency: bare, molt auto, molt fixed 1",
        headers,
        rows,
        "concurrency.csv",
        notes=notes,
    )


if __name__ == "__main__":
    main()

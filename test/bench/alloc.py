#!/usr/bin/env python3
"""The allocator for the static musl release build, chosen by numbers: the proxy benchmark
(test/bench/proxy.py's setup: a Node upstream, one worker, MOLT_WORKER_CONCURRENCY=0) run
through molt built four ways, alternating:

  glibc            cargo build --release (dynamic, glibc's malloc)
  musl             cargo build --release --target x86_64-unknown-linux-musl (musl's malloc)
  musl+mimalloc    the same with --features mimalloc
  glibc+mimalloc   for reference (full runs only)

Besides throughput and latency it reports each binary's RSS idle and after the load, since
an allocator that is fast but keeps memory would cost the pool its budget.

The musl target comes from `rustup target add x86_64-unknown-linux-musl`; mimalloc's C code
for musl needs musl-gcc (Debian's musl-tools). A contender that cannot be built is reported
as such, not silently dropped.

A binary that builds but cannot serve is a failure of molt, not of the benchmark: it is
reported in the table and the command exits 1.

    test/bench/alloc.py [--smoke]     # BENCH_ROUNDS, BENCH_SECONDS, BENCH_CONNECTIONS override;
                                      # BENCH_SRC=DIR builds another checkout of molt
"""

import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS") or (1 if b.SMOKE else 10))
SECONDS = int(os.environ.get("BENCH_SECONDS") or (1 if b.SMOKE else 5))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS") or 50)
MUSL = "x86_64-unknown-linux-musl"
SRC = os.path.abspath(os.environ.get("BENCH_SRC") or b.ROOT)

VARIANTS = [
    ("glibc", None, []),
    ("musl", MUSL, []),
    ("musl+mimalloc", MUSL, ["--features", "mimalloc"]),
]
if not b.SMOKE:
    VARIANTS.append(("glibc+mimalloc", None, ["--features", "mimalloc"]))


def have_musl_target():
    installed = subprocess.run(
        ["rustup", "target", "list", "--installed"], capture_output=True, text=True
    )
    if installed.returncode == 0 and MUSL in installed.stdout.split():
        return None
    added = subprocess.run(["rustup", "target", "add", MUSL], capture_output=True, text=True)
    if added.returncode != 0:
        return f"`rustup target add {MUSL}` failed: {added.stderr.strip()[-200:]}"
    return None


def build(name, target, flags, dest):
    """Builds one variant and copies the binary to dest; returns an error text or None."""
    cmd = ["cargo", "build", "--release", "--locked", "--quiet", *flags]
    if target:
        cmd += ["--target", target]
    env = dict(os.environ)
    if target == MUSL and shutil.which("musl-gcc"):
        # The C part of mimalloc must be compiled against musl, not glibc's headers.
        env.setdefault("CC_x86_64_unknown_linux_musl", "musl-gcc")
    print(f"  building {name}: {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, cwd=SRC, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return f"build failed: {done.stderr.strip()[-300:]}"
    out = os.path.join(SRC, "target", target or "", "release", "molt")
    shutil.copy2(out, dest)
    return None


def main():
    b.need("wrk", "node", "cargo")
    b.raise_nofile()
    work = b.temp_dir()
    bins = os.path.join(b.OUT, "alloc")
    os.makedirs(bins, exist_ok=True)

    musl_problem = have_musl_target()
    built, problems = [], {}
    for name, target, flags in VARIANTS:
        dest = os.path.join(bins, f"molt-{name}")
        problem = musl_problem if target == MUSL and musl_problem else None
        problem = problem or build(name, target, flags, dest)
        if problem:
            problems[name] = problem
            print(f"  {name}: {problem}", flush=True)
        else:
            built.append((name, dest))

    contenders, procs, broken = [], {}, []
    for name, path in built:
        port = b.free_port()
        logfile = os.path.join(work, f"molt-{name}.log")
        try:
            proc, _env = b.start_molt(
                path,
                port,
                work,
                ["node", b.UPSTREAM_JS],
                logfile,
                min_workers=1,
                max_workers=1,
                worker_concurrency=0,
            )
        except SystemExit:
            with open(logfile, errors="replace") as f:
                said = [l for l in f.read().splitlines() if l.startswith("molt:")]
            problems[name] = "does not serve: " + (said[-1] if said else "no error printed")
            print(f"  {name}: {problems[name]}", flush=True)
            broken.append(name)
            continue
        contenders.append((name, port))
        procs[name] = proc
    time.sleep(1)
    idle = {name: b.rss_bytes(proc.pid) for name, proc in procs.items()}

    print(
        f"allocators: wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, {ROUNDS} rounds, contenders alternating",
        flush=True,
    )
    runs = b.alternate(contenders, ROUNDS, SECONDS, CONNECTIONS)
    after = {name: b.rss_bytes(proc.pid) for name, proc in procs.items()}
    s = {name: b.summarize(r) for name, r in runs.items()}

    headers = [
        "build",
        "req/s (median)",
        "p50 ms",
        "p99 ms",
        "req/s vs glibc",
        "p99 vs glibc",
        "RSS idle MB",
        "RSS after load MB",
        "binary MB",
        "errors",
    ]
    base = s.get("glibc")
    rows = []
    for name, target, _flags in VARIANTS:
        if name in problems:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", "-", problems[name]])
            continue
        r = s[name]
        rows.append(
            [
                name,
                r["rps"],
                r["p50_ms"],
                r["p99_ms"],
                b.ratio(r["rps"], base["rps"]) if base else float("nan"),
                b.ratio(r["p99_ms"], base["p99_ms"]) if base else float("nan"),
                b.mb(idle[name]),
                b.mb(after[name]),
                b.mb(os.path.getsize(os.path.join(bins, f"molt-{name}"))),
                r["errors"],
            ]
        )
    notes = []
    if "musl" in s and "musl+mimalloc" in s:
        notes.append(
            f"musl+mimalloc / musl: throughput {b.ratio(s['musl+mimalloc']['rps'], s['musl']['rps']):.2f}, "
            f"p99 {b.ratio(s['musl+mimalloc']['p99_ms'], s['musl']['p99_ms']):.2f}."
        )
    b.report("Allocator for the static musl build (proxy benchmark through molt)", headers, rows, "alloc.csv", notes)
    if broken:
        raise SystemExit(f"alloc: built but not serving: {', '.join(broken)}")


if __name__ == "__main__":
    main()

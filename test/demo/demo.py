#!/usr/bin/env python3
"""The leak demo's run, after test/demo/run.sh has built the app with the buildpack.

Boots the built app twice, side by side on loopback:

  with molt      as a dyno boots its web process: HOME at the app, .profile.d/*.sh sourced,
                 the (rewritten) Procfile web line run with bash -c, PORT set, and the
                 memory budget as a config var (MOLT_MEMORY_LIMIT);
  without molt   the same app's own command, `python3 app.py`, on a port of its own.

Both get the same load, the same number of requests a second from the same kind of client,
for DEMO_SECONDS. Every half second the memory of each side is read from outside, as the
platform would see it: the PSS of every process in the dyno's tree (molt and its workers),
and the PSS of the bare app. molt's own view (`molt status --json` over its control socket)
is recorded beside it.

Then it prints a table, writes the samples as CSV and plots memory over time, both lines
against the budget, to DEMO_OUT (target/demo): memory.csv, memory.svg, memory.png, and
the dyno's log (molt's event lines) as dyno.log.
Exits 1 if the story did not hold: a failed request or the budget crossed under molt.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "test", "bench"))
import benchlib as b  # noqa: E402
from loadgen import Load  # noqa: E402

SECONDS = int(os.environ.get("DEMO_SECONDS") or 60)
RATE = float(os.environ.get("DEMO_RATE") or 64)
PAGE_KB = int(os.environ.get("DEMO_PAGE_KB") or 256)
OUT = os.environ.get("DEMO_OUT") or os.path.join(ROOT, "target", "demo")
SAMPLE_EVERY = 0.5
CLIENTS = 8

# What a dyno does before it runs a process (test/integration/buildpack.rs, DYNO_BOOT).
DYNO_BOOT = """cd "$HOME" || exit 1
for f in "$HOME"/.profile.d/*.sh; do [ -r "$f" ] && . "$f"; done
exec bash -c "$DYNO_COMMAND"
"""


def procfile_web(app):
    with open(os.path.join(app, "Procfile")) as f:
        for line in reversed(f.read().splitlines()):
            name, sep, command = line.rstrip("\r").partition(":")
            if sep and name.strip() == "web":
                return command.lstrip()
    raise SystemExit("demo: the built app's Procfile has no web line")


def log_count(path, *needles):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return 0
    return sum(text.count(n) for n in needles)


def matplotlib_python():
    """A Python that can import matplotlib: this one, else Debian's (python3-matplotlib)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and subprocess.run(
            [candidate, "-c", "import matplotlib"], capture_output=True
        ).returncode == 0:
            return candidate
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True, help="the app built by the buildpack")
    parser.add_argument("--budget", required=True, help="MOLT_MEMORY_LIMIT, e.g. 512MB")
    args = parser.parse_args()
    app = os.path.abspath(args.app)
    work = b.temp_dir("molt-demo-run-")
    os.makedirs(OUT, exist_ok=True)

    # With molt: the dyno.
    dyno_port = b.free_port()
    dyno_log = os.path.join(work, "dyno.log")
    dyno_env = {
        "HOME": app,
        "DYNO": "web.1",
        "PORT": str(dyno_port),
        "DYNO_COMMAND": procfile_web(app),
        "MOLT_MEMORY_LIMIT": args.budget,
        "MOLT_CONTROL_SOCKET": os.path.join(work, "molt.sock"),
        "PAGE_KB": str(PAGE_KB),
    }
    dyno = b.start(["bash", "-c", DYNO_BOOT], env=dyno_env, log=dyno_log, cwd=app, inherit=False)

    # Without molt: the app's own command on its own port.
    bare_port = b.free_port()
    bare_log = os.path.join(work, "bare.log")
    bare = b.start(
        ["python3", "app.py"],
        env={"HOME": app, "PORT": str(bare_port), "PAGE_KB": str(PAGE_KB)},
        log=bare_log,
        cwd=app,
        inherit=False,
    )

    b.wait_serving(dyno_port, 60, dyno, dyno_log)
    b.wait_serving(bare_port, 60, bare, bare_log)
    b.wait_until(lambda: b.molt_status(dyno_env) is not None, 10, "molt status", dyno, dyno_log)
    status = b.molt_status(dyno_env)
    budget, usable = status["budget"], status["usable"]
    print(
        f"with molt:    dyno on port {dyno_port}: {dyno_env['DYNO_COMMAND']}\n"
        f"              budget {b.mb(budget):.0f} MB, usable by the pool {b.mb(usable):.1f} MB, "
        f"worker soft cap {b.mb(status['soft_cap']):.1f} MB (derived by molt)\n"
        f"without molt: python3 app.py on port {bare_port}\n"
        f"load:         {RATE:g} requests/s to each side for {SECONDS}s, each request keeps a "
        f"{PAGE_KB} KiB page ({RATE * PAGE_KB / 1024:.0f} MB/s)",
        flush=True,
    )

    samples = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample():
        now = time.monotonic() - t0
        s = b.molt_status(dyno_env) or {}
        samples.append(
            {
                "t": round(now, 2),
                "without_molt": b.tree_memory(bare.pid),
                "with_molt": b.tree_memory(dyno.pid),
                "molt_pool": s.get("pool_memory", ""),
                "molt_rss": s.get("molt_rss", ""),
                "workers": len(s.get("workers", [])),
                "recycles": log_count(dyno_log, "at=recycle ", "at=kill "),
            }
        )

    def sampler():
        while not stop.is_set():
            sample()
            stop.wait(SAMPLE_EVERY)

    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    loads = {
        "with_molt": Load(dyno_port, "/", CLIENTS, rate=RATE).start(),
        "without_molt": Load(bare_port, "/", CLIENTS, rate=RATE).start(),
    }
    next_report = 10
    while time.monotonic() - t0 < SECONDS:
        time.sleep(0.2)
        if time.monotonic() - t0 >= next_report and samples:
            last = samples[-1]
            print(
                f"  {next_report:>3}s  without molt {b.mb(last['without_molt']):6.0f} MB   "
                f"with molt {b.mb(last['with_molt']):5.0f} MB ({last['workers']} workers, "
                f"{last['recycles']} recycles)",
                flush=True,
            )
            next_report += 10
    for load in loads.values():
        load.stop()
    stop.set()
    sampling.join()
    sample()
    molt_alive = dyno.poll() is None
    b.stop(dyno)
    b.stop(bare)

    # molt's log (the dyno's output) is kept beside the results.
    with open(dyno_log, "rb") as src, open(os.path.join(OUT, "dyno.log"), "wb") as dst:
        dst.write(src.read())

    # The table.
    recycles = log_count(dyno_log, "at=recycle ")
    kills = log_count(dyno_log, "at=kill ")
    sides = ("without_molt", "with_molt")
    peak = {k: max(s[k] for s in samples) for k in sides}
    final = {k: samples[-1][k] for k in sides}
    crossed = {
        k: next((s["t"] for s in samples if s[k] > budget), None) for k in sides
    }
    headers = ["", "without molt (python3 app.py)", "with molt (the dyno: molt + workers)"]
    rows = [
        ["requests", loads["without_molt"].ok + loads["without_molt"].failed, loads["with_molt"].ok + loads["with_molt"].failed],
        ["failed requests", loads["without_molt"].failed, loads["with_molt"].failed],
        ["recycles (hard kills)", "-", f"{recycles} ({kills})"],
        ["peak memory MB", b.mb(peak["without_molt"]), b.mb(peak["with_molt"])],
        ["final memory MB", b.mb(final["without_molt"]), b.mb(final["with_molt"])],
        [
            f"over the {b.mb(budget):.0f} MB budget",
            f"from {crossed['without_molt']:.0f}s on" if crossed["without_molt"] is not None else "never",
            f"from {crossed['with_molt']:.0f}s on" if crossed["with_molt"] is not None else "never",
        ],
    ]
    print(f"\n## The leak demo: {SECONDS}s, {RATE:g} requests/s to each side, {PAGE_KB} KiB kept per request\n")
    print(f"_{b.machine_line(mode=False)}_\n")
    print(b.table(headers, rows))
    for name, load in loads.items():
        if load.failed:
            print(f"\n{name.replace('_', ' ')}: failures {dict(load.why)}")

    csv_path = os.path.join(OUT, "memory.csv")
    fields = ["t", "without_molt", "with_molt", "molt_pool", "molt_rss", "workers", "recycles"]
    with open(csv_path, "w") as f:
        f.write(",".join(fields) + "\n")
        for s in samples:
            f.write(",".join(str(s[k]) for k in fields) + "\n")
    meta_path = os.path.join(OUT, "memory.json")
    with open(meta_path, "w") as f:
        json.dump(
            {
                "budget": budget,
                "usable": usable,
                "seconds": SECONDS,
                "rate": RATE,
                "page_kb": PAGE_KB,
                "machine": b.machine_line(mode=False),
            },
            f,
        )

    problems = []
    if loads["with_molt"].failed:
        problems.append(f"{loads['with_molt'].failed} requests failed under molt")
    if peak["with_molt"] > budget:
        problems.append("the dyno went over the budget under molt")
    if not molt_alive:
        problems.append(f"molt exited during the run; its log ends:\n{open(dyno_log, errors='replace').read()[-2000:]}")
    if crossed["without_molt"] is None:
        print(f"\nnote: without molt the app stayed under the budget; raise DEMO_SECONDS or DEMO_RATE to see it cross.")

    python = matplotlib_python()
    if python is None:
        problems.append("no plot: matplotlib is missing (Debian: apt-get install python3-matplotlib)")
    else:
        subprocess.run(
            [python, os.path.join(HERE, "plot.py"), csv_path, meta_path, os.path.join(OUT, "memory")],
            check=True,
        )
        print(f"\nPlot: {os.path.relpath(os.path.join(OUT, 'memory.svg'), ROOT)} (and .png); samples: {os.path.relpath(csv_path, ROOT)}")

    if problems:
        print("\ndemo: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

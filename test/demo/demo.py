#!/usr/bin/env python3
"""The leak demo's run, after test/demo/run.sh has built the app with the buildpack.

The app (test/demo/app) is a Rack app on Unicorn with 2 workers and preload_app true that
keeps every page it renders. It is booted twice, side by side on loopback, each as a dyno
boots its web process (HOME at the app, the Procfile's web line run with bash -c, PORT and
the config vars set, RACK_ENV=production as Heroku's Ruby buildpack sets it):

  without molt   the app's own web line, `unicorn -c config/unicorn.rb`: a master and its
                 2 workers;
  with molt      the web line the buildpack rewrote (`molt run -- '...'`), with
                 .profile.d/*.sh sourced, the budget as a config var (MOLT_MEMORY_LIMIT)
                 and MOLT_MIN_WORKERS=2. molt starts the command once, sees a preforking
                 Unicorn master (its log says `at=mode mode=prefork ... server=unicorn`)
                 and governs the master's children one by one; its caps are derived from
                 the budget alone.

Where the machine allows it (root, and a cgroup v2 hierarchy with the memory controller),
each side runs in a memory cgroup of its own limited to the budget with no swap, as a
dyno is: Unicorn alone then meets the kernel's OOM killer, and memory.events counts its
kills. Elsewhere a line says why not, and the budget is molt's setting only.

Both sides idle for a few seconds (their idle memory), then get the same load, the same
requests a second from the same kind of client, for DEMO_SECONDS. Every half second the
memory of each side is read from outside, as the platform would see it: the PSS of every
process in its tree (for the dyno: molt, the master and its children), and with cgroups
what the kernel charges to each cgroup. molt's own view (`molt status --json` over its
control socket) is recorded beside it.

Then it prints a table, writes the samples as CSV and plots memory over time, both lines
against the budget, to DEMO_OUT (target/demo): memory.csv, memory.json, memory.svg,
memory.png, and each side's log (unicorn.log, dyno.log with molt's event lines).
Exits 1 if the story did not hold: a failed request, an OOM kill or the budget crossed
under molt, or molt not in prefork mode with 2 children.
"""

import argparse
import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "test", "bench"))
import benchlib as b  # noqa: E402
from loadgen import Load  # noqa: E402

from cgroup import Cgroups, Unavailable  # noqa: E402

SECONDS = int(os.environ.get("DEMO_SECONDS") or 60)
RATE = float(os.environ.get("DEMO_RATE") or 64)
PAGE_KB = int(os.environ.get("DEMO_PAGE_KB") or 256)
OUT = os.environ.get("DEMO_OUT") or os.path.join(ROOT, "target", "demo")
# The children molt keeps, as the app's owner ran 2 Unicorn workers per dyno.
WORKERS = 2
IDLE_SECONDS = 5
SAMPLE_EVERY = 0.5
CLIENTS = 8

# What a dyno does before it runs a process (test/integration/buildpack.rs, DYNO_BOOT).
DYNO_BOOT = """cd "$HOME" || exit 1
for f in "$HOME"/.profile.d/*.sh; do [ -r "$f" ] && . "$f"; done
exec bash -c "$DYNO_COMMAND"
"""

SIDES = ("unicorn", "molt")
LABELS = {
    "unicorn": f"without molt (unicorn, {WORKERS} workers)",
    "molt": f"with molt (molt + unicorn, {WORKERS} children)",
}


def procfile_web(path):
    with open(path) as f:
        for line in reversed(f.read().splitlines()):
            name, sep, command = line.rstrip("\r").partition(":")
            if sep and name.strip() == "web":
                return command.lstrip()
    raise SystemExit(f"demo: {path} has no web line")


def parse_size(text):
    """A size as molt reads one: binary units, so 512MB is 512 MiB."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise SystemExit(f"demo: cannot read the budget {text!r} (e.g. 512MB)")
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * (1 << (10 * power)))


def log_count(path, *needles):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return 0
    return sum(text.count(n) for n in needles)


def log_line(path, needle):
    try:
        with open(path, errors="replace") as f:
            return next((l.rstrip("\n") for l in f if needle in l), None)
    except OSError:
        return None


def matplotlib_python():
    """A Python that can import matplotlib: this one, else Debian's (python3-matplotlib)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and subprocess.run(
            [candidate, "-c", "import matplotlib"], capture_output=True
        ).returncode == 0:
            return candidate
    return None


def children(pid):
    """The processes whose parent is pid: a Unicorn master's workers."""
    return [p for p in b.tree(pid) if p != pid]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True, help="the app built by the buildpack")
    parser.add_argument("--budget", required=True, help="MOLT_MEMORY_LIMIT, e.g. 512MB")
    parser.add_argument("--cgroup-note", help="a file to name the cgroups in while they exist")
    args = parser.parse_args()
    app = os.path.abspath(args.app)
    budget = parse_size(args.budget)
    work = b.temp_dir("molt-demo-run-")
    os.makedirs(OUT, exist_ok=True)

    # The cgroups go before any process starts, and are removed at exit, whatever happens
    # (benchlib turns SIGTERM and SIGINT into an exit, so this runs then too).
    try:
        cgroups = Cgroups.create(budget, SIDES, f"molt-demo-{os.getpid()}")
    except Unavailable as why:
        cgroups = None
        print(
            f"cgroup:       none: {why}.\n"
            f"              The {args.budget} budget is molt's setting only; nothing stops "
            f"Unicorn alone at {args.budget}.",
            flush=True,
        )
    else:
        if args.cgroup_note:
            with open(args.cgroup_note, "w") as f:
                f.write(cgroups.parent)
        atexit.register(cgroups.remove)
        print(
            f"cgroup:       each side in its own, memory.max {args.budget} and no swap: "
            f"{cgroups.path('unicorn')}, {cgroups.path('molt')}",
            flush=True,
        )

    def inside(side, argv):
        return cgroups.enter(side, argv) if cgroups else argv

    # Config vars both dynos have. Heroku's Ruby buildpack sets RACK_ENV=production.
    config_vars = {"HOME": app, "RACK_ENV": "production", "PAGE_KB": str(PAGE_KB)}

    # Without molt: the app's own web line.
    plain_command = procfile_web(os.path.join(HERE, "app", "Procfile"))
    plain_port = b.free_port()
    plain_log = os.path.join(work, "unicorn.log")
    plain = b.start(
        inside("unicorn", ["bash", "-c", plain_command]),
        env={**config_vars, "DYNO": "web.1", "PORT": str(plain_port)},
        log=plain_log,
        cwd=app,
        inherit=False,
    )

    # With molt: the dyno, booted from the Procfile the buildpack rewrote.
    dyno_port = b.free_port()
    dyno_log = os.path.join(work, "dyno.log")
    dyno_env = {
        **config_vars,
        "DYNO": "web.1",
        "PORT": str(dyno_port),
        "DYNO_COMMAND": procfile_web(os.path.join(app, "Procfile")),
        "MOLT_MEMORY_LIMIT": args.budget,
        "MOLT_MIN_WORKERS": str(WORKERS),
        "MOLT_CONTROL_SOCKET": os.path.join(work, "molt.sock"),
    }
    dyno = b.start(inside("molt", ["bash", "-c", DYNO_BOOT]), env=dyno_env, log=dyno_log, cwd=app, inherit=False)

    b.wait_serving(plain_port, 60, plain, plain_log)
    b.wait_serving(dyno_port, 60, dyno, dyno_log)
    b.wait_until(lambda: len(children(plain.pid)) >= WORKERS, 30, f"{WORKERS} Unicorn workers", plain, plain_log)

    # molt decides the mode by itself, from the tree of its first instance.
    b.wait_until(lambda: log_line(dyno_log, "at=mode ") is not None, 30, "molt's mode line", dyno, dyno_log)
    mode_line = log_line(dyno_log, "at=mode ")
    if "mode=prefork" not in mode_line or "server=unicorn" not in mode_line:
        raise SystemExit(f"demo: molt did not choose prefork mode for Unicorn by itself:\n  {mode_line}")

    def molt_children(status):
        return [w for w in status.get("workers", []) if w["role"] == "child"]

    def settled():
        s = b.molt_status(dyno_env)
        return s is not None and len(molt_children(s)) == WORKERS and all(
            w["memory"] is not None for w in molt_children(s)
        )

    b.wait_until(settled, 30, f"molt with {WORKERS} measured children", dyno, dyno_log)
    status = b.molt_status(dyno_env)
    usable = status["usable"]
    print(
        f"without molt: {plain_command} on port {plain_port}\n"
        f"with molt:    dyno on port {dyno_port}: {dyno_env['DYNO_COMMAND']}\n"
        f"              {mode_line}\n"
        f"              budget {b.mb(status['budget']):.0f} MB, usable by the pool {b.mb(usable):.1f} MB, "
        f"child soft cap {b.mb(status['soft_cap']):.1f} MB, hard cap {b.mb(status['hard_cap']):.1f} MB, "
        f"children {status['min_workers']} to {status['max_workers']} (derived by molt from the budget; "
        f"MOLT_MIN_WORKERS={WORKERS})\n"
        f"load:         {RATE:g} requests/s to each side for {SECONDS}s after {IDLE_SECONDS}s idle, each "
        f"request keeps a {PAGE_KB} KiB page ({RATE * PAGE_KB / 1024:.0f} MB/s)",
        flush=True,
    )

    samples = []
    stop = threading.Event()
    # Time 0 is the start of the load; the idle samples come before it.
    t0 = time.monotonic() + IDLE_SECONDS

    def sample():
        s = b.molt_status(dyno_env) or {}
        row = {
            "t": round(time.monotonic() - t0, 2),
            "unicorn": b.tree_memory(plain.pid),
            "molt": b.tree_memory(dyno.pid),
            "unicorn_cgroup": cgroups.current("unicorn") if cgroups else "",
            "molt_cgroup": cgroups.current("molt") if cgroups else "",
            "unicorn_oom_kills": cgroups.oom_kills("unicorn") if cgroups else 0,
            "molt_oom_kills": cgroups.oom_kills("molt") if cgroups else 0,
            "molt_pool": s.get("pool_memory", ""),
            "molt_rss": s.get("molt_rss", ""),
            "children": len(molt_children(s)) if s else "",
            "desired": s.get("desired", ""),
            "recycles": log_count(dyno_log, "at=recycle ", "at=kill "),
        }
        samples.append(row)
        return row

    def sampler():
        while not stop.is_set():
            sample()
            stop.wait(SAMPLE_EVERY)

    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    time.sleep(max(0.0, t0 - time.monotonic()))
    idle = {k: b.median([s[k] for s in samples if s["t"] < 0]) for k in SIDES}
    print(
        f"  idle  without molt {b.mb(idle['unicorn']):6.1f} MB   with molt {b.mb(idle['molt']):5.1f} MB",
        flush=True,
    )
    loads = {
        "unicorn": Load(plain_port, "/", CLIENTS, rate=RATE).start(),
        "molt": Load(dyno_port, "/", CLIENTS, rate=RATE).start(),
    }
    next_report = 10
    while time.monotonic() - t0 < SECONDS:
        time.sleep(0.2)
        if time.monotonic() - t0 >= next_report and samples:
            last = samples[-1]
            ooms = f" ({last['unicorn_oom_kills']} OOM kills)" if cgroups else ""
            print(
                f"  {next_report:>3}s  without molt {b.mb(last['unicorn']):6.0f} MB{ooms}   "
                f"with molt {b.mb(last['molt']):5.0f} MB ({last['children']} children, "
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
    b.stop(plain)
    ooms = {k: (cgroups.oom_kills(k) if cgroups else None) for k in SIDES}
    if cgroups:
        cgroups.remove()
        if args.cgroup_note:
            os.unlink(args.cgroup_note)

    # Each side's log is kept beside the results.
    for log in (dyno_log, plain_log):
        shutil.copyfile(log, os.path.join(OUT, os.path.basename(log)))

    # The table.
    recycles = log_count(dyno_log, "at=recycle ")
    kills = log_count(dyno_log, "at=kill ")
    loaded = [s for s in samples if s["t"] >= 0]
    peak = {k: max(s[k] for s in loaded) for k in SIDES}
    final = {k: loaded[-1][k] for k in SIDES}
    # Reaching the budget: the tree's memory above it, or the kernel's OOM killer at it.
    crossed = {
        k: next(
            (
                s["t"]
                for s in loaded
                if s[k] > budget or s[f"{k}_oom_kills"] > loaded[0][f"{k}_oom_kills"]
            ),
            None,
        )
        for k in SIDES
    }
    # The children molt wanted during the load (one more or fewer for a moment while the
    # master replaces a recycled one).
    desired = sorted({s["desired"] for s in loaded if s["desired"] != ""})
    kept = "?" if not desired else f"{desired[0]}" if len(desired) == 1 else f"{desired[0]} to {desired[-1]}"

    def when(t):
        return f"from {t:.0f}s on" if t is not None else "never"

    def failed(side):
        return loads[side].failed

    rows = [
        ["requests", *(loads[k].ok + loads[k].failed for k in SIDES)],
        ["failed requests", *(failed(k) for k in SIDES)],
        [
            f"OOM kills ({args.budget} cgroup)",
            *((ooms[k] if cgroups else "no cgroup") for k in SIDES),
        ],
        ["Unicorn workers", WORKERS, kept],
        ["recycles (hard kills)", "-", f"{recycles} ({kills})"],
        ["idle memory MB", b.mb(idle["unicorn"]), b.mb(idle["molt"])],
        ["peak memory MB", b.mb(peak["unicorn"]), b.mb(peak["molt"])],
        ["final memory MB", b.mb(final["unicorn"]), b.mb(final["molt"])],
        [f"at the {b.mb(budget):.0f} MB budget", *(when(crossed[k]) for k in SIDES)],
    ]
    print(
        f"\n## The leak demo: {SECONDS}s, {RATE:g} requests/s to each side, {PAGE_KB} KiB kept per request"
        f"{', each side in a ' + args.budget + ' memory cgroup' if cgroups else ', no cgroup'}\n"
    )
    print(f"_{b.machine_line(mode=False)}_\n")
    print(b.table(["", LABELS["unicorn"], LABELS["molt"]], rows))
    for name, load in loads.items():
        if load.failed:
            print(f"\n{LABELS[name]}: failures {dict(load.why)}")

    csv_path = os.path.join(OUT, "memory.csv")
    fields = list(samples[0])
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
                "soft_cap": status["soft_cap"],
                "seconds": SECONDS,
                "idle_seconds": IDLE_SECONDS,
                "rate": RATE,
                "page_kb": PAGE_KB,
                "workers": WORKERS,
                "cgroup": bool(cgroups),
                "machine": b.machine_line(mode=False),
            },
            f,
        )

    problems = []
    if failed("molt"):
        problems.append(f"{failed('molt')} requests failed under molt")
    if peak["molt"] > budget:
        problems.append("the dyno went over the budget under molt")
    if ooms["molt"]:
        problems.append(f"the kernel's OOM killer killed {ooms['molt']} processes under molt")
    if not molt_alive:
        problems.append(f"molt exited during the run; its log ends:\n{open(dyno_log, errors='replace').read()[-2000:]}")
    if crossed["unicorn"] is None:
        print("\nnote: without molt the app stayed under the budget; raise DEMO_SECONDS or DEMO_RATE to see it cross.")

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

#!/usr/bin/env python3
"""Prefork: one app served three ways, side by side and alternating, for each preforking
server installed (Unicorn is required; gunicorn and Puma are measured when present):

    plain         the server alone, N children of one master (WEB_CONCURRENCY=N), no molt
    molt pool     MOLT_MODE=pool: N instances of the server, each a master with 1 child
    molt prefork  MOLT_MODE=auto (the default): one instance, whose master molt adopts and
                  grows to N children with the server's own signal

The app is the prefork fixture (test/fixtures/apps/prefork: config.ru under Unicorn with
`preload_app true` and Puma with `preload_app!`, wsgi.py under `gunicorn --preload`),
copied into the benchmark's temporary directory so that nothing is written beside the
fixture. RACK_ENV=production, as on Heroku, so that no server logs each request.

Each contender is started afresh and alone (pages shared with a process of another
contender would lower both PSS readings), and reports:

- memory: PSS of the app's whole process tree (master and children; for molt every
  instance under it), idle once all N children are up, and after the same fixed number of
  requests to `/`; molt's own process apart; each against the plain server's;
- boot: the plain server from exec to its port accepting; under molt from its `at=spawn`
  line to the worker's `at=ready` line (molt's probe: the port accepting), each line
  timestamped as the benchmark reads it from molt's output;
- a leak: a steady load on `/leak` (every request keeps memory for good) under a small
  per-worker cap, MOLT_WORKER_MEMORY: requests and failed requests (the bar is zero; any
  failed request makes the benchmark exit non-zero), recycles, hard-cap kills, the most
  the app's tree held, and how long a recycle takes. In prefork mode a recycle is timed
  from molt's `at=recycle ... child=PID` line to the next `at=child ... action=adopted`
  line (molt sees the master's replacement fork at its next sample, so this includes up
  to one MOLT_SAMPLE_INTERVAL), and from the same line to the replacement fork appearing
  under the master in /proc (polled every 10 ms). In pool mode a recycle boots a
  replacement instance first: its time is that instance's boot (spawn to ready).

    test/bench/prefork.py [--smoke] [--workers N] [--requests N] [--rounds R]
                          [--leak-seconds S] [--leak-rate N] [--leak-kb N] [--cap SIZE]
                          [--servers unicorn,gunicorn,puma]

BENCH_ROUNDS overrides the rounds (default 3; smoke 1), BENCH_SECONDS the leak phase
(default 30 s; smoke 4 s). A smoke run measures Unicorn alone, with 2 workers, in about 15 s.
"""

import argparse
import http.client
import os
import re
import shutil
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402
from loadgen import Load  # noqa: E402

FIXTURE = os.path.join(b.ROOT, "test", "fixtures", "apps", "prefork")
# Each server reads its port from $PORT and its number of children from WEB_CONCURRENCY
# (gunicorn binds 0.0.0.0:$PORT and forks $WEB_CONCURRENCY workers when not told otherwise).
SERVERS = {
    "unicorn": ["unicorn", "-c", "unicorn.rb", "config.ru"],
    "gunicorn": ["gunicorn", "--preload", "wsgi:app"],
    "puma": ["puma", "-C", "puma.rb", "config.ru"],
}
WAYS = ("plain", "molt pool", "molt prefork")
MOLT_SETTINGS = {
    "memory_limit": "1GB",
    # Often enough to see a child pass its cap before it has leaked far past it.
    "sample_interval": "250ms",
}
LEAK_CLIENTS = 8
# Memory settles for this long before a reading.
SETTLE = 0.3 if b.SMOKE else 2.0
# The /proc poll of an adopted master's children, for the replacement fork's time.
POLL = 0.01


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--workers", type=int, default=2 if b.SMOKE else 4,
                   help="children of the plain master and of the adopted one; instances in pool mode")
    p.add_argument("--requests", type=int, default=200 if b.SMOKE else 2000,
                   help="requests to / between the idle and the after-traffic readings")
    p.add_argument("--leak-seconds", type=float,
                   default=float(os.environ.get("BENCH_SECONDS") or (4 if b.SMOKE else 30)))
    p.add_argument("--leak-rate", type=float, default=40.0 if b.SMOKE else 60.0,
                   help="requests per second to the leaking path")
    # A smoke run leaks faster and caps lower, so that children pass the cap within its few
    # seconds, and still slowly enough that the 250 ms samples see a child pass the soft cap
    # well before it could reach the hard one (half as much again).
    p.add_argument("--leak-kb", type=int, default=512 if b.SMOKE else 256,
                   help="KiB each request to the leaking path keeps for good")
    p.add_argument("--cap", default="24MB" if b.SMOKE else "40MB",
                   help="MOLT_WORKER_MEMORY in the molt ways (the hard cap is molt's automatic one)")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS") or (1 if b.SMOKE else 3)))
    p.add_argument("--servers", default="",
                   help="comma-separated (default: unicorn, and gunicorn and puma when installed; smoke: unicorn)")
    args = p.parse_args()
    # ms=20 makes a Rack request last about as long as a small real one (the WSGI app
    # ignores it).
    args.leak_path = f"/leak?kb={args.leak_kb}&ms=20"
    return args


def servers_to_run(arg):
    b.need("unicorn", "ruby")
    if arg:
        names = [n.strip() for n in arg.split(",") if n.strip()]
        unknown = [n for n in names if n not in SERVERS]
        if unknown:
            raise SystemExit(f"bench: unknown server {', '.join(unknown)} (known: {', '.join(SERVERS)})")
        b.need(*names)
        return names, []
    if b.SMOKE:
        # A smoke run stays within seconds: the one server that is required.
        return ["unicorn"], []
    names = [n for n in SERVERS if shutil.which(SERVERS[n][0])]
    return names, [n for n in SERVERS if n not in names]


# -- molt's output, timestamped as it arrives ------------------------------------------------


class StampedLog:
    """The output of a process started by b.start, read line by line as it is written and
    stamped with time.monotonic(): molt's lines carry no time of their own. b.start writes to
    a FIFO that a thread here reads, and copies to `path` (which error messages quote and
    BENCH_KEEP=1 keeps) with each line's seconds since the first line in front."""

    def __init__(self, path):
        self.path = path
        self.t0 = None
        self.fifo = path + ".fifo"
        os.mkfifo(self.fifo)
        self.lines = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        # Opening a FIFO waits for its writer, which b.start opens next.
        with open(self.fifo, "rb") as src, open(self.path, "ab") as out:
            for raw in src:
                at = time.monotonic()
                if self.t0 is None:
                    self.t0 = at
                out.write(f"{at - self.t0:8.3f} ".encode() + raw)
                out.flush()
                with self._lock:
                    self.lines.append((at, raw.decode(errors="replace").rstrip("\n")))

    def snapshot(self):
        with self._lock:
            return list(self.lines)

    def close(self):
        self._thread.join(5)
        try:
            os.unlink(self.fifo)
        except OSError:
            pass


def field(line, key):
    m = re.search(rf"\b{re.escape(key)}=(\S+)", line)
    return m.group(1) if m else None


def molt_lines(lines, event):
    return [(t, l) for t, l in lines if l.startswith(f"molt at={event} ")]


# -- processes and memory ----------------------------------------------------------------------


def children_of(pid):
    """The children of pid from /proc/<pid>/task/*/children: cheap enough to poll."""
    out = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return out


def app_pss(root, exclude_root):
    """PSS of root's process tree, without root itself when it is molt."""
    total = b.tree_memory(root)
    if exclude_root:
        try:
            total -= b.pss_bytes(root)
        except OSError:
            pass
    return total


def traffic(port, total, clients):
    """total GETs of / from `clients` keep-alive clients at once; returns the failures."""
    failed = [0]
    lock = threading.Lock()

    def run(n):
        conn = None
        for _ in range(n):
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = None
            if not ok:
                with lock:
                    failed[0] += 1
        if conn is not None:
            conn.close()

    threads = [
        threading.Thread(target=run, args=(total // clients + (i < total % clients),), daemon=True)
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed[0]


class Sampler:
    """Polls, until stopped, the most the app's tree holds (every 0.5 s) and, when given a
    master, when each of its children appears (every POLL)."""

    def __init__(self, root, exclude_root, master=None):
        self.root, self.exclude_root, self.master = root, exclude_root, master
        self.max = 0
        self.born = []  # (time, pid) of children that appeared after the start
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._known = children_of(self.master) if self.master else set()
        self._thread.start()
        return self

    def _run(self):
        next_memory = 0.0
        while not self._done.is_set():
            now = time.monotonic()
            if self.master:
                kids = children_of(self.master)
                for pid in kids - self._known:
                    self.born.append((now, pid))
                self._known = kids
            if now >= next_memory:
                self.max = max(self.max, app_pss(self.root, self.exclude_root))
                next_memory = now + 0.5
            self._done.wait(POLL if self.master else 0.5)

    def stop(self):
        self._done.set()
        self._thread.join(10)
        self.max = max(self.max, app_pss(self.root, self.exclude_root))


def time_to_accept(proc, port, started, log_path, timeout=60.0):
    """Seconds from `started` (just before exec) to the port's first accepted connection."""
    while not b.accepts(port):
        if proc.poll() is not None or time.monotonic() > started + timeout:
            b.wait_until(lambda: False, 0, f"port {port} accepting", proc, log_path)
        time.sleep(0.002)
    return time.monotonic() - started


def identities(pids):
    """{pid: start time} of the processes still there: a pid alone may be reused."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # state is field 3 and starttime field 22 of stat; fields[0] here is field 3.
        if fields[0] != "Z":
            out[pid] = fields[19]
    return out


def stop_all(proc, pids):
    """Stops the contender, then waits for every one of its processes (pids, as
    identities() gave them) to be gone, and kills any still there after 5 s. Returns those."""
    b.stop(proc)
    deadline = time.monotonic() + 5
    left = {p: t for p, t in identities(pids).items() if pids.get(p) == t}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p: t for p, t in identities(left).items() if left.get(p) == t}
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return sorted(left)


# -- one contender -------------------------------------------------------------------------------


def run_contender(server, way, args, molt, work, app, tag):
    port = b.free_port()
    argv = SERVERS[server]
    app_env = {"PORT": str(port), "RACK_ENV": "production"}
    log_path = os.path.join(work, f"{tag}.log")
    n = args.workers
    out = {"server": server, "way": way}
    started = time.monotonic()
    if way == "plain":
        log = None
        proc = b.start(argv, env={**app_env, "WEB_CONCURRENCY": str(n)}, log=log_path, cwd=app)
        out["boots"] = [time_to_accept(proc, port, started, log_path) * 1000]
        b.wait_until(lambda: len(children_of(proc.pid)) >= n, 30, f"{n} children of plain {server}", proc, log_path)
        root, exclude_root, master = proc.pid, False, None
    else:
        settings = dict(MOLT_SETTINGS, min_workers=n, max_workers=n, worker_memory=args.cap)
        if way == "molt pool":
            settings["mode"] = "pool"
        env = b.molt_env(port, work, **settings)
        env.update({k: v for k, v in app_env.items() if k != "PORT"})
        log = StampedLog(log_path)
        proc = b.start([molt, "run", "--", *argv], env=env, log=log.fifo, cwd=app)

        def ready():
            s = b.molt_status(env)
            if s is None:
                return False
            if way == "molt pool":
                ready = [w for w in s["workers"] if w["state"] == "ready"]
                return len(ready) >= n and all(children_of(w["pid"]) for w in ready)
            kids = [w for w in s["workers"] if w.get("role") == "child"]
            return s.get("mode") == "prefork" and len(kids) >= n

        b.wait_until(ready, 60, f"molt ({way}) with {n} {server} workers", proc, log_path)
        status = b.molt_status(env)
        if way == "molt prefork" and status.get("server") != server:
            raise SystemExit(f"bench: molt adopted {status.get('server')!r}, not {server}")
        if way == "molt pool" and status.get("mode") != "pool":
            raise SystemExit(f"bench: MOLT_MODE=pool ran in mode {status.get('mode')!r}")
        root, exclude_root = proc.pid, True
        master = next((w["pid"] for w in status["workers"] if w.get("role") == "master"), None)
        out["soft_cap"], out["hard_cap"] = status["soft_cap"], status["hard_cap"]
    b.wait_serving(port, proc=proc, log=log_path)
    ready_at = time.monotonic()

    time.sleep(SETTLE)
    out["processes"] = len(b.tree(root)) - (1 if exclude_root else 0)
    out["idle"] = app_pss(root, exclude_root)
    out["molt_idle"] = b.pss_bytes(proc.pid) if exclude_root else None
    failed = traffic(port, args.requests, 2 * n)
    time.sleep(SETTLE)
    out["after"] = app_pss(root, exclude_root)
    out["molt_after"] = b.pss_bytes(proc.pid) if exclude_root else None
    out["traffic_failed"] = failed

    # The leak phase.
    sampler = Sampler(root, exclude_root, master if way == "molt prefork" else None).start()
    leak_start = time.monotonic()
    load = Load(port, args.leak_path, LEAK_CLIENTS, rate=args.leak_rate).start()
    time.sleep(args.leak_seconds)
    load.stop()
    if log is not None:
        # A recycle under way when the load stopped is let finish, so that its time counts;
        # one that does not finish is reported as a child with no replacement.
        deadline = time.monotonic() + 10
        while not recycles_settled(log.snapshot()) and time.monotonic() < deadline:
            time.sleep(0.05)
    sampler.stop()
    out["leak_requests"] = load.ok + load.failed
    out["leak_failed"] = load.failed
    out["leak_why"] = dict(load.why)
    out["leak_max"] = sampler.max
    out["exited"] = proc.poll()
    out["left"] = stop_all(proc, identities(b.tree(root)))

    if log is not None:
        log.close()
        lines = log.snapshot()
        out.update(molt_timings(way, lines, ready_at, sampler, leak_start))
        out["log_tail"] = "\n".join(l for _, l in lines[-40:])
    else:
        out.update(recycles=0, kills=0, recycle_ms=[], fork_ms=[], unmatched=0)
    return out


def departures(lines):
    """(time, pid) of each child of an adopted master that molt recycled or killed, once
    each (a recycled child may pass the hard cap before it exits, and be killed too)."""
    first = {}
    for t, l in sorted(molt_lines(lines, "recycle") + molt_lines(lines, "kill")):
        pid = field(l, "child")
        if pid and pid not in first:
            first[pid] = t
    return sorted((t, pid) for pid, t in first.items())


def recycles_settled(lines):
    """Every instance spawned is ready, and every child that left has been replaced."""
    spawned = len(molt_lines(lines, "spawn"))
    ready = len(molt_lines(lines, "ready"))
    left = len(departures(lines))
    adopted = sum(1 for _, l in molt_lines(lines, "child") if "action=adopted" in l)
    scaled_up = len([l for _, l in molt_lines(lines, "scale") if "direction=up" in l])
    return ready >= spawned and adopted >= left + scaled_up


def molt_timings(way, lines, ready_at, sampler, leak_start):
    """Boot, recycle and kill counts and times from molt's stamped lines; the boots before
    ready_at (all N workers up) are the first ones, those after it replacements."""
    after_ready = [(t, l) for t, l in lines if t >= ready_at]
    spawned = {}
    boots, replacement_boots = [], []
    for t, l in lines:
        if l.startswith("molt at=spawn "):
            spawned[field(l, "worker")] = t
        elif l.startswith("molt at=ready "):
            t0 = spawned.get(field(l, "worker"))
            if t0 is not None:
                (boots if t < ready_at else replacement_boots).append((t - t0) * 1000)
    recycles = molt_lines(after_ready, "recycle")
    kills = molt_lines(after_ready, "kill")
    out = {
        "boots": boots,
        "recycles": len(recycles),
        "kills": len(kills),
        "recycle_ms": [],
        "fork_ms": [],
        "unmatched": 0,
    }
    if way == "molt pool":
        out["recycle_ms"] = replacement_boots
        return out
    # Prefork: every child that leaves (recycled or killed) is replaced by one fork of the
    # master, so each departure pairs with the first adoption (and fork) after it that no
    # earlier departure took.
    departed = departures(after_ready)
    adoptions = [t for t, l in molt_lines(after_ready, "child") if "action=adopted" in l]
    for t, adopted in pair(departed, adoptions):
        if adopted is None:
            out["unmatched"] += 1
        else:
            out["recycle_ms"].append((adopted - t) * 1000)
    # The /proc poll runs during the leak phase only.
    in_leak = [(t, pid) for t, pid in departed if t >= leak_start]
    for t, fork in pair(in_leak, sorted(t for t, _ in sampler.born)):
        if fork is not None:
            out["fork_ms"].append((fork - t) * 1000)
    return out


def pair(departed, arrivals):
    """(departure time, the first unused arrival time after it, or None), in order."""
    out, i = [], 0
    for t, _pid in departed:
        while i < len(arrivals) and arrivals[i] < t:
            i += 1
        out.append((t, arrivals[i] if i < len(arrivals) else None))
        i += 1
    return out


# -- the report -----------------------------------------------------------------------------------


def ms_summary(values):
    if not values:
        return "-"
    v = sorted(values)
    return f"{b.fmt(b.median(v))} ({b.fmt(v[0])}-{b.fmt(v[-1])})"


def main():
    args = parse_args()
    servers, missing = servers_to_run(args.servers)
    molt = b.molt_binary()
    work = b.temp_dir()
    app = os.path.join(work, "app")
    shutil.copytree(FIXTURE, app)
    print(
        f"prefork: {', '.join(servers)}; {args.workers} workers each way, {args.rounds} round(s); "
        f"{args.requests} requests to /, then {args.leak_seconds:.0f}s of {args.leak_rate:.0f} requests/s on "
        f"{args.leak_path} with MOLT_WORKER_MEMORY={args.cap}"
        + (f" (not installed: {', '.join(missing)})" if missing else ""),
        flush=True,
    )
    results = {(s, w): [] for s in servers for w in WAYS}
    for r in range(args.rounds):
        for server in servers:
            for way in WAYS:
                tag = f"{server}-{way.replace(' ', '-')}-{r + 1}"
                res = run_contender(server, way, args, molt, work, app, tag)
                results[(server, way)].append(res)
                print(
                    f"  round {r + 1}/{args.rounds} {server:<8} {way:<12} boot "
                    f"{b.fmt(b.median(res['boots']))} ms; PSS idle {b.mb(res['idle']):.1f} MB, after "
                    f"{args.requests} requests {b.mb(res['after']):.1f} MB"
                    + (f", molt {b.mb(res['molt_after']):.1f} MB" if res["molt_after"] else "")
                    + f"; leak: {res['leak_requests']} requests, {res['leak_failed']} failed, "
                    f"{res['recycles']} recycles, {res['kills']} kills, max {b.mb(res['leak_max']):.0f} MB",
                    flush=True,
                )

    failures = report(args, servers, results)
    if failures:
        print(f"\nbench: {failures} failed request(s) or unexpected exits", file=sys.stderr)
        sys.exit(1)


def report(args, servers, results):
    """Prints and writes both tables; returns the count of failed requests and exits."""
    memory_headers = [
        "server",
        "way",
        "processes",
        "idle PSS MB",
        "idle / plain",
        f"after {args.requests} requests PSS MB",
        "after / plain",
        "molt PSS MB",
        "after with molt / plain",
    ]
    leak_headers = [
        "server",
        "way",
        "requests",
        "failed",
        "recycles",
        "kills",
        "max PSS MB",
        "first boot ms",
        "recycle to replacement ready ms",
        "recycle to fork ms (/proc)",
    ]
    memory_rows, leak_rows, notes = [], [], []
    failures = 0
    for server in servers:
        plain = results[(server, "plain")]
        plain_idle = b.median([r["idle"] for r in plain])
        plain_after = b.median([r["after"] for r in plain])
        for way in WAYS:
            runs = results[(server, way)]
            idle = b.median([r["idle"] for r in runs])
            after = b.median([r["after"] for r in runs])
            molt_after = b.median([r["molt_after"] for r in runs]) if way != "plain" else None
            memory_rows.append([
                server,
                way,
                int(b.median([r["processes"] for r in runs])),
                b.mb(idle),
                b.ratio(idle, plain_idle),
                b.mb(after),
                b.ratio(after, plain_after),
                b.mb(molt_after) if molt_after else "-",
                b.ratio(after + molt_after, plain_after) if molt_after else "-",
            ])
            failed = sum(r["leak_failed"] + r["traffic_failed"] for r in runs)
            failures += failed
            leak_rows.append([
                server,
                way,
                sum(r["leak_requests"] for r in runs),
                failed,
                sum(r["recycles"] for r in runs),
                sum(r["kills"] for r in runs),
                b.mb(b.median([r["leak_max"] for r in runs])),
                ms_summary([v for r in runs for v in r["boots"]]),
                ms_summary([v for r in runs for v in r["recycle_ms"]]) if way != "plain" else "-",
                ms_summary([v for r in runs for v in r["fork_ms"]]) if way == "molt prefork" else "-",
            ])
            for r in runs:
                if r["leak_failed"] or r["traffic_failed"]:
                    notes.append(
                        f"{server} {way}: {r['traffic_failed']} failed of {args.requests} requests to /, "
                        f"{r['leak_failed']} failed on {args.leak_path} ({r['leak_why']})"
                        + (f"; molt's log ends:\n{r['log_tail']}" if r.get("log_tail") else "")
                    )
                if r["exited"] is not None:
                    failures += 1
                    notes.append(f"{server} {way}: exited during the run with status {r['exited']}")
                if r["left"]:
                    notes.append(f"{server} {way}: processes left after the stop (killed): {r['left']}")
                if r.get("unmatched"):
                    notes.append(
                        f"{server} {way}: {r['unmatched']} children left with no replacement "
                        "adopted in molt's log"
                    )
    b.report(
        f"Prefork: one app plain, under molt's pool mode and under its prefork mode ({args.workers} workers)",
        memory_headers,
        memory_rows,
        "prefork-memory.csv",
        notes=[
            f"PSS of the app's process tree, molt's own process apart (its own column), medians of "
            f"{args.rounds} round(s); ratios against the plain server."
        ],
    )
    first = results[(servers[0], "molt prefork")][0]
    b.report(
        f"Prefork: a leak under MOLT_WORKER_MEMORY={args.cap} ({args.workers} workers)",
        leak_headers,
        leak_rows,
        "prefork-recycle.csv",
        notes=[
            f"{args.leak_seconds:.0f}s of {args.leak_rate:.0f} requests/s on {args.leak_path} for each "
            f"contender in each of {args.rounds} round(s), sums and medians (soft cap "
            f"{b.mb(first['soft_cap']):.0f} MB, hard cap {b.mb(first['hard_cap']):.0f} MB, "
            f"MOLT_SAMPLE_INTERVAL={MOLT_SETTINGS['sample_interval']}); failed counts the "
            f"{args.requests} requests to / too. Times in ms, median (min-max). First boot: plain, exec "
            "to the port accepting; under molt, at=spawn to at=ready. Recycle to replacement ready: "
            "prefork, at=recycle to the next at=child action=adopted; pool, the replacement "
            "instance's at=spawn to at=ready (it starts before the old one stops). Recycle to fork: "
            "at=recycle to the master's new child in /proc.",
            *notes,
        ],
    )
    return failures


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Front ends for a Rack app on Unicorn: the prefork fixture (test/fixtures/apps/prefork,
config.ru with a tiny response) on 2 Unicorn workers reached directly, through nginx
(test/bench/nginx.conf in front of that same Unicorn), under Phusion Passenger standalone
(Debian's passenger package, its builtin engine, 2 app processes) and through molt (molt run
adopting the Unicorn master, MOLT_MODE=auto).

Unicorn closes the connection after every response, so every request through nginx or molt
opens a new connection to a worker: this measures that path, where proxy.py measures the
kept-alive one.

The contenders alternate (direct, molt, nginx, passenger, direct, ...) and the table gives the
median of each over the rounds, the front end's CPU per request (molt's own process; nginx's
master and workers; Passenger's processes without its app processes), and the ratios
molt/nginx, molt/passenger and molt/direct. When Passenger is missing or does not start, the
table says so and leaves it out.

    test/bench/unicorn_front.py [--smoke]   # BENCH_ROUNDS, BENCH_SECONDS, BENCH_CONNECTIONS
"""

import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS") or (1 if b.SMOKE else 7))
SECONDS = int(os.environ.get("BENCH_SECONDS") or (1 if b.SMOKE else 5))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS") or 32)
THREADS = 2
WORKERS = 2
FIXTURE = os.path.join(b.ROOT, "test", "fixtures", "apps", "prefork")
UNICORN = ["unicorn", "-c", "unicorn.rb", "config.ru"]


def app_dir(work, name):
    """A copy of the fixture: Passenger writes its pid and log files beside config.ru."""
    path = os.path.join(work, name)
    shutil.copytree(FIXTURE, path)
    return path


def start_unicorn(port, app, log):
    env = {"PORT": str(port), "RACK_ENV": "production", "WEB_CONCURRENCY": str(WORKERS)}
    proc = b.start(UNICORN, env=env, log=log, cwd=app)
    b.wait_serving(port, proc=proc, log=log)
    b.wait_until(lambda: len(b.tree(proc.pid)) > WORKERS, 30, f"{WORKERS} Unicorn workers", proc, log)
    return proc


def start_molt(molt, port, app, work):
    log = os.path.join(work, "molt.log")
    env = b.molt_env(port, work, min_workers=WORKERS, max_workers=WORKERS)
    env["RACK_ENV"] = "production"
    proc = b.start([molt, "run", "--", *UNICORN], env=env, log=log, cwd=app)

    def adopted():
        s = b.molt_status(env)
        kids = [w for w in s["workers"] if w.get("role") == "child"] if s else []
        return s is not None and s.get("mode") == "prefork" and len(kids) >= WORKERS

    b.wait_until(adopted, 60, f"molt adopting Unicorn with {WORKERS} children", proc, log)
    b.wait_serving(port, proc=proc, log=log)
    return proc


def start_passenger(port, app, work):
    """Passenger standalone on its builtin engine, or (None, why) when it cannot run."""
    if shutil.which("passenger") is None:
        return None, "passenger is not installed (Debian's passenger package; `bash .ci/run` installs it)"
    log = os.path.join(work, "passenger.out")
    argv = [
        "passenger", "start",
        "--engine", "builtin",
        "--address", "127.0.0.1",
        "--port", str(port),
        "--environment", "production",
        "--min-instances", str(WORKERS),
        "--max-pool-size", str(WORKERS),
        "--disable-security-update-check",
        "--disable-anonymous-telemetry",
        "--log-file", os.path.join(work, "passenger.log"),
        "--pid-file", os.path.join(work, "passenger.pid"),
    ]
    proc = b.start(argv, log=log, cwd=app)
    try:
        b.wait_serving(port, timeout=60, proc=proc, log=log)
        # The watchdog (which starts the core, which starts the app processes) is a daemon of
        # its own; `passenger start` stops it when it gets SIGTERM.
        with open(os.path.join(work, "passenger.pid")) as f:
            watchdog = int(f.read().strip())
        # --min-instances spawns the second process after the first request.
        b.wait_until(lambda: len(app_processes(watchdog)) >= WORKERS, 30,
                     f"{WORKERS} Passenger app processes", proc, log)
    except (SystemExit, OSError, ValueError) as err:
        b.stop(proc)
        return None, f"passenger start did not serve: {str(err).splitlines()[0]}"
    return (proc, watchdog), None


def command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def app_processes(root):
    """Passenger's app processes (its Ruby loader and the processes it forks for the app)."""
    return [p for p in b.tree(root) if command_line(p).startswith(("Passenger AppPreloader", "Passenger RubyApp"))]


def main():
    b.need("wrk", "nginx", "unicorn", "ruby")
    molt = b.molt_binary()
    b.raise_nofile()
    work = b.temp_dir()
    direct_port, molt_port, nginx_port, passenger_port = (b.free_port() for _ in range(4))
    start_unicorn(direct_port, app_dir(work, "direct"), os.path.join(work, "unicorn.log"))
    molt_proc = start_molt(molt, molt_port, app_dir(work, "molt"), work)
    nginx_proc = b.start_nginx(nginx_port, direct_port, work)
    passenger, passenger_missing = start_passenger(passenger_port, app_dir(work, "passenger"), work)

    contenders = [("direct", direct_port), ("molt", molt_port), ("nginx", nginx_port)]
    pids = {"molt": lambda: [molt_proc.pid], "nginx": lambda: b.tree(nginx_proc.pid)}
    if passenger is not None:
        contenders.append(("passenger", passenger_port))
        starter, watchdog = passenger
        apps = set(app_processes(watchdog))
        # The watchdog and the core (which parses, routes and relays), and the starter.
        pids["passenger"] = lambda: [starter.pid] + [p for p in b.tree(watchdog) if p not in apps]

    print(
        f"Rack on Unicorn ({WORKERS} workers), front ends: wrk -t{THREADS} -c{CONNECTIONS} "
        f"-d{SECONDS}s, {ROUNDS} rounds, contenders alternating",
        flush=True,
    )
    time.sleep(0.5)
    runs = b.alternate(contenders, ROUNDS, SECONDS, CONNECTIONS, threads=THREADS, pids=pids)
    s = {name: b.summarize(r) for name, r in runs.items()}
    names = [name for name, _ in contenders]
    headers = ["contender", "req/s (median)", "p50 ms", "p99 ms", "front CPU us/request", "errors", "rounds"]
    rows = [
        [name, s[name]["rps"], s[name]["p50_ms"], s[name]["p99_ms"], s[name]["cpu_us"], s[name]["errors"], ROUNDS]
        for name in names
    ]
    for other in ("nginx", "passenger", "direct"):
        if other not in s:
            continue
        rows.append(
            [
                f"molt/{other}",
                b.ratio(s["molt"]["rps"], s[other]["rps"]),
                b.ratio(s["molt"]["p50_ms"], s[other]["p50_ms"]),
                b.ratio(s["molt"]["p99_ms"], s[other]["p99_ms"]),
                b.ratio(s["molt"]["cpu_us"], s[other]["cpu_us"]) if other != "direct" else "",
                "",
                "",
            ]
        )
    notes = [
        "Target: molt's throughput >= 1.0x nginx's and Passenger's with p99 no worse. "
        f"Measured: {b.ratio(s['molt']['rps'], s['nginx']['rps']):.2f}x nginx"
        + (f", {b.ratio(s['molt']['rps'], s['passenger']['rps']):.2f}x Passenger" if "passenger" in s else "")
        + f"; p99 {b.ratio(s['molt']['p99_ms'], s['nginx']['p99_ms']):.2f}x nginx's."
    ]
    if passenger_missing:
        notes.append(f"Passenger left out: {passenger_missing}.")
    b.report(
        "Rack on Unicorn: front ends (ratios: throughput higher is better, latency lower is better)",
        headers,
        rows,
        "unicorn_front.csv",
        notes=notes,
    )


if __name__ == "__main__":
    main()

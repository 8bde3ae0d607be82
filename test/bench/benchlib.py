"""Shared pieces of molt's benchmarks: processes that are always cleaned up, free loopback
ports, wrk runs, /proc memory readings, medians, tables and CSV files.

Every benchmark is one command (test/bench/<name>.py) that prints a table and writes a CSV
under target/bench/ (BENCH_OUT overrides). BENCH_KEEP=1 keeps the temporary directory of
logs and configuration that each one works in. With --smoke (or BENCH_SMOKE=1) each one runs for
seconds instead of minutes: CI uses that to check that the benchmarks still run and produce
their tables, never how fast anything was.

Comparisons alternate their contenders (A B C A B C ...) within one invocation and report
medians and ratios: on a shared machine absolute numbers drift from minute to minute, and
alternating spreads that drift over every contender alike.
"""

import atexit
import csv
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.environ.get("BENCH_OUT") or os.path.join(ROOT, "target", "bench")
SMOKE = "--smoke" in sys.argv[1:] or os.environ.get("BENCH_SMOKE") == "1"
PYAPP = os.path.join(ROOT, "test", "fixtures", "apps", "pyapp", "app.py")
UPSTREAM_JS = os.path.join(HERE, "upstream.js")
REPORT_LUA = os.path.join(HERE, "report.lua")

# -- processes ---------------------------------------------------------------------------

_started = []
_temp_dirs = []


def _cleanup():
    # Newest first: a proxy goes before the upstream it talks to.
    for proc in reversed(_started):
        stop(proc)
    for path in _temp_dirs:
        if os.environ.get("BENCH_KEEP") == "1":
            print(f"bench: kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _on_signal(signum, _frame):
    # Turn a signal into a normal exit so that atexit stops every process started here.
    sys.exit(128 + signum)


atexit.register(_cleanup)
for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


def temp_dir(prefix="molt-bench-"):
    path = tempfile.mkdtemp(prefix=prefix)
    # nginx workers drop root for nobody, who must be able to reach the temp paths.
    os.chmod(path, 0o755)
    _temp_dirs.append(path)
    return path


def start(argv, env=None, log=None, cwd=None, inherit=True):
    """Starts argv in its own process group, output to the file `log` (or discarded).
    The environment is this one's plus env, or with inherit=False only PATH plus env."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    full_env = dict(os.environ) if inherit else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    # A stray MOLT_* setting in the caller's environment must not change what is measured.
    for name in list(full_env):
        if name.startswith("MOLT_"):
            del full_env[name]
    full_env.update(env or {})
    proc = subprocess.Popen(
        argv,
        env=full_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if log:
        out.close()
    _started.append(proc)
    return proc


def stop(proc, grace=10.0):
    """SIGTERM the process (molt stops its workers, nginx its own), then SIGKILL its group."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if proc in _started:
        _started.remove(proc)


def raise_nofile():
    """Raises the soft limit on open files to the hard limit, for thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- ports and readiness ----------------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_get(port, path="/", timeout=5.0):
    """GET on loopback; returns (status, body bytes), or (None, error text) on failure."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError as err:
        return None, str(err)


def wait_until(check, timeout, what, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.02)
    detail = ""
    if log and os.path.exists(log):
        with open(log, errors="replace") as f:
            detail = "\n" + f.read()[-3000:]
    raise SystemExit(f"bench: {what} did not happen within {timeout}s{detail}")


def wait_serving(port, timeout=30.0, proc=None, log=None):
    wait_until(lambda: http_get(port, "/", 1.0)[0] == 200, timeout, f"port {port} serving", proc, log)


# -- the contenders ------------------------------------------------------------------------


def molt_binary():
    """$MOLT if set, else a fresh `cargo build --release` of this checkout."""
    if os.environ.get("MOLT"):
        return os.path.abspath(os.environ["MOLT"])
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True
    )
    return os.path.join(ROOT, "target", "release", "molt")


def molt_static_binary():
    """The static musl build, as the buildpack installs it on a dyno: (path, None), or
    (None, why) when this machine cannot build it. $MOLT_STATIC overrides the build."""
    if os.environ.get("MOLT_STATIC"):
        return os.path.abspath(os.environ["MOLT_STATIC"]), None
    target = f"{platform.machine()}-unknown-linux-musl"
    done = subprocess.run(
        ["cargo", "build", "--release", "--locked", "--quiet", "--target", target],
        cwd=ROOT, capture_output=True, text=True,
    )
    if done.returncode != 0:
        return None, f"the {target} build failed (rustup target add {target}): {done.stderr.strip()[-200:]}"
    return os.path.join(ROOT, "target", target, "release", "molt"), None


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(
            f"bench: missing {', '.join(missing)}: `bash .ci/run` installs them on Debian 12"
        )


def start_node(port, log=None):
    proc = start(["node", UPSTREAM_JS], env={"PORT": str(port)}, log=log)
    wait_serving(port, proc=proc, log=log)
    return proc


def start_nginx(listen, upstreams, workdir, workers="auto", worker_connections=8192):
    """nginx as a reverse proxy to 127.0.0.1:<each of upstreams> (a port or a list of
    ports) with a keep-alive upstream pool. worker_connections counts both sides of the
    proxy (a client connection and its upstream one) in each worker."""
    if isinstance(upstreams, int):
        upstreams = [upstreams]
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in upstreams)
    need("nginx")
    with open(os.path.join(HERE, "nginx.conf")) as f:
        conf = f.read()
    for key, value in {
        "@DIR@": workdir,
        "@PORT@": str(listen),
        "@UPSTREAM_SERVERS@": servers,
        "@WORKERS@": str(workers),
        "@WORKER_CONNECTIONS@": str(worker_connections),
    }.items():
        conf = conf.replace(key, value)
    path = os.path.join(workdir, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    log = os.path.join(workdir, "nginx.out")
    proc = start(
        [shutil.which("nginx"), "-p", workdir, "-c", path, "-g", "daemon off;"], log=log
    )
    wait_serving(listen, proc=proc, log=log)
    return proc


def molt_env(port, workdir, **settings):
    env = {
        "PORT": str(port),
        "MOLT_CONTROL_SOCKET": os.path.join(workdir, f"molt-{port}.sock"),
    }
    env.update({f"MOLT_{k.upper()}": str(v) for k, v in settings.items()})
    # BENCH_MOLT_ENV="MOLT_A=1 MOLT_B=2" tries settings on every molt a benchmark starts;
    # the MOLT_* of the caller's own environment are dropped so that none changes a run.
    for pair in os.environ.get("BENCH_MOLT_ENV", "").split():
        name, _, value = pair.partition("=")
        env[name] = value
    return env


def molt_status(env):
    """`molt status --json` over the control socket named in env, as a dict; None when
    molt does not answer (yet)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(env["MOLT_CONTROL_SOCKET"])
            s.sendall(b"status json\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data)
    except (OSError, ValueError):
        return None


def start_molt(molt, port, work, command, logfile, ready_workers=1, **settings):
    """molt run on port with MOLT_* settings, once ready_workers workers are ready."""
    env = molt_env(port, work, **settings)
    proc = start([molt, "run", "--", *command], env=env, log=logfile)

    def ready():
        status = molt_status(env)
        return status is not None and sum(
            w["state"] == "ready" for w in status["workers"]
        ) >= ready_workers

    wait_until(ready, 60, f"{ready_workers} ready workers", proc, logfile)
    wait_serving(port, proc=proc, log=logfile)
    return proc, env


# -- wrk -----------------------------------------------------------------------------------


def wrk(port, connections, seconds, threads=1, path="/"):
    """One wrk run with keep-alive; returns requests, rps, p50/p99 (ms) and error counts."""
    need("wrk")
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        REPORT_LUA,
        f"http://127.0.0.1:{port}{path}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"bench: wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRK_JSON ") :])
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {
        "requests": r["requests"],
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "errors": errors,
    }


# -- /proc ---------------------------------------------------------------------------------


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pss_bytes(pid):
    """PSS plus swapped PSS from smaps_rollup, as molt measures a worker."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Pss:", "SwapPss:")):
                total += int(line.split()[1]) * 1024
    return total


def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid):
    """pid and all of its descendants."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids):
    """User plus system CPU time of the processes, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime and stime are fields 14 and 15 of stat; fields[0] here is field 3.
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def tree_memory(pid, measure=pss_bytes):
    total = 0
    for p in tree(pid):
        try:
            total += measure(p)
        except OSError:
            pass  # Exited between the listing and the reading.
    return total


# -- numbers and output -------------------------------------------------------------------


def median(values):
    return statistics.median(values) if values else float("nan")


def mb(n):
    return n / (1 << 20)


def ratio(a, b):
    return a / b if b else float("nan")


def fmt(value):
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def table(headers, rows):
    """A Markdown table, so that a run's output can be pasted into docs/benchmarks.md as it is."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def write_csv(name, headers, rows):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        for row in rows:
            w.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row])
    return path


def machine_line(mode=True):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs ({cpu}), "
        f"{mem / (1 << 30):.0f} GiB" + (f", {'smoke' if SMOKE else 'full'} run" if mode else "")
    )


def report(title, headers, rows, csv_name, notes=()):
    """Prints the table under a title and writes the CSV beside the other results."""
    path = write_csv(csv_name, headers, rows)
    print(f"\n## {title}\n")
    print(f"_{machine_line()}_\n")
    print(table(headers, rows))
    for note in notes:
        print(f"\n{note}")
    print(f"\nCSV: {os.path.relpath(path, ROOT) if path.startswith(ROOT) else path}")
    sys.stdout.flush()


def alternate(contenders, rounds, seconds, connections, threads=1, warmup=1, pids=None):
    """Runs wrk against each (name, port) in turn, round after round: A B C A B C ...

    Returns {name: [result per round]}. A short unrecorded run first warms every contender
    (connection pools, caches, the JIT of a Node upstream). With pids ({name: function
    returning the proxy's pids}), each result also has the proxy's CPU time per request in
    microseconds: on a machine where the load generator, the proxy and the upstream share
    the cores, that cost decides the throughput more than anything else.
    """
    pids = pids or {}
    for _name, port in contenders:
        wrk(port, connections, warmup, threads)
    results = {name: [] for name, _ in contenders}
    for i in range(rounds):
        for name, port in contenders:
            before = cpu_seconds(pids[name]()) if name in pids else None
            r = wrk(port, connections, seconds, threads)
            if before is not None:
                r["cpu_us"] = (cpu_seconds(pids[name]()) - before) * 1e6 / max(r["requests"], 1)
            results[name].append(r)
            print(
                f"  round {i + 1}/{rounds} {name:<14} {r['rps']:>9.0f} req/s  "
                f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  errors {r['errors']}"
                + (f"  proxy CPU {r['cpu_us']:.1f} us/request" if "cpu_us" in r else ""),
                flush=True,
            )
    return results


def summarize(runs):
    """Medians of one contender's rounds."""
    return {
        "rps": median([r["rps"] for r in runs]),
        "p50_ms": median([r["p50_ms"] for r in runs]),
        "p99_ms": median([r["p99_ms"] for r in runs]),
        "errors": sum(r["errors"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "cpu_us": median([r["cpu_us"] for r in runs if "cpu_us" in r]),
    }

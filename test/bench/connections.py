#!/usr/bin/env python3
"""Connections: molt holding 10,000 concurrent keep-alive client connections, its own memory
(the molt process, not its workers) at 0, 1,000 and 10,000 of them, beside nginx (master and
workers together) in front of the same kind of upstream (standalone Node `upstream.js`).

One Python process (selectors, non-blocking sockets) opens the connections, each of which
completes one GET / and then stays open and idle. After the reading at 10,000, every
connection sends a request at the same moment ("wave"), and the proxy's memory is read
again, its peak during the wave sampled every 50 ms. The connections are then held for
--hold seconds (with a wave every --refresh seconds, so that no proxy's idle timeout closes
them: molt's is 30 s), and at the end one connection in ten sends one more request: all of
them must answer 200, and the benchmark fails otherwise (a correctness check, also in smoke).

Rounds alternate (molt, nginx, molt, nginx, ...), each contender started afresh; the table
gives medians and the memory per connection, (memory at N - memory at 0) / N.

    test/bench/connections.py [--smoke] [--connections N] [--hold S] [--refresh S] [--rounds R]

Environment: BENCH_CONNECTIONS, BENCH_ROUNDS override the defaults (10,000 and 3; smoke 300
and 1). Needs an open-file hard limit above the connection count (the load generator raises
its soft limit to the hard one; molt raises its own; nginx sets worker_rlimit_nofile).
"""

import argparse
import errno
import os
import resource
import selectors
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

WORKERS = 2
# molt's MOLT_WORKER_CONCURRENCY for the Node workers.
CONCURRENCY = 128
# Memory settles for this long before a reading.
SETTLE = 0.5 if b.SMOKE else 2.0
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
# Connections opening at once (connect, request, response); more would only overflow the
# listen backlog and time out in SYN retries.
OPENING = 256


class Conn:
    __slots__ = ("sock", "state", "buf", "out", "need", "ok", "error")

    def __init__(self):
        self.sock = None
        self.state = "new"
        self.buf = b""
        self.out = b""
        self.need = None
        self.ok = 0
        self.error = None


def _parse(conn):
    """True once conn.buf holds a whole response (which is then consumed)."""
    if conn.need is None:
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = conn.buf[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        conn.need = end + 4 + length
        conn.state = "200" if head.startswith(b"HTTP/1.1 200") else head.split(b"\r\n")[0].decode(errors="replace")
    if len(conn.buf) < conn.need:
        return False
    conn.buf = conn.buf[conn.need :]
    conn.need = None
    return True


def exchange(port, conns, in_flight, timeout=60.0):
    """One request (and a new connection first, for a conn without a socket) on each of
    conns, at most in_flight at a time; returns the failures as {conn index: reason}.
    A failed connection is closed and keeps its reason."""
    sel = selectors.DefaultSelector()
    todo = list(range(len(conns)))
    todo.reverse()
    active = 0
    failures = {}
    deadline = time.monotonic() + timeout

    def fail(i, why):
        nonlocal active
        c = conns[i]
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        c.sock = None
        c.error = why
        failures[i] = why
        active -= 1

    def begin(i):
        nonlocal active
        c = conns[i]
        c.buf, c.need, c.out = b"", None, REQUEST
        active += 1
        if c.sock is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            c.sock = s
            err = s.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                fail(i, f"connect: {os.strerror(err)}")
                return
            c.state = "connecting"
            sel.register(s, selectors.EVENT_WRITE, i)
        else:
            c.state = "sending"
            sel.register(c.sock, selectors.EVENT_WRITE, i)

    while todo or active:
        while todo and active < in_flight:
            begin(todo.pop())
        if time.monotonic() > deadline:
            for key in list(sel.get_map().values()):
                fail(key.data, "timeout")
            break
        for key, events in sel.select(timeout=1.0):
            i = key.data
            c = conns[i]
            try:
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(i, f"connect: {os.strerror(err)}")
                        continue
                    c.state = "sending"
                if c.state == "sending":
                    sent = c.sock.send(c.out)
                    c.out = c.out[sent:]
                    if not c.out:
                        c.state = "reading"
                        sel.modify(c.sock, selectors.EVENT_READ, i)
                    continue
                data = c.sock.recv(65536)
                if not data:
                    fail(i, "closed by the proxy")
                    continue
                c.buf += data
                if _parse(c):
                    sel.unregister(c.sock)
                    active -= 1
                    if c.state == "200":
                        c.ok += 1
                    else:
                        failures[i] = c.state
                    c.state = "idle"
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as err:
                fail(i, f"{type(err).__name__}: {err.strerror or err}")
    sel.close()
    return failures


def open_count(conns):
    """Connections still open on both sides: a socket that the proxy has closed reads as
    end of file (checked without blocking or consuming anything); those are closed here."""
    count = 0
    for c in conns:
        if c.sock is None:
            continue
        try:
            closed = c.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            closed = False
        except OSError:
            closed = True
        if closed:
            c.sock.close()
            c.sock = None
            c.error = "closed by the proxy"
        else:
            count += 1
    return count


def memory(pids):
    rss = pss = 0
    for pid in pids:
        try:
            rss += b.rss_bytes(pid)
            pss += b.pss_bytes(pid)
        except OSError:
            pass
    return rss, pss


class Peak:
    """The highest RSS of the proxy's processes, sampled every 50 ms while in use."""

    def __init__(self, pids_of):
        self.pids_of, self.max = pids_of, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._done.wait(0.05):
            self.max = max(self.max, memory(self.pids_of())[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._done.set()
        self._thread.join()


def measure(name, port, pids_of, args):
    """Memory at 0, 1,000 (or a tenth) and N connections, after a wave, and the final check.
    Returns a dict of the readings (bytes) and counts."""
    n = args.connections
    step = 1000 if n >= 2000 else n // 10
    for _ in range(20):
        assert b.http_get(port)[0] == 200
    time.sleep(SETTLE)
    r = {"mem0": memory(pids_of())}
    conns = [Conn() for _ in range(n)]
    failures = {}
    t0 = time.monotonic()
    failures.update(exchange(port, conns[:step], OPENING))
    time.sleep(SETTLE)
    r["mem1"] = memory(pids_of())
    with Peak(pids_of) as peak:
        failures.update({k + step: v for k, v in exchange(port, conns[step:], OPENING).items()})
    r["open_s"] = time.monotonic() - t0
    time.sleep(SETTLE)
    r["memN"] = memory(pids_of())
    r["peak_open"] = peak.max
    r["opened"] = open_count(conns)

    # Every connection sends a request at the same moment.
    live = [c for c in conns if c.sock is not None]
    with Peak(pids_of) as peak:
        t = time.monotonic()
        wave_failures = exchange(port, live, len(live))
        r["wave_s"] = time.monotonic() - t
    r["wave_peak"] = peak.max
    time.sleep(SETTLE)
    r["mem_wave"] = memory(pids_of())
    r["wave_failed"] = len(wave_failures)

    # Held open, a wave every args.refresh seconds keeping them from the idle timeout.
    waves = 1
    hold_until = time.monotonic() + args.hold
    while True:
        left = hold_until - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, args.refresh) if args.refresh > 0 else left)
        if args.refresh > 0 and hold_until - time.monotonic() > 0:
            live = [c for c in conns if c.sock is not None]
            r["wave_failed"] += len(exchange(port, live, len(live)))
            waves += 1
    r["waves"] = waves
    r["mem_held"] = memory(pids_of())

    # The end: all still open? One in ten must answer a request with 200.
    r["still_open"] = open_count(conns)
    sample = conns[::10]
    live = [c for c in sample if c.sock is not None]
    sample_failures = exchange(port, live, OPENING)
    r["sample"] = len(sample)
    r["sample_ok"] = len(live) - len(sample_failures)
    r["held_s"] = time.monotonic() - t0
    r["open_failed"] = len(failures)
    reasons = {}
    for why in list(failures.values()) + list(wave_failures.values()) + list(sample_failures.values()):
        reasons[why] = reasons.get(why, 0) + 1
    r["reasons"] = reasons
    for c in conns:
        if c.sock is not None:
            c.sock.close()
    print(
        f"  {name:<9} opened {r['opened']}/{n} in {r['open_s']:.1f}s; RSS "
        f"0: {b.mb(r['mem0'][0]):.1f} MB, {step}: {b.mb(r['mem1'][0]):.1f} MB, "
        f"{n}: {b.mb(r['memN'][0]):.1f} MB, after wave ({r['wave_s']:.1f}s): "
        f"{b.mb(r['mem_wave'][0]):.1f} MB (peak {b.mb(r['wave_peak']):.1f}); held "
        f"{r['held_s']:.0f}s with {r['waves']} waves, {r['still_open']} open, "
        f"sample {r['sample_ok']}/{r['sample']} ok"
        + (f"; failures {reasons}" if reasons else ""),
        flush=True,
    )
    r["step"] = step
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--connections", type=int,
                   default=int(os.environ.get("BENCH_CONNECTIONS") or (300 if b.SMOKE else 10000)))
    p.add_argument("--rounds", type=int,
                   default=int(os.environ.get("BENCH_ROUNDS") or (1 if b.SMOKE else 3)))
    p.add_argument("--hold", type=float, default=2.0 if b.SMOKE else 10.0,
                   help="seconds to hold the connections after the first wave")
    p.add_argument("--refresh", type=float, default=10.0,
                   help="seconds between waves while holding (0: none; molt closes idle connections after 30 s)")
    args = p.parse_args()
    n = args.connections

    b.need("node", "nginx")
    molt = b.molt_binary()
    # What a dyno runs is the static musl build, whose allocator gives freed memory back
    # differently from glibc's: both are measured.
    static, no_static = b.molt_static_binary()
    if no_static:
        print(f"  molt-musl left out: {no_static}", flush=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = b.raise_nofile()
    # The generator holds n sockets; molt, which inherits the same hard limit, holds n
    # client sockets plus up to MOLT_WORKER_CONCURRENCY upstream ones per worker.
    needed = n + WORKERS * CONCURRENCY + 100
    if limit < needed:
        raise SystemExit(
            f"bench: the open-file hard limit is {hard} (soft was {soft}): too low for {n} "
            f"connections (the load generator and molt need {needed} each); raise it "
            f"(ulimit -Hn, LimitNOFILE=) or pass a smaller --connections"
        )
    print(
        f"connections: {n} keep-alive connections, {args.rounds} rounds, hold {args.hold:.0f}s "
        f"({f'a wave every {args.refresh:.0f}s' if args.refresh > 0 else 'no waves'}); "
        f"open-file limit {limit} (soft was {soft})",
        flush=True,
    )
    work = b.temp_dir()
    upstreams = [b.free_port() for _ in range(WORKERS)]
    for port in upstreams:
        b.start_node(port)

    molts = [("molt", molt)] + ([("molt-musl", static)] if static else [])
    results = {name: [] for name, _ in molts}
    results["nginx"] = []
    for i in range(args.rounds):
        for name, binary in molts:
            port = b.free_port()
            log = os.path.join(work, f"{name}-{i}.log")
            proc, _env = b.start_molt(
                binary,
                port,
                work,
                ["node", b.UPSTREAM_JS],
                log,
                ready_workers=WORKERS,
                min_workers=WORKERS,
                max_workers=WORKERS,
                # Node answers many requests at once, but a wave of n would otherwise take n
                # upstream connections and, with the n client ones, overrun the open-file
                # limit: molt queues what is past CONCURRENCY per worker instead.
                worker_concurrency=CONCURRENCY,
                max_queue=n + 1000,
            )
            results[name].append(measure(name, port, lambda: [proc.pid], args))
            exited = proc.poll()
            b.stop(proc)
            if exited is not None:
                with open(log, errors="replace") as f:
                    raise SystemExit(f"bench: {name} exited with {exited} during the run:\n{f.read()[-3000:]}")

        port = b.free_port()
        ngx_dir = os.path.join(work, f"nginx-{i}")
        os.makedirs(ngx_dir)
        os.chmod(ngx_dir, 0o755)
        # A wave takes an upstream connection per request: both sides of n in one worker
        # at worst.
        proc = b.start_nginx(port, upstreams, ngx_dir, worker_connections=2 * n + 1000)
        results["nginx"].append(measure("nginx", port, lambda: b.tree(proc.pid), args))
        b.stop(proc)
        print(f"  round {i + 1}/{args.rounds} done", flush=True)

    step = results["molt"][0]["step"]
    headers = [
        "process",
        "RSS MB at 0",
        f"at {step}",
        f"at {n}",
        f"after {n}-request wave",
        "wave peak",
        f"KB/conn (0->{n})",
        f"PSS MB at {n}",
        f"PSS KB/conn (0->{n})",
        "open at end",
        "sample 200s",
        "failed",
    ]
    rows = []
    per_conn = {}
    labels = [("molt", "molt (1 process, glibc)"), ("molt-musl", "molt (static musl, as shipped)"),
              ("nginx", "nginx (master + workers)")]
    for name, label in [(name, label) for name, label in labels if name in results]:
        runs = results[name]
        med = lambda key, k=0: b.median([r[key][k] if isinstance(r[key], tuple) else r[key] for r in runs])
        kb_conn = b.median([(r["memN"][0] - r["mem0"][0]) / n / 1024 for r in runs])
        pss_conn = b.median([(r["memN"][1] - r["mem0"][1]) / n / 1024 for r in runs])
        per_conn[name] = kb_conn
        failed = sum(r["open_failed"] + r["wave_failed"] + (r["sample"] - r["sample_ok"]) for r in runs)
        rows.append(
            [
                label,
                b.mb(med("mem0")),
                b.mb(med("mem1")),
                b.mb(med("memN")),
                b.mb(med("mem_wave")),
                b.mb(med("wave_peak")),
                kb_conn,
                b.mb(med("memN", 1)),
                pss_conn,
                f"{min(r['still_open'] for r in runs)}/{n}",
                f"{min(r['sample_ok'] for r in runs)}/{runs[0]['sample']}",
                failed,
            ]
        )
    for name in [name for name, _ in molts]:
        rows.append([f"{name}/nginx", *([""] * 5), b.ratio(per_conn[name], per_conn["nginx"]), "", "", "", "", ""])
    total_failed = sum(row[-1] for row in rows if isinstance(row[-1], int))
    closed = sum(n - r["still_open"] for rs in results.values() for r in rs)
    all_open = closed == 0
    held = b.median([r["held_s"] for rs in results.values() for r in rs])
    reasons = {}
    for rs in results.values():
        for r in rs:
            for k, v in r["reasons"].items():
                reasons[k] = reasons.get(k, 0) + v
    b.report(
        f"Connections: {n} concurrent keep-alive connections held ({args.rounds} alternating rounds, medians)",
        headers,
        rows,
        "connections.csv",
        notes=[
            f"Each connection completed one request before being counted; the wave is one "
            f"request on every connection at once. Held {held:.0f}s from the first connection "
            f"(median), then 1 in 10 connections sent one more request. molt: {WORKERS} Node "
            f"workers, MOLT_WORKER_CONCURRENCY={CONCURRENCY}; nginx: worker_processes auto, in front of "
            f"{WORKERS} standalone Node upstreams.",
            f"Result: {'every connection still open and usable' if all_open and not total_failed else 'FAILED'}"
            f"; {total_failed} failed requests" + (f" ({reasons})" if reasons else "")
            + (f"; {closed} connections found closed by the proxy at the end" if closed else "")
            + ".",
        ],
    )
    if total_failed or not all_open:
        sys.exit(1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Footprint: molt's own memory (the molt process, not its workers) idle with 4 workers and
while it holds 1,000 concurrent keep-alive connections, with nginx's (master and workers
together) beside it, proxying to 4 Node upstreams in the same way.

Each round starts the contender afresh; rounds alternate (molt, nginx, molt, nginx, ...)
and the table gives medians. RSS counts shared pages (libc, the binary) in full in every
process; PSS shares them out, so nginx's master and workers are best compared by PSS.

    test/bench/footprint.py [--smoke]     # BENCH_ROUNDS, BENCH_CONNECTIONS override
"""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS") or (1 if b.SMOKE else 3))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS") or (100 if b.SMOKE else 1000))
WORKERS = 4
# Memory settles for this long before a reading.
SETTLE = 0.5 if b.SMOKE else 2.0


def request_on(sock):
    """One GET on an open keep-alive connection; True when a whole 200 response came back."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        body += chunk
    return head.startswith(b"HTTP/1.1 200")


def hold(port, n):
    """Opens n connections, one request on each, and keeps them all open."""
    socks, failed = [], 0
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        socks.append(s)
        if not request_on(s):
            failed += 1
    return socks, failed


def memory(pids):
    rss = pss = 0
    for pid in pids:
        rss += b.rss_bytes(pid)
        pss += b.pss_bytes(pid)
    return rss, pss


def measure(port, pids_of):
    """Idle memory, then memory while holding CONNECTIONS connections."""
    for _ in range(20):
        assert b.http_get(port)[0] == 200
    time.sleep(SETTLE)
    idle = memory(pids_of())
    socks, failed = hold(port, CONNECTIONS)
    time.sleep(SETTLE)
    # Every held connection must still be open and served: count the ones that are.
    alive = sum(request_on(s) for s in socks)
    held = memory(pids_of())
    for s in socks:
        s.close()
    return idle, held, failed + (CONNECTIONS - alive)


def main():
    b.need("node", "nginx")
    molt = b.molt_binary()
    limit = b.raise_nofile()
    if limit < 2 * CONNECTIONS + 100:
        raise SystemExit(f"bench: open-file limit {limit} is too low for {CONNECTIONS} connections")
    work = b.temp_dir()
    upstreams = [b.free_port() for _ in range(WORKERS)]
    for port in upstreams:
        b.start_node(port)

    results = {"molt": [], "nginx": []}
    for i in range(ROUNDS):
        # molt, with 4 Node workers of its own.
        port = b.free_port()
        proc, _env = b.start_molt(
            molt,
            port,
            work,
            ["node", b.UPSTREAM_JS],
            os.path.join(work, f"molt-{i}.log"),
            ready_workers=WORKERS,
            min_workers=WORKERS,
            max_workers=WORKERS,
        )
        results["molt"].append(measure(port, lambda: [proc.pid]))
        b.stop(proc)

        # nginx, master and workers, in front of the 4 standalone Node upstreams.
        port = b.free_port()
        ngx_dir = os.path.join(work, f"nginx-{i}")
        os.makedirs(ngx_dir)
        os.chmod(ngx_dir, 0o755)
        proc = b.start_nginx(port, upstreams, ngx_dir)
        results["nginx"].append(measure(port, lambda: b.tree(proc.pid)))
        b.stop(proc)
        for name in results:
            idle, held, failed = results[name][-1]
            print(
                f"  round {i + 1}/{ROUNDS} {name:<6} idle RSS {b.mb(idle[0]):.1f} MB "
                f"PSS {b.mb(idle[1]):.1f} MB; {CONNECTIONS} connections RSS "
                f"{b.mb(held[0]):.1f} MB PSS {b.mb(held[1]):.1f} MB; failed {failed}",
                flush=True,
            )

    headers = [
        "process",
        "idle RSS MB",
        "idle PSS MB",
        f"{CONNECTIONS} conns RSS MB",
        f"{CONNECTIONS} conns PSS MB",
        "failed",
        "rounds",
    ]
    rows = []
    for name, label in (("molt", "molt (1 process)"), ("nginx", "nginx (master + workers)")):
        runs = results[name]
        rows.append(
            [
                label,
                b.mb(b.median([r[0][0] for r in runs])),
                b.mb(b.median([r[0][1] for r in runs])),
                b.mb(b.median([r[1][0] for r in runs])),
                b.mb(b.median([r[1][1] for r in runs])),
                sum(r[2] for r in runs),
                ROUNDS,
            ]
        )
    molt_idle, molt_held = rows[0][1], rows[0][3]
    b.report(
        f"Footprint: molt with {WORKERS} workers, idle and holding {CONNECTIONS} keep-alive connections",
        headers,
        rows,
        "footprint.csv",
        notes=[
            f"Targets: molt RSS < 10 MB idle (measured {molt_idle:.1f} MB) and < 32 MB with "
            f"1,000 connections (measured {molt_held:.1f} MB with {CONNECTIONS})."
        ],
    )


if __name__ == "__main__":
    main()

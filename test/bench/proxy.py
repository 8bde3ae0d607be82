#!/usr/bin/env python3
"""Proxy overhead: a fast upstream (Node's http server) reached directly, through molt
(one worker, MOLT_WORKER_CONCURRENCY=0), through molt with its default learned concurrency
("molt auto", one worker) and through nginx (reverse proxy with an upstream keep-alive
pool, test/bench/nginx.conf), with wrk on keep-alive connections.

The contenders alternate (direct, molt, molt auto, nginx, direct, ...) and the table gives
the median of each over the rounds, and the ratios molt/nginx, molt auto/nginx and
molt/direct.

    test/bench/proxy.py [--smoke]     # BENCH_ROUNDS, BENCH_SECONDS, BENCH_CONNECTIONS override
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS") or (1 if b.SMOKE else 10))
SECONDS = int(os.environ.get("BENCH_SECONDS") or (1 if b.SMOKE else 5))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS") or 50)


def main():
    b.need("wrk", "node", "nginx")
    molt = b.molt_binary()
    b.raise_nofile()
    work = b.temp_dir()
    upstream, molt_port, auto_port, nginx_port = (b.free_port() for _ in range(4))
    b.start_node(upstream, log=os.path.join(work, "node.log"))

    def start_molt(port, log, concurrency):
        """molt in front of one Node worker, its concurrency fixed or learned."""
        proc, _env = b.start_molt(
            molt,
            port,
            work,
            ["node", b.UPSTREAM_JS],
            os.path.join(work, log),
            min_workers=1,
            max_workers=1,
            worker_concurrency=concurrency,
        )
        return proc

    molt_proc = start_molt(molt_port, "molt.log", 0)
    auto_proc = start_molt(auto_port, "molt-auto.log", "auto")
    nginx_proc = b.start_nginx(nginx_port, upstream, work)

    print(
        f"proxy overhead: wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, {ROUNDS} rounds, "
        "contenders alternating",
        flush=True,
    )
    runs = b.alternate(
        [("direct", upstream), ("molt", molt_port), ("molt auto", auto_port), ("nginx", nginx_port)],
        ROUNDS,
        SECONDS,
        CONNECTIONS,
        # molt's own process (not its worker); nginx's master and workers.
        pids={
            "molt": lambda: [molt_proc.pid],
            "molt auto": lambda: [auto_proc.pid],
            "nginx": lambda: b.tree(nginx_proc.pid),
        },
    )
    s = {name: b.summarize(r) for name, r in runs.items()}
    headers = ["contender", "req/s (median)", "p50 ms", "p99 ms", "proxy CPU us/request", "errors", "rounds"]
    rows = [
        [name, s[name]["rps"], s[name]["p50_ms"], s[name]["p99_ms"], s[name]["cpu_us"], s[name]["errors"], ROUNDS]
        for name in ("direct", "molt", "molt auto", "nginx")
    ]
    for name in ("molt", "molt auto"):
        rows.append(
            [
                f"{name}/nginx",
                b.ratio(s[name]["rps"], s["nginx"]["rps"]),
                b.ratio(s[name]["p50_ms"], s["nginx"]["p50_ms"]),
                b.ratio(s[name]["p99_ms"], s["nginx"]["p99_ms"]),
                b.ratio(s[name]["cpu_us"], s["nginx"]["cpu_us"]),
                "",
                "",
            ]
        )
    rows.append(
        [
            "molt/direct",
            b.ratio(s["molt"]["rps"], s["direct"]["rps"]),
            b.ratio(s["molt"]["p50_ms"], s["direct"]["p50_ms"]),
            b.ratio(s["molt"]["p99_ms"], s["direct"]["p99_ms"]),
            "",
            "",
            "",
        ]
    )
    b.report(
        "Proxy overhead (Node upstream; ratios: throughput higher is better, latency lower is better)",
        headers,
        rows,
        "proxy.csv",
        notes=[
            f"Target: molt/nginx throughput >= 1.0 with p99 no worse (ratio <= 1.0). "
            f"Measured: {b.ratio(s['molt']['rps'], s['nginx']['rps']):.2f} throughput, "
            f"{b.ratio(s['molt']['p99_ms'], s['nginx']['p99_ms']):.2f} p99; "
            f"under the default learned concurrency (molt auto) "
            f"{b.ratio(s['molt auto']['rps'], s['nginx']['rps']):.2f} throughput, "
            f"{b.ratio(s['molt auto']['p99_ms'], s['nginx']['p99_ms']):.2f} p99."
        ],
    )


if __name__ == "__main__":
    main()

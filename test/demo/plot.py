#!/usr/bin/env python3
"""Draws the leak demo's memory over time with matplotlib: Unicorn alone, the same app's
dyno under molt, the budget and molt's usable share of it, a mark at each recycle under
molt and at each OOM kill of Unicorn alone, and the idle seconds before the load.
Writes PREFIX.svg and PREFIX.png.

    plot.py memory.csv memory.json PREFIX
"""

import csv
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MB = 1 << 20


def rises(values):
    """Indexes where a running count went up."""
    return [i for i in range(1, len(values)) if values[i] > values[i - 1]]


def main():
    csv_path, meta_path, prefix = sys.argv[1:4]
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    with open(meta_path) as f:
        meta = json.load(f)
    t = [float(r["t"]) for r in rows]
    plain = [int(r["unicorn"]) / MB for r in rows]
    molt = [int(r["molt"]) / MB for r in rows]
    recycles = [int(r["recycles"]) for r in rows]
    ooms = [int(r["unicorn_oom_kills"]) for r in rows]
    budget, usable = meta["budget"] / MB, meta["usable"] / MB
    workers = meta["workers"]

    # Reproducible SVG output: fixed element ids and no creation date.
    plt.rcParams["svg.hashsalt"] = "molt-demo"
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    ax.axvspan(min(t, default=0), 0, color="grey", alpha=0.12, linewidth=0, label="idle, before the load")
    ax.plot(t, plain, color="#d62728", linewidth=2, label=f"without molt: unicorn, {workers} workers")
    ax.plot(t, molt, color="#1f77b4", linewidth=2, label=f"with molt: the whole dyno (molt + unicorn, {workers} children)")
    marks = rises(recycles)
    if marks:
        ax.plot(
            [t[i] for i in marks],
            [molt[i] for i in marks],
            linestyle="none",
            marker="v",
            markersize=6,
            color="#1f77b4",
            label=f"a child recycled ({recycles[-1] - recycles[0]} in all)",
        )
    kills = rises(ooms)
    if kills:
        ax.plot(
            [t[i] for i in kills],
            [plain[i] for i in kills],
            linestyle="none",
            marker="x",
            markersize=8,
            markeredgewidth=2,
            color="#d62728",
            label=f"the kernel's OOM killer ({ooms[-1]} kills)",
        )
    limit = "memory budget and cgroup limit" if meta["cgroup"] else "memory budget"
    ax.axhline(budget, color="black", linestyle="--", linewidth=1.2, label=f"{limit} {budget:.0f} MB")
    ax.axhline(usable, color="grey", linestyle=":", linewidth=1.2, label=f"molt's usable share {usable:.0f} MB")
    ax.set_xlabel("seconds under load")
    ax.set_ylabel("memory (PSS, MB)")
    ax.set_title(
        f"The same leaking Unicorn app, the same load ({meta['rate']:g} requests/s, "
        f"{meta['page_kb']} KiB kept per request)",
        fontsize=11,
    )
    ax.set_xlim(min(t, default=0), max(t, default=1))
    ax.set_ylim(0, max(max(plain, default=0), budget) * 1.08)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.text(0.99, 0.01, meta["machine"], ha="right", va="bottom", fontsize=7, color="grey")
    fig.tight_layout()
    fig.savefig(prefix + ".svg", metadata={"Date": None})
    fig.savefig(prefix + ".png")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Draws the leak demo's memory over time with matplotlib: the app without molt, the same
app's dyno under molt, the budget and molt's usable share of it, and a mark at each
recycle. Writes PREFIX.svg and PREFIX.png.

    plot.py memory.csv memory.json PREFIX
"""

import csv
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MB = 1 << 20


def main():
    csv_path, meta_path, prefix = sys.argv[1:4]
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    with open(meta_path) as f:
        meta = json.load(f)
    t = [float(r["t"]) for r in rows]
    bare = [int(r["without_molt"]) / MB for r in rows]
    molt = [int(r["with_molt"]) / MB for r in rows]
    recycles = [int(r["recycles"]) for r in rows]
    budget, usable = meta["budget"] / MB, meta["usable"] / MB

    # Reproducible SVG output: fixed element ids and no creation date.
    plt.rcParams["svg.hashsalt"] = "molt-demo"
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    ax.plot(t, bare, color="#d62728", linewidth=2, label="without molt: python3 app.py")
    ax.plot(t, molt, color="#1f77b4", linewidth=2, label="with molt: the whole dyno (molt + workers)")
    marks = [i for i in range(1, len(rows)) if recycles[i] > recycles[i - 1]]
    if marks:
        ax.plot(
            [t[i] for i in marks],
            [molt[i] for i in marks],
            linestyle="none",
            marker="v",
            markersize=6,
            color="#1f77b4",
            label=f"a worker recycled ({recycles[-1]} in all)",
        )
    ax.axhline(budget, color="black", linestyle="--", linewidth=1.2, label=f"memory budget {budget:.0f} MB")
    ax.axhline(usable, color="grey", linestyle=":", linewidth=1.2, label=f"molt's usable share {usable:.0f} MB")
    ax.set_xlabel("seconds under load")
    ax.set_ylabel("memory (PSS, MB)")
    ax.set_title(
        f"The same leaking app, the same load ({meta['rate']:g} requests/s, {meta['page_kb']} KiB kept per request)"
    )
    ax.set_xlim(0, max(t) if t else 1)
    ax.set_ylim(0, max(max(bare, default=0), budget) * 1.08)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    fig.text(0.99, 0.01, meta["machine"], ha="right", va="bottom", fontsize=7, color="grey")
    fig.tight_layout()
    fig.savefig(prefix + ".svg", metadata={"Date": None})
    fig.savefig(prefix + ".png")


if __name__ == "__main__":
    main()

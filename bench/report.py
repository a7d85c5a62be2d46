#!/usr/bin/env python3
"""Turns a benchmark JSON (flashmla_bench --json, or bench.py --json) into a markdown table and a
bar chart of the speedup over FlashMLA per row.

    python bench/report.py results.json            # writes results.md and results.png
    python bench/report.py results.json --md T.md --png T.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

# Rows faster than FlashMLA are drawn in one colour, slower ones in another.
FASTER_COLOR = "tab:green"
SLOWER_COLOR = "tab:red"


def fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def yes_no(value) -> str:
    return "yes" if value else "no"


# FlashMLA's figures in the grid were measured on this GPU model (the SXM card; NVML names the PCIe
# and NVL cards, with other memory and SM counts, "H100 PCIe" and "H100 NVL"); a run on any other
# gets no ratio.
FLASHMLA_FIGURES_GPU = "H100 80GB HBM3"

# How a row was timed and flushed, as the benches record it.
TIMING_TEXT = {"graph": "CUDA-graph replays", "eager": "eager calls (host overhead included)"}
FLUSH_TEXT = {
    "write": "L2 flushed before each by writing over it",
    "read": "L2 flushed before each by reading through it (no dirty lines)",
    "none": "L2 not flushed",
}


def comparable_with_flashmla(row) -> bool:
    return FLASHMLA_FIGURES_GPU in str(row.get("device", ""))


def distinct(rows, key: str, default: str = "?") -> list[str]:
    """The values `key` takes over the rows, in order of appearance."""
    seen: list[str] = []
    for row in rows:
        value = str(row.get(key, default))
        if value not in seen:
            seen.append(value)
    return seen


def describe_method(rows) -> str:
    # flashmla_bench records no "timing": it always replays graphs.
    timing = ", ".join(TIMING_TEXT.get(t, t) for t in distinct(rows, "timing", "graph"))
    flush = "; ".join(FLUSH_TEXT.get(f, f"flush {f}") for f in distinct(rows, "flush", "write"))
    return (f"dtype {'/'.join(distinct(rows, 'dtype'))}, h_kv {'/'.join(distinct(rows, 'h_kv'))}, page "
            f"{'/'.join(distinct(rows, 'page_block_size'))}, backend {'/'.join(distinct(rows, 'backend'))}; "
            f"median of {'/'.join(distinct(rows, 'iters'))} {timing}; {flush}.")


def ratio(row) -> float | None:
    ours, theirs = row.get("median_us"), row.get("flashmla_us")
    if not ours or theirs is None or not comparable_with_flashmla(row):
        return None
    return theirs / ours


def peer_names(rows) -> list[str]:
    names: list[str] = []
    for row in rows:
        for name in (row.get("peers") or {}):
            if name not in names:
                names.append(name)
    return names


def describe_device(rows) -> str:
    """One line per distinct device/clock setting: numbers are comparable only within one GPU."""
    seen = []
    for row in rows:
        key = (row.get("device", "unknown device"), row.get("sm_count"),
               row.get("max_sm_clock_mhz"))
        if key not in seen:
            seen.append(key)
    clocks = sorted({row["sm_clock_mhz"] for row in rows if row.get("sm_clock_mhz") is not None})
    now = f"{clocks[0]}-{clocks[-1]} MHz" if clocks else "n/a"
    lines = []
    for name, sms, max_mhz in seen:
        sms = "?" if sms is None else sms
        max_mhz = "?" if max_mhz is None else max_mhz
        lines.append(f"Device: {name}, {sms} SMs, SM clock max {max_mhz} MHz, "
                     f"measured after each row: {now}.")
    return "\n".join(lines)


def markdown(rows, source: str) -> str:
    peers = peer_names(rows)
    with_check = any(row.get("check") for row in rows)
    header = ["case", "b", "s_q", "h_q", "s_k", "varlen", "causal", "our µs", "TFLOP/s", "GB/s",
              "FlashMLA µs", "FlashMLA/ours"]
    header += [f"{p} µs" for p in peers]
    if with_check:
        header.append("check (out rel L2 / lse abs)")
    lines = [
        f"# flashmla decode benchmark ({source})",
        "",
        describe_device(rows),
        describe_method(rows) + " TFLOP/s and GB/s use the mean drawn length (mla-decode.md §2); "
        "causal rows are charged full FLOPs. FlashMLA/ours > 1 means we are faster.",
    ]
    if not all(comparable_with_flashmla(row) for row in rows):
        lines.append(f"FlashMLA's times are {FLASHMLA_FIGURES_GPU} figures: no ratio is given for rows "
                     "measured on another GPU.")
    lines += [
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        cells = [
            str(row.get("case", "")), str(row["b"]), str(row["s_q"]), str(row["h_q"]),
            str(row["s_k"]), yes_no(row.get("varlen")), yes_no(row.get("causal")),
            fmt(row.get("median_us")), fmt(row.get("tflops")), fmt(row.get("gbps")),
            fmt(row.get("flashmla_us")), fmt(ratio(row), 2),
        ]
        for p in peers:
            cells.append(fmt(((row.get("peers") or {}).get(p) or {}).get("median_us")))
        if with_check:
            check = row.get("check")
            cells.append(
                "-" if not check else
                f"{check.get('out_rel_l2', float('nan')):.1e} / "
                f"{check.get('lse_max_abs', float('nan')):.1e} "
                f"{'ok' if check.get('ok') else 'FAILED'}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def row_label(row) -> str:
    flags = ("v" if row.get("varlen") else "") + ("c" if row.get("causal") else "")
    return (f"{row.get('case', '')} b{row['b']} sq{row['s_q']} hq{row['h_q']} sk{row['s_k']}"
            + (f" {flags}" if flags else ""))


def plot(rows, path: Path, title: str) -> bool:
    """Returns False (and says why) when there is nothing to plot or no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib is not installed (pip install matplotlib); no plot written",
              file=sys.stderr)
        return False
    points = [(row_label(r), ratio(r)) for r in rows if ratio(r) is not None]
    if not points:
        print(f"report.py: no row has a FlashMLA time measured on the same GPU model "
              f"({FLASHMLA_FIGURES_GPU}); no plot written", file=sys.stderr)
        return False
    labels = [label for label, _ in points]
    speedups = [s for _, s in points]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(points) + 2), 5.0))
    colors = [FASTER_COLOR if s >= 1.0 else SLOWER_COLOR for s in speedups]
    bars = ax.bar(range(len(points)), speedups, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    for bar, s in zip(bars, speedups):
        ax.annotate(f"{s:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup over FlashMLA (FlashMLA µs / our µs)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="benchmark rows (a JSON list)")
    parser.add_argument("--md", type=Path, help="markdown output (default: JSON path with .md)")
    parser.add_argument("--png", type=Path, help="plot output (default: JSON path with .png)")
    args = parser.parse_args(argv)

    rows = json.loads(args.json.read_text())
    if not isinstance(rows, list) or not rows:
        print(f"report.py: {args.json}: expected a non-empty JSON list of rows", file=sys.stderr)
        return 1
    md_path = args.md or args.json.with_suffix(".md")
    png_path = args.png or args.json.with_suffix(".png")
    md_path.write_text(markdown(rows, args.json.name))
    print(f"wrote {md_path}")
    title = f"flashmla vs FlashMLA, {rows[0].get('device', 'unknown device')} ({args.json.name})"
    if not plot(rows, png_path, title):
        return 1
    print(f"wrote {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

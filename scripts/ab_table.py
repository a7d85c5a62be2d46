#!/usr/bin/env python3
"""Per-row table of two sides of an alternated grid run (flashmla_bench --json files
LOG/PREFIX_<side>_rep<N>.json): each side's median µs per repetition, then the second side's
change against the first, as a percentage (default) or as a ratio (--ratio)."""
import argparse
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("log", help="folder holding the JSON files")
    ap.add_argument("prefix", help="file prefix, e.g. ab or dtype")
    ap.add_argument("first", help="first side's name, e.g. base")
    ap.add_argument("second", help="second side's name, e.g. tree")
    ap.add_argument("reps", type=int, help="repetitions per side")
    ap.add_argument("--ratio", action="store_true", help="second/first as a ratio instead of a change in %%")
    ap.add_argument("--width", type=int, default=22, help="width of each side's column")
    a = ap.parse_args()
    runs = {side: [json.load(open(f"{a.log}/{a.prefix}_{side}_rep{r}.json")) for r in range(1, a.reps + 1)]
            for side in (a.first, a.second)}
    last = f"{a.second}/{a.first}" if a.ratio else "change"
    w = a.width
    print(f"{'row':44} {a.first + ' us':>{w}} {a.second + ' us':>{w}} {last:>{max(8, len(last))}}")
    fmt = lambda xs: " / ".join(f"{x:.1f}" for x in xs)
    for i, row in enumerate(runs[a.first][0]):
        name = (f"{row['case']} b={row['b']} s_q={row['s_q']} h_q={row['h_q']} s_k={row['s_k']}"
                f"{' causal' if row['causal'] else ''}")
        one = [run[i]["median_us"] for run in runs[a.first]]
        two = [run[i]["median_us"] for run in runs[a.second]]
        ratio = sum(two) / sum(one)
        third = f"{ratio:{max(8, len(last))}.3f}" if a.ratio else f"{100 * (ratio - 1):+7.1f}%"
        print(f"{name:44} {fmt(one):>{w}} {fmt(two):>{w}} {third}")


if __name__ == "__main__":
    main()

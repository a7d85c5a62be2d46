#!/usr/bin/env python3
"""Top SASS instructions by warp-stall samples, from `ncu -i REPORT --page source --csv
--print-source sass` output: where a kernel's warps wait, for the performance log.

Usage: sass_hotspots.py SOURCE_CSV [top_n]
"""
import csv
import sys

SAMPLE_COLUMNS = ("Warp Stall Sampling (All Samples)", "Warp Stall Sampling (Not-issued Samples)")


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def main() -> int:
    path = sys.argv[1]
    top_n = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    rows = [r for r in csv.reader(open(path, newline="")) if r]
    header_at = next((i for i, r in enumerate(rows) if "Source" in r and "Address" in r), None)
    if header_at is None:
        print(f"no source table in {path}; first lines:")
        for r in rows[:5]:
            print("  ", r[:8])
        return 1
    header = rows[header_at]
    col = {name: i for i, name in enumerate(header)}
    samples = next((c for c in SAMPLE_COLUMNS if c in col), None)
    if samples is None:
        print("no stall-sampling column; columns:", header)
        return 1
    body = [r for r in rows[header_at + 1:] if len(r) == len(header)]
    total = sum(number(r[col[samples]]) for r in body) or 1.0
    print(f"{len(body)} instructions, {total:.0f} samples ({samples})")
    # Stall-reason columns name the reason after 'stall_' or in parentheses; keep those with data.
    reasons = [name for name in header if name.startswith("stall_") or "Stall" in name and name not in SAMPLE_COLUMNS]
    ranked = sorted(body, key=lambda r: number(r[col[samples]]), reverse=True)[:top_n]
    for r in ranked:
        share = 100.0 * number(r[col[samples]]) / total
        top_reasons = sorted(((number(r[col[n]]), n) for n in reasons), reverse=True)[:2]
        why = ", ".join(f"{n}={v:.0f}" for v, n in top_reasons if v > 0)
        print(f"{share:5.1f}% {r[col['Address']]:>8} {r[col['Source']][:70]:70} {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Prints the metric rows of an `ncu --csv` report one per line: ID, kernel, metric, value, unit.

Usage: ncu_csv.py CSV [--label TEXT] [--metrics NAME,NAME...]
  --label    text put before each line (e.g. the dtype the report was taken with)
  --metrics  print only these metrics (default: all)
ncu writes its own messages before the table; rows with few fields are those and are skipped.
"""
import argparse
import csv
import sys

MIN_TABLE_FIELDS = 10  # ncu's metric rows have ~15 fields; its log lines have one


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--label", default="")
    ap.add_argument("--metrics", default="")
    args = ap.parse_args()
    with open(args.csv, newline="") as f:
        rows = [r for r in csv.reader(f) if len(r) > MIN_TABLE_FIELDS]
    if not rows:
        print(f"  no ncu rows in {args.csv} (see its messages)")
        return 0
    col = {name: i for i, name in enumerate(rows[0])}
    wanted = set(filter(None, args.metrics.split(",")))
    prefix = f"{args.label} " if args.label else ""
    for r in rows[1:]:
        metric = r[col["Metric Name"]]
        if wanted and metric not in wanted:
            continue
        print(f"  {prefix}{r[col['ID']]:>3} {r[col['Kernel Name']][:48]:48} {metric:52} "
              f"{r[col['Metric Value']]} {r[col['Metric Unit']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

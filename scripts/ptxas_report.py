#!/usr/bin/env python3
"""Summarises ptxas -v output (from a verbose build log) as one line per kernel: registers, shared
memory, stack frame and spills. Exits non-zero when any kernel spills."""
import re
import subprocess
import sys

FUNC = re.compile(r"ptxas info\s*: Compiling entry function '(\S+)' for '(sm_\w+)'")
USED = re.compile(r"Used (\d+) registers")
SMEM = re.compile(r"(\d+) bytes smem")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
        return out if len(out) == len(names) else names
    except (OSError, subprocess.CalledProcessError):
        return names


def main(path):
    rows, current = [], None
    with open(path, errors="replace") as log:
        for line in log:
            if m := FUNC.search(line):
                current = {"name": m.group(1), "arch": m.group(2), "regs": "?", "smem": "0",
                           "frame": "0", "spill_st": "0", "spill_ld": "0"}
                rows.append(current)
            elif current is not None:
                if m := FRAME.search(line):
                    current.update(frame=m.group(1), spill_st=m.group(2), spill_ld=m.group(3))
                if m := USED.search(line):
                    current["regs"] = m.group(1)
                    if s := SMEM.search(line):
                        current["smem"] = s.group(1)
    names = demangle([r["name"] for r in rows])
    spills = False
    print(f"{'arch':7} {'regs':>4} {'smem':>6} {'frame':>5} {'spill st/ld':>11}  kernel")
    for row, name in sorted(zip(rows, names), key=lambda x: (x[1], x[0]["arch"])):
        short = re.sub(r"\(.*", "", name.replace("(anonymous namespace)::", ""))[:110]
        spill = f"{row['spill_st']}/{row['spill_ld']}"
        spills |= row["spill_st"] != "0" or row["spill_ld"] != "0"
        print(f"{row['arch']:7} {row['regs']:>4} {row['smem']:>6} {row['frame']:>5} {spill:>11}  {short}")
    if not rows:
        print("no ptxas output found (configure with -DFLASHMLA_PTXAS_VERBOSE=ON)")
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

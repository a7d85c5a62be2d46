#!/usr/bin/env python3
"""Sustained power, clock and energy per call of decode kernels on one shape.

The grid's timed rows run at the board's power cap, where the SM clock, and so the time, follows
the energy a kernel spends per cycle. Under Nsight Compute (unthrottled, one launch) two kernels
can take the same cycles and still differ in the grid. This runs each kernel back to back for
--seconds (CUDA-graph replays of --calls-per-graph calls, no L2 flush: the shapes worth asking
about read far more than L2 holds), samples NVML's power and SM clock meanwhile, and reports per
call: µs, mean W and MHz after --settle-s, cycles (µs x MHz) and energy (µs x W). Kernels take
turns for --rounds rounds so that the card's temperature drifts over all of them alike.

    python bench/power_draw.py --s-k 8192 --kernels flashmla:bf16,flashmla:fp16,flash_mla:bf16

Same data as bench.py (its problem builder); a peer whose output differs from ours is skipped.
The kernel `gemm` is not a decode: a square cuBLAS GEMM (torch.matmul, --gemm-size) in the same
dtype. It is the tensor pipe's best case, so its TFLOP/s at the cap is the ceiling that a TFLOP/s
target of a decode kernel on this board can be held against.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from typing import Callable

import torch

import bench

SAMPLE_PERIOD_S = 0.02
CALLS_PER_SYNC = 8  # graph replays queued between checks of the clock on the wall
PAGE_BLOCK_SIZE = 64  # the grid's page size
GEMM_SIZE = 8192  # large enough that cuBLAS runs its steady-state tiles on every SM
GEMM_NAME = "gemm"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_kernels(text: str, decode_names) -> list:
    """--kernels as (spec, name, dtype) triples, checked before any CUDA work so that a typo costs
    no device time; a bad entry's message lists every accepted name and dtype."""
    names = list(decode_names) + [GEMM_NAME]
    kernels = []
    for spec in text.split(","):
        name, sep, dtype = spec.strip().partition(":")
        if not sep or name not in names or dtype not in DTYPES:
            raise ValueError(f"--kernels: {spec.strip()!r} is not NAME:DTYPE with NAME one of "
                             f"{', '.join(names)} and DTYPE one of {', '.join(DTYPES)}")
        spec = f"{name}:{dtype}"
        if any(k[0] == spec for k in kernels):
            raise ValueError(f"--kernels: {spec!r} is given twice")
        kernels.append((spec, name, dtype))
    return kernels


class Sampler(threading.Thread):
    """Reads (time, W, MHz) from NVML until stopped."""

    def __init__(self, nvml: bench.Nvml):
        super().__init__(daemon=True)
        self.nvml = nvml
        self.samples = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.perf_counter(), self.nvml.power_w(), self.nvml.sm_clock()))
            time.sleep(SAMPLE_PERIOD_S)


def sustain(graph: torch.cuda.CUDAGraph, calls_per_graph: int, seconds: float, settle_s: float,
            nvml: bench.Nvml) -> dict:
    sampler = Sampler(nvml)
    sampler.start()
    start_wall = time.perf_counter()
    # Timing starts after the settling time, when the clock has found its level under the cap.
    start, replays = None, 0
    while time.perf_counter() - start_wall < seconds:
        if start is None and time.perf_counter() - start_wall >= settle_s:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        for _ in range(CALLS_PER_SYNC):
            graph.replay()
        replays += CALLS_PER_SYNC if start is not None else 0
        torch.cuda.synchronize()
    stop = torch.cuda.Event(enable_timing=True)
    stop.record()
    torch.cuda.synchronize()
    sampler.done.set()
    sampler.join()
    us = 1e3 * start.elapsed_time(stop) / (replays * calls_per_graph)
    settled = [s for s in sampler.samples if s[0] - start_wall >= settle_s and None not in s]
    result = {"us": us, "samples": len(settled)}
    if settled:
        result["watts"] = statistics.mean(s[1] for s in settled)
        result["mhz"] = statistics.mean(s[2] for s in settled)
        result["kcycles"] = us * result["mhz"] / 1e3
        result["mj"] = us * result["watts"] / 1e3
    return result


def gemm_call(n: int, dtype, device) -> Callable:
    """One n x n x n matmul into a preallocated output, so that a graph can replay it."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def run():
        return (torch.matmul(a, b, out=out),)
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_shape_arguments(ap)
    ap.add_argument("--kernels", default="flashmla:bf16,flash_mla:bf16",
                    help="comma-separated NAME:DTYPE, NAME flashmla (ours), a bench.py peer, "
                         "or gemm (a square cuBLAS GEMM, the tensor pipe's ceiling)")
    ap.add_argument("--gemm-size", type=int, default=GEMM_SIZE)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--settle-s", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls-per-graph", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.seconds <= args.settle_s:
        raise SystemExit("--seconds must exceed --settle-s")
    # Building an adapter touches no GPU: it runs only when handed a problem.
    adapters = dict(bench.PEERS, flashmla=bench.adapter_flashmla_like("flashmla"))
    try:
        kernels = parse_kernels(args.kernels, adapters)
    except ValueError as e:
        raise SystemExit(str(e)) from None

    if not torch.cuda.is_available():
        print("power_draw.py: no CUDA device", file=sys.stderr)
        return 1
    device = torch.device("cuda", torch.cuda.current_device())
    nvml = bench.Nvml(device.index)
    if nvml.power_w() is None:
        print("power_draw.py: NVML gives no power reading here", file=sys.stderr)
        return 1
    shape = bench.shape_from_args(args)

    graphs, problems, reference_out, flops = {}, {}, {}, {}
    for spec, name, dtype in kernels:
        if name == GEMM_NAME:
            fn = gemm_call(args.gemm_size, DTYPES[dtype], device)
            flops[spec] = 2.0 * args.gemm_size ** 3
            graphs[spec] = (bench.capture_graph(fn, args.calls_per_graph), fn)
            continue
        if dtype not in problems:
            problems[dtype] = bench.build_problem(shape, DTYPES[dtype], PAGE_BLOCK_SIZE, args.seed,
                                                  False, device)
            reference_out[dtype] = adapters["flashmla"](problems[dtype])()[0].float()
        try:
            fn = adapters[name](problems[dtype])
        except bench.Skip as e:
            print(f"{spec}: skipped, {e}")
            continue
        try:
            out = fn()[0]
        except Exception as e:  # noqa: BLE001 -- a peer without this dtype or shape
            print(f"{spec}: skipped, {type(e).__name__}: {e}")
            continue
        diff = bench.rel_l2(out.float(), reference_out[dtype])
        if diff > bench.OUT_REL_L2_TOL:
            print(f"{spec}: skipped, output differs from ours by {diff:.2e} relative L2")
            continue
        # The graph reads the plan the adapter made; fn keeps it (and so its memory) alive.
        graphs[spec] = (bench.capture_graph(fn, args.calls_per_graph), fn)
        flops[spec] = bench.cost(shape, problems[dtype].mean_len, 2)[0]

    print(f"{torch.cuda.get_device_properties(device).name}; {shape}; "
          f"{args.seconds:.1f} s per kernel and round, averages after {args.settle_s:.1f} s")
    print("| round | kernel | µs | TFLOP/s | W | MHz | kcycles (µs x MHz) | mJ (µs x W) | samples |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in range(args.rounds):
        for spec, (graph, _) in graphs.items():
            m = sustain(graph, args.calls_per_graph, args.seconds, args.settle_s, nvml)
            tflops = flops[spec] / m["us"] / 1e6
            if "watts" not in m:
                print(f"| {r} | {spec} | {m['us']:.1f} | {tflops:.0f} | - | - | - | - | 0 |")
                continue
            print(f"| {r} | {spec} | {m['us']:.1f} | {tflops:.0f} | {m['watts']:.0f} | "
                  f"{m['mhz']:.0f} | {m['kcycles']:.0f} | {m['mj']:.1f} | {m['samples']} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Python benchmark of flashmla's decode, optionally against other MLA decode kernels.

Same method as flashmla_bench (docs: library.md "Benchmarks"): a second of bf16 GEMMs to warm the
clocks, L2 flushed before every timed run, CUDA events around CUDA-graph replays, median of
--iters. Same data conventions: when varlen, lengths ~ Normal(s_k, s_k/2) clamped to
[max(s_q, 1), 3 s_k] and then shifted to a mean of exactly s_k; randn/10 clamped to +-1; randomly
permuted pages; NaN in the unused tail of each request's last page. Same cost model:
FLOPs = 2 b s_q h_q L (576+512), bytes = (b h_kv L 576 + b s_q h_q (576+512)) * 2 with L the mean
drawn length; causal rows are charged full FLOPs.

Peers are timed when importable and skipped (with the reason) when not; a peer whose output
differs from ours is reported as skipped, never timed, so a misconfigured adapter can't pass as
a number:
  flash_mla    FlashMLA: deepseek-ai's package (same call signature as ours), or SGLang's wheel
               of it (pip install sgl-flash-mla), whose SM90 dense decode sits behind
               use_legacy=True and plans on its first call
  flashinfer   FlashInfer's BatchMLAPagedAttentionWrapper (h_kv = 1 only)

    python bench/bench.py                                   # DeepSeek-V3 decode shape
    python bench/bench.py --grid bench/grid_flashmla.txt --json out.json --check
    python bench/report.py out.json
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import inspect
import json
import math
import statistics
import sys
import time
from typing import Callable, Optional

import torch

# The card FlashMLA's figures in the grid come from; report.py sits beside this script.
from report import FLASHMLA_FIGURES_GPU

HEAD_DIM = 576
HEAD_DIM_V = 512
VARLEN_STD_DIVISOR = 2.0
VARLEN_MAX_FACTOR = 3.0
MAX_RECENTRE_PASSES = 64
L2_FLUSH_FACTOR = 2
WARMUP_GEMM_SIZE = 8192
# Tolerances: a peer (or ours, against the fp32 reference) rounding to 16 bits differs by ~1 ulp.
OUT_REL_L2_TOL = 1e-2
LSE_ABS_TOL = 1e-3
FLASHINFER_WORKSPACE_BYTES = 128 << 20
NVML_CLOCK_SM = 1
RANDOM_SLAB_ELEMENTS = 1 << 28


@dataclasses.dataclass
class Shape:
    case: str = "custom"
    b: int = 128
    s_q: int = 1
    h_q: int = 128
    h_kv: int = 1
    s_k: int = 4096
    varlen: bool = True
    causal: bool = False
    flashmla_us: Optional[float] = None


@dataclasses.dataclass
class Problem:
    shape: Shape
    lengths: torch.Tensor  # [b] int32, device
    q: torch.Tensor  # [b, s_q, h_q, 576]
    k_cache: torch.Tensor  # [num_blocks, page, h_kv, 576]
    block_table: torch.Tensor  # [b, max_blocks] int32
    blocks_per_request: list
    page: int
    scale: float

    @property
    def mean_len(self) -> float:
        return float(self.lengths.double().mean().item())


class Skip(Exception):
    """A peer that cannot run this shape here; the message says why."""


# ---- inputs ----------------------------------------------------------------------------------


def parse_bool(text: str, where: str) -> bool:
    if text in ("yes", "1", "true"):
        return True
    if text in ("no", "0", "false"):
        return False
    raise SystemExit(f"{where}: expected yes|no, got {text!r}")


def read_grid(path: str, h_kv: int) -> list:
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"{path}:{line_no}"
            if len(fields) != 8:
                raise SystemExit(f"{where}: expected 8 fields "
                                 "(case b s_q h_q s_k varlen causal flashmla_us)")
            case, b, s_q, h_q, s_k, varlen, causal, theirs = fields
            rows.append(Shape(case, int(b), int(s_q), int(h_q), h_kv, int(s_k),
                              parse_bool(varlen, where), parse_bool(causal, where),
                              None if theirs == "-" else float(theirs)))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    return rows


def recentre(lengths: list, target: int, lo: int, hi: int) -> list:
    """Shifts the lengths, within [lo, hi], until they sum to `target`: the sample mean of b draws
    wanders by s_k / (2 sqrt(b)) (4% at b = 128), which would bias every comparison of times at
    "the same" mean length."""
    total = sum(lengths)
    for _ in range(MAX_RECENTRE_PASSES):  # clamps rarely bind
        if total == target:
            break
        share = int((target - total) / len(lengths)) or (1 if target > total else -1)
        for i, n in enumerate(lengths):
            left = target - total
            if left == 0:
                break
            step = min(max(n + share, lo), hi) - n
            if abs(step) > abs(left):
                step = left
            lengths[i] = n + step
            total += step
    return lengths


def draw_lengths(s: Shape, gen: torch.Generator) -> torch.Tensor:
    if not s.varlen:
        return torch.full((s.b,), s.s_k, dtype=torch.int32)
    z = torch.randn(s.b, generator=gen, dtype=torch.float64)
    lo = max(s.s_q, 1)
    hi = max(lo, int(VARLEN_MAX_FACTOR * s.s_k))
    drawn = (s.s_k + z * s.s_k / VARLEN_STD_DIVISOR).round().clamp(lo, hi).long().tolist()
    return torch.tensor(recentre(drawn, s.b * s.s_k, lo, hi), dtype=torch.int32)


def random_data(shape, dtype, gen, device) -> torch.Tensor:
    # randn on the device (a cache of several GB would take minutes on the host), in slabs so the
    # fp32 temporary stays small next to the cache itself.
    out = torch.empty(shape, dtype=dtype, device=device)
    flat = out.view(-1)
    for start in range(0, flat.numel(), RANDOM_SLAB_ELEMENTS):
        part = flat[start:start + RANDOM_SLAB_ELEMENTS]
        x = torch.randn(part.numel(), generator=gen, dtype=torch.float32, device=device)
        part.copy_(x.div_(10).clamp_(-1, 1))
    return out


def build_problem(s: Shape, dtype, page: int, seed: int, poison: bool, device) -> Problem:
    host_gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed)
    lengths = draw_lengths(s, host_gen)
    blocks = [(int(n) + page - 1) // page for n in lengths.tolist()]
    max_blocks = max(1, max(blocks))
    num_blocks = max(1, sum(blocks))
    physical = torch.randperm(num_blocks, generator=host_gen).to(torch.int32)
    table = torch.zeros((s.b, max_blocks), dtype=torch.int32)  # unused entries: block 0
    start = 0
    for i, n in enumerate(blocks):
        table[i, :n] = physical[start:start + n]
        start += n
    q = random_data((s.b, s.s_q, s.h_q, HEAD_DIM), dtype, dev_gen, device)
    k_cache = random_data((num_blocks, page, s.h_kv, HEAD_DIM), dtype, dev_gen, device)
    if poison:
        # A kernel that lets tokens past L into a result produces NaN and fails the check.
        for i, n in enumerate(lengths.tolist()):
            used = n % page
            if used and blocks[i]:
                k_cache[int(table[i, blocks[i] - 1]), used:] = float("nan")
    return Problem(s, lengths.to(device), q, k_cache, table.to(device), blocks, page,
                   1.0 / math.sqrt(HEAD_DIM))


# ---- the fp32 reference (mla-decode.md §1), used by --check ------------------------------------


def reference(p: Problem):
    s = p.shape
    group = s.h_q // s.h_kv
    out = torch.zeros((s.b, s.s_q, s.h_q, HEAD_DIM_V), dtype=torch.float32, device=p.q.device)
    lse = torch.full((s.b, s.h_q, s.s_q), float("inf"), dtype=torch.float32, device=p.q.device)
    lengths = p.lengths.tolist()
    for i in range(s.b):
        n = lengths[i]
        if n == 0:
            continue
        pages = p.block_table[i, :p.blocks_per_request[i]].long()
        kv = p.k_cache[pages].reshape(-1, s.h_kv, HEAD_DIM)[:n].float()  # [L, h_kv, d]
        key_pos = torch.arange(n, device=kv.device)
        last_visible = (n - s.s_q + torch.arange(s.s_q, device=kv.device)) if s.causal \
            else torch.full((s.s_q,), n - 1, device=kv.device)
        mask = key_pos[None, :] <= last_visible[:, None]  # [s_q, L]
        for k in range(s.h_kv):
            qh = p.q[i, :, k * group:(k + 1) * group].float()  # [s_q, g, d]
            scores = torch.einsum("sgd,td->sgt", qh, kv[:, k]) * p.scale
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
            row_lse = torch.logsumexp(scores, dim=-1)  # [s_q, g]; -inf where no key is seen
            seen = torch.isfinite(row_lse)
            probs = torch.exp(scores - torch.where(seen, row_lse, 0)[..., None])
            o = torch.einsum("sgt,tv->sgv", probs, kv[:, k, :HEAD_DIM_V])
            out[i, :, k * group:(k + 1) * group] = torch.where(seen[..., None], o, 0)
            lse[i, k * group:(k + 1) * group] = torch.where(seen, row_lse,
                                                            float("inf")).transpose(0, 1)
    return out, lse


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return float(((x - ref).norm() / ref.norm().clamp_min(1e-300)).item())


def lse_max_abs(x: torch.Tensor, ref: torch.Tensor) -> float:
    diff = torch.where(x == ref, torch.zeros_like(x), (x - ref).abs())  # equal infinities agree
    diff = torch.nan_to_num(diff, nan=float("inf"))
    return float(diff.max().item()) if diff.numel() else 0.0


# ---- kernels: each adapter returns a callable giving (out [b, s_q, h_q, 512], lse or None) ------


def adapter_flashmla_like(module_name: str, **extra_kwargs):
    def make(p: Problem) -> Callable:
        try:
            mod = __import__(module_name)
        except ImportError as e:
            raise Skip(f"not importable ({e})")
        s = p.shape
        kwargs = dict(extra_kwargs)
        if "use_legacy" in inspect.signature(mod.flash_mla_with_kvcache).parameters:
            kwargs["use_legacy"] = True  # the dense SM90 kernel, in the SGLang wheel's API
        metadata, num_splits = mod.get_mla_metadata(p.lengths, s.s_q * s.h_q // s.h_kv, s.h_kv)

        def run():
            return mod.flash_mla_with_kvcache(p.q, p.k_cache, p.block_table, p.lengths,
                                              HEAD_DIM_V, metadata, num_splits,
                                              softmax_scale=p.scale, causal=s.causal, **kwargs)
        return run
    return make


def adapter_flashinfer(p: Problem) -> Callable:
    try:
        import flashinfer
        from flashinfer.mla import BatchMLAPagedAttentionWrapper
    except ImportError as e:
        raise Skip(f"not importable ({e})")
    del flashinfer
    s = p.shape
    if s.h_kv != 1:
        raise Skip("supports h_kv = 1 only")
    dev = p.q.device
    workspace = torch.empty(FLASHINFER_WORKSPACE_BYTES, dtype=torch.uint8, device=dev)
    wrapper = BatchMLAPagedAttentionWrapper(workspace)
    counts = torch.tensor(p.blocks_per_request, dtype=torch.int32)
    kv_indptr = torch.zeros(s.b + 1, dtype=torch.int32)
    kv_indptr[1:] = torch.cumsum(counts, 0)
    kv_indices = torch.cat([p.block_table[i, :n] for i, n in enumerate(p.blocks_per_request)])
    qo_indptr = torch.arange(s.b + 1, dtype=torch.int32) * s.s_q
    wrapper.plan(qo_indptr.to(dev), kv_indptr.to(dev), kv_indices, p.lengths, s.h_q, HEAD_DIM_V,
                 HEAD_DIM - HEAD_DIM_V, p.page, s.causal, p.scale, p.q.dtype, p.k_cache.dtype)
    q = p.q.reshape(s.b * s.s_q, s.h_q, HEAD_DIM)
    q_nope, q_pe = q[..., :HEAD_DIM_V].contiguous(), q[..., HEAD_DIM_V:].contiguous()
    cache = p.k_cache.reshape(-1, p.page, HEAD_DIM)
    ckv, kpe = cache[..., :HEAD_DIM_V], cache[..., HEAD_DIM_V:]

    def run():
        out = wrapper.run(q_nope, q_pe, ckv, kpe, return_lse=False)
        return out.reshape(s.b, s.s_q, s.h_q, HEAD_DIM_V), None  # its lse is base 2: not compared
    return run


PEERS = {"flash_mla": adapter_flashmla_like("flash_mla"), "flashinfer": adapter_flashinfer}


# ---- timing ----------------------------------------------------------------------------------


def warm_clocks(ms: float, device) -> None:
    a = torch.randn(WARMUP_GEMM_SIZE, WARMUP_GEMM_SIZE, device=device, dtype=torch.bfloat16)
    start = time.perf_counter()
    while (time.perf_counter() - start) * 1e3 < ms:
        for _ in range(4):
            torch.matmul(a, a)
        torch.cuda.synchronize(device)


def capture_graph(fn: Callable, calls: int = 1) -> torch.cuda.CUDAGraph:
    """A CUDA graph of `calls` back-to-back calls of `fn`."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the warm-up call torch asks for before capture
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def time_kernel(fn: Callable, iters: int, flush: torch.Tensor) -> tuple:
    """Median and min µs of `fn`, as CUDA-graph replays when it can be captured, else eager."""
    mode = "graph"
    try:
        launch = capture_graph(fn).replay
    except Exception as e:  # noqa: BLE001 -- any capture failure falls back to eager timing
        print(f"  note: CUDA-graph capture failed ({type(e).__name__}: {e}); timing eager calls",
              file=sys.stderr)
        torch.cuda.synchronize()
        mode, launch = "eager", fn
    for _ in range(3):
        launch()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        flush.fill_(i & 0xFF)
        starts[i].record()
        launch()
        stops[i].record()
    torch.cuda.synchronize()
    us = [1e3 * a.elapsed_time(b) for a, b in zip(starts, stops)]
    return statistics.median(us), min(us), mode


# ---- device information ----------------------------------------------------------------------


class Nvml:
    """SM clocks and power through libnvidia-ml when present; None otherwise."""

    def __init__(self, index: int):
        self.handle = None
        try:
            self.lib = ctypes.CDLL("libnvidia-ml.so.1")
            if self.lib.nvmlInit_v2() != 0:
                return
            props = torch.cuda.get_device_properties(index)
            handle = ctypes.c_void_p()
            bus = getattr(props, "pci_bus_id", None)
            if bus is not None:
                pci = f"{getattr(props, 'pci_domain_id', 0):08x}:{bus:02x}:" \
                      f"{getattr(props, 'pci_device_id', 0):02x}.0"
                ok = self.lib.nvmlDeviceGetHandleByPciBusId_v2(pci.encode(), ctypes.byref(handle))
            else:
                ok = self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle))
            if ok == 0:
                self.handle = handle
        except (OSError, AttributeError):
            self.handle = None

    def _clock(self, fn_name: str) -> Optional[int]:
        if self.handle is None:
            return None
        mhz = ctypes.c_uint()
        if getattr(self.lib, fn_name)(self.handle, NVML_CLOCK_SM, ctypes.byref(mhz)) != 0:
            return None
        return int(mhz.value)

    def sm_clock(self) -> Optional[int]:
        return self._clock("nvmlDeviceGetClockInfo")

    def max_sm_clock(self) -> Optional[int]:
        return self._clock("nvmlDeviceGetMaxClockInfo")

    def power_w(self) -> Optional[float]:
        """The board's power draw as NVML reports it (a moving average on recent GPUs)."""
        if self.handle is None:
            return None
        milliwatts = ctypes.c_uint()
        if self.lib.nvmlDeviceGetPowerUsage(self.handle, ctypes.byref(milliwatts)) != 0:
            return None
        return milliwatts.value / 1e3


# ---- main ------------------------------------------------------------------------------------


def cost(s: Shape, mean_len: float, elem: int) -> tuple:
    flops = 2.0 * s.b * s.s_q * s.h_q * mean_len * (HEAD_DIM + HEAD_DIM_V)
    nbytes = (s.b * s.h_kv * mean_len * HEAD_DIM + s.b * s.s_q * s.h_q * (HEAD_DIM + HEAD_DIM_V)) \
        * elem
    return flops, nbytes


def add_shape_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags of one decode shape, read back by shape_from_args."""
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--s-q", type=int, default=1)
    ap.add_argument("--h-q", type=int, default=128)
    ap.add_argument("--h-kv", type=int, default=1)
    ap.add_argument("--s-k", type=int, default=4096)
    ap.add_argument("--varlen", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--causal", action=argparse.BooleanOptionalAction, default=False)


def shape_from_args(args: argparse.Namespace) -> Shape:
    return Shape("custom", args.batch, args.s_q, args.h_q, args.h_kv, args.s_k, args.varlen,
                 args.causal)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(ap)
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--page-block-size", type=int, default=64)
    ap.add_argument("--backend", choices=["auto", "reference", "sm90"], default="auto",
                    help="flashmla's kernel (peers ignore it)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup-ms", type=float, default=1000.0)
    ap.add_argument("--grid", help="grid file: case b s_q h_q s_k varlen causal flashmla_us")
    ap.add_argument("--json", help="write all rows as a JSON list (input of report.py)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true",
                    help="compare ours with an fp32 torch reference before timing")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated peers to try (default: all of {','.join(PEERS)}; "
                         "'' for none)")
    ap.add_argument("--no-poison", action="store_true",
                    help="leave page tails finite (for peers that multiply masked V by zero)")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench.py: no CUDA device", file=sys.stderr)
        return 1
    # Imported after the device check, so a machine without a GPU fails with a clear message.
    import flashmla

    ours = adapter_flashmla_like("flashmla", backend=args.backend)
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            raise SystemExit(f"--peers: unknown peer {p!r} (known: {', '.join(PEERS)})")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    nvml = Nvml(device.index)
    shapes = read_grid(args.grid, args.h_kv) if args.grid else [shape_from_args(args)]
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    flush = torch.empty(L2_FLUSH_FACTOR * l2, dtype=torch.uint8, device=device)

    version = getattr(flashmla, "__version__", "?")
    max_clock = nvml.max_sm_clock()
    print(f"flashmla {version} | torch {torch.__version__} | {props.name}, "
          f"{props.multi_processor_count} SMs, L2 {l2 >> 20} MiB | SM clock max "
          f"{max_clock or 'n/a'} MHz, now {nvml.sm_clock() or 'n/a'} MHz")
    print(f"dtype {args.dtype}, page {args.page_block_size}, backend {args.backend}, median of "
          f"{args.iters}, L2 flushed "
          f"before each, {args.warmup_ms:.0f} ms of GEMMs before each row; peers: "
          f"{', '.join(peers) or 'none'}")
    # A ratio to figures from another card would compare two GPUs.
    comparable = FLASHMLA_FIGURES_GPU in props.name
    if not comparable:
        print(f"FlashMLA's figures are {FLASHMLA_FIGURES_GPU} (H100 SXM) times: no ratio to them on this GPU")

    rows, failed = [], False
    for s in shapes:
        p = build_problem(s, dtype, args.page_block_size, args.seed, not args.no_poison, device)
        run_ours = ours(p)
        out, lse = run_ours()
        check = None
        if args.check:
            ref_out, ref_lse = reference(p)
            check = {"out_rel_l2": rel_l2(out.float(), ref_out),
                     "lse_max_abs": lse_max_abs(lse.float(), ref_lse)}
            check["ok"] = check["out_rel_l2"] <= OUT_REL_L2_TOL and \
                check["lse_max_abs"] <= LSE_ABS_TOL
            failed |= not check["ok"]
        warm_clocks(args.warmup_ms, device)
        med, best, mode = time_kernel(run_ours, args.iters, flush)
        clock = nvml.sm_clock()
        flops, nbytes = cost(s, p.mean_len, 2)
        row = {
            "case": s.case, "b": s.b, "s_q": s.s_q, "h_q": s.h_q, "h_kv": s.h_kv, "s_k": s.s_k,
            "s_k_mean_drawn": p.mean_len, "varlen": s.varlen, "causal": s.causal,
            "dtype": args.dtype, "page_block_size": args.page_block_size, "backend": args.backend,
            "iters": args.iters, "timing": mode, "median_us": med, "min_us": best,
            "tflops": flops / (med * 1e-6) / 1e12, "gbps": nbytes / (med * 1e-6) / 1e9,
            "flashmla_us": s.flashmla_us,
            "ratio_flashmla_over_ours": s.flashmla_us / med if s.flashmla_us and comparable else None,
            "sm_clock_mhz": clock, "check": check, "device": props.name,
            "sm_count": props.multi_processor_count, "max_sm_clock_mhz": max_clock,
            "flashmla_version": version, "peers": {},
        }
        for name in peers:
            try:
                run_peer = PEERS[name](p)
                peer_out, _ = run_peer()
                diff = rel_l2(peer_out.float(), out.float())
                if not diff <= OUT_REL_L2_TOL:
                    raise Skip(f"output differs from ours (rel L2 {diff:.2e})"
                               + ("" if args.no_poison else "; NaN page tails? try --no-poison"))
                warm_clocks(args.warmup_ms, device)
                pmed, pbest, pmode = time_kernel(run_peer, args.iters, flush)
                row["peers"][name] = {"median_us": pmed, "min_us": pbest, "timing": pmode,
                                      "out_rel_l2_vs_ours": diff, "sm_clock_mhz": nvml.sm_clock()}
            except Skip as e:
                row["peers"][name] = {"skipped": str(e)}
            except Exception as e:  # noqa: BLE001 -- a peer's failure must not stop the run
                row["peers"][name] = {"skipped": f"{type(e).__name__}: {e}"}
        rows.append(row)

        theirs = "-" if not s.flashmla_us else (
            f"{s.flashmla_us:.1f} ({s.flashmla_us / med:.2f}x)" if comparable else f"{s.flashmla_us:.1f}")
        peer_text = "; ".join(
            f"{n} {v['median_us']:.1f} us (clock {v['sm_clock_mhz'] or 'n/a'})" if "median_us" in v
            else f"{n} skipped: {v['skipped']}"
            for n, v in row["peers"].items())
        check_text = "" if check is None else (
            f" check {check['out_rel_l2']:.1e}/{check['lse_max_abs']:.1e} "
            f"{'ok' if check['ok'] else 'FAILED'}")
        print(f"{s.case:8s} b={s.b} s_q={s.s_q} h_q={s.h_q} h_kv={s.h_kv} s_k={s.s_k} "
              f"varlen={'yes' if s.varlen else 'no'} causal={'yes' if s.causal else 'no'} | "
              f"{med:.1f} us (min {best:.1f}, {mode}) {row['tflops']:.1f} TFLOP/s "
              f"{row['gbps']:.1f} GB/s | FlashMLA {theirs} | clock {clock or 'n/a'}{check_text}"
              + (f" | {peer_text}" if peer_text else ""), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        del p, run_ours, out, lse
        torch.cuda.empty_cache()
    if failed:
        print("bench.py: --check failed on at least one row", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decode steps over several layers with flashmla and CuPy (no PyTorch needed).

CuPy arrays in, CuPy arrays out, all work on CuPy's current stream (here a non-blocking one). One
step (plan + every layer) is captured into a CUDA graph with CuPy's stream capture and replayed
while the lengths grow in place. CuPy has no bfloat16, so this runs in float16. The first layer of
the last step is checked against NumPy.

    python examples/cupy_decode.py [--layers 4] [--batch 8] [--steps 16]
"""

import argparse
import math

import cupy
import numpy as np

import flashmla
from mla_reference import HEAD_DIM, HEAD_DIM_V, PAGE, attention, relative_error


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=64, help="query heads (one KV head)")
    parser.add_argument("--prompt", type=int, default=700, help="mean prompt length")
    parser.add_argument("--steps", type=int, default=16)
    return parser.parse_args()


def main():
    args = parse_args()
    rng = np.random.default_rng(0)
    capacity = args.prompt * 3 // 2 + args.steps + 1
    blocks_per_request = math.ceil(capacity / PAGE)
    num_blocks = args.batch * blocks_per_request
    lengths = rng.integers(args.prompt // 2, args.prompt * 3 // 2, size=args.batch).astype(np.int32)

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        block_table = cupy.asarray(rng.permutation(num_blocks).reshape(args.batch, -1).astype(np.int32))
        cache_seqlens = cupy.asarray(lengths)
        caches = [cupy.asarray((rng.standard_normal((num_blocks, PAGE, 1, HEAD_DIM)) / 10).astype(np.float16))
                  for _ in range(args.layers)]
        queries = [cupy.asarray((rng.standard_normal((args.batch, 1, args.heads, HEAD_DIM)) / 10).astype(np.float16))
                   for _ in range(args.layers)]

        def step():
            cupy.add(cache_seqlens, 1, out=cache_seqlens)  # this step's token is in the cache already
            metadata, num_splits = flashmla.get_mla_metadata(cache_seqlens, args.heads, 1)
            outputs = [flashmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V,
                                                       metadata, num_splits, causal=True)
                       for q, k_cache in zip(queries, caches)]
            return (metadata, num_splits), outputs

        step()  # warm-up outside the capture (one token)
        stream.begin_capture()
        # The captured plan stays referenced: replays write into its memory, which CuPy's pool would
        # otherwise give to other arrays.
        plan, captured = step()
        graph = stream.end_capture()

        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(args.steps):
            graph.launch(stream)
        stop.record()
        stop.synchronize()
    microseconds = cupy.cuda.get_elapsed_time(start, stop) * 1e3 / args.steps

    final_lengths = cupy.asnumpy(cache_seqlens)
    assert (final_lengths == lengths + 1 + args.steps).all()
    expected = attention(cupy.asnumpy(queries[0]), cupy.asnumpy(caches[0]), cupy.asnumpy(block_table), final_lengths)
    error = relative_error(cupy.asnumpy(captured[0][0]), expected)
    print(f"cupy graph: {args.layers} layers x batch {args.batch} x {args.heads} heads, lengths "
          f"{final_lengths.min()}..{final_lengths.max()}: {microseconds:.0f} us per step; layer 0 "
          f"relative error vs NumPy {error:.1e}")
    if not error < 1e-2:
        raise SystemExit("mismatch")


if __name__ == "__main__":
    main()

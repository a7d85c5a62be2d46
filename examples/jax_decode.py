"""Decode steps over several layers inside jax.jit, through flashmla.jax (XLA's FFI).

One jitted function appends each request's new token to every layer's paged cache (a functional
update; the caches are donated, so XLA updates them in place), computes the plan once and runs one
decode per layer, the output of a layer (through a projection) being the next layer's query. The
first layer of the last step is checked against NumPy.

    python examples/jax_decode.py [--layers 4] [--batch 8] [--steps 16]
"""

import argparse
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import flashmla.jax as fmla
from mla_reference import HEAD_DIM, HEAD_DIM_V, PAGE, attention, relative_error


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=128, help="query heads (one KV head)")
    parser.add_argument("--prompt", type=int, default=1000, help="mean prompt length")
    parser.add_argument("--steps", type=int, default=16)
    return parser.parse_args()


@functools.partial(jax.jit, static_argnames="heads", donate_argnames="caches")
def decode_step(caches, new_kv, block_table, cache_seqlens, q, projection, heads):
    """Appends a token per request to every layer's cache, then decodes every layer."""
    position = cache_seqlens
    block = jnp.take_along_axis(block_table, (position // PAGE)[:, None], axis=1)[:, 0]
    slot = position % PAGE
    caches = [k_cache.at[block, slot, 0].set(kv) for k_cache, kv in zip(caches, new_kv)]
    cache_seqlens = cache_seqlens + 1
    metadata, num_splits = fmla.get_mla_metadata(cache_seqlens, heads, 1)
    first = None
    for k_cache in caches:
        out, lse = fmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V,
                                               metadata, num_splits, causal=True)
        first = (out, lse) if first is None else first
        q = (out @ projection).astype(q.dtype)
    return caches, cache_seqlens, first


def main():
    args = parse_args()
    key = jax.random.PRNGKey(0)
    keys = jax.random.split(key, 6)
    capacity = args.prompt * 3 // 2 + args.steps
    blocks_per_request = math.ceil(capacity / PAGE)
    num_blocks = args.batch * blocks_per_request
    block_table = jax.random.permutation(keys[0], num_blocks).reshape(args.batch, -1).astype(jnp.int32)
    cache_seqlens = jax.random.randint(keys[1], (args.batch,), args.prompt // 2, args.prompt * 3 // 2, jnp.int32)
    caches = [(jax.random.normal(k, (num_blocks, PAGE, 1, HEAD_DIM)) / 10).astype(jnp.bfloat16)
              for k in jax.random.split(keys[2], args.layers)]
    new_kv = [(jax.random.normal(k, (args.batch, HEAD_DIM)) / 10).astype(jnp.bfloat16)
              for k in jax.random.split(keys[3], args.layers)]
    q = (jax.random.normal(keys[4], (args.batch, 1, args.heads, HEAD_DIM)) / 10).astype(jnp.bfloat16)
    projection = (jax.random.normal(keys[5], (HEAD_DIM_V, HEAD_DIM)) / math.sqrt(HEAD_DIM_V)).astype(jnp.bfloat16)

    caches, cache_seqlens, first = decode_step(caches, new_kv, block_table, cache_seqlens, q, projection,
                                               heads=args.heads)  # compiles
    jax.block_until_ready(first)
    begin = time.perf_counter()
    for _ in range(args.steps - 1):
        caches, cache_seqlens, first = decode_step(caches, new_kv, block_table, cache_seqlens, q, projection,
                                                   heads=args.heads)
    jax.block_until_ready((caches, first))
    microseconds = (time.perf_counter() - begin) * 1e6 / (args.steps - 1)

    lengths = np.asarray(cache_seqlens)
    expected = attention(np.asarray(q), np.asarray(caches[0]), np.asarray(block_table), lengths)
    error = relative_error(first[0], expected)
    print(f"jax.jit: {args.layers} layers x batch {args.batch} x {args.heads} heads, lengths "
          f"{lengths.min()}..{lengths.max()}: {microseconds:.0f} us per step (host-timed); layer 0 "
          f"relative error vs NumPy {error:.1e}")
    if not error < 1e-2:
        raise SystemExit("mismatch")


if __name__ == "__main__":
    main()

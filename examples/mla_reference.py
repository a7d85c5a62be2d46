"""The examples' check: one layer's MLA decode attention in float64 NumPy, from a paged cache."""

import math

import numpy as np

HEAD_DIM, HEAD_DIM_V, PAGE = 576, 512, 64


def attention(q, k_cache, block_table, lengths):
    """q [b, 1, h_q, 576], k_cache [blocks, PAGE, 1, 576], block_table [b, n] -> out [b, 1, h_q, 512]
    (every key visible; the default scale 1/sqrt(576))."""
    outs = []
    for i, length in enumerate(lengths):
        pages = block_table[i, : math.ceil(int(length) / PAGE)]
        kv = np.asarray(k_cache[pages]).reshape(-1, HEAD_DIM)[:length].astype(np.float64)
        scores = np.asarray(q[i, 0]).astype(np.float64) @ kv.T / math.sqrt(HEAD_DIM)
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        outs.append(weights / weights.sum(axis=-1, keepdims=True) @ kv[:, :HEAD_DIM_V])
    return np.stack(outs)[:, None]


def relative_error(out, expected) -> float:
    out = np.asarray(out).astype(np.float64)
    return float(np.linalg.norm(out - expected) / np.linalg.norm(expected))

"""A decode loop over the layers of a toy MLA model, with flashmla and PyTorch.

Every step appends one token per request to each layer's paged cache, computes the split-KV plan
once, and runs one decode per layer, the output of a layer (through a projection) being the query of
the next. The whole step is captured in one CUDA graph and replayed while the sequences grow in
place: the serving pattern. --mode eager runs it without the graph, --mode compile runs it under
torch.compile(fullgraph=True). The last step's first layer is checked against NumPy.

    python examples/torch_decode_loop.py [--mode graph|eager|compile] [--layers 4] [--batch 8]
"""

import argparse
import math

import torch

import flashmla
from mla_reference import HEAD_DIM, HEAD_DIM_V, PAGE, attention, relative_error


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("graph", "eager", "compile"), default="graph")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=128, help="query heads (one KV head)")
    parser.add_argument("--prompt", type=int, default=1000, help="mean prompt length")
    parser.add_argument("--steps", type=int, default=32)
    return parser.parse_args()


class PagedModel:
    """Caches, block tables, lengths and weights of a toy model, all in place on the GPU."""

    def __init__(self, args, device="cuda"):
        self.layers, self.batch, self.heads = args.layers, args.batch, args.heads
        generator = torch.Generator(device=device).manual_seed(0)
        prompts = torch.randint(args.prompt // 2, args.prompt * 3 // 2, (args.batch,), generator=generator,
                                device=device)
        capacity = args.prompt * 3 // 2 + args.steps
        self.blocks_per_request = math.ceil(capacity / PAGE)
        num_blocks = args.batch * self.blocks_per_request
        # Pages of all requests shuffled across the cache, as an allocator hands them out.
        order = torch.randperm(num_blocks, generator=generator, device=device)
        self.block_table = order.view(args.batch, self.blocks_per_request).to(torch.int32)
        self.cache_seqlens = prompts.to(torch.int32)
        self.k_caches = [
            (torch.randn(num_blocks, PAGE, 1, HEAD_DIM, generator=generator, device=device) / 10).to(torch.bfloat16)
            for _ in range(args.layers)
        ]
        # The next token's latent KV per layer and the projection from one layer's output to the
        # next layer's queries, fixed here; a real model computes both from the hidden state.
        self.new_kv = [(torch.randn(args.batch, HEAD_DIM, generator=generator, device=device) / 10).to(torch.bfloat16)
                       for _ in range(args.layers)]
        self.projection = (torch.randn(HEAD_DIM_V, HEAD_DIM, generator=generator, device=device)
                           / math.sqrt(HEAD_DIM_V)).to(torch.bfloat16)
        self.q = (torch.randn(args.batch, 1, args.heads, HEAD_DIM, generator=generator, device=device)
                  / 10).to(torch.bfloat16)

    def append_token(self):
        """Writes each request's new token into its next cache slot, then counts it."""
        position = self.cache_seqlens.long()
        block = self.block_table.gather(1, (position // PAGE)[:, None]).squeeze(1).long()
        slot = position % PAGE
        for k_cache, kv in zip(self.k_caches, self.new_kv):
            k_cache[block, slot, 0] = kv
        self.cache_seqlens += 1

    def step(self):
        """One decode step over every layer; returns the first layer's (out, lse) and the last out."""
        self.append_token()
        metadata, num_splits = flashmla.get_mla_metadata(self.cache_seqlens, self.heads, 1)
        q, first = self.q, None
        for k_cache in self.k_caches:
            out, lse = flashmla.flash_mla_with_kvcache(q, k_cache, self.block_table, self.cache_seqlens,
                                                       HEAD_DIM_V, metadata, num_splits, causal=True)
            if first is None:
                first = (out, lse)
            q = out @ self.projection
        return first[0], first[1], out


def main():
    args = parse_args()
    model = PagedModel(args)
    if args.mode == "compile":
        step = torch.compile(model.step, fullgraph=True)
    elif args.mode == "graph":
        # Warm up on a side stream (as torch.cuda.graph asks), then capture one whole step. The
        # capture itself runs nothing, so undo the warm-up's token first.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model.step()
        torch.cuda.current_stream().wait_stream(side)
        model.cache_seqlens -= 1
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model.step()

        def step():
            graph.replay()
            return captured
    else:
        step = model.step

    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    step()  # first call: compilation, allocator warm-up
    start.record()
    for _ in range(args.steps - 1):
        first_out, first_lse, last_out = step()
    stop.record()
    torch.cuda.synchronize()
    milliseconds = start.elapsed_time(stop) / (args.steps - 1)

    host = lambda tensor: tensor.float().cpu().numpy()  # noqa: E731
    expected = attention(host(model.q), host(model.k_caches[0]), model.block_table.cpu().numpy(),
                         model.cache_seqlens.cpu().numpy())
    error = relative_error(host(first_out), expected)
    print(f"{args.mode}: {args.layers} layers x batch {args.batch} x {args.heads} heads, lengths "
          f"{model.cache_seqlens.min().item()}..{model.cache_seqlens.max().item()}: "
          f"{milliseconds * 1e3:.0f} us per step; layer 0 relative error vs NumPy {error:.1e}")
    if not (error < 1e-2 and torch.isfinite(last_out).all()):
        raise SystemExit("mismatch")


if __name__ == "__main__":
    main()

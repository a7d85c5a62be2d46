"""flashmla as PyTorch custom operators: torch.compile, opcheck, out=/lse=, streams and devices.

CPU part (CI): the operators' registration and schemas, their fake implementations (shapes from
FakeTensorMode, no GPU), full-graph tracing of the public functions by TorchDynamo (strict
torch.export over fake CUDA tensors, which fails on any graph break), and the argument errors
raised before anything runs. GPU part: opcheck, torch.compile(fullgraph=True) against eager and
the float64 oracle, out=/lse= written in place, explicit streams, non-default and mixed GPUs.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import flashmla
from mla_testing import (
    HEAD_DIM,
    HEAD_DIM_V,
    METADATA_WORDS,
    DecodeCase,
    check_decode,
    make_torch_inputs,
    reference_torch,
)

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
if not hasattr(torch.library, "custom_op"):
    pytest.skip(f"torch {torch.__version__} predates torch.library.custom_op (2.4)", allow_module_level=True)

from flashmla import _torch_ops  # noqa: E402  (registers the operators)

# What the fake implementation is told the GPU has; a real GPU answers for itself on the GPU tests.
FAKE_SM_PARTS = 7


@pytest.fixture
def fake_parts(monkeypatch):
    """The metadata row count without a GPU (the cached real query is left untouched)."""
    monkeypatch.setattr(_torch_ops, "num_sm_parts", lambda device, rows, heads: FAKE_SM_PARTS)


@pytest.fixture
def fake_mode():
    fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor", reason="no FakeTensorMode")
    mode = fake_tensor.FakeTensorMode()
    try:
        with mode:
            torch.empty(1, device="cuda")
    except (RuntimeError, AssertionError) as error:
        pytest.skip(f"this torch cannot make fake CUDA tensors: {error}")
    return mode


def fake_inputs(mode, b=3, s_q=2, h_q=16, h_kv=1, dtype=None, blocks=12, page=64, max_blocks=4):
    dtype = dtype or torch.bfloat16
    with mode:
        return dict(
            q=torch.empty(b, s_q, h_q, HEAD_DIM, dtype=dtype, device="cuda"),
            k_cache=torch.empty(blocks, page, h_kv, HEAD_DIM, dtype=dtype, device="cuda"),
            block_table=torch.empty(b, max_blocks, dtype=torch.int32, device="cuda"),
            cache_seqlens=torch.empty(b, dtype=torch.int32, device="cuda"),
        )


# ---- Registration (CPU) ----------------------------------------------------------------------------


def test_operators_and_schemas():
    schemas = {
        name: str(getattr(torch.ops.flashmla, name).default._schema)
        for name in ("get_mla_metadata", "flash_mla_with_kvcache", "flash_mla_with_kvcache_out")
    }
    assert schemas["get_mla_metadata"].startswith(
        "flashmla::get_mla_metadata(Tensor cache_seqlens, SymInt num_heads_per_head_k, SymInt num_heads_k)"
    )
    assert schemas["get_mla_metadata"].endswith("-> (Tensor, Tensor)")
    decode = schemas["flash_mla_with_kvcache"]
    # FlashMLA's argument order, then flashmla's keywords.
    order = ["Tensor q", "Tensor k_cache", "Tensor block_table", "Tensor cache_seqlens", "SymInt head_dim_v",
             "Tensor tile_scheduler_metadata", "Tensor num_splits", "float? softmax_scale=None",
             "bool causal=False", 'str backend="auto"', "bool validate=False"]
    positions = [decode.index(part) for part in order]
    assert positions == sorted(positions), decode
    assert decode.endswith("-> (Tensor, Tensor)")
    out_variant = schemas["flash_mla_with_kvcache_out"]
    assert "Tensor(a7!) out" in out_variant and "Tensor(a8!) lse" in out_variant, out_variant
    assert out_variant.endswith("-> ()")
    # Inputs are never written.
    assert "!" not in decode and "!" not in schemas["get_mla_metadata"]


def run_python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_flashmla_after_torch_registers_the_operators():
    code = "import torch, flashmla; print(hasattr(torch.ops.flashmla, 'flash_mla_with_kvcache'))"
    assert run_python(code) == "True"


def test_operators_register_at_the_first_call_even_inside_a_trace():
    """flashmla imported before torch: the first call, here inside TorchDynamo's trace, registers
    the operators and the public function still becomes one graph."""
    code = """
import flashmla, sys
assert "flashmla._torch_ops" not in sys.modules
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
flashmla._C.get_num_sm_parts = lambda device, rows, heads: 5  # no GPU here

class Plan(torch.nn.Module):
    def forward(self, seqlens):
        return flashmla.get_mla_metadata(seqlens, 64, 1)

with FakeTensorMode():
    seqlens = torch.empty(3, dtype=torch.int32, device="cuda")
program = torch.export.export(Plan(), (seqlens,), strict=True)
targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
print("flashmla.get_mla_metadata.default" in targets)
"""
    assert run_python(code) == "True"


def test_operators_reach_the_impl_with_cpu_tensors_and_raise_type_error():
    # The dispatcher hands Python exceptions back unchanged.
    with pytest.raises(TypeError, match=r"^cache_seqlens: expected a CUDA array, got a host \(cpu\) array"):
        torch.ops.flashmla.get_mla_metadata(torch.ones(3, dtype=torch.int32), 64, 1)
    q = torch.zeros(1, 1, 1, HEAD_DIM, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"^q: expected a CUDA array, got a host \(cpu\) array"):
        torch.ops.flashmla.flash_mla_with_kvcache(q, q, q, q, HEAD_DIM_V, q, q)


# ---- Fake implementations (CPU) --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("b, s_q, h_q, h_kv", [(3, 1, 128, 1), (1, 4, 16, 2), (7, 2, 9, 3)])
def test_fake_shapes(fake_mode, fake_parts, dtype, b, s_q, h_q, h_kv):
    i = fake_inputs(fake_mode, b, s_q, h_q, h_kv, dtype=getattr(torch, dtype))
    with fake_mode:
        metadata, num_splits = torch.ops.flashmla.get_mla_metadata(i["cache_seqlens"], s_q * h_q // h_kv, h_kv)
        out, lse = torch.ops.flashmla.flash_mla_with_kvcache(
            i["q"], i["k_cache"], i["block_table"], i["cache_seqlens"], HEAD_DIM_V, metadata, num_splits)
    assert metadata.shape == (FAKE_SM_PARTS, METADATA_WORDS) and metadata.dtype == torch.int32
    assert num_splits.shape == (b + 1,) and num_splits.dtype == torch.int32
    assert out.shape == (b, s_q, h_q, HEAD_DIM_V) and out.dtype == getattr(torch, dtype)
    assert lse.shape == (b, h_q, s_q) and lse.dtype == torch.float32
    for tensor in (metadata, num_splits, out, lse):
        assert tensor.device.type == "cuda" and tensor.is_contiguous()


def test_fake_metadata_asks_the_device_for_its_row_count(fake_mode, monkeypatch):
    asked = []

    def parts(device, rows, heads):
        asked.append((device, rows, heads))
        return 11

    monkeypatch.setattr(_torch_ops, "num_sm_parts", parts)
    with fake_mode:
        seqlens = torch.empty(4, dtype=torch.int32, device="cuda:0")
        metadata, _ = torch.ops.flashmla.get_mla_metadata(seqlens, 256, 2)
    assert metadata.shape == (11, METADATA_WORDS)
    assert asked == [(0, 256, 2)]


class TwoLayerStep(torch.nn.Module):
    """One decode step of two layers sharing a plan, the second writing into given buffers."""

    def forward(self, q, k_cache, block_table, cache_seqlens, out, lse):
        rows = q.shape[1] * q.shape[2] // k_cache.shape[2]
        metadata, num_splits = flashmla.get_mla_metadata(cache_seqlens, rows, k_cache.shape[2])
        first, first_lse = flashmla.flash_mla_with_kvcache(
            q, k_cache, block_table, cache_seqlens, HEAD_DIM_V, metadata, num_splits, causal=True)
        q2 = q * 0.5
        flashmla.flash_mla_with_kvcache(q2, k_cache, block_table, cache_seqlens, HEAD_DIM_V, metadata,
                                        num_splits, softmax_scale=0.05, out=out, lse=lse, backend="reference")
        return first.float() + out.float(), first_lse + lse


def traced_targets(program):
    return [str(node.target) for node in program.graph.nodes if node.op == "call_function"]


def test_public_functions_trace_as_one_graph(fake_mode, fake_parts):
    """strict torch.export runs TorchDynamo as torch.compile(fullgraph=True) does: a graph break
    anywhere in flashmla's Python would fail it."""
    i = fake_inputs(fake_mode, 2, 2, 32, 1)
    with fake_mode:
        out = torch.empty(2, 2, 32, HEAD_DIM_V, dtype=torch.bfloat16, device="cuda")
        lse = torch.empty(2, 32, 2, dtype=torch.float32, device="cuda")
    program = torch.export.export(
        TwoLayerStep(), (i["q"], i["k_cache"], i["block_table"], i["cache_seqlens"], out, lse), strict=True)
    targets = traced_targets(program)
    assert targets.count("flashmla.get_mla_metadata.default") == 1
    assert targets.count("flashmla.flash_mla_with_kvcache.default") == 1
    # The out= call is the mutating variant (functionalised by export), never a copy into out.
    assert any("flash_mla_with_kvcache_out" in t for t in targets), targets
    outputs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
    assert len(outputs) >= 2


def test_trace_with_a_dynamic_batch(fake_mode, fake_parts):
    i = fake_inputs(fake_mode, 4, 1, 64, 1)

    class Step(torch.nn.Module):
        def forward(self, q, k_cache, block_table, cache_seqlens):
            metadata, num_splits = flashmla.get_mla_metadata(cache_seqlens, 64, 1)
            return flashmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V,
                                                   metadata, num_splits)

    batch = torch.export.Dim("batch", min=2, max=1024)
    program = torch.export.export(
        Step(), (i["q"], i["k_cache"], i["block_table"], i["cache_seqlens"]), strict=True,
        dynamic_shapes=({0: batch}, None, {0: batch}, {0: batch}))
    out_meta = [n for n in program.graph.nodes if n.op == "output"][0].args[0][0].meta["val"]
    assert not isinstance(out_meta.shape[0], int), "the batch was specialised"
    assert tuple(out_meta.shape[1:]) == (1, 64, HEAD_DIM_V)


# ---- Argument errors raised before any work (CPU) --------------------------------------------------


def decode_call(i, metadata, num_splits, **keywords):
    return flashmla.flash_mla_with_kvcache(i["q"], i["k_cache"], i["block_table"], i["cache_seqlens"],
                                           HEAD_DIM_V, metadata, num_splits, **keywords)


@pytest.mark.parametrize(
    "keywords, error, message",
    [
        (dict(backend="fastest"), ValueError, r"^backend: expected one of auto, reference, sm90"),
        (dict(softmax_scale=0.0), ValueError, r"^softmax_scale: must be finite and > 0"),
        (dict(softmax_scale="big"), TypeError, r"^softmax_scale: expected a float"),
        (dict(out=np.zeros((3, 2, 16, 512), np.float16)), TypeError, r"^out: expected a torch.Tensor like q"),
        (dict(lse=[0.0]), TypeError, r"^lse: expected a torch.Tensor like q"),
        (dict(stream="0"), TypeError, r"^stream: expected a cudaStream_t handle"),
    ],
)
def test_torch_argument_errors(fake_mode, fake_parts, keywords, error, message):
    i = fake_inputs(fake_mode)
    with fake_mode:
        metadata, num_splits = flashmla.get_mla_metadata(i["cache_seqlens"], 32, 1)
        with pytest.raises(error, match=message):
            decode_call(i, metadata, num_splits, **keywords)


def test_torch_head_counts_are_checked(fake_mode):
    i = fake_inputs(fake_mode)
    with fake_mode:
        with pytest.raises(ValueError, match=r"^num_heads_per_head_k: must be >= 1, got 0"):
            flashmla.get_mla_metadata(i["cache_seqlens"], 0, 1)
        with pytest.raises(TypeError, match=r"^num_heads_k: expected an int"):
            flashmla.get_mla_metadata(i["cache_seqlens"], 32, 1.0)


def test_torch_cpu_tensors_are_type_errors_naming_the_first():
    q = torch.zeros(1, 1, 1, HEAD_DIM, dtype=torch.bfloat16)
    table = torch.zeros(1, 1, dtype=torch.int32)
    with pytest.raises(TypeError, match=r"^q: expected a CUDA array, got a host \(cpu\) array"):
        flashmla.flash_mla_with_kvcache(q, q, table, table[0], HEAD_DIM_V, table, table[0])


# ---- GPU --------------------------------------------------------------------------------------------

CASES = [
    DecodeCase(4, 1, 700, 128, 1, True, False, "bfloat16", zero_requests=1, seed=300),
    DecodeCase(3, 2, 300, 32, 2, True, True, "float16", seed=301),
]


def prepared(torch_module, case):
    i = make_torch_inputs(torch_module, case)
    ref_out, ref_lse = reference_torch(torch_module, i.q, i.k_cache, i.block_table, i.lengths, case.causal)
    return i, ref_out.cpu().numpy(), ref_lse.cpu().numpy()


def to_numpy(tensor):
    return tensor.double().cpu().numpy()


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_opcheck(torch_cuda, case):
    """torch.library.opcheck: schema (no undeclared mutation), fake vs real shapes and strides,
    autograd registration, and AOT dispatch with dynamic shapes."""
    i = make_torch_inputs(torch_cuda, case)
    torch_cuda.library.opcheck(torch_cuda.ops.flashmla.get_mla_metadata.default,
                               (i.cache_seqlens, case.rows_per_kv_head, case.h_kv))
    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    inputs = (i.q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V, metadata, num_splits)
    torch_cuda.library.opcheck(torch_cuda.ops.flashmla.flash_mla_with_kvcache.default, inputs,
                               dict(causal=case.causal))
    out = torch_cuda.empty(case.b, case.s_q, case.h_q, HEAD_DIM_V, dtype=i.q.dtype, device="cuda")
    lse = torch_cuda.empty(case.b, case.h_q, case.s_q, dtype=torch_cuda.float32, device="cuda")
    torch_cuda.library.opcheck(torch_cuda.ops.flashmla.flash_mla_with_kvcache_out.default,
                               inputs + (out, lse), dict(causal=case.causal))


class DecodeStep(torch.nn.Module):
    """Plan + decode + a little arithmetic for the compiler to fuse around the custom op."""

    def __init__(self, case):
        super().__init__()
        self.case = case

    def forward(self, q, k_cache, block_table, cache_seqlens):
        metadata, num_splits = flashmla.get_mla_metadata(cache_seqlens, self.case.rows_per_kv_head, self.case.h_kv)
        out, lse = flashmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V,
                                                   metadata, num_splits, causal=self.case.causal)
        return out.float() * 2.0, lse + 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("compiler", ["inductor", "aot_eager"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_compile_fullgraph_matches_eager_and_reference(torch_cuda, case, compiler):
    if compiler == "inductor":
        pytest.importorskip("triton", reason="TorchInductor needs Triton for CUDA code")
    torch_cuda._dynamo.reset()
    i, ref_out, ref_lse = prepared(torch_cuda, case)
    step = DecodeStep(case)
    compiled = torch_cuda.compile(step, fullgraph=True, backend=compiler)
    args = (i.q, i.k_cache, i.block_table, i.cache_seqlens)
    eager_out, eager_lse = step(*args)
    out, lse = compiled(*args)
    torch_cuda.cuda.synchronize()
    assert torch_cuda.equal(out, eager_out) and torch_cuda.equal(lse, eager_lse)
    check_decode(to_numpy(out) / 2.0, to_numpy(lse) - 1.0, ref_out, ref_lse, f"compile-{compiler}")


@pytest.mark.gpu
def test_compile_reduce_overhead_replays_with_new_inputs(torch_cuda):
    """mode="reduce-overhead" captures the compiled step into CUDA graphs; new values of inputs of
    the same shapes must give the eager results."""
    pytest.importorskip("triton", reason="TorchInductor needs Triton for CUDA code")
    torch_cuda._dynamo.reset()
    cases = [DecodeCase(4, 1, 700, 128, 1, False, False, "bfloat16", seed=seed) for seed in (310, 311, 312)]
    step = DecodeStep(cases[0])
    compiled = torch_cuda.compile(step, fullgraph=True, mode="reduce-overhead")
    for case in cases:
        i, ref_out, ref_lse = prepared(torch_cuda, case)
        out, lse = compiled(i.q, i.k_cache, i.block_table, i.cache_seqlens)
        out, lse = out.clone(), lse.clone()  # a graph's outputs are overwritten by its next replay
        eager_out, eager_lse = step(i.q, i.k_cache, i.block_table, i.cache_seqlens)
        torch_cuda.cuda.synchronize()
        assert torch_cuda.equal(out, eager_out) and torch_cuda.equal(lse, eager_lse)
        check_decode(to_numpy(out) / 2.0, to_numpy(lse) - 1.0, ref_out, ref_lse, f"reduce-overhead/{case.seed}")


@pytest.mark.gpu
def test_compile_with_out_buffers(torch_cuda):
    pytest.importorskip("triton", reason="TorchInductor needs Triton for CUDA code")
    torch_cuda._dynamo.reset()
    case = CASES[1]
    i, ref_out, ref_lse = prepared(torch_cuda, case)

    def step(q, k_cache, block_table, cache_seqlens, out, lse):
        metadata, num_splits = flashmla.get_mla_metadata(cache_seqlens, case.rows_per_kv_head, case.h_kv)
        flashmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V, metadata,
                                        num_splits, causal=case.causal, out=out, lse=lse)
        return lse.sum()

    out = torch_cuda.full((case.b, case.s_q, case.h_q, HEAD_DIM_V), math.nan, dtype=i.q.dtype, device="cuda")
    lse = torch_cuda.full((case.b, case.h_q, case.s_q), math.nan, dtype=torch_cuda.float32, device="cuda")
    compiled = torch_cuda.compile(step, fullgraph=True)
    compiled(i.q, i.k_cache, i.block_table, i.cache_seqlens, out, lse)
    torch_cuda.cuda.synchronize()
    check_decode(to_numpy(out), to_numpy(lse), ref_out, ref_lse, "compile-out")


@pytest.mark.gpu
@pytest.mark.parametrize("given", ["out+lse", "out", "lse"])
def test_out_and_lse_are_written_in_place(torch_cuda, given):
    case = CASES[0]
    i, ref_out, ref_lse = prepared(torch_cuda, case)
    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    buffers = {}
    if "out" in given.split("+"):
        buffers["out"] = torch_cuda.full((case.b, case.s_q, case.h_q, HEAD_DIM_V), math.nan, dtype=i.q.dtype, device="cuda")
    if "lse" in given.split("+"):
        buffers["lse"] = torch_cuda.full((case.b, case.h_q, case.s_q), math.nan, dtype=torch_cuda.float32, device="cuda")
    pointers = {name: tensor.data_ptr() for name, tensor in buffers.items()}
    out, lse = flashmla.flash_mla_with_kvcache(i.q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V,
                                               metadata, num_splits, causal=case.causal, **buffers)
    results = {"out": out, "lse": lse}
    for name, tensor in buffers.items():
        assert results[name] is tensor, f"{name}: not the caller's tensor"
        assert results[name].data_ptr() == pointers[name], f"{name}: data was copied"
    check_decode(to_numpy(out), to_numpy(lse), ref_out, ref_lse, f"out={given}")


@pytest.mark.gpu
def test_out_with_strided_rows(torch_cuda):
    """out may be a view with gaps between heads (innermost dimension contiguous)."""
    case = CASES[0]
    i, ref_out, ref_lse = prepared(torch_cuda, case)
    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    wide = torch_cuda.full((case.b, case.s_q, 2 * case.h_q, HEAD_DIM_V), math.nan, dtype=i.q.dtype, device="cuda")
    out = wide[:, :, ::2]
    result, lse = flashmla.flash_mla_with_kvcache(i.q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V,
                                                  metadata, num_splits, causal=case.causal, out=out)
    assert result.data_ptr() == wide.data_ptr()
    assert torch_cuda.isnan(wide[:, :, 1::2]).all(), "wrote outside the view"
    check_decode(to_numpy(result), to_numpy(lse), ref_out, ref_lse, "out-strided")


@pytest.mark.gpu
def test_out_of_the_wrong_shape_is_value_error(torch_cuda):
    case = CASES[0]
    i, _, _ = prepared(torch_cuda, case)
    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    out = torch_cuda.empty(case.b, case.s_q, case.h_q + 1, HEAD_DIM_V, dtype=i.q.dtype, device="cuda")
    with pytest.raises(ValueError, match=rf"^out: dimension 2 \(h_q\) must be {case.h_q}, got {case.h_q + 1}"):
        flashmla.flash_mla_with_kvcache(i.q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V,
                                        metadata, num_splits, out=out)


@pytest.mark.gpu
def test_validate_gives_the_same_result(torch_cuda):
    case = CASES[0]
    i, ref_out, ref_lse = prepared(torch_cuda, case)
    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    plain = flashmla.flash_mla_with_kvcache(i.q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V,
                                            metadata, num_splits, causal=case.causal)
    checked = flashmla.flash_mla_with_kvcache(i.q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V,
                                              metadata, num_splits, causal=case.causal, validate=True)
    torch_cuda.cuda.synchronize()
    assert torch_cuda.equal(plain[0], checked[0]) and torch_cuda.equal(plain[1], checked[1])
    check_decode(to_numpy(checked[0]), to_numpy(checked[1]), ref_out, ref_lse, "validate")


@pytest.mark.gpu
def test_validate_reaches_the_library(torch_cuda):
    """validate=True through the operator: a block id outside the cache is an error naming it."""
    case = CASES[0]
    i, _, _ = prepared(torch_cuda, case)
    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    outside = torch_cuda.full_like(i.block_table, i.k_cache.shape[0] + 5)
    with pytest.raises(ValueError, match=r"^block_table\["):
        flashmla.flash_mla_with_kvcache(i.q, i.k_cache, outside, i.cache_seqlens, HEAD_DIM_V, metadata,
                                        num_splits, validate=True)


# GPU cycles the side stream sleeps before it writes q: far longer than the host takes to enqueue.
SLEEP_CYCLES = 100_000_000


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["torch-stream", "int-handle"])
def test_explicit_stream(torch_cuda, form):
    """stream= orders metadata and decode after earlier work on that stream: q is written there,
    late, so a decode on any other stream would read the NaN it held before."""
    torch = torch_cuda
    case = CASES[1]
    i, ref_out, ref_lse = prepared(torch, case)
    q = torch.full_like(i.q, math.nan)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(SLEEP_CYCLES)
        q.copy_(i.q)
    stream = side if form == "torch-stream" else side.cuda_stream
    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv, stream=stream)
    out, lse = flashmla.flash_mla_with_kvcache(q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V,
                                               metadata, num_splits, causal=case.causal, stream=stream)
    torch.cuda.current_stream().wait_stream(side)
    check_decode(to_numpy(out), to_numpy(lse), ref_out, ref_lse, f"stream-{form}")


@pytest.mark.gpu
def test_stream_zero_is_the_default_stream(torch_cuda):
    """stream=0 means the legacy default stream (as in the C API), even while another stream is
    current: q is written late on the default stream, so a decode anywhere else would read NaN."""
    torch = torch_cuda
    case = CASES[1]
    i, ref_out, ref_lse = prepared(torch, case)
    q = torch.full_like(i.q, math.nan)
    with torch.cuda.stream(torch.cuda.default_stream()):
        torch.cuda._sleep(SLEEP_CYCLES)
        q.copy_(i.q)
    with torch.cuda.stream(torch.cuda.Stream()):
        metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv,
                                                         stream=0)
        out, lse = flashmla.flash_mla_with_kvcache(q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V,
                                                   metadata, num_splits, causal=case.causal, stream=0)
    torch.cuda.synchronize()
    check_decode(to_numpy(out), to_numpy(lse), ref_out, ref_lse, "stream-0")


def two_gpus(torch_module):
    if torch_module.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, found {torch_module.cuda.device_count()}")


@pytest.mark.gpu
def test_tensors_on_a_non_default_gpu(torch_cuda):
    torch = torch_cuda
    two_gpus(torch)
    case = CASES[0]
    i = make_torch_inputs(torch, case, device="cuda:1")
    assert torch.cuda.current_device() == 0
    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    out, lse = flashmla.flash_mla_with_kvcache(i.q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V,
                                               metadata, num_splits, causal=case.causal)
    assert torch.cuda.current_device() == 0, "the current device was not restored"
    for tensor in (metadata, num_splits, out, lse):
        assert tensor.device == torch.device("cuda:1")
    torch.cuda.synchronize(1)
    ref_out, ref_lse = reference_torch(torch, i.q, i.k_cache, i.block_table, i.lengths, case.causal)
    check_decode(to_numpy(out), to_numpy(lse), ref_out.cpu().numpy(), ref_lse.cpu().numpy(), "cuda:1")


@pytest.mark.gpu
def test_tensors_on_different_gpus_are_an_error(torch_cuda):
    torch = torch_cuda
    two_gpus(torch)
    case = CASES[0]
    i = make_torch_inputs(torch, case)
    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    with pytest.raises(ValueError, match=r"^k_cache: is on cuda:1 but q is on cuda:0"):
        flashmla.flash_mla_with_kvcache(i.q, i.k_cache.to("cuda:1"), i.block_table, i.cache_seqlens,
                                        HEAD_DIM_V, metadata, num_splits)

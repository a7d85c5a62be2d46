"""Bad arguments surface as ValueError carrying libflashmla's message, which names the argument.

Host-array tests need no GPU: libflashmla checks every tensor's rank, dtype, shape and layout
before it asks whether the tensors live on a CUDA device, so host (NumPy) arrays reach each check.
GPU tests go through the public API with PyTorch arrays.
"""

import math

import numpy as np
import pytest

import flashmla
from flashmla import _C

B, S_Q, H_Q, H_KV, PAGE, BLOCKS, MAX_BLOCKS, PARTS = 2, 1, 2, 1, 64, 4, 2, 3


def host_decode_args():
    """Arguments for _C.decode that are valid in every respect but being in host memory."""
    return dict(
        q=np.zeros((B, S_Q, H_Q, 576), np.float16),
        k_cache=np.zeros((BLOCKS, PAGE, H_KV, 576), np.float16),
        block_table=np.zeros((B, MAX_BLOCKS), np.int32),
        cache_seqlens=np.ones(B, np.int32),
        tile_scheduler_metadata=np.zeros((PARTS, 8), np.int32),
        num_splits=np.zeros(B + 1, np.int32),
        out=np.zeros((B, S_Q, H_Q, 512), np.float16),
        lse=np.zeros((B, H_Q, S_Q), np.float32),
        head_dim_v=512,
        softmax_scale=0.0,
        causal=False,
        workspace=None,
        backend=_C.BACKEND_AUTO,
        stream=0,
    )


def raw_decode(**overrides):
    args = host_decode_args()
    args.update(overrides)
    _C.decode(**args)


def test_host_arrays_reach_the_device_check():
    with pytest.raises(ValueError, match=r"^q: expected a CUDA device tensor, got cpu$"):
        raw_decode()


def strided_last_dim(shape, dtype):
    return np.zeros(shape[:-1] + (shape[-1] * 2,), dtype)[..., ::2]


HOST_DECODE_ERRORS = {
    "q-dtype": (dict(q=np.zeros((B, S_Q, H_Q, 576), np.float32)), r"^q: expected bfloat16 or float16, got float32"),
    "q-rank": (dict(q=np.zeros((B, H_Q, 576), np.float16)), r"^q: expected 4 dimensions"),
    "q-head-dim": (dict(q=np.zeros((B, S_Q, H_Q, 512), np.float16)), r"^q: dimension 3 \(head_dim\) must be 576, got 512"),
    "q-inner-stride": (dict(q=strided_last_dim((B, S_Q, H_Q, 576), np.float16)), r"^q: the last dimension must be contiguous"),
    "q-rank-0": (dict(q=np.zeros((), np.float16)), r"^q: rank 0 is not supported"),
    "k-dtype": (dict(k_cache=np.zeros((BLOCKS, PAGE, H_KV, 576), np.float32)), r"^k_cache: expected float16, got float32"),
    "k-head-dim": (dict(k_cache=np.zeros((BLOCKS, PAGE, H_KV, 512), np.float16)), r"^k_cache: dimension 3 \(head_dim\) must be 576"),
    "k-page-32": (dict(k_cache=np.zeros((BLOCKS, 32, H_KV, 576), np.float16)), r"^k_cache: dimension 1 \(page_block_size\) must be a positive multiple of 64"),
    "k-h-kv-divides": (dict(k_cache=np.zeros((BLOCKS, PAGE, 3, 576), np.float16)), r"^k_cache: h_kv \(3\) must divide h_q \(2\)"),
    "table-dtype": (dict(block_table=np.zeros((B, MAX_BLOCKS), np.int64)), r"^block_table: expected int32, got int64"),
    "table-batch": (dict(block_table=np.zeros((B + 1, MAX_BLOCKS), np.int32)), r"^block_table: dimension 0 \(b\) must be 2, got 3"),
    "table-rank": (dict(block_table=np.zeros(B * MAX_BLOCKS, np.int32)), r"^block_table: expected 2 dimensions"),
    "seqlens-dtype": (dict(cache_seqlens=np.ones(B, np.int64)), r"^cache_seqlens: expected int32, got int64"),
    "seqlens-batch": (dict(cache_seqlens=np.ones(B + 1, np.int32)), r"^cache_seqlens: dimension 0 \(b\) must be 2, got 3"),
    "metadata-words": (dict(tile_scheduler_metadata=np.zeros((PARTS, 7), np.int32)), r"^tile_scheduler_metadata: dimension 1 \(words\) must be 8, got 7"),
    "metadata-dtype": (dict(tile_scheduler_metadata=np.zeros((PARTS, 8), np.uint32)), r"^tile_scheduler_metadata: expected int32, got uint32"),
    "metadata-no-parts": (dict(tile_scheduler_metadata=np.zeros((1, 8), np.int32)[:0]), r"^tile_scheduler_metadata: dimension 0 \(num_sm_parts\) must be in \[1, "),
    "splits-length": (dict(num_splits=np.zeros(B, np.int32)), r"^num_splits: dimension 0 \(b \+ 1\) must be 3, got 2"),
    "out-dtype": (dict(out=np.zeros((B, S_Q, H_Q, 512), np.float32)), r"^out: expected float16 \(the dtype of q\), got float32"),
    "out-dv": (dict(out=np.zeros((B, S_Q, H_Q, 256), np.float16)), r"^out: dimension 3 \(head_dim_v\) must be 512, got 256"),
    "out-heads": (dict(out=np.zeros((B, S_Q, H_Q + 1, 512), np.float16)), r"^out: dimension 2 \(h_q\) must be 2, got 3"),
    "lse-dtype": (dict(lse=np.zeros((B, H_Q, S_Q), np.float16)), r"^lse: expected float32, got float16"),
    "lse-layout": (dict(lse=np.zeros((B, S_Q, H_Q + 1), np.float32)), r"^lse: dimension 1 \(h_q\) must be 2, got 1"),
    "head-dim-v": (dict(head_dim_v=256), r"^head_dim_v: must be 512, got 256"),
    "scale-negative": (dict(softmax_scale=-1.0), r"^softmax_scale: must be finite and > 0"),
    "scale-nan": (dict(softmax_scale=math.nan), r"^softmax_scale: must be finite and > 0"),
    "scale-inf": (dict(softmax_scale=math.inf), r"^softmax_scale: must be finite and > 0"),
    "backend": (dict(backend=7), r"^backend: unknown value 7"),
    "workspace-host": (dict(workspace=np.zeros(1 << 20, np.uint8)), r"^workspace: expected a CUDA device array"),
}


@pytest.mark.parametrize("overrides, message", list(HOST_DECODE_ERRORS.values()), ids=list(HOST_DECODE_ERRORS))
def test_decode_argument_errors_on_host_arrays(overrides, message):
    with pytest.raises(ValueError, match=message):
        raw_decode(**overrides)


def overlapping_out_and_lse():
    """out, and an lse whose first elements are out's last bytes, in one host buffer."""
    out_bytes, lse_bytes = B * S_Q * H_Q * 512 * 2, B * H_Q * S_Q * 4
    buffer = np.zeros(out_bytes + lse_bytes, np.uint8)
    out = buffer[:out_bytes].view(np.float16).reshape(B, S_Q, H_Q, 512)
    lse = buffer[out_bytes - 4 : out_bytes - 4 + lse_bytes].view(np.float32).reshape(B, H_Q, S_Q)
    return dict(out=out, lse=lse)


HOST_ALIASING_ERRORS = {
    "out-on-q": (lambda args: dict(out=args["q"][..., :512]), r"^out: shares memory with q; "),
    "lse-in-out": (lambda args: overlapping_out_and_lse(), r"^out: shares memory with lse; "),
    "out-broadcast": (lambda args: dict(out=np.lib.stride_tricks.as_strided(
        np.zeros(512, np.float16), shape=(B, S_Q, H_Q, 512), strides=(0, 0, 0, 2))),
                      r"^out: its strides give two indices the same memory \(shape \[2, 1, 2, 512\], "
                      r"strides \[0, 0, 0, 1\]\)"),
}


@pytest.mark.parametrize("make, message", list(HOST_ALIASING_ERRORS.values()), ids=list(HOST_ALIASING_ERRORS))
def test_outputs_sharing_memory_are_refused_by_name(make, message):
    args = host_decode_args()
    args.update(make(args))
    with pytest.raises(ValueError, match=message):
        _C.decode(**args)


def test_column_slices_of_one_buffer_are_not_sharing():
    # q and out as the two column ranges of one array: their address ranges interleave, their
    # elements do not, so the call goes on to the device check.
    both = np.zeros((B, S_Q, H_Q, 576 + 512), np.float16)
    with pytest.raises(ValueError, match=r"^q: expected a CUDA device tensor, got cpu$"):
        raw_decode(q=both[..., :576], out=both[..., 576:])


def test_empty_arrays_have_no_layout_to_check():
    # NumPy 2 exports size-0 arrays with all strides 0; an empty tensor has no elements whose
    # layout could be wrong, so the innermost-stride rule must not reject it.
    metadata = np.zeros((0, 8), np.int32)
    assert metadata.size == 0
    with pytest.raises(ValueError, match=r"^tile_scheduler_metadata: dimension 0 \(num_sm_parts\) must be in \[1, "):
        raw_decode(tile_scheduler_metadata=metadata)


def test_error_message_is_replaced_by_the_next_failure():
    with pytest.raises(ValueError, match=r"^head_dim_v"):
        raw_decode(head_dim_v=1)
    with pytest.raises(ValueError, match=r"^backend"):
        raw_decode(backend=9)


def test_non_array_argument_is_type_error():
    with pytest.raises(TypeError):
        raw_decode(q=[[1.0, 2.0]])


# ---- metadata on the host path ------------------------------------------------------------------

def host_metadata_args(batch=5, parts=4):
    return dict(
        cache_seqlens=np.full(batch, 100, np.int32),
        tile_scheduler_metadata=np.zeros((parts, 8), np.int32),
        num_splits=np.zeros(batch + 1, np.int32),
    )


HOST_METADATA_ERRORS = {
    "seqlens-dtype": (dict(cache_seqlens=np.ones(5, np.int64)), r"^cache_seqlens: expected int32, got int64"),
    "seqlens-rank": (dict(cache_seqlens=np.ones((5, 1), np.int32)), r"^cache_seqlens: expected 1 dimensions \[b\], got 2"),
    "seqlens-strided": (dict(cache_seqlens=np.ones(10, np.int32)[::2]), r"^cache_seqlens: the last dimension must be contiguous"),
    "seqlens-negative": (dict(cache_seqlens=np.asarray([5, -3, 0, 1, 2], np.int32)), r"^cache_seqlens: entry 1 is negative \(-3\)"),
    "metadata-words": (dict(tile_scheduler_metadata=np.zeros((4, 16), np.int32)), r"^tile_scheduler_metadata: dimension 1 \(words\) must be 8, got 16"),
    "metadata-dtype": (dict(tile_scheduler_metadata=np.zeros((4, 8), np.float32)), r"^tile_scheduler_metadata: expected int32, got float32"),
    "splits-length": (dict(num_splits=np.zeros(5, np.int32)), r"^num_splits: dimension 0 \(b \+ 1\) must be 6, got 5"),
    "splits-dtype": (dict(num_splits=np.zeros(6, np.int64)), r"^num_splits: expected int32, got int64"),
}


@pytest.mark.parametrize("overrides, message", list(HOST_METADATA_ERRORS.values()), ids=list(HOST_METADATA_ERRORS))
def test_metadata_argument_errors_on_host_arrays(overrides, message):
    args = host_metadata_args()
    args.update(overrides)
    with pytest.raises(ValueError, match=message):
        _C.get_metadata(**args)


def test_metadata_into_a_read_only_output_is_type_error():
    args = host_metadata_args()
    args["num_splits"].flags.writeable = False
    with pytest.raises(TypeError):
        _C.get_metadata(**args)


@pytest.mark.parametrize(
    "args, message",
    [
        ((-1, 1, 128, 10), r"^batch: must be >= 0"),
        ((4, 0, 128, 10), r"^s_q: must be >= 1"),
        ((4, 1, 0, 10), r"^h_q: must be >= 1"),
        ((4, 1, 128, 0), r"^num_sm_parts: must be >= 1"),
    ],
)
def test_workspace_size_errors(args, message):
    with pytest.raises(ValueError, match=message):
        _C.decode_workspace_size(*args)


def test_workspace_size_grows_with_the_problem():
    small = _C.decode_workspace_size(1, 1, 16, 8)
    large = _C.decode_workspace_size(64, 2, 128, 66)
    assert 0 < small < large
    assert large % 256 == 0


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 0, 1), r"^num_q_rows_per_kv_head: must be in \[1, 2\^31\)"),
        ((0, 128, 0), r"^num_kv_heads: must be in \[1, 2\^31\)"),
    ],
)
def test_num_sm_parts_errors(args, message):
    with pytest.raises(ValueError, match=message):
        _C.get_num_sm_parts(*args)


def test_num_sm_parts_reports_a_missing_gpu_as_runtime_error():
    """Without a usable GPU the CUDA failure surfaces as RuntimeError, not a crash."""
    try:
        parts = _C.get_num_sm_parts(0, 128, 1)
    except RuntimeError as error:
        assert str(error).startswith("FLASHMLA_STATUS_CUDA_ERROR: ")
    else:
        assert parts >= 1  # a GPU is present


# ---- GPU, through the public API ---------------------------------------------------------------


@pytest.fixture
def valid(torch_cuda):
    """Valid CUDA arguments for flash_mla_with_kvcache (small problem)."""
    torch = torch_cuda
    b, s_q, h_q, h_kv = 2, 1, 16, 1
    lengths = torch.tensor([100, 70], dtype=torch.int32, device="cuda")
    metadata, num_splits = flashmla.get_mla_metadata(lengths, s_q * h_q // h_kv, h_kv)
    return dict(
        q=torch.randn(b, s_q, h_q, 576, device="cuda").div_(10).to(torch.bfloat16),
        k_cache=torch.randn(4, 64, h_kv, 576, device="cuda").div_(10).to(torch.bfloat16),
        block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device="cuda"),
        cache_seqlens=lengths,
        head_dim_v=512,
        tile_scheduler_metadata=metadata,
        num_splits=num_splits,
    )


def call(arguments, **keywords):
    return flashmla.flash_mla_with_kvcache(**arguments, **keywords)


@pytest.mark.gpu
def test_valid_arguments_run(torch_cuda, valid):
    out, lse = call(valid)
    torch_cuda.cuda.synchronize()
    assert torch_cuda.isfinite(out).all() and torch_cuda.isfinite(lse).all()


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name, make, message",
    [
        ("k_cache", lambda t, v: v["k_cache"].half(), r"^k_cache: expected bfloat16, got float16"),
        ("q", lambda t, v: v["q"].float(), r"^q: expected bfloat16 or float16, got float32"),
        ("block_table", lambda t, v: v["block_table"].long(), r"^block_table: expected int32, got int64"),
        ("cache_seqlens", lambda t, v: v["cache_seqlens"][:1], r"^cache_seqlens: dimension 0 \(b\) must be 2, got 1"),
        ("q", lambda t, v: v["q"][..., :512], r"^q: dimension 3 \(head_dim\) must be 576, got 512"),
        ("q", lambda t, v: v["q"].transpose(2, 3).contiguous().transpose(2, 3), r"^q: the last dimension must be contiguous"),
        ("k_cache", lambda t, v: v["k_cache"].view(8, 32, 1, 576), r"^k_cache: dimension 1 \(page_block_size\)"),
        ("tile_scheduler_metadata", lambda t, v: v["tile_scheduler_metadata"][:, :4], r"^tile_scheduler_metadata: dimension 1 \(words\) must be 8"),
        ("num_splits", lambda t, v: v["num_splits"][:2], r"^num_splits: dimension 0 \(b \+ 1\) must be 3"),
    ],
)
def test_public_api_argument_errors(torch_cuda, valid, name, make, message):
    valid[name] = make(torch_cuda, valid)
    with pytest.raises(ValueError, match=message):
        call(valid)


@pytest.mark.gpu
def test_head_dim_v_other_than_512(valid):
    valid["head_dim_v"] = 256
    with pytest.raises(ValueError, match=r"^head_dim_v: must be 512, got 256"):
        call(valid)


@pytest.mark.gpu
@pytest.mark.parametrize("scale", [-0.1, math.nan, math.inf])
def test_bad_softmax_scale(valid, scale):
    with pytest.raises(ValueError, match=r"^softmax_scale: must be finite and > 0"):
        call(valid, softmax_scale=scale)


@pytest.mark.gpu
def test_h_kv_must_divide_h_q(torch_cuda, valid):
    valid["k_cache"] = torch_cuda.zeros(4, 64, 3, 576, dtype=torch_cuda.bfloat16, device="cuda")
    with pytest.raises(ValueError, match=r"^k_cache: h_kv \(3\) must divide h_q \(16\)"):
        call(valid)


@pytest.mark.gpu
def test_cpu_tensor_among_cuda_tensors(torch_cuda, valid):
    valid["cache_seqlens"] = valid["cache_seqlens"].cpu()
    with pytest.raises(TypeError, match=r"^cache_seqlens: expected a CUDA array, got a host \(cpu\) array"):
        call(valid)


def raw_call(torch, v, **overrides):
    q = v["q"]
    args = dict(
        q=q, k_cache=v["k_cache"], block_table=v["block_table"], cache_seqlens=v["cache_seqlens"],
        tile_scheduler_metadata=v["tile_scheduler_metadata"], num_splits=v["num_splits"],
        out=torch.empty(q.shape[0], q.shape[1], q.shape[2], 512, dtype=q.dtype, device="cuda"),
        lse=torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32, device="cuda"),
        head_dim_v=512, softmax_scale=0.0, causal=False, workspace=None, backend=_C.BACKEND_AUTO,
        stream=torch.cuda.current_stream().cuda_stream,
    )
    args.update(overrides)
    _C.decode(**args)


@pytest.mark.gpu
def test_raw_mixed_devices(torch_cuda, valid):
    with pytest.raises(ValueError, match=r"^cache_seqlens: is on cpu but q is on cuda:0"):
        raw_call(torch_cuda, valid, cache_seqlens=valid["cache_seqlens"].cpu())


def workspace_bytes(v):
    q = v["q"]
    return _C.decode_workspace_size(q.shape[0], q.shape[1], q.shape[2], v["tile_scheduler_metadata"].shape[0])


@pytest.mark.gpu
def test_raw_workspace_too_small(torch_cuda, valid):
    small = torch_cuda.empty(workspace_bytes(valid) - 256, dtype=torch_cuda.uint8, device="cuda")
    with pytest.raises(ValueError, match=r"^workspace: \d+ bytes is too small, need \d+"):
        raw_call(torch_cuda, valid, workspace=small)


@pytest.mark.gpu
def test_raw_workspace_misaligned(torch_cuda, valid):
    buffer = torch_cuda.empty(workspace_bytes(valid) + 512, dtype=torch_cuda.uint8, device="cuda")
    with pytest.raises(ValueError, match=r"^workspace: must be 256-byte aligned"):
        raw_call(torch_cuda, valid, workspace=buffer[1:])


@pytest.mark.gpu
def test_raw_workspace_not_contiguous(torch_cuda, valid):
    buffer = torch_cuda.empty(2 * workspace_bytes(valid), dtype=torch_cuda.uint8, device="cuda")
    with pytest.raises(ValueError, match=r"^workspace: expected a contiguous array"):
        raw_call(torch_cuda, valid, workspace=buffer[::2])


@pytest.mark.gpu
def test_backend_environment_variable_is_checked(torch_cuda, valid, monkeypatch):
    monkeypatch.setenv("FLASHMLA_BACKEND", "fastest")
    with pytest.raises(ValueError, match=r"^FLASHMLA_BACKEND: expected auto, reference or sm90, got 'fastest'"):
        call(valid)
    # An explicit backend is not overridden by the environment.
    call(valid, backend="reference")


@pytest.mark.gpu
def test_device_that_does_not_exist(torch_cuda):
    missing = torch_cuda.cuda.device_count() + 7
    with pytest.raises(ValueError, match=rf"^device: {missing} is not a CUDA device"):
        _C.get_num_sm_parts(missing, 128, 1)

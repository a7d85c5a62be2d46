"""bench/power_draw.py: --kernels is checked before any CUDA work, with a message naming every choice."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # power_draw.py and bench.py import it at module level

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
DECODES = ["flashmla", "flash_mla", "flashinfer"]


@pytest.fixture(scope="module")
def power_draw():
    sys.path.insert(0, str(BENCH_DIR))  # power_draw.py imports its sibling bench.py
    try:
        spec = importlib.util.spec_from_file_location("flashmla_power_draw", BENCH_DIR / "power_draw.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_specs_parse_in_order_with_spaces_trimmed(power_draw):
    got = power_draw.parse_kernels("flashmla:bf16, flash_mla:fp16 ,gemm:bf16", DECODES)
    assert got == [("flashmla:bf16", "flashmla", "bf16"), ("flash_mla:fp16", "flash_mla", "fp16"),
                   ("gemm:bf16", "gemm", "bf16")]


@pytest.mark.parametrize("bad", ["gemm:int8", "flashmla:fp32", "cudnn:bf16", "flashmla", "flashmla:", ":bf16", ""])
def test_a_bad_entry_names_itself_and_every_choice(power_draw, bad):
    with pytest.raises(ValueError) as err:
        power_draw.parse_kernels(f"flashmla:bf16,{bad}", DECODES)
    message = str(err.value)
    assert message.startswith("--kernels: ")
    assert repr(bad) in message
    for choice in DECODES + ["gemm", "bf16", "fp16"]:
        assert choice in message


def test_a_repeated_kernel_is_refused(power_draw):
    with pytest.raises(ValueError, match="given twice"):
        power_draw.parse_kernels("gemm:bf16,flashmla:bf16,gemm:bf16", DECODES)


def test_the_same_name_in_two_dtypes_is_two_kernels(power_draw):
    got = power_draw.parse_kernels("gemm:bf16,gemm:fp16", DECODES)
    assert [k[0] for k in got] == ["gemm:bf16", "gemm:fp16"]


def test_main_rejects_a_bad_spec_before_touching_cuda(power_draw, monkeypatch):
    def no_cuda(*_args, **_kwargs):
        raise AssertionError("CUDA was queried before --kernels was checked")

    monkeypatch.setattr(power_draw.torch.cuda, "is_available", no_cuda)
    monkeypatch.setattr(power_draw.torch.cuda, "current_device", no_cuda)
    with pytest.raises(SystemExit) as err:
        power_draw.main(["--kernels", "flashmla:bf16,gemm:int8"])
    message = str(err.value.code)
    assert "'gemm:int8'" in message and "gemm" in message and "flashmla" in message


def test_main_names_every_peer_the_bench_knows(power_draw, monkeypatch):
    monkeypatch.setattr(power_draw.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as err:
        power_draw.main(["--kernels", "nope:bf16"])
    for name in ["flashmla", *power_draw.bench.PEERS, "gemm"]:
        assert name in str(err.value.code)

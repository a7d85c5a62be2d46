"""bench/report.py: FlashMLA's H100 SXM figures give a ratio only for rows measured on that card, and
the table's header says how its rows were timed and flushed."""

import importlib.util
import json
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "bench" / "report.py"


def load_report():
    spec = importlib.util.spec_from_file_location("flashmla_bench_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(device, median_us=200.0, flashmla_us=100.0):
    return {"case": "memory", "b": 128, "s_q": 1, "h_q": 16, "s_k": 4096, "varlen": False,
            "causal": False, "median_us": median_us, "tflops": 1.0, "gbps": 2.0,
            "flashmla_us": flashmla_us, "device": device, "sm_count": 132, "max_sm_clock_mhz": 1980,
            "sm_clock_mhz": 1980, "dtype": "bf16", "h_kv": 1, "page_block_size": 64,
            "backend": "auto", "iters": 30, "flush": "write"}


def table_cells(markdown):
    return [line.split(" | ") for line in markdown.splitlines() if line.startswith("| memory")]


def test_h100_rows_get_flashmla_ratio():
    report = load_report()
    r = row("NVIDIA H100 80GB HBM3")
    assert report.ratio(r) == 0.5
    md = report.markdown([r], "x.json")
    assert "no ratio" not in md
    assert table_cells(md)[0][-1].rstrip(" |") == "0.50"


def test_other_gpu_rows_get_no_ratio_and_a_note(tmp_path):
    report = load_report()
    r = row("NVIDIA H200")
    assert report.ratio(r) is None
    md = report.markdown([r], "x.json")
    assert "no ratio is given" in md
    assert table_cells(md)[0][-1].rstrip(" |") == "-"
    path = tmp_path / "h200.json"
    path.write_text(json.dumps([r]))
    assert report.main([str(path), "--md", str(tmp_path / "h200.md"), "--png", str(tmp_path / "h200.png")]) == 1
    assert not (tmp_path / "h200.png").exists()


def test_h100_cards_other_than_the_sxm_get_no_ratio():
    report = load_report()
    for device in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL"):
        assert report.ratio(row(device)) is None, device


def test_header_says_how_rows_were_timed_and_flushed():
    report = load_report()
    md = report.markdown([row("NVIDIA H100 80GB HBM3")], "x.json")
    assert "median of 30 CUDA-graph replays; L2 flushed before each by writing over it." in md
    unflushed = dict(row("NVIDIA H100 80GB HBM3"), flush="none", timing="eager")
    md = report.markdown([unflushed], "x.json")
    assert "median of 30 eager calls (host overhead included); L2 not flushed." in md
    assert "flushed before each" not in md
    mixed = [row("NVIDIA H100 80GB HBM3"), dict(row("NVIDIA H100 80GB HBM3"), dtype="fp16", flush="read")]
    md = report.markdown(mixed, "x.json")
    assert "dtype bf16/fp16" in md
    assert "by writing over it; L2 flushed before each by reading through it" in md

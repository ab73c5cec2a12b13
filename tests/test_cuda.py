"""CUDA paths: run on a machine with a GPU, skipped with a reason elsewhere (marker ``cuda``)."""

from __future__ import annotations

import pytest
import torch

import variants
from harness.cases import Case
from harness.measure import MeasureSettings, measure
from harness.memory import peak_bytes
from harness.oracle import Shape, check_agreement
from harness.specs import VariantSpec
from tests.conftest import REGISTERED
from variants.contract import Unavailable

pytestmark = pytest.mark.cuda


def test_cuda_peak_counts_allocations_above_entry() -> None:
    """The allocator-statistics peak of a 64 MiB allocation is 64 MiB (inputs excluded)."""
    held = torch.empty(2**24, device="cuda")  # 64 MiB allocated before: not counted
    peak = peak_bytes(lambda: torch.empty(2**24, device="cuda"), "cuda")
    assert peak == 2**26 and held.numel() == 2**24


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_variants_agree_on_cuda(name: str, dtype: torch.dtype) -> None:
    """Every available variant configuration agrees with the oracle on the GPU."""
    variant = variants.get(name)
    for cfg in [variant.config_cls(), *variant.presets.values()]:
        if variant.unavailable_reason("cuda", dtype, causal=True, backward=False, cfg=cfg):
            continue
        backward = not variant.unavailable_reason("cuda", dtype, causal=True, backward=True,
                                                  cfg=cfg)  # split-K: forward only
        for causal in (False, True):
            try:
                a = check_agreement(variant, cfg, Shape(2, 3, 127, 257, 64), device="cuda",
                                    dtype=dtype, causal=causal, backward=backward)
            except Unavailable:
                continue
            assert a.ok, (name, cfg, causal, a.worst())


def test_measure_on_cuda_fills_a_row() -> None:
    """measure() on CUDA: synchronised timing, allocator peaks, roof and the oracle."""
    sdpa = variants.get("sdpa")
    case = Case(VariantSpec("sdpa", sdpa, sdpa.config_cls()), "cuda", "bf16", "fwd+bwd", True,
                2, 8, 1024, 1024, 64)
    row = measure(case, MeasureSettings(min_run_time=0.2))
    assert row.status == "ok", row.reason
    assert row.median_ms > 0 and row.peak_fwd_bwd_mib > 0 and row.roof_gflops > 0
    assert row.extra["timer"] == "cuda events" and row.number_per_run == 1
    assert row.extra["kernel"]["forward"].startswith("sdpa ")
    flushed = measure(case, MeasureSettings(min_run_time=0.2, l2_flush=True, check=False,
                                            memory=False))
    assert flushed.extra["timer"] == "cuda events, L2 flushed between calls"
    # the flush is outside the events: a cold L2 costs a little, never the flush's own time
    assert flushed.median_ms < 3 * row.median_ms


def test_cuda_time_reads_the_gpu_clock() -> None:
    """A GPU sleep of a known cycle count reads as GPU time, with min_samples calls."""
    from harness.timing import cuda_time, l2_flusher

    t = cuda_time(lambda: torch.cuda._sleep(1_000_000), min_run_time=0.05, min_samples=7,
                  flush=l2_flusher("cuda"))
    assert t.samples >= 7 and all(x > 0 for x in t.times_s)
    assert 1e-4 < t.median_s < 0.05  # 1e6 cycles at 0.5-3 GHz, flush not counted


@pytest.mark.parametrize("spec", ["sdpa", "xformers"])
def test_the_recorded_kernel_is_the_one_the_profiler_sees(spec: str) -> None:
    """dispatched() on CUDA names the op the profiler records: sdpa's backend, xformers' op
    (in 0.0.35 cutlassF-pt / fa2F-pt: PyTorch's kernels)."""
    from torch.profiler import ProfilerActivity, profile

    variant = variants.get(spec)
    cfg = variant.config_cls()
    shape, dtype = Shape(2, 8, 1024, 1024, 64), torch.bfloat16
    if variant.unavailable_reason("cuda", dtype, causal=True, backward=False, cfg=cfg):
        pytest.skip(f"{spec} cannot run here")
    said = variant.dispatched(shape, device="cuda", dtype=dtype, causal=True, backward=False,
                              cfg=cfg)["forward"]
    q = torch.randn(2, 8, 1024, 64, device="cuda", dtype=dtype)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        variant.attention(q, q, q, causal=True, scale=None, cfg=cfg)
        torch.cuda.synchronize()
    ops = {e.name for e in prof.events()}
    wanted = {"flash": "flash_attention", "efficient": "efficient_attention",
              "cudnn": "cudnn_attention", "math": "attention_math",
              "cutlassF-pt": "efficient_attention", "fa2F": "flash_attention",
              "triton_splitK": "triton"}
    key = next(k for k in wanted if k in said)
    assert any(wanted[key] in op for op in ops), (said, sorted(ops)[:40])


def test_sdpa_cuda_memory_model_is_within_reach_of_the_measured_peak() -> None:
    """The fused backends' CUDA model (no CPU workspace) against the allocator's peak."""
    sdpa = variants.get("sdpa")
    case = Case(VariantSpec("sdpa@efficient", sdpa, sdpa.presets["efficient"]), "cuda",
                "bf16", "fwd+bwd", False, 1, 16, 4096, 4096, 128)
    row = measure(case, MeasureSettings(min_run_time=0.1, check=False, roof=False))
    assert row.status == "ok", row.reason
    assert 0.5 < row.peak_fwd_bwd_mib / row.expected_fwd_bwd_mib < 2.0, row


def test_roof_and_fingerprint_on_the_device() -> None:
    """The roof is measured on the GPU (CUDA events); the fingerprint names its clocks."""
    from harness.fingerprint import fingerprint
    from harness.flops import measure_roof

    roof = measure_roof.__wrapped__("cuda", "bf16", min_run_time=0.2)
    assert roof.gemm_size >= 8192 and roof.gemm_gflops > 1000 and roof.copy_gib_s > 100
    soft = fingerprint("cuda").soft
    assert soft["gpu_name"] and "gpu_clock_sm_max_mhz" in soft

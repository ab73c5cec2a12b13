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
        if variant.unavailable_reason("cuda", dtype, causal=True, backward=True, cfg=cfg):
            continue
        for causal in (False, True):
            try:
                a = check_agreement(variant, cfg, Shape(2, 3, 127, 257, 64), device="cuda",
                                    dtype=dtype, causal=causal, backward=True)
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

"""Dv != D (v_head_dim): every variant that declares it agrees with the oracle, prefill with
gradients and decode; the rest say why; FLOPs count Q K^T at D and P V at Dv."""

from __future__ import annotations

import pytest
import torch

import variants as registry
from harness.cases import Case
from harness.config import ConfigError, MeasureSettings, sweep_settings
from harness.decode import check_decode
from harness.flops import forward_flops
from harness.grid import cases
from harness.measure import measure, unavailable_reason
from harness.oracle import check_agreement
from harness.specs import default_specs
from harness.vocab import Status
from tests.test_sweep import composed
from variants.contract import Shape, SoftmaxAttention, Unavailable

SPECS = default_specs(registry.load_all())


def dv_case(spec, mode: str = "fwd") -> Case:
    """D=32 queries and keys, Dv=16 values (as 192/128 models do, smaller)."""
    return Case(spec, "cpu", "fp32", mode, mode == "decode", 2, 2, 40, 40, 32,
                new_tokens=int(mode == "decode"), dv=16)


VALUED = [s for s in SPECS if unavailable_reason(dv_case(s)) is None]


def test_naive_memory_efficient_and_linear_declare_dv() -> None:
    """The pure-PyTorch variants whose kernels keep D and Dv apart."""
    assert {"naive", "memory_efficient", "linear"} <= {s.label for s in VALUED}


@pytest.mark.parametrize("spec", VALUED, ids=lambda s: s.label)
@pytest.mark.parametrize("causal", [False, True])
def test_dv_prefill_agrees_with_the_oracle(spec, causal) -> None:
    """Output (B, H, N, Dv) and dq, dk, dv against float64."""
    backward = unavailable_reason(dv_case(spec, "fwd+bwd")) is None
    try:
        agreement = check_agreement(spec.variant, spec.cfg, Shape(2, 2, 33, 47, 32, 0, 16),
                                    device="cpu", dtype=torch.float32, causal=causal,
                                    backward=backward, seed=5)
    except Unavailable as exc:  # a pinned kernel that needs Dv == D says so, never falls back
        assert "cannot run these inputs" in str(exc) and "@" in spec.label
        return
    assert agreement.ok, agreement.checks


@pytest.mark.parametrize("spec", [s for s in VALUED if s.variant.decode_reason(s.cfg) is None],
                         ids=lambda s: s.label)
def test_dv_decode_agrees_with_the_oracle(spec) -> None:
    """A step with values of another head dim: output and cache."""
    try:
        agreement, _ = check_decode(dv_case(spec, "decode"), spec.variant, 2**22, seed=5)
    except Unavailable as exc:  # a pinned kernel that needs Dv == D
        assert "cannot run these inputs" in str(exc) and "@" in spec.label
        return
    assert agreement.ok, agreement.checks


@pytest.mark.parametrize("spec", [s for s in SPECS if not s.variant.supports.value_dim],
                         ids=lambda s: s.label)
def test_a_variant_without_dv_is_unavailable_with_the_reason(spec) -> None:
    """Never run with a silently padded or truncated v."""
    row = measure(dv_case(spec), MeasureSettings(min_run_time=0.01))
    assert row.status == Status.UNAVAILABLE and row.reason


def test_flops_count_qk_at_d_and_pv_at_dv() -> None:
    """2 D + 2 Dv FLOPs a pair; equal dims give the old 4 D."""
    soft = SoftmaxAttention()
    assert forward_flops(soft, 1, 1, 4, 4, 192, False, 128) == 2 * (192 + 128) * 16
    assert forward_flops(soft, 1, 1, 4, 4, 64, False) == 4 * 64 * 16


def test_v_head_dim_is_validated_and_reaches_cases() -> None:
    """v_head_dim=128 with head_dim=192 makes Dv cases; equal to D means none; < 0 refused."""
    over = ["sweep=smoke", "variants=[naive]", "seq_lens=[64]", "modes=[fwd]",
            "causal=[false]", "head_dim=192"]
    grid = sweep_settings(composed("config", [*over, "v_head_dim=128"])).grid
    assert [(c.d, c.dv) for c in cases(grid)] == [(192, 128)]
    grid = sweep_settings(composed("config", [*over, "v_head_dim=192"])).grid
    assert [(c.d, c.dv) for c in cases(grid)] == [(192, 0)]
    with pytest.raises(ConfigError, match="v_head_dim"):
        sweep_settings(composed("config", [*over, "v_head_dim=-1"]))


def test_sdpa_says_which_kernel_takes_dv() -> None:
    """On CPU the flash kernel needs Dv == D: auto dispatches to math, and the row says so."""
    spec = next(s for s in SPECS if s.label == "sdpa")
    kernels = spec.variant.dispatched(Shape(1, 2, 64, 64, 32, 0, 16), device="cpu",
                                      dtype=torch.float32, causal=True, backward=False,
                                      cfg=spec.cfg)
    assert "sdpa math" in kernels["forward"]


def test_a_pinned_kernel_that_cannot_take_dv_is_refused_before_running() -> None:
    """sdpa@flash on CPU: PyTorch's own selector refuses Dv != D, so the case (and the
    support matrix) says unavailable before any call, in PyTorch's words."""
    spec = next(s for s in SPECS if s.label == "sdpa@flash")
    assert "cannot run these inputs" in unavailable_reason(dv_case(spec))
    assert unavailable_reason(Case(spec, "cpu", "fp32", "fwd", False, 2, 2, 40, 40, 32)) is None

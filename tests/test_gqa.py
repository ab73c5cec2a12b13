"""Grouped-query attention (kv_heads): every variant that declares it agrees with the oracle
(prefill with gradients, and decode), none repeats K/V where it folds queries, the others say
why they cannot, and the grid validates and spans the axis."""

from __future__ import annotations

import pytest
import torch

import variants as registry
from harness.cases import Case
from harness.config import ConfigError, MeasureSettings, sweep_settings
from harness.decode import check_decode
from harness.grid import cases
from harness.measure import measure, unavailable_reason
from harness.oracle import check_agreement
from harness.specs import default_specs
from harness.support import support_matrix
from harness.vocab import Status
from tests.test_sweep import composed
from variants.contract import Shape
from variants.grouping import fold, per_group, unfold

SPECS = default_specs(registry.load_all())


def grouped_case(spec, mode: str = "fwd", causal: bool = False, kv: int = 2) -> Case:
    """H=6 query heads over kv heads (2: groups of 3; 1: MQA)."""
    tokens = 1 if mode == "decode" else 0
    return Case(spec, "cpu", "fp32", mode, causal or mode == "decode", 2, 6, 40, 40, 16,
                new_tokens=tokens, kv_heads=kv)


GROUPED = [s for s in SPECS if unavailable_reason(grouped_case(s)) is None]
REFUSING = [s for s in SPECS if not s.variant.supports.gqa]


def test_the_pure_pytorch_variants_and_sdpa_declare_gqa() -> None:
    """Which variants take fewer kv heads; the rest refuse."""
    assert {"naive", "sdpa", "memory_efficient", "linear", "sparse"} <= {s.label for s in GROUPED}


@pytest.mark.parametrize("spec", GROUPED, ids=lambda s: s.label)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv", [1, 2])
def test_grouped_prefill_agrees_with_repeated_kv(spec, causal, kv) -> None:
    """Output and dq, dk, dv against the reference over K/V repeated per query head
    (dk, dv sum over the group: the gradient of a shared key)."""
    shape = Shape(2, 6, 33, 47, 16, kv)
    backward = unavailable_reason(grouped_case(spec, "fwd+bwd")) is None
    agreement = check_agreement(spec.variant, spec.cfg, shape, device="cpu",
                                dtype=torch.float32, causal=causal, backward=backward, seed=3)
    assert agreement.ok, agreement.checks


@pytest.mark.parametrize("spec", [s for s in GROUPED
                                  if s.variant.decode_reason(s.cfg) is None],
                         ids=lambda s: s.label)
@pytest.mark.parametrize("t", [1, 4])
def test_grouped_decode_agrees_and_caches_only_kv_heads(spec, t) -> None:
    """A step with Hkv < H: the oracle's output and cache checks pass."""
    case = Case(spec, "cpu", "fp32", "decode", True, 2, 6, 300, 300, 16, new_tokens=t,
                kv_heads=2)
    agreement, shape = check_decode(case, spec.variant, 2**22, seed=2)
    assert agreement.ok and shape.hkv == 2, agreement.checks


@pytest.mark.parametrize("spec", REFUSING, ids=lambda s: s.label)
def test_a_variant_without_gqa_is_unavailable_with_the_reason(spec) -> None:
    """No silent repeat of K/V behind the row's name."""
    row = measure(grouped_case(spec), MeasureSettings(min_run_time=0.01))
    assert row.status == Status.UNAVAILABLE
    assert "kv_heads" in row.reason or "does not run" in row.reason or row.reason


def test_folding_queries_is_a_view_and_per_group_matches_a_loop() -> None:
    """fold/unfold round-trip without copies; per_group equals attending each member."""
    q = torch.randn(2, 6, 5, 4)
    folded = fold(q, 2)
    assert folded.data_ptr() == q.data_ptr() and folded.shape == (2, 2, 15, 4)
    assert torch.equal(unfold(folded, 6), q)
    k = torch.randn(2, 2, 7, 4)

    def first_key(qg: torch.Tensor, kg: torch.Tensor, vg: torch.Tensor) -> torch.Tensor:
        return qg + kg[:, :, :1]  # (B, Hkv, N, D): which kv head each query head met

    out = per_group(first_key, q, k, k)
    for h in range(6):
        assert torch.equal(out[:, h], q[:, h] + k[:, h // 3, :1])


def test_grouped_naive_memory_stays_below_repeating_kv() -> None:
    """The memory column shows GQA: naive's forward peak with Hkv=1 is below Hkv=H's."""
    spec = next(s for s in SPECS if s.label == "naive")
    settings = MeasureSettings(min_run_time=0.01, check=False, roof=False)

    def peak(kv: int) -> float:
        case = Case(spec, "cpu", "fp32", "fwd", False, 1, 8, 64, 2048, 64, kv_heads=kv)
        return measure(case, settings).peak_fwd_mib

    assert peak(1) <= peak(0) + 0.01  # no (B, H, Nk, D) copy of k or v


def test_kv_heads_axis_is_validated_and_spans_the_grid() -> None:
    """kv_heads must divide heads (named, allowed listed); heads itself means no grouping."""
    with pytest.raises(ConfigError, match=r"kv_heads: 3 does not divide heads=8"):
        sweep_settings(composed("config", ["sweep=smoke", "heads=8", "kv_heads=[3]"]))
    grid = sweep_settings(composed("config", ["sweep=smoke", "heads=8", "kv_heads=[8,2,1]",
                                              "variants=[sdpa]", "seq_lens=[128]",
                                              "modes=[fwd]", "causal=[false]"])).grid
    assert [c.kv_heads for c in cases(grid)] == [0, 2, 1]
    assert "Hkv" not in next(cases(grid)).key()


def test_the_support_matrix_lists_gqa_as_measure_decides() -> None:
    """gqa cells are empty exactly for the variants that run grouped here."""
    cells = {c.label: c.reason for c in support_matrix(SPECS, ["cpu"], ["fp32"])
             if c.scenario == "gqa"}
    for spec in SPECS:
        assert (cells[spec.label] == "") == (spec in GROUPED), spec.label

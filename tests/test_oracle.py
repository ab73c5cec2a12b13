"""The oracle: every registered variant agrees with its float64 reference, and the oracle
rejects deliberately broken variants (it has teeth)."""

from __future__ import annotations

import pytest
import torch

import variants
from harness.oracle import FUDGE, Shape, check_agreement, reference
from tests import broken_variants as broken
from tests.conftest import REGISTERED
from variants.contract import DTYPES, SoftmaxAttention, Unavailable

SHAPES = [Shape(1, 1, 1, 1, 16), Shape(2, 3, 33, 33, 16), Shape(1, 2, 17, 40, 80),
          Shape(1, 2, 40, 17, 64)]


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True])
def test_every_variant_agrees(name: str, dtype: str, causal: bool) -> None:
    """Each variant's output and gradients are within the data-derived tolerance."""
    variant = variants.get(name)
    for cfg in [variant.config_cls(), *variant.presets.values()]:
        reason = variant.unavailable_reason(
            "cpu", DTYPES[dtype], causal=causal, backward=variant.supports.backward, cfg=cfg
        )
        if reason:
            continue  # listed by `harness check`; tested in test_variants
        for shape in SHAPES:
            for logit_scale in (1.0, 30.0):
                try:
                    a = check_agreement(variant, cfg, shape, device="cpu", dtype=DTYPES[dtype],
                                        causal=causal, backward=variant.supports.backward,
                                        logit_scale=logit_scale)
                except Unavailable:
                    continue
                assert a.ok, (cfg, shape, logit_scale, a.worst())


def test_reference_matches_torch_sdpa() -> None:
    """The float64 softmax reference agrees with torch's own math kernel."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    for causal in (False, True):
        ref = reference(q, k, v, causal=causal, scale=None, semantics=SoftmaxAttention())
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(ref, expected, rtol=0, atol=1e-12)


BROKEN = {
    "wrong_scale": (lambda: broken.make_variant("ws", broken.wrong_scale), False, 1.0),
    "causal_off_by_one": (lambda: broken.make_variant("cob", broken.causal_off_by_one), True, 1.0),
    "no_max_subtraction": (
        lambda: broken.make_variant("nms", broken.no_max_subtraction), False, 30.0),
    "linear_unnormalised": (
        lambda: broken.make_variant("lu", broken.linear_unnormalised, broken.LINEAR), False, 1.0),
    "linear_unnormalised_causal": (
        lambda: broken.make_variant("luc", broken.linear_unnormalised, broken.LINEAR), True, 1.0),
    "window_too_wide": (lambda: broken.window_one_too_wide(4), False, 1.0),
    "window_too_wide_causal": (lambda: broken.window_one_too_wide(4), True, 1.0),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_oracle_rejects_broken_variants(case: str) -> None:
    """Each deliberately broken variant is caught, in fp32 and in bf16."""
    factory, causal, logit_scale = BROKEN[case]
    variant = factory()
    for dtype in (torch.float32, torch.bfloat16):
        a = check_agreement(variant, variant.config_cls(), Shape(1, 2, 33, 33, 16), device="cpu",
                            dtype=dtype, causal=causal, backward=True, logit_scale=logit_scale)
        assert not a.ok, (variant.name, dtype)


def test_tolerance_is_data_derived() -> None:
    """The allowance is FUDGE times the same-dtype reference's error (above the floor)."""
    a = check_agreement(variants.get("naive"), None, Shape(1, 2, 64, 64, 32), device="cpu",
                        dtype=torch.bfloat16, causal=False, backward=True)
    for c in a.checks:  # bf16 errors here are far above the floor: the allowance is data's
        assert c.reference_err > 1e-3
        assert c.allowed == pytest.approx(FUDGE[c.tensor] * c.reference_err)


def test_approximate_variants_report_distance_to_softmax() -> None:
    """Linear attention's distance to full softmax is reported as information."""
    v = variants.get("linear")
    a = check_agreement(v, v.config_cls(), Shape(1, 2, 33, 33, 16), device="cpu",
                        dtype=torch.float32, causal=False, backward=False)
    assert a.ok and a.err_vs_softmax is not None and a.err_vs_softmax > 1e-3
    exact = check_agreement(variants.get("naive"), None, Shape(1, 2, 33, 33, 16), device="cpu",
                            dtype=torch.float32, causal=False, backward=False)
    assert exact.err_vs_softmax is None

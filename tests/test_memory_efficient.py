"""The memory-efficient variant: agreement with the float64 oracle on awkward shapes with small
tiles (many tiles, partial tiles, causal diagonal and skipped tiles), config validation, causal
tile skipping, inference mode and what the backward saves."""

from __future__ import annotations

import pytest
import torch

import variants
from harness.oracle import Shape, check_agreement
from variants import memory_efficient as me
from variants.memory_efficient import Config

SMALL = Config(block_q=16, block_k=8)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SIZES = [(1, 1), (3, 3), (17, 17), (33, 33), (17, 40), (40, 17), (1, 33), (33, 1)]


@pytest.fixture(scope="module")
def variant() -> variants.Variant:
    """The registered memory_efficient variant."""
    return variants.get("memory_efficient")


def _seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal float32 tensor."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize(("nq", "nk"), SIZES, ids=[f"Nq{a}-Nk{b}" for a, b in SIZES])
def test_agrees_with_oracle_small_tiles(
    variant: variants.Variant, nq: int, nk: int, dtype: torch.dtype, causal: bool
) -> None:
    """Output and gradients match the float64 reference across tile boundaries."""
    agreement = check_agreement(
        variant, SMALL, Shape(2, 3, nq, nk, 16), device="cpu", dtype=dtype, causal=causal,
        backward=True,
    )
    assert agreement.ok, agreement.worst()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_large_logits(variant: variants.Variant, dtype: torch.dtype, causal: bool) -> None:
    """Inputs scaled x30: the running max keeps exp finite in every tile."""
    agreement = check_agreement(
        variant, SMALL, Shape(1, 2, 33, 40, 16), device="cpu", dtype=dtype, causal=causal,
        backward=True, logit_scale=30.0,
    )
    assert agreement.ok, agreement.worst()


@pytest.mark.parametrize(
    "cfg", [Config(), Config(block_q=8, block_k=16), Config(block_q=1, block_k=1)],
    ids=["default", "8x16", "1x1"],
)
def test_other_tilings_and_fp64(variant: variants.Variant, cfg: Config) -> None:
    """Single-tile, wide-key and 1x1 tilings agree in fp64 with an explicit scale."""
    for causal in (False, True):
        agreement = check_agreement(
            variant, cfg, Shape(1, 2, 19, 23, 8), device="cpu", dtype=torch.float64,
            causal=causal, backward=True, scale=0.3,
        )
        assert agreement.ok, agreement.worst()


@pytest.mark.parametrize("field", ["block_q", "block_k"])
@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "64"])
def test_config_rejects_bad_tiles(field: str, bad: object) -> None:
    """A non-positive or non-int tile length raises ValueError naming the field."""
    with pytest.raises(ValueError, match=f"{field} must be a positive int"):
        Config(**{field: bad})


def test_presets_are_configs() -> None:
    """Every preset is a valid Config."""
    assert all(isinstance(cfg, Config) for cfg in me.PRESETS.values())


def _expected_tiles(nq: int, nk: int, cfg: Config) -> int:
    """Tiles not entirely above the top-left diagonal: key tile start < query tile stop."""
    q_stops = [min(i + cfg.block_q, nq) for i in range(0, nq, cfg.block_q)]
    return sum(j < stop for stop in q_stops for j in range(0, nk, cfg.block_k))


@pytest.mark.parametrize(("nq", "nk"), [(33, 33), (17, 40), (40, 17)])
def test_causal_skips_tiles_above_diagonal(
    monkeypatch: pytest.MonkeyPatch, nq: int, nk: int
) -> None:
    """Forward and backward compute only tiles that hold at least one visible key."""
    seen: list[tuple[me.Span, me.Span]] = []
    original = me._scores

    def counting(
        qs: torch.Tensor, k3: torch.Tensor, rows: me.Span, cols: me.Span, causal: bool,
        buf: torch.Tensor,
    ) -> torch.Tensor:
        seen.append((rows, cols))
        return original(qs, k3, rows, cols, causal, buf)

    monkeypatch.setattr(me, "_scores", counting)
    q, k, v = (_seeded(1, 2, n, 8, seed=i).requires_grad_() for i, n in enumerate((nq, nk, nk)))
    out = me.attention(q, k, v, causal=True, cfg=SMALL)
    assert len(seen) == _expected_tiles(nq, nk, SMALL)
    out.sum().backward()
    assert len(seen) == 2 * _expected_tiles(nq, nk, SMALL)
    assert all(cols[0] < rows[1] for rows, cols in seen)
    all_tiles = -(-nq // SMALL.block_q) * -(-nk // SMALL.block_k)
    assert _expected_tiles(nq, nk, SMALL) < all_tiles  # some tiles really were skipped


def test_nan_above_diagonal_never_reaches_output() -> None:
    """NaN above the diagonal is masked in crossing tiles and never read in skipped ones."""
    nq, nk = 17, 40  # queries see keys 0..16; key tile (16, 24) crosses, (24, 40) are skipped
    q, k, v = _seeded(1, 2, nq, 8, seed=1), _seeded(1, 2, nk, 8, seed=2), _seeded(1, 2, nk, 8)
    clean = me.attention(q, k, v, causal=True, cfg=SMALL)
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[..., nq:, :] = float("nan")  # scores masked in the crossing tile
    v_bad[..., 24:, :] = float("nan")  # would give 0 * NaN = NaN if skipped tiles were computed
    torch.testing.assert_close(me.attention(q, k_bad, v_bad, causal=True, cfg=SMALL), clean)
    # Backward: dQ = dS K multiplies masked zeros by K, so only skipped tiles may hold NaN here.
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[..., 24:, :], v_bad[..., 24:, :] = float("nan"), float("nan")
    clean_grads = _grads(q, k, v)
    for clean_grad, grad in zip(clean_grads, _grads(q, k_bad, v_bad), strict=True):
        torch.testing.assert_close(grad, clean_grad)
    assert (clean_grads[1][..., nq:, :] == 0).all() and (clean_grads[2][..., nq:, :] == 0).all()


def _grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """dq, dk, dv of the causal small-tile attention for an all-ones upstream gradient."""
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = me.attention(q, k, v, causal=True, cfg=SMALL)
    return torch.autograd.grad(out, (q, k, v), torch.ones_like(out))


def test_inference_mode_matches_autograd_and_keeps_dtype() -> None:
    """Forward under inference_mode equals the autograd path; bf16 in, bf16 out and grads."""
    q, k, v = (_seeded(2, 3, 21, 16, seed=i).bfloat16() for i in range(3))
    with torch.inference_mode():
        fast = me.attention(q, k, v, causal=True, cfg=SMALL)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = me.attention(q, k, v, causal=True, cfg=SMALL)
    assert fast.dtype == out.dtype == torch.bfloat16
    assert torch.equal(fast, out.detach())
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3


def test_backward_saves_only_linear_size_tensors() -> None:
    """The autograd node keeps q, k, v, out and lse: O(N) memory, no score matrix."""
    nq, nk, d = 40, 33, 8
    q = _seeded(1, 2, nq, d).requires_grad_()
    k, v = (_seeded(1, 2, nk, d, seed=i).requires_grad_() for i in (1, 2))
    out = me.attention(q, k, v, cfg=SMALL)
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [
        (1, 2, nq, d), (1, 2, nk, d), (1, 2, nk, d), (1, 2, nq, d), (2, nq, 1)
    ]

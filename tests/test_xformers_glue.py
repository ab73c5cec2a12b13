"""xformers' decode and grouped-query glue, run against a stand-in for ``xformers.ops`` (no
xformers kernel runs on a CPU): layouts, the stride-0 kv expansion and the masks it picks are
what the real call would receive. The real kernels: tests/test_cuda.py and make gpu-check."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from variants import decoding, naive
from variants import xformers as xf


class LowerTriangularMask:
    """Stand-in: top-left causal."""


class LowerTriangularFromBottomRightMask:
    """Stand-in: bottom-right causal."""


def _fake_attention(q, k, v, attn_bias=None, scale=None, op=None):
    """xformers' contract on BMHK / BMGHK inputs, computed the textbook way."""
    grouped, groups = q.dim() == 5, q.shape[3] if q.dim() == 5 else 1
    if grouped:  # (B, N, Hkv, G, D) -> (B, Hkv G, N, D); k, v must be stride-0 expansions
        assert k.stride(3) == 0 and v.stride(3) == 0
        q, k, v = (x.flatten(2, 3) for x in (q, k, v))
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, N, D)
    nq, nk = q.shape[-2], k.shape[-2]
    keep = None
    if isinstance(attn_bias, LowerTriangularMask):
        keep = naive.causal_keep(nq, nk, q.device)
    elif isinstance(attn_bias, LowerTriangularFromBottomRightMask):
        keep = decoding.step_keep(nq, nk, q.device)
    out = naive.masked_softmax_attention(q, k, v, scale or q.shape[-1] ** -0.5, keep)
    out = out.transpose(1, 2)  # (B, N, H, Dv)
    return out.unflatten(2, (-1, groups)) if grouped else out  # (B, N, Hkv, G, Dv)


@pytest.fixture
def fake_xformers(monkeypatch):
    """xformers, xformers.ops and xformers.ops.fmha.attn_bias as stand-ins."""
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = _fake_attention
    ops.memory_efficient_attention_forward = _fake_attention
    bias = types.ModuleType("xformers.ops.fmha.attn_bias")
    bias.LowerTriangularMask = LowerTriangularMask
    bias.LowerTriangularFromBottomRightMask = LowerTriangularFromBottomRightMask
    fmha = types.ModuleType("xformers.ops.fmha")
    fmha.attn_bias = bias
    ops.fmha = fmha
    package = types.ModuleType("xformers")
    package.ops = ops
    for name, module in (("xformers", package), ("xformers.ops", ops),
                         ("xformers.ops.fmha", fmha), ("xformers.ops.fmha.attn_bias", bias)):
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("hkv", [6, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
def test_grouped_layout_matches_naive(fake_xformers, hkv, causal) -> None:
    """BMGHK with stride-0 kv heads (or BMHK without grouping) gives naive's answer."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 9, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, hkv, 9, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    got = xf.attention(q, k, v, causal=causal)
    want = naive.attention(q, k, v, causal=causal)
    assert got.shape == (2, 6, 9, 8) and torch.allclose(got, want)


@pytest.mark.parametrize("t", [1, 4])
def test_decode_uses_the_bottom_right_mask_and_the_cache(fake_xformers, t) -> None:
    """A step against the cache equals naive's step; the cache gains the new keys."""
    gen = torch.Generator().manual_seed(1)
    k, v = (torch.randn(1, 2, 20, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    q, kn, vn = (torch.randn(1, h, t, 8, generator=gen, dtype=torch.float64)
                 for h in (6, 2, 2))
    got, cache = xf.decode(q, kn, vn, xf.prefill(k, v, capacity=20 + t))
    want, _ = naive.decode(q, kn, vn, naive.prefill(k, v, capacity=20 + t))
    assert torch.allclose(got, want) and cache.length == 20 + t

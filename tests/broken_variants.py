"""Deliberately broken variants: the oracle must reject each of them."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch

from variants import naive
from variants.contract import LinearAttention, Semantics, SoftmaxAttention, Variant, check_module

SOFTMAX = SoftmaxAttention()


def make_variant(
    name: str, attention: Callable[..., torch.Tensor], semantics: Semantics = SOFTMAX
) -> Variant:
    """Wrap an attention function as a contract-following variant module."""
    module = types.ModuleType(f"broken_{name}")
    module.NAME = name
    module.Config = naive.Config
    module.PRESETS = {}
    module.SUPPORTS = naive.SUPPORTS
    module.computes = lambda cfg: semantics
    module.unavailable_reason = lambda *args, **kwargs: None
    module.attention = attention
    return check_module(module)


def wrong_scale(q, k, v, *, causal, scale, cfg) -> torch.Tensor:
    """Scales by 1/D instead of 1/sqrt(D)."""
    keep = naive.causal_keep(q.shape[-2], k.shape[-2], q.device) if causal else None
    return naive.masked_softmax_attention(q, k, v, 1.0 / q.shape[-1], keep)


def causal_off_by_one(q, k, v, *, causal, scale, cfg) -> torch.Tensor:
    """Lets query i also see key i + 1."""
    keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(1) if causal else None
    return naive.masked_softmax_attention(q, k, v, q.shape[-1] ** -0.5, keep)


def no_max_subtraction(q, k, v, *, causal, scale, cfg) -> torch.Tensor:
    """softmax as exp(s) / sum(exp(s)): overflows on large logits."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Nq, Nk)
    if causal:
        keep = naive.causal_keep(q.shape[-2], k.shape[-2], q.device)
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = scores.exp()  # (B, H, Nq, Nk)
    return (weights / weights.sum(-1, keepdim=True)) @ v  # (B, H, Nq, D)


def _phi(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.elu(x) + 1.0


LINEAR = LinearAttention(feature_map=_phi, eps=1e-6)


def linear_unnormalised(q, k, v, *, causal, scale, cfg) -> torch.Tensor:
    """phi(Q) phi(K)^T V without the row normaliser."""
    a = _phi(q) @ _phi(k).transpose(-2, -1)  # (B, H, Nq, Nk)
    if causal:
        a = a * naive.causal_keep(q.shape[-2], k.shape[-2], q.device)
    return a @ v  # (B, H, Nq, D)


def window_one_too_wide(window: int) -> Any:
    """A sparse variant that claims window w but attends within w + 1."""
    from variants import sparse

    claimed = sparse.computes(sparse.Config(pattern="window", window=window))

    def attention(q, k, v, *, causal, scale, cfg):
        wider = sparse.Config(pattern="window", window=window + 1)
        return sparse.attention(q, k, v, causal=causal, scale=scale, cfg=wider)

    return make_variant("wide_window", attention, claimed)

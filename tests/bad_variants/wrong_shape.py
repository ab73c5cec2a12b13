"""A variant that returns the wrong shape: (B, H, Nq, D // 2)."""

from __future__ import annotations

import torch

from tests.bad_variants.common import (  # noqa: F401
    PRESETS,
    SUPPORTS,
    Config,
    computes,
    unavailable_reason,
)
from variants import naive

NAME = "wrong_shape"
expected_peak_bytes = naive.expected_peak_bytes


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config | None = None,
) -> torch.Tensor:
    """Naive attention, cut to half its head dim."""
    out = naive.attention(q, k, v, causal=causal, scale=scale)  # (B, H, Nq, D)
    return out[..., : out.shape[-1] // 2]

"""A variant that ignores an explicit ``scale`` (always 1/sqrt(D)): right at scale=None."""

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

NAME = "scale_ignoring"
expected_peak_bytes = naive.expected_peak_bytes


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config | None = None,
) -> torch.Tensor:
    """Naive attention at the default scale, whatever was asked."""
    return naive.attention(q, k, v, causal=causal, scale=None)

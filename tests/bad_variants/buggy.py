"""A variant that raises a plain bug."""

from __future__ import annotations

import torch

from tests.bad_variants.common import (  # noqa: F401
    PRESETS,
    SUPPORTS,
    Config,
    computes,
    unavailable_reason,
)

NAME = "buggy"


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config | None = None,
) -> torch.Tensor:
    """Raises a plain bug."""
    raise KeyError("a plain bug in the variant")

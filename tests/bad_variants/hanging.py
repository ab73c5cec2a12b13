"""A variant that never returns."""

from __future__ import annotations

import torch

from tests.bad_variants.common import (  # noqa: F401
    PRESETS,
    SUPPORTS,
    Config,
    computes,
    unavailable_reason,
)

NAME = "hanging"


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config | None = None,
) -> torch.Tensor:
    """Never returns."""
    import time

    while True:
        time.sleep(1)

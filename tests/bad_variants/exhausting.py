"""A variant that raises the allocator's out-of-memory error."""

from __future__ import annotations

import torch

from tests.bad_variants.common import (  # noqa: F401
    PRESETS,
    SUPPORTS,
    Config,
    computes,
    unavailable_reason,
)

NAME = "exhausting"


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config | None = None,
) -> torch.Tensor:
    """Raises the allocator's out-of-memory error."""
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

"""A variant that crashes the process with a segmentation fault."""

from __future__ import annotations

import torch

from tests.bad_variants.common import (  # noqa: F401
    PRESETS,
    SUPPORTS,
    Config,
    computes,
    unavailable_reason,
)

NAME = "segfaulting"


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config | None = None,
) -> torch.Tensor:
    """Crashes the process with a segmentation fault."""
    import ctypes

    ctypes.string_at(0)  # reads address 0: SIGSEGV
    return q

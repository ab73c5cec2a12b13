"""Contract boilerplate shared by the misbehaving test variants."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from variants.contract import SoftmaxAttention, Supports


@dataclass(frozen=True)
class Config:
    """No settings."""


PRESETS: dict[str, Config] = {}
SUPPORTS = Supports()


def computes(cfg: Config) -> SoftmaxAttention:
    """Claims exact softmax attention."""
    return SoftmaxAttention()


def unavailable_reason(
    device: str, dtype: torch.dtype, *, causal: bool, backward: bool, cfg: Config
) -> str | None:
    """Always claims to be available."""
    return None

"""Contract boilerplate shared by the misbehaving test variants."""

from __future__ import annotations

from dataclasses import dataclass

from variants.contract import SoftmaxAttention, Supports, always_available


@dataclass(frozen=True)
class Config:
    """No settings."""


PRESETS: dict[str, Config] = {}
SUPPORTS = Supports()


def computes(cfg: Config) -> SoftmaxAttention:
    """Claims exact softmax attention."""
    return SoftmaxAttention()


unavailable_reason = always_available  # runs wherever SUPPORTS says

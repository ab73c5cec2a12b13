"""A test-only variant for the regression gate's proofs: naive attention plus injected cost.

``extra_variants=[tests.injected_variants]`` adds the variant ``injected``. With no
environment set it is naive attention. ``ATTNBENCH_INJECT_SLOWDOWN=1.5`` makes it do its work
1.5 times over: the attention of the first half of the heads is computed a second time and
averaged in (the same values, so it still agrees with the oracle), forward and backward.
``ATTNBENCH_INJECT_MEMORY=0.2`` holds an extra buffer of 20% of naive's modelled forward
peak while the forward runs. The environment, not the Config, carries the injection, so the
case keys (and the variant's definition) are those of the clean run: what the gate must see is
the same case, slower or bigger.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from tests.bad_variants.common import (  # noqa: F401  (the contract's boilerplate)
    PRESETS,
    SUPPORTS,
    Config,
    computes,
    unavailable_reason,
)
from variants import naive

NAME = "injected"
SLOWDOWN = "ATTNBENCH_INJECT_SLOWDOWN"
MEMORY = "ATTNBENCH_INJECT_MEMORY"

expected_peak_bytes = naive.expected_peak_bytes


def _extra_buffer(q: torch.Tensor, k: torch.Tensor, fraction: float) -> torch.Tensor | None:
    """A filled buffer of ``fraction`` of naive's modelled forward peak, or None."""
    if fraction <= 0:
        return None
    b, h, nq, d = q.shape
    peak = naive.expected_peak_bytes(b, h, nq, k.shape[-2], d, dtype=q.dtype, causal=False,
                                     backward=False, cfg=naive.Config())
    return torch.zeros(int(fraction * peak), dtype=torch.uint8, device=q.device)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Any = None,
) -> torch.Tensor:
    """Naive attention, redoing a share of the heads and holding extra memory when told."""
    buffer = _extra_buffer(q, k, float(os.environ.get(MEMORY, "0")))
    out = naive.attention(q, k, v, causal=causal, scale=scale)  # (B, H, Nq, D)
    redo = round((float(os.environ.get(SLOWDOWN, "1")) - 1) * q.shape[1])
    if redo > 0:
        again = naive.attention(q[:, :redo], k[:, :redo], v[:, :redo], causal=causal,
                                scale=scale)  # (B, redo, Nq, D), equal to out[:, :redo]
        out = torch.cat([(out[:, :redo] + again) * 0.5, out[:, redo:]], dim=1)
    del buffer
    return out

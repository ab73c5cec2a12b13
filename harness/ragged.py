"""Ragged batches: B sequences of unequal lengths, padded to N, run two ways.

A ragged case (``ragged=...``) draws B lengths up to N: ``uniform:F`` draws each from
[ceil(F N), N] with the case's seed, the longest set to N; ``L1/L2/...`` gives them (B of
them, none above N). Inputs are the padded (B, H, N, D) tensors. Forms (``ragged_form``):

- ``packed``: a loop over the sequences, each attended at its own length (q[i, :, :L_i]): no
  padded pair is ever computed; every variant can.
- ``padded``: one call over the padded batch with a key-padding mask (and causal on top), the
  variant's ``attention_padded(q, k, v, lengths, *, causal, scale, cfg)``; a variant without
  it is unavailable for this form.

Either way the rows past a sequence's length are zeroed, so outputs and gradients compare
with the oracle's, which runs the reference sequence by sequence (``packed``) in float64.
Padding waste is the share of computed (query, key) pairs that are padding; effective tokens
per second counts only the real tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
FORMS = ("padded", "packed")


def check_spec(spec: str) -> str:
    """Validate ``uniform:F`` (0 < F <= 1) or ``L1/L2/...`` (positive ints); ValueError says
    what is allowed."""
    if spec.startswith("uniform:"):
        try:
            low = float(spec.partition(":")[2])
        except ValueError:
            low = -1.0
        if not 0 < low <= 1:
            raise ValueError(f"{spec!r}: uniform:F needs 0 < F <= 1 (lengths in [F N, N])")
        return spec
    parts = spec.split("/")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{spec!r}: give uniform:F (0 < F <= 1) or lengths like 512/300/1024")
    return spec


def lengths(spec: str, b: int, n: int, seed: int) -> tuple[int, ...]:
    """The B sequence lengths (each <= N, the longest = N for ``uniform``)."""
    check_spec(spec)
    if not spec.startswith("uniform:"):
        given = tuple(int(p) for p in spec.split("/"))
        if len(given) != b or max(given) > n:
            raise ValueError(f"ragged={spec!r} gives {len(given)} lengths up to {max(given)}; "
                             f"the case has B={b}, N={n} (B lengths, none above N)")
        return given
    low = max(1, math.ceil(float(spec.partition(":")[2]) * n))
    gen = torch.Generator().manual_seed(seed)
    drawn = torch.randint(low, n + 1, (b,), generator=gen).tolist()
    drawn[int(torch.tensor(drawn).argmax())] = n
    return tuple(drawn)


def scaled(lens: tuple[int, ...], n: int, new_n: int) -> tuple[int, ...]:
    """Lengths for a smaller padded length (the oracle's check shape), proportionally."""
    return tuple(max(1, min(new_n, round(x * new_n / n))) for x in lens)


def _valid_rows(lens: tuple[int, ...], n: int, like: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, 1) 1 where a row is a real token, 0 past its sequence's length."""
    rows = torch.arange(n, device=like.device)[None, :] < torch.tensor(lens, device=like.device
                                                                         )[:, None]  # (B, N)
    return rows[:, None, :, None].to(like.dtype)


def packed(fn: Attention, lens: tuple[int, ...]) -> Attention:
    """``fn`` once per sequence at its own length; zeros past each length: (B, H, N, Dv)."""
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_zeros(*q.shape[:-1], v.shape[-1])  # (B, H, N, Dv)
        for i, n in enumerate(lens):
            out[i : i + 1, :, :n] = fn(q[i : i + 1, :, :n], k[i : i + 1, :, :n],
                                       v[i : i + 1, :, :n])  # (1, H, L_i, Dv)
        return out
    return run


def padded(module: Any, lens: tuple[int, ...], *, causal: bool, cfg: Any,
           scale: float | None = None) -> Attention:
    """The variant's ``attention_padded`` over the whole padded batch, rows past each length
    zeroed (their values are the variant's business)."""
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = module.attention_padded(q, k, v, lens, causal=causal, scale=scale, cfg=cfg)
        return out * _valid_rows(lens, q.shape[-2], out)  # (B, H, N, Dv)
    return run


def padded_reason(module: Any, name: str) -> str | None:
    """Why a variant cannot run the padded form, or None."""
    if callable(getattr(module, "attention_padded", None)):
        return None
    return (f"{name} has no key-padding form (no attention_padded() in its module): "
            "ragged_form=packed runs it sequence by sequence")


def _square(n: int, causal: bool) -> int:
    """Pairs of one sequence of n tokens attending to itself (j <= i when causal)."""
    return n * (n + 1) // 2 if causal else n * n


def pairs(lens: tuple[int, ...], causal: bool) -> int:
    """(query, key) pairs of the real tokens, per head."""
    return sum(_square(n, causal) for n in lens)


def waste(lens: tuple[int, ...], n: int, causal: bool, form: str) -> float:
    """Share of the computed pairs that are padding: none packed; padded computes B N^2."""
    if form == "packed":
        return 0.0
    computed = len(lens) * _square(n, causal)
    return 1.0 - pairs(lens, causal) / computed

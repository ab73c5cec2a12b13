"""Textbook attention: softmax(Q K^T * scale) V with the full score matrix materialised.

It reads like the formula on purpose: the float64 oracle is this very code. Rows are
max-subtracted before ``exp``; causal is top-left aligned (query i sees keys j <= i).
A row whose keep-mask is all False gives zeros (and zero gradients), not NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from variants import memory_models
from variants.contract import (
    ScoreMod,
    SoftmaxAttention,
    Supports,
    always_available,
    default_scale,
)
from variants.decoding import KVCache, prefill_kv, step_keep
from variants.grouping import fold, group_size, repeat_rows, unfold

NAME = "naive"


@dataclass(frozen=True)
class Config:
    """The naive variant has no settings."""


PRESETS: dict[str, Config] = {}
SUPPORTS = Supports(compile=True, gqa=True, value_dim=True)  # every device, dtype, mode


def computes(cfg: Config) -> SoftmaxAttention:
    """Exact softmax attention."""
    return SoftmaxAttention()


unavailable_reason = always_available  # runs wherever SUPPORTS says


def expected_peak_bytes(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
    hkv: int = 0, dv: int = 0,
) -> int:
    """Two (Nq, Nk) matrices forward, three with backward (variants/memory_models.py)."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=False, hkv=hkv, dv=dv)
    return memory_models.materialised(m, causal=causal, backward=backward)


def bytes_moved(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
    hkv: int = 0, dv: int = 0,
) -> int:
    """Inputs and outputs once plus every pass over the (B, H, Nq, Nk) scores it writes,
    scales, softmaxes and multiplies (variants/memory_models.py); causal adds its mask."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=False, hkv=hkv, dv=dv)
    return memory_models.materialised_traffic(m, masked=causal, backward=backward)


def causal_keep(nq: int, nk: int, device: torch.device | str) -> torch.Tensor:
    """Top-left causal keep-mask (Nq, Nk): query i sees keys j <= i."""
    return torch.ones(nq, nk, dtype=torch.bool, device=device).tril()


def masked_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, keep: torch.Tensor | None,
    score_mod: ScoreMod | None = None,
) -> torch.Tensor:
    """softmax over kept entries of score_mod(Q K^T * scale), times V; empty rows give zeros."""
    scores = (q @ k.transpose(-2, -1)).mul_(scale)  # (B, H, Nq, Nk)
    if score_mod is not None:
        scores = score_mod.dense(scores)  # (B, H, Nq, Nk)
    if keep is not None:
        scores.masked_fill_(~keep, float("-inf"))
    # Subtracting the row max changes nothing mathematically (hence detach) but keeps exp finite.
    row_max = scores.detach().amax(dim=-1, keepdim=True)  # (B, H, Nq, 1)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = (scores - row_max).exp_()  # (B, H, Nq, Nk); exp(-inf) = 0
    del scores  # at most two (Nq, Nk) matrices are alive at once
    denom = weights.sum(dim=-1, keepdim=True)  # (B, H, Nq, 1)
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))  # empty rows -> zeros
    return (weights @ v) / denom  # (B, H, Nq, D): normalising after the matmul is O(N D)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Any = None,
) -> torch.Tensor:
    """softmax(Q K^T * scale) V; q (B, H, Nq, D), k/v (B, Hkv, Nk, D) -> (B, H, Nq, D);
    grouped queries fold onto their kv head (variants/grouping.py), no K/V repeated."""
    g = group_size(q, k)
    keep = causal_keep(q.shape[-2], k.shape[-2], q.device) if causal else None
    out = masked_softmax_attention(fold(q, k.shape[1]), k, v, default_scale(q.shape[-1], scale),
                                   repeat_rows(keep, g))  # (B, Hkv, G Nq, D)
    return unfold(out, q.shape[1])  # (B, H, Nq, D)


prefill = prefill_kv  # the decode cache: every key and value, preallocated


def decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, *,
    scale: float | None = None, cfg: Any = None,
) -> tuple[torch.Tensor, KVCache]:
    """t new queries (B, H, t, D) against the cache and themselves (causal), the textbook way."""
    cache = cache.append(k, v)
    g = group_size(q, k)
    keep = step_keep(q.shape[-2], cache.length, q.device)  # (t, L + t) or None for t = 1
    out = masked_softmax_attention(fold(q, k.shape[1]), cache.keys(), cache.values(),
                                   default_scale(q.shape[-1], scale), repeat_rows(keep, g))
    return unfold(out, q.shape[1]), cache  # (B, H, t, D)


def padded_keep(lengths: tuple[int, ...], nq: int, nk: int, causal: bool,
                device: torch.device | str) -> torch.Tensor:
    """Key-padding mask of a padded ragged batch: True for the keys of each sequence's own
    length, (B, 1, 1, Nk); with causal on top, (B, 1, Nq, Nk)."""
    keys = torch.arange(nk, device=device)[None, :]  # (1, Nk)
    keep = (keys < torch.tensor(lengths, device=device)[:, None])[:, None, None, :]
    return keep & causal_keep(nq, nk, device) if causal else keep


def attention_padded(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...], *,
    causal: bool = False, scale: float | None = None, cfg: Any = None,
) -> torch.Tensor:
    """A padded ragged batch: keys past each sequence's length masked (and causal on top);
    q (B, H, N, D), k, v (B, Hkv, N, D) -> (B, H, N, D), rows past a length unspecified."""
    n, nk, g = q.shape[-2], k.shape[-2], group_size(q, k)
    keep = padded_keep(lengths, n, nk, causal, q.device)  # (B, 1, 1 or N, Nk)
    keep = keep.expand(-1, -1, n, -1).repeat(1, 1, g, 1)  # (B, 1, G N, Nk) for folded rows
    out = masked_softmax_attention(fold(q, k.shape[1]), k, v, default_scale(q.shape[-1], scale),
                                   keep)  # (B, Hkv, G N, D)
    return unfold(out, q.shape[1])  # (B, H, N, D)

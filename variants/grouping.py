"""Grouped-query attention (GQA; MQA when Hkv = 1) without repeating keys and values.

Query head h reads kv head h // G, G = H / Hkv. With heads laid out (B, H, N, D), the G query
heads of one kv head are adjacent, so q folds into (B, Hkv, G N, D) as a view: every kv head
then meets G N query rows at once, through the same kernels as before, and no (B, H, Nk, D)
copy of k or v is ever made. Row r of a folded head is query position r mod N, so a mask over
(N, Nk) repeats G times along its rows (``repeat_rows``); kernels that derive masks from row
positions themselves (tiled causal ones) run one group at a time instead (``per_group``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from variants.contract import Unavailable


def group_size(q: torch.Tensor, k: torch.Tensor) -> int:
    """G = H / Hkv for q (B, H, Nq, D) and k (B, Hkv, Nk, D); Unavailable if it is not whole."""
    h, hkv = q.shape[1], k.shape[1]
    if hkv < 1 or h % hkv:
        raise Unavailable(f"query heads {h} are not a multiple of key/value heads {hkv}")
    return h // hkv


def fold(q: torch.Tensor, hkv: int) -> torch.Tensor:
    """(B, H, N, D) -> (B, Hkv, G N, D): each kv head's G query heads as one (a view when q's
    heads are contiguous)."""
    b, h, n, d = q.shape
    return q.reshape(b, hkv, (h // hkv) * n, d)


def unfold(out: torch.Tensor, h: int) -> torch.Tensor:
    """(B, Hkv, G N, Dv) -> (B, H, N, Dv), the inverse of ``fold``."""
    b, hkv, rows, dv = out.shape
    return out.reshape(b, h, rows * hkv // h, dv)


def repeat_rows(keep: torch.Tensor | None, g: int) -> torch.Tensor | None:
    """A (N, Nk) mask for folded queries: (G N, Nk), the rows repeated per group."""
    return keep if keep is None or g == 1 else keep.repeat(g, 1)


def per_group(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
) -> torch.Tensor:
    """``fn`` (an attention with as many q heads as k heads) once per group member g on the
    query heads g, G + g, ..., stitched back to (B, H, Nq, Dv); k, v are shared, not copied."""
    g = group_size(q, k)
    if g == 1:
        return fn(q, k, v)
    b, h, n, d = q.shape
    grouped = q.view(b, h // g, g, n, d)  # (B, Hkv, G, N, D)
    outs = [fn(grouped[:, :, i], k, v) for i in range(g)]  # each (B, Hkv, N, Dv)
    return torch.stack(outs, dim=2).reshape(b, h, n, outs[0].shape[-1])  # (B, H, N, Dv)

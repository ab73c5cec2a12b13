"""Decode caches the variants share: what a step of k new tokens attends to after a prefix.

A decode step takes q (B, H, k, D) and the new tokens' k, v (B, H, k, D) and returns the
output (B, H, k, D) and the cache after the step. The step is causal over prefix + new
tokens: new token i (position L + i after a prefix of L) sees every cached key and the new
keys 0..i (bottom-right aligned within the step).

Steps are functional: they never change the cache they are given, so the harness can time
the same step again and again against the same cache. ``KVCache`` preallocates its capacity
and a step writes the new keys into the slots just past ``length``, the same slots on every
repeat, and returns a cache with the longer length that shares the storage (O(k) written, no
copy of the prefix). ``WindowCache`` keeps only the last w keys, so its bytes stop growing at
w. Every cache says how many bytes it holds (``nbytes``) and, for the oracle, its logical
contents (``state``): a step's result must equal the cache built from the longer prefix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


def nbytes(*tensors: torch.Tensor) -> int:
    """Bytes of these tensors' elements."""
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class KVCache:
    """Keys and values of the first ``length`` positions, in storage of ``capacity`` slots:
    k, v (B, H, capacity, D)."""

    k: torch.Tensor  # (B, H, capacity, D)
    v: torch.Tensor  # (B, H, capacity, Dv)
    length: int

    @classmethod
    def prefill(cls, k: torch.Tensor, v: torch.Tensor, capacity: int) -> KVCache:
        """A cache holding k, v (B, H, L, D) with room for ``capacity`` >= L positions."""
        b, h, n, d = k.shape
        if capacity < n:
            raise ValueError(f"capacity {capacity} is below the prefix length {n}")
        ks = k.new_empty(b, h, capacity, d)  # (B, H, cap, D)
        vs = v.new_empty(b, h, capacity, v.shape[-1])  # (B, H, cap, Dv)
        ks[:, :, :n].copy_(k)
        vs[:, :, :n].copy_(v)
        return cls(ks, vs, n)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """The cache with k, v (B, H, t, D) written just past ``length`` (same slots on every
        call with this cache: repeatable)."""
        end = self.length + k.shape[-2]
        if end > self.k.shape[-2]:
            raise ValueError(f"decode step needs {end} slots; the cache holds "
                             f"{self.k.shape[-2]}")
        self.k[:, :, self.length:end].copy_(k)
        self.v[:, :, self.length:end].copy_(v)
        return dataclasses.replace(self, length=end)  # a subclass stays itself

    def keys(self) -> torch.Tensor:
        """The cached keys (B, H, length, D), a view."""
        return self.k[:, :, : self.length]

    def values(self) -> torch.Tensor:
        """The cached values (B, H, length, Dv), a view."""
        return self.v[:, :, : self.length]

    def nbytes(self) -> int:
        """Bytes of the cached positions (what a step reads, unless its pattern skips some)."""
        return nbytes(self.keys(), self.values())

    def state(self) -> dict[str, torch.Tensor]:
        """The logical contents, for the oracle."""
        return {"k": self.keys(), "v": self.values()}


@dataclass(frozen=True)
class WindowCache:
    """The last ``window`` keys and values before the next token, k, v (B, H, <=w, D), and
    the number of positions seen so far."""

    k: torch.Tensor
    v: torch.Tensor
    window: int
    length: int

    @classmethod
    def prefill(cls, k: torch.Tensor, v: torch.Tensor, window: int) -> WindowCache:
        """A cache of the last ``window`` of k, v (B, H, L, D)."""
        keep = slice(max(0, k.shape[-2] - window), None)
        return cls(k[:, :, keep].clone(), v[:, :, keep].clone(), window, k.shape[-2])

    def extended(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached keys and values followed by the new ones: (B, H, <=w + t, D)."""
        return torch.cat([self.k, k], dim=-2), torch.cat([self.v, v], dim=-2)

    def after(self, k_all: torch.Tensor, v_all: torch.Tensor, t: int) -> WindowCache:
        """The cache after a step of t tokens, from ``extended``'s tensors (views, no copy)."""
        keep = slice(max(0, k_all.shape[-2] - self.window), None)
        return WindowCache(k_all[:, :, keep], v_all[:, :, keep], self.window, self.length + t)

    def nbytes(self) -> int:
        """Bytes held: at most w positions, whatever the context."""
        return nbytes(self.k, self.v)

    def state(self) -> dict[str, torch.Tensor]:
        """The logical contents, for the oracle."""
        return {"k": self.k, "v": self.v}


def prefill_kv(k: torch.Tensor, v: torch.Tensor, *, capacity: int, cfg: Any = None) -> KVCache:
    """The ``prefill`` of a variant whose cache is every key and value (B, Hkv, L, D), with
    room for ``capacity`` positions: ``prefill = prefill_kv`` in its module."""
    return KVCache.prefill(k, v, capacity)


def step_keep(t: int, n: int, device: torch.device | str) -> torch.Tensor | None:
    """Which of n = cached + t keys each of t new queries sees (bottom-right causal):
    (t, n) bool, or None when t == 1 (one new token sees everything)."""
    if t == 1:
        return None
    query = torch.arange(n - t, n, device=device)[:, None]  # (t, 1) positions
    return torch.arange(n, device=device)[None, :] <= query  # (t, n)


def window_step_keep(
    t: int, n: int, window: int, device: torch.device | str
) -> torch.Tensor:
    """``step_keep`` within a causal window: query i - key j in [0, w], (t, n) bool."""
    gap = torch.arange(n - t, n, device=device)[:, None] - torch.arange(n, device=device)
    return (gap >= 0) & (gap <= window)  # (t, n)


def block_step_keys(
    table: torch.Tensor, t: int, n: int, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys t new queries (the last t of n positions) see under a block-level keep table
    (nqb, nkb) of blocks of ``block`` positions, causal on top: the positions of every key
    block some new query keeps (P,), and which of them each query sees (t, P) bool. Work and
    size follow the kept blocks, not n (a global query row keeps them all)."""
    rows = torch.arange(n - t, n)  # (t,) positions of the new queries
    row_blocks = table[rows // block]  # (t, nkb)
    kept = row_blocks.any(0).nonzero().flatten()  # (kb,) key blocks any new query keeps
    pos = (kept[:, None] * block + torch.arange(block)).flatten()  # (kb * block,)
    pos = pos[pos < n]  # (P,) the last block may be partial
    keep = row_blocks[:, pos // block] & (pos[None, :] <= rows[:, None])  # (t, P)
    return pos, keep

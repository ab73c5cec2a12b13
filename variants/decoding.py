"""Decode caches the variants share: what a step of k new tokens attends to after a prefix.

A decode step takes q (B, H, k, D) and the new tokens' k, v (B, H, k, D) and returns the
output (B, H, k, D) and the cache after the step. The step is causal over prefix + new
tokens: new token i (position L + i after a prefix of L) sees every cached key and the new
keys 0..i (bottom-right aligned within the step).

Steps are functional: they never change the cache they are given, so the harness can time
the same step again and again against the same cache. ``KVCache`` preallocates its capacity
and a step writes the new keys into the slots just past ``length``, the same slots on every
repeat, and returns a cache with the longer length that shares the storage (O(k) written, no
copy of the prefix). ``WindowCache`` is a ring of the last w + t positions, so its bytes stop
growing at w + t. Every cache says how many bytes it holds (``nbytes``) and, for the oracle,
its logical contents (``state``): a step's result must equal the cache built from the longer
prefix.
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
    """A ring buffer of the last w + t positions' keys and values, k, v (B, H, w + t, D):
    slot p % (w + t) holds position p. A step of t tokens writes its keys over the t oldest
    slots, which its window no longer reaches, and attends the ring in place: no copy and no
    allocation of O(w) per step, and the same slots on every repeat of a step."""

    k: torch.Tensor  # (B, H, S, D), S = w + t slots
    v: torch.Tensor  # (B, H, S, Dv)
    window: int
    length: int  # positions seen so far

    @classmethod
    def prefill(cls, k: torch.Tensor, v: torch.Tensor, window: int, step: int
                ) -> WindowCache:
        """A ring of w + ``step`` slots holding the last of k, v (B, H, L, D)."""
        b, h, n, _ = k.shape
        size = max(1, window + step)
        ks = k.new_zeros(b, h, size, k.shape[-1])  # (B, H, S, D)
        vs = v.new_zeros(b, h, size, v.shape[-1])  # (B, H, S, Dv)
        held = torch.arange(max(0, n - size), n, device=k.device)  # positions kept
        ks.index_copy_(2, held % size, k[:, :, held])
        vs.index_copy_(2, held % size, v[:, :, held])
        return cls(ks, vs, window, n)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> WindowCache:
        """The ring with k, v (B, H, t, D) written over the slots of the t oldest positions
        (the same slots on every call with this cache: repeatable)."""
        t, size = k.shape[-2], self.k.shape[-2]
        if t > size - self.window:
            raise ValueError(f"a step of {t} tokens needs a ring of w + {t} slots; this one "
                             f"has {size} for w = {self.window}")
        slots = torch.arange(self.length, self.length + t, device=k.device) % size
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return dataclasses.replace(self, length=self.length + t)

    def positions(self) -> torch.Tensor:
        """The position each slot holds, -1 for a slot not yet written: (S,)."""
        size, last = self.k.shape[-2], self.length - 1
        slot = torch.arange(size, device=self.k.device)
        held = last - (last - slot) % size  # (S,) the newest position of each slot
        return torch.where(held >= 0, held, -1)

    def step_keep(self, t: int) -> torch.Tensor:
        """Which slots each of the last t positions sees: query - key in [0, w], (t, S)."""
        pos = self.positions()  # (S,)
        gap = torch.arange(self.length - t, self.length, device=pos.device)[:, None] - pos
        return (pos >= 0) & (gap >= 0) & (gap <= self.window)  # (t, S)

    def nbytes(self) -> int:
        """Bytes held: w + t slots, whatever the context."""
        return nbytes(self.k, self.v)

    def state(self) -> dict[str, torch.Tensor]:
        """The logical contents, for the oracle: the last min(w, length) positions in order."""
        held = torch.arange(max(0, self.length - self.window), self.length,
                            device=self.k.device) % self.k.shape[-2]
        return {"k": self.k.index_select(2, held), "v": self.v.index_select(2, held)}


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

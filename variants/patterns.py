"""Masks and score modifications users ship, each written once as FlexAttention-style index
functions, ``mask(b, h, q_idx, kv_idx) -> bool`` and ``score(s, b, h, q_idx, kv_idx) -> s``.

The same function builds FlexAttention's block mask (``variants/flex.py``), the dense mask or
bias of the ``masked`` reference variant, and the float64 oracle's reference: one definition,
so the three cannot disagree about what a pattern is. Index arguments are integer tensors that
broadcast (flex passes scalars per element; the dense builders pass aranges).

Patterns (top-left aligned like the rest of the project; ``causal`` adds ``kv <= q``):
``full``; ``window`` (|q - kv| <= w); ``document`` (``documents`` equal segments of the
sequence packed together, each attending only within itself); ``prefix_lm`` (keys in the
first ``prefix`` positions are seen by every query, the rest causally: its own causal
structure, so it takes ``causal=false``). Score modifications: ``alibi`` (a per-head linear
bias ``slope_h * (kv - q)`` with ALiBi's slopes ``2^(-8 (h + 1) / H)``) and ``softcap``
(``cap * tanh(s / cap)``, as Gemma 2 and Grok cap their logits).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from variants.contract import ScoreMod, SoftmaxAttention, SparseSoftmax

PATTERNS = ("full", "window", "document", "prefix_lm")
SCORE_MODS = ("none", "alibi", "softcap")

#: mask(b, h, q_idx, kv_idx) -> bool tensor (b and h unused by these patterns)
MaskFn = Callable[[object, object, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MaskSpec:
    """Which mask and score modification: the fields flex and masked share."""

    pattern: str = "full"
    window: int = 256  # window: keys within w positions of the query
    documents: int = 4  # document: equal segments packed into one sequence
    prefix: int = 256  # prefix_lm: the bidirectional prefix's length
    score_mod: str = "none"
    softcap: float = 20.0  # softcap: the cap

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {list(PATTERNS)}, got {self.pattern!r}")
        if self.score_mod not in SCORE_MODS:
            raise ValueError(f"score_mod must be one of {list(SCORE_MODS)}, "
                             f"got {self.score_mod!r}")
        for name in ("window", "documents", "prefix"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.softcap > 0:
            raise ValueError(f"softcap must be > 0, got {self.softcap!r}")


def causal_conflict(spec: MaskSpec, causal: bool) -> str | None:
    """Why this pattern cannot take the causal flag, or None."""
    if causal and spec.pattern == "prefix_lm":
        return ("prefix_lm is its own causal structure (a bidirectional prefix, causal after "
                "it): run it with causal=false")
    return None


def mask_fn(
    spec: MaskSpec, causal: bool, nq: int, nk: int, device: torch.device | str = "cpu"
) -> MaskFn | None:
    """The pattern (with causal folded in) as an index predicate, or None for no mask;
    ``device`` is where index tensors it looks up live (that of the indices it is given)."""
    w, prefix = spec.window, spec.prefix
    if spec.pattern == "full":
        return (lambda b, h, q, kv: q >= kv) if causal else None
    if spec.pattern == "window":
        if causal:
            return lambda b, h, q, kv: (q - kv >= 0) & (q - kv <= w)
        return lambda b, h, q, kv: (q - kv <= w) & (kv - q <= w)
    if spec.pattern == "document":
        # Looked-up document ids, as attention-gym writes it: inductor's CPU flex template
        # cannot compile index * (a dynamic int) in a mask (torch 2.13, docs/flex.md).
        q_doc = torch.arange(nq, device=device) * spec.documents // nq  # (Nq,) query's document
        kv_doc = torch.arange(nk, device=device) * spec.documents // nk  # (Nk,) key's document
        if causal:
            return lambda b, h, q, kv: (q_doc[q] == kv_doc[kv]) & (q >= kv)
        return lambda b, h, q, kv: q_doc[q] == kv_doc[kv]
    return lambda b, h, q, kv: (kv < prefix) | (kv <= q)  # prefix_lm


def mask_only(spec: MaskSpec) -> MaskSpec:
    """Only the mask fields of ``spec`` (caches of masks and blocks key on them)."""
    return MaskSpec(pattern=spec.pattern, window=spec.window, documents=spec.documents,
                    prefix=spec.prefix)


def keep_mask(spec: MaskSpec, nq: int, nk: int, causal: bool,
              device: torch.device | str) -> torch.Tensor:
    """Dense (Nq, Nk) keep-mask of the pattern with causal folded in."""
    fn = mask_fn(spec, causal, nq, nk, device)
    if fn is None:
        return torch.ones(nq, nk, dtype=torch.bool, device=device)  # (Nq, Nk)
    return dense_keep(fn, nq, nk, device)  # (Nq, Nk)


def pattern_kept(spec: MaskSpec, nq: int, nk: int, causal: bool) -> int:
    """Pairs the pattern keeps (causal folded in)."""
    return kept_pairs(mask_fn(spec, causal, nq, nk), nq, nk)


def semantics(
    spec: MaskSpec, *, computed: Callable[[int, int, bool], int] | None = None,
    convention: str = "kept pairs", dense: bool = False,
) -> SoftmaxAttention | SparseSoftmax:
    """What a variant computing ``spec`` computes: softmax attention (with the score mod) for
    ``full``, as sdpa's rows; else softmax over the pattern's kept pairs, FLOPs counting the
    ``computed`` pairs (kept ones if None) or, ``dense``, every pair."""
    mod = score_mod(spec)
    if spec.pattern == "full":
        return SoftmaxAttention(score_mod=mod)
    only = mask_only(spec)
    return SparseSoftmax(
        keep=functools.partial(keep_mask, only), description=describe(spec),
        kept=functools.partial(pattern_kept, only), score_mod=mod, computed=computed,
        flops_convention=convention, dense=dense)


def dense_keep(fn: MaskFn, nq: int, nk: int, device: torch.device | str) -> torch.Tensor:
    """The (Nq, Nk) bool keep-mask of an index predicate."""
    q = torch.arange(nq, device=device)[:, None]  # (Nq, 1)
    kv = torch.arange(nk, device=device)[None, :]  # (1, Nk)
    return fn(None, None, q, kv).expand(nq, nk)  # (Nq, Nk)


def kept_pairs(fn: MaskFn | None, nq: int, nk: int) -> int:
    """How many (q, kv) pairs the predicate keeps, counted in row blocks (no dense mask)."""
    if fn is None:
        return nq * nk
    rows = max(1, 2**22 // max(nk, 1))
    kv = torch.arange(nk)[None, :]  # (1, Nk)
    total = 0
    for start in range(0, nq, rows):
        q = torch.arange(start, min(nq, start + rows))[:, None]  # (r, 1)
        total += int(fn(None, None, q, kv).expand(q.shape[0], nk).sum())
    return total


def alibi_slopes(heads: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """ALiBi's per-head slopes 2^(-8 (h + 1) / H), shape (H,)."""
    h = torch.arange(heads, device=device, dtype=torch.float64)
    return torch.exp2(-8.0 * (h + 1) / heads)


def score_mod(spec: MaskSpec) -> ScoreMod | None:
    """The score modification as the contract's ScoreMod, or None."""
    if spec.score_mod == "alibi":
        def alibi(s: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor,
                  heads: int) -> torch.Tensor:
            slope = torch.exp2(-8.0 * (h + 1).to(s.dtype) / heads)
            return s + slope * (kv - q).to(s.dtype)
        return ScoreMod("ALiBi bias slope_h * (kv - q)", alibi)
    if spec.score_mod == "softcap":
        cap = spec.softcap

        def softcap(s: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor,
                    heads: int) -> torch.Tensor:
            return torch.tanh(s / cap) * cap
        return ScoreMod(f"logit soft-cap {cap:g} * tanh(s / {cap:g})", softcap)
    return None


def window_description(w: int) -> str:
    """The sliding window in words: the same text for every variant that computes it (sparse,
    flex, masked), so reports group them as one mask."""
    return f"sliding window |i-j|<={w} (causal: i-{w}<=j<=i), diagonal included"


def describe(spec: MaskSpec) -> str:
    """The pattern in words (for a variant's definition)."""
    what = {"full": "no mask", "window": window_description(spec.window),
            "document": f"{spec.documents} packed documents (block-diagonal)",
            "prefix_lm": f"prefix-LM: every query sees the first {spec.prefix} keys, the "
                         "rest causally"}[spec.pattern]
    return what

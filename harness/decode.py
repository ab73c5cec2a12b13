"""Decode steps: inputs, the oracle's check of a step and its cache, and the timed step.

A decode case (``mode=decode``) has a cached context of N = nq = nk positions and t =
``new_tokens`` new ones. The inputs are one seeded sequence of N + t tokens: the variant's
cache is built from its first N keys and values (``prefill``, outside the timed region) and
the step takes the last t queries, keys and values. The reference is the last t rows of
causal attention over all N + t tokens in float64 (``oracle.reference``: each semantics'
own), and a stateful cache must equal, after the step, the cache built from all N + t.
Timing repeats the step against the same cache (steps never change the cache they are
given); memory is the step's peak above its inputs, and ``cache_mib`` the cache it holds
(a step reads all of it, but BigBird's: its rows' kept blocks; ``bytes_moved`` counts reads).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from harness.cases import Case
from harness.oracle import (
    ATOL_FLOOR,
    Agreement,
    TensorCheck,
    compare_tensor,
    make_inputs,
    reduced_heads,
    reference,
    stats_conditioning,
)
from variants.contract import DTYPES, Shape, Variant


class WrongDecode(RuntimeError):
    """A decode step returned something other than ((B, H, t, Dv) tensor, cache)."""


def decode_shape(case: Case, max_scores: int) -> tuple[Shape, int]:
    """The (context) shape and t the oracle checks: the case's own when its float64 reference
    ((N + t)^2 scores per head) is affordable, else 2 heads of B=1 and a shorter context."""
    t, s = case.new_tokens, case.shape
    if s.b * s.h * (s.nk + t) ** 2 <= max_scores:
        return s, t
    h, hkv = reduced_heads(s)
    n = max(1, int(math.sqrt(max_scores / h)) - t)
    return Shape(1, h, n, n, s.d, hkv, s.dv), t


def step_inputs(
    shape: Shape, t: int, *, dtype: torch.dtype, device: str, seed: int
) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, H, N + t, D) of one seeded sequence of the context and the new tokens."""
    full = Shape(shape.b, shape.h, shape.nk + t, shape.nk + t, shape.d, shape.hkv, shape.dv)
    return make_inputs(full, dtype=dtype, device=device, seed=seed)[:3]


def checked_step(case: Case, variant: Variant) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The variant's decode step, its output's shape and dtype checked on every call."""
    cfg = case.spec.cfg

    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: Any
             ) -> tuple[torch.Tensor, Any]:
        result = variant.decode(q, k, v, cache, scale=None, cfg=cfg)
        out = result[0] if isinstance(result, tuple) and len(result) == 2 else None
        want = (*q.shape[:-1], v.shape[-1])  # (B, H, t, Dv)
        if not isinstance(out, torch.Tensor) or out.shape != want or out.dtype != q.dtype:
            raise WrongDecode(f"{case.label} decode returned {type(result).__name__}; "
                              f"expected ((B, H, t, Dv) = {want} {q.dtype}, cache)")
        return result
    return step


def check_decode(case: Case, variant: Variant, max_scores: int, seed: int
                 ) -> tuple[Agreement, Shape]:
    """The step's output against the last t rows of causal float64 attention over N + t
    tokens, and its cache against the cache prefilled with all N + t."""
    shape, t = decode_shape(case, max_scores)
    dtype, cfg, n = DTYPES[case.dtype], case.spec.cfg, shape.nk
    q, k, v = step_inputs(shape, t, dtype=dtype, device=case.device, seed=seed)
    sem = variant.computes(cfg)
    golden, lowp = (reference(*(x.to(dt) for x in (q, k, v)), causal=True, scale=None,
                              semantics=sem)[..., n:, :] for dt in (torch.float64, dtype))
    cache = variant.prefill(k[..., :n, :], v[..., :n, :], capacity=n + t, cfg=cfg)
    out, after = checked_step(case, variant)(q[..., n:, :], k[..., n:, :], v[..., n:, :], cache)
    stats = stats_conditioning(sem, (q, k, v), dtype, None)
    full = variant.prefill(k, v, capacity=n + t, cfg=cfg)
    checks = (compare_tensor("out", out, golden, lowp, stats), cache_check(after, full))
    return Agreement(checks, None), shape


def cache_check(got: Any, want: Any) -> TensorCheck:
    """A cache after a step against the one built from the longer prefix: every logical
    tensor, within the state dtype's floor (copies match exactly; sums differ by rounding)."""
    a, b = got.state(), want.state()
    if a.keys() != b.keys() or any(a[n].shape != b[n].shape for n in a):
        return TensorCheck("cache", math.inf, math.inf, 0.0, 0.0, False)
    return max((_state_check(a[n], b[n]) for n in a), key=lambda c: c.max_abs / c.allowed,
               default=TensorCheck("cache", 0.0, 0.0, 1.0, 0.0, True))


def _state_check(got: torch.Tensor, want: torch.Tensor) -> TensorCheck:
    """One cache tensor against its expected value."""
    want64 = want.to(torch.float64)
    scale = max(1.0, want64.abs().max().item()) if want.numel() else 1.0
    err = (got.to(torch.float64) - want64).abs().max().item() if want.numel() else 0.0
    allowed = ATOL_FLOOR[got.dtype] * scale
    return TensorCheck("cache", err, err / scale, allowed, 0.0, err <= allowed)


def step_call(case: Case, variant: Variant, seed: int
              ) -> tuple[Callable[[], object], int, int]:
    """A repeatable step at the case's own shape, its cache prefilled from seeded keys and
    values drawn in the case's dtype (no float64 copies of a long context), the cache's
    bytes, and the bytes of it a step reads (``read_nbytes(t)`` of a cache that reads less
    than it holds, as BigBird's; else all of it)."""
    dtype, n, t = DTYPES[case.dtype], case.nk, case.new_tokens
    gen = torch.Generator().manual_seed(seed)
    b, h, hkv, d, dv = case.b, case.h, case.shape.kv_heads, case.d, case.shape.value_dim
    k, v = (torch.randn(b, hkv, n, dim, generator=gen, dtype=dtype) for dim in (d, dv))
    cache = variant.prefill(k.to(case.device), v.to(case.device), capacity=n + t,
                            cfg=case.spec.cfg)  # (B, H, N, D) prefix
    del k, v  # only the cache and the step's inputs stay alive
    new = tuple(torch.randn(b, heads, t, dim, generator=gen, dtype=dtype).to(case.device)
                for heads, dim in ((h, d), (hkv, d), (hkv, dv)))  # q, k, v: (B, H|Hkv, t, D|Dv)
    step = checked_step(case, variant)
    held = int(cache.nbytes()) if callable(getattr(cache, "nbytes", None)) else 0
    reads = getattr(cache, "read_nbytes", None)
    return (lambda: step(*new, cache)), held, int(reads(t)) if callable(reads) else held


def predicted_step_bytes(case: Case) -> int:
    """What a decode case holds at most: the prefix drawn and its cache beside it (a K/V
    cache's size, an upper bound for the others), plus the step's inputs."""
    element = DTYPES[case.dtype].itemsize
    per_token = case.b * case.shape.kv_heads * (case.d + case.shape.value_dim) * element
    return 2 * (case.nk + case.new_tokens) * per_token


def step_io_bytes(case: Case, cache_bytes: int) -> int:
    """Bytes a step moves at least: the cache it reads (``cache_bytes``) once, the new q, k,
    v read and written into the cache, the output written."""
    element = DTYPES[case.dtype].itemsize
    s = case.shape
    token = case.b * element * (s.h * (s.d + s.value_dim) + 2 * s.kv_heads * (s.d + s.value_dim))
    return cache_bytes + case.new_tokens * token  # q and out; k, v read and cached


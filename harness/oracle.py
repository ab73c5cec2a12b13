"""The numerical-agreement oracle: does a variant compute what it claims?

For each semantics there is one reference (``reference``): softmax attention is the naive
variant's own formula; a sparse pattern is softmax over exactly the kept entries; linear
attention is the row-normalised quadratic form phi(Q) phi(K)^T V (lower-triangular if causal).
The golden answer is that reference in float64 on the low-precision inputs upcast.

Tolerances come from data, as PyTorch's SDPA tests do: for each compared tensor T (the output
and dq, dk, dv) the allowed max abs error is

    allowed(T) = max(FUDGE[T] * max(err(reference in the case's dtype vs golden),
                                    u_stats * L * max|golden T|),
                     ATOL_FLOOR[dtype] * max(1, max|golden T|))

i.e. a variant may be FUDGE times less accurate than the textbook computation in the same dtype,
and never needs to beat a per-dtype floor scaled to the tensor's magnitude. The middle term is
the problem's conditioning for kernels that keep per-row softmax statistics (the log-sum-exp,
in float32 for fp32/bf16/fp16 inputs) and recompute probabilities from them, as FlashAttention
and torch's CPU flash kernel do: rounding a statistic of size up to L (the largest |logit|)
perturbs every probability by a relative u_stats * L. With large logits the textbook
computation can be luckily exact (near one-hot rows) while such kernels cannot be. Where the
textbook computation overflows in that dtype (fp16 with large logits, say) only the floor
applies. A non-finite result where the golden one is finite always fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from harness.ragged import packed, padded
from variants.contract import (
    LinearAttention,
    Semantics,
    Shape,
    SoftmaxAttention,
    SparseSoftmax,
    Variant,
    default_scale,
)
from variants.naive import causal_keep, masked_softmax_attention

#: How much less accurate than the same-dtype textbook computation a variant may be.
#: Gradients get more room: they chain more reductions, as in PyTorch's own SDPA tests.
FUDGE: Mapping[str, float] = {"out": 4.0, "dq": 16.0, "dk": 16.0, "dv": 16.0}
#: Per-dtype absolute floors (PyTorch's SDPA defaults), scaled by max(1, max|golden|).
ATOL_FLOOR: Mapping[torch.dtype, float] = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.bfloat16: 1e-3,
    torch.float16: 1e-3,
}


@dataclass(frozen=True)
class TensorCheck:
    """Agreement of one tensor (out, dq, dk or dv) with the float64 golden."""

    tensor: str
    max_abs: float
    max_rel: float
    allowed: float
    reference_err: float
    ok: bool


@dataclass(frozen=True)
class Agreement:
    """The oracle's verdict for one case: every tensor checked, plus approximation info."""

    checks: tuple[TensorCheck, ...]
    err_vs_softmax: float | None  # approximate variants only: information, not a verdict

    @property
    def ok(self) -> bool:
        """True when every compared tensor is within its allowed error."""
        return all(c.ok for c in self.checks)

    def worst(self) -> TensorCheck:
        """The check with the largest error relative to its allowance."""
        return max(self.checks, key=lambda c: _ratio(c.max_abs, c.allowed))


def _ratio(err: float, allowed: float) -> float:
    return float("inf") if err != err else err / allowed  # NaN counts as worst


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool, scale: float | None, semantics: Semantics,
) -> torch.Tensor:
    """The semantics' reference computation in the inputs' dtype: (B, H, Nq, D); grouped k, v
    (fewer heads than q) are repeated to one per query head, as the definition reads."""
    nq, nk = q.shape[-2], k.shape[-2]
    k, v = per_query_head(q, k), per_query_head(q, v)
    if isinstance(semantics, SoftmaxAttention):
        keep = causal_keep(nq, nk, q.device) if causal else None
        return masked_softmax_attention(q, k, v, default_scale(q.shape[-1], scale), keep,
                                        semantics.score_mod)
    if isinstance(semantics, SparseSoftmax):
        keep = semantics.keep(nq, nk, causal, q.device)  # (Nq, Nk), causal folded in
        return masked_softmax_attention(q, k, v, default_scale(q.shape[-1], scale), keep,
                                        semantics.score_mod)
    if isinstance(semantics, LinearAttention):
        return _linear_reference(q, k, v, causal=causal, semantics=semantics)
    raise TypeError(f"unknown semantics {semantics!r}")


def reduced_heads(shape: Shape) -> tuple[int, int]:
    """(H, Hkv) of a smaller check shape: 2 heads, or one kv head's whole group when grouped."""
    return (shape.h // shape.kv_heads, 1) if shape.hkv else (min(shape.h, 2), 0)  # GQA kept


def per_query_head(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """k or v (B, Hkv, Nk, D) repeated to q's H heads (query head h reads kv head h // G)."""
    g = q.shape[1] // kv.shape[1]
    return kv if g == 1 else kv.repeat_interleave(g, dim=1)  # (B, H, Nk, D)


def _linear_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, semantics: LinearAttention
) -> torch.Tensor:
    """phi(Q) phi(K)^T V / (phi(Q) phi(K)^T 1 + eps), masked top-left causal if asked."""
    a = semantics.feature_map(q) @ semantics.feature_map(k).transpose(-2, -1)  # (B, H, Nq, Nk)
    if causal:
        a = a * causal_keep(q.shape[-2], k.shape[-2], q.device)
    return (a @ v) / (a.sum(dim=-1, keepdim=True) + semantics.eps)  # (B, H, Nq, D)


def make_inputs(
    shape: Shape, *, dtype: torch.dtype, device: str, seed: int, logit_scale: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """Seeded q, k, v and an upstream gradient in ``dtype``; q and k scaled by logit_scale."""
    gen = torch.Generator().manual_seed(seed)
    s = shape
    q = torch.randn(s.b, s.h, s.nq, s.d, generator=gen, dtype=torch.float64) * logit_scale
    k = torch.randn(s.b, s.kv_heads, s.nk, s.d, generator=gen, dtype=torch.float64) * logit_scale
    v = torch.randn(s.b, s.kv_heads, s.nk, s.value_dim, generator=gen, dtype=torch.float64)
    dout = torch.randn(s.b, s.h, s.nq, s.value_dim, generator=gen, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v, dout))


def _forward_backward(
    fn: Any, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype, backward: bool
) -> dict[str, torch.Tensor]:
    """Run fn on inputs cast to dtype; return out and, if asked, dq, dk, dv."""
    q, k, v, dout = (t.detach().to(dtype) for t in inputs)
    for t in (q, k, v):
        t.requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        out = fn(q, k, v)
    result = {"out": out.detach()}
    if backward:
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        result.update(dq=dq, dk=dk, dv=dv)
    return result


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64 (0 for empty tensors)."""
    return (a.to(torch.float64) - b).abs().max().item() if b.numel() else 0.0


def compare_tensor(
    name: str, got: torch.Tensor, golden: torch.Tensor, lowp: torch.Tensor, stats_rel: float
) -> TensorCheck:
    """One tensor's errors against golden, with the data-derived allowance."""
    got64 = got.to(torch.float64)
    scale = max(1.0, golden.abs().max().item()) if golden.numel() else 1.0
    ref_err = max(_max_err(lowp, golden), stats_rel * scale)
    floor = ATOL_FLOOR[got.dtype] * scale
    # If the textbook computation itself overflows in this dtype, only the floor applies.
    allowed = max(FUDGE[name] * ref_err, floor) if math.isfinite(ref_err) else floor
    max_abs = _max_err(got64, golden)
    max_rel = max_abs / scale
    ok = bool(torch.isfinite(got64).all()) and max_abs <= allowed
    return TensorCheck(name, max_abs, max_rel, allowed, ref_err, ok)


def check_agreement(
    variant: Variant, cfg: Any, shape: Shape, *, device: str, dtype: torch.dtype, causal: bool,
    backward: bool, seed: int = 0, logit_scale: float = 1.0, scale: float | None = None,
    ragged: tuple[tuple[int, ...], str] | None = None,
) -> Agreement:
    """Compare a variant's output (and gradients, if backward) with its float64 reference.
    ``ragged`` = (lengths, form): a ragged batch padded to the shape's N, the variant run in
    that form (harness/ragged.py), the reference sequence by sequence."""
    semantics = variant.computes(cfg)
    inputs = make_inputs(shape, dtype=dtype, device=device, seed=seed, logit_scale=logit_scale)

    def ref_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return reference(q, k, v, causal=causal, scale=scale, semantics=semantics)

    def var_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return variant.attention(q, k, v, causal=causal, scale=scale, cfg=cfg)

    if ragged is not None:
        lens, form = ragged
        ref_fn = packed(ref_fn, lens)
        var_fn = (packed(var_fn, lens) if form == "packed" else
                  padded(variant.module, lens, causal=causal, cfg=cfg, scale=scale))
    golden = _forward_backward(ref_fn, inputs, torch.float64, backward)
    lowp = _forward_backward(ref_fn, inputs, dtype, backward)
    got = _forward_backward(var_fn, inputs, dtype, backward)
    stats_rel = stats_conditioning(semantics, inputs, dtype, scale)
    checks = tuple(compare_tensor(n, got[n], golden[n], lowp[n], stats_rel) for n in golden)
    lens = None if ragged is None else ragged[0]
    return Agreement(checks, _err_vs_softmax(semantics, inputs, got["out"], causal, scale, lens))


def stats_conditioning(
    semantics: Semantics, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype,
    scale: float | None,
) -> float:
    """u_stats * L: relative perturbation of probabilities from rounded row statistics."""
    if isinstance(semantics, LinearAttention) or inputs[0].numel() == 0:
        return 0.0
    q, k = (t.to(torch.float64) for t in inputs[:2])
    k = per_query_head(q, k)  # (B, H, Nk, D)
    logits = (q @ k.transpose(-2, -1)) * default_scale(q.shape[-1], scale)  # (B, H, Nq, Nk)
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.finfo(stats_dtype).eps / 2 * max(1.0, logits.abs().max().item())


def _err_vs_softmax(
    semantics: Semantics, inputs: tuple[torch.Tensor, ...], out: torch.Tensor,
    causal: bool, scale: float | None, lens: tuple[int, ...] | None = None,
) -> float | None:
    """Max abs distance of an approximate variant's output from full softmax attention
    (sequence by sequence for a ragged batch of these lengths)."""
    if isinstance(semantics, SoftmaxAttention):
        return None
    q, k, v, _ = (t.to(torch.float64) for t in inputs)

    def softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return reference(q, k, v, causal=causal, scale=scale, semantics=SoftmaxAttention())

    full = (softmax if lens is None else packed(softmax, lens))(q, k, v)
    return (out.to(torch.float64) - full).abs().max().item()

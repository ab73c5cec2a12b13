"""Dense references for flex's patterns: the mask (or bias) materialised as (Nq, Nk) and
handed to SDPA or to the naive formula, the way code without FlexAttention applies them.

``impl=sdpa`` (default): ``F.scaled_dot_product_attention`` with an explicit boolean
``attn_mask`` (the pattern of variants/patterns.py, causal folded in) or, for an additive
score mod (ALiBi), a float bias (1, H, Nq, Nk) holding -inf where masked; PyTorch picks the
backend (``dispatched`` says which). SDPA adds its mask to the scores, so a soft-cap, which is
not additive, cannot run through it: ``impl=sdpa`` with ``score_mod=softcap`` is unavailable.
``impl=naive``: ``variants.naive.masked_softmax_attention`` with the keep-mask and the score
mod, the oracle's own formula in the input dtype.

Masks and biases are built once per (pattern, shape, causal, device) and cached: building
them is setup, not part of a timed call. A dense mask skips nothing, so FLOPs count every
Nq x Nk pair.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from variants import memory_models, patterns
from variants.contract import (
    Shape,
    SoftmaxAttention,
    SparseSoftmax,
    Supports,
    Unavailable,
    default_scale,
)
from variants.naive import masked_softmax_attention
from variants.patterns import MaskSpec
from variants.sdpa import BACKENDS, KERNELS

NAME = "masked"
IMPLS = ("sdpa", "naive")
#: score mods SDPA can take as an additive float attn_mask
ADDITIVE = frozenset({"none", "alibi"})


@dataclass(frozen=True)
class Config(MaskSpec):
    """MaskSpec's pattern and score mod (variants/patterns.py); impl: sdpa (a dense
    attn_mask or bias) or naive (the textbook formula with the keep-mask)."""

    impl: str = "sdpa"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {list(IMPLS)}, got {self.impl!r}")


PRESETS: dict[str, Config] = {
    **{name: Config(pattern=name) for name in ("window", "document", "prefix_lm")},
    "alibi": Config(score_mod="alibi"),
    "softcap": Config(score_mod="softcap", impl="naive"),  # SDPA cannot soft-cap
    "window_naive": Config(pattern="window", impl="naive"),
}
SUPPORTS = Supports()  # every device and dtype, causal and backward


def computes(cfg: Config) -> SoftmaxAttention | SparseSoftmax:
    """Softmax over the pattern's kept pairs after the score mod; FLOPs count every pair."""
    return patterns.semantics(cfg, dense=True)


def sdpa_refusal(cfg: Config) -> str | None:
    """Why SDPA cannot apply this config's score mod, or None."""
    if cfg.impl == "sdpa" and cfg.score_mod not in ADDITIVE:
        what = patterns.score_mod(cfg).description
        return (f"SDPA adds its attn_mask to the scores and cannot apply {what}, which is "
                f"not additive: use impl=naive (masked@softcap)")
    return None


def unavailable_reason(
    device: str, dtype: torch.dtype, *, causal: bool, backward: bool, cfg: Config
) -> str | None:
    """prefix_lm is causal by itself; SDPA cannot soft-cap."""
    return patterns.causal_conflict(cfg, causal) or sdpa_refusal(cfg)


# ---------------------------------------------------------------- dense masks and biases


@functools.lru_cache(maxsize=4)
def cached_keep(spec: MaskSpec, nq: int, nk: int, causal: bool, device: str) -> torch.Tensor:
    """The (Nq, Nk) keep-mask, built once per shape and device; shared: do not modify.
    Built outside inference mode: a later autograd call may save it for backward."""
    with torch.inference_mode(False):
        return patterns.keep_mask(spec, nq, nk, causal, device)


@functools.lru_cache(maxsize=4)
def cached_bias(cfg: Config, heads: int, nq: int, nk: int, causal: bool, device: str,
                dtype: torch.dtype) -> torch.Tensor:
    """The additive score mod as a float bias (1, H, Nq, Nk), -inf where the pattern masks;
    computed in float32, stored in ``dtype`` (SDPA's attn_mask must match q). Four dims: with
    a 3-dim mask torch 2.13's CPU selector picks the math backend instead of flash."""
    keep = cached_keep(patterns.mask_only(cfg), nq, nk, causal, device)  # (Nq, Nk)
    with torch.inference_mode(False):  # as cached_keep: autograd may save it
        zeros = torch.zeros(1, heads, nq, nk, device=device)  # (1, H, Nq, Nk)
        bias = patterns.score_mod(cfg).dense(zeros)  # (1, H, Nq, Nk): the mod of a zero score
        return bias.masked_fill(~keep, float("-inf")).to(dtype)  # (1, H, Nq, Nk)


def attn_mask(cfg: Config, q: torch.Tensor, nk: int, causal: bool) -> torch.Tensor | None:
    """SDPA's attn_mask for q (B, H, Nq, D): the keep-mask, the bias, or None (no mask)."""
    (_, h, nq, _), device = q.shape, str(q.device)
    if cfg.score_mod != "none":
        return cached_bias(cfg, h, nq, nk, causal, device, q.dtype)  # (1, H, Nq, Nk)
    if patterns.mask_fn(cfg, causal, nq, nk) is None:
        return None
    return cached_keep(patterns.mask_only(cfg), nq, nk, causal, device)  # (Nq, Nk)


def dispatched(shape: Shape, *, device: str, dtype: torch.dtype, causal: bool,
               backward: bool, cfg: Config) -> dict[str, str]:
    """impl=sdpa: the backend PyTorch's selector picks with this mask
    (``torch._fused_sdp_choice``, as variants/sdpa.py asks); naive picks nothing."""
    if cfg.impl != "sdpa":
        return {}
    q = torch.empty(shape.b, shape.h, shape.nq, shape.d, device=device, dtype=dtype,
                    requires_grad=backward)  # (B, H, Nq, D)
    k = torch.empty(shape.b, shape.h, shape.nk, shape.d, device=device, dtype=dtype,
                    requires_grad=backward)  # (B, H, Nk, D)
    mask = attn_mask(cfg, q, shape.nk, causal)
    choice = SDPBackend(torch._fused_sdp_choice(q, k, k, mask, 0.0, False))
    name = next((n for n, b in BACKENDS.items() if b == choice), choice.name)
    given = ("no mask" if mask is None else "a dense boolean attn_mask"
             if mask.dtype == torch.bool else "a dense float bias as attn_mask")
    what = f"sdpa {name}: {KERNELS.get(name, 'no kernel')}, given {given}"
    return {"forward": what, **({"backward": what} if backward else {})}


def expected_peak_bytes(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
    hkv: int = 0, dv: int = 0,
) -> int:
    """naive: materialised scores plus the negated mask; sdpa: streaming, plus the boolean
    mask converted to an additive one and, on CPU, the flash kernel's per-thread tiles (the
    cached mask or bias is setup, held before the call)."""
    if cfg.impl == "naive":
        m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=False, hkv=hkv, dv=dv)
        return memory_models.materialised(m, causal=True, backward=backward)
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=device == "cpu",
                           hkv=hkv, dv=dv)
    workspace = nq * nk * m.e if cfg.score_mod == "none" else 0  # bool -> additive mask
    workspace += m.q_rows * m.e if m.e < 4 else 0  # bf16/fp16: one more output-sized buffer
    if device == "cpu":
        per_thread = (min(256, nq) * min(512, nk) + min(256, nq) * d) * 4  # qk and out tiles
        workspace += torch.get_num_threads() * per_thread
    return memory_models.streaming(m, backward=backward, workspace=workspace)


def bytes_moved(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
    hkv: int = 0, dv: int = 0,
) -> int:
    """naive: every pass over materialised scores (memory_models.materialised_traffic); sdpa:
    inputs and outputs once plus the dense mask each direction (a bool mask read and its
    additive copy written and read, or the float bias read)."""
    if cfg.impl == "naive":
        m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=False, hkv=hkv, dv=dv)
        masked = patterns.mask_fn(cfg, causal, nq, nk) is not None
        return memory_models.materialised_traffic(m, masked=masked, backward=backward)
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=False, hkv=hkv, dv=dv)
    if cfg.score_mod != "none":
        mask = h * nq * nk * m.e  # the (1, H, Nq, Nk) bias, read
    elif patterns.mask_fn(cfg, causal, nq, nk) is not None:
        mask = nq * nk * (1 + 2 * m.e)  # bool read, additive copy written and read
    else:
        mask = 0
    return memory_models.io_traffic(m, backward=backward) + mask * (1 + backward)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """Dense-masked attention on q (B, H, Nq, D), k/v (B, H, Nk, D) -> (B, H, Nq, D)."""
    reason = patterns.causal_conflict(cfg, causal) or sdpa_refusal(cfg)
    if reason:
        raise Unavailable(reason)
    (_, _, nq, d), nk = q.shape, k.shape[-2]
    sc = default_scale(d, scale)
    if cfg.impl == "sdpa":
        mask = attn_mask(cfg, q, nk, causal)  # (Nq, Nk) bool, (1, H, Nq, Nk) bias, or None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sc)
    keep = None
    if patterns.mask_fn(cfg, causal, nq, nk) is not None:
        keep = cached_keep(patterns.mask_only(cfg), nq, nk, causal, str(q.device))  # (Nq, Nk)
    return masked_softmax_attention(q, k, v, sc, keep, patterns.score_mod(cfg))

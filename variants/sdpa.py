"""PyTorch's ``scaled_dot_product_attention``, the practitioner's reference.

``Config.backend`` picks the kernel: ``auto`` lets PyTorch choose; ``math``, ``flash``,
``efficient`` and ``cudnn`` pin one through ``torch.nn.attention.sdpa_kernel``. A pinned backend
that cannot run these inputs raises ``Unavailable`` with PyTorch's reasons: it never falls back
to another kernel. ``is_causal`` in PyTorch is top-left aligned, as in this project.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from variants import memory_models
from variants.contract import Shape, SoftmaxAttention, Supports, Unavailable
from variants.decoding import KVCache, prefill_kv, step_keep
from variants.naive import padded_keep

NAME = "sdpa"

BACKENDS: Mapping[str, SDPBackend | None] = {
    "auto": None,
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
#: How PyTorch says that the pinned backends cannot run the inputs (CPU and CUDA wordings).
NO_KERNEL = re.compile(r"No viable backend|No available kernel")
#: Backends with a CPU kernel in torch 2.13 (others raise "No viable backend" on CPU).
CPU_BACKENDS = frozenset({"auto", "math", "flash"})
#: what each backend runs
KERNELS: Mapping[str, str] = {
    "math": "the composite matmul-softmax-matmul (aten._scaled_dot_product_attention_math)",
    "flash": "PyTorch's flash kernel (aten._scaled_dot_product_flash_attention, its CPU "
             "version on CPU)",
    "efficient": "PyTorch's memory-efficient kernel (aten._scaled_dot_product_efficient_"
                 "attention)",
    "cudnn": "cuDNN's fused attention (aten._scaled_dot_product_cudnn_attention)",
}


@dataclass(frozen=True)
class Config:
    """backend: one of auto, math, flash, efficient, cudnn."""

    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")


PRESETS: dict[str, Config] = {name: Config(backend=name) for name in BACKENDS if name != "auto"}
SUPPORTS = Supports(gqa=True, value_dim=True)  # every device, dtype, mode; enable_gqa, Dv


def computes(cfg: Config) -> SoftmaxAttention:
    """Exact softmax attention, whatever the backend."""
    return SoftmaxAttention()


def unavailable_reason(
    device: str, dtype: torch.dtype, *, causal: bool, backward: bool, cfg: Config
) -> str | None:
    """Backends without a kernel on this device; per-shape limits surface at call time."""
    if device == "cpu" and cfg.backend not in CPU_BACKENDS:
        return (
            f"SDPA backend {cfg.backend!r} has no CPU kernel in torch {torch.__version__} "
            f"(CPU offers {sorted(CPU_BACKENDS - {'auto'})})"
        )
    if device == "mps" and cfg.backend not in ("auto", "math"):
        return f"SDPA backend {cfg.backend!r} has no MPS kernel"
    return None


def dispatched(shape: Shape, *, device: str, dtype: torch.dtype, causal: bool,
               backward: bool, cfg: Config) -> dict[str, str]:
    """The backend that runs these inputs: the pinned one, or the one PyTorch's own selector
    picks for ``auto`` (``torch._fused_sdp_choice``, what scaled_dot_product_attention calls;
    PyTorch has no public API for it)."""
    name = cfg.backend
    if name == "auto":
        q = torch.empty(shape.b, shape.h, shape.nq, shape.d, device=device, dtype=dtype,
                        requires_grad=backward)  # (B, H, Nq, D)
        k = torch.empty(shape.b, shape.kv_heads, shape.nk, shape.d, device=device,
                        dtype=dtype, requires_grad=backward)  # (B, Hkv, Nk, D)
        v = torch.empty(shape.b, shape.kv_heads, shape.nk, shape.value_dim, device=device,
                        dtype=dtype, requires_grad=backward)  # (B, Hkv, Nk, Dv)
        choice = SDPBackend(torch._fused_sdp_choice(q, k, v, None, 0.0, causal,
                                                    enable_gqa=bool(shape.hkv)))
        name = next((n for n, b in BACKENDS.items() if b == choice), choice.name)
    what = f"sdpa {name}: {KERNELS.get(name, 'no kernel')}"
    return {"forward": what, **({"backward": what} if backward else {})}


def shape_refusal(shape: Shape, *, device: str, dtype: torch.dtype, causal: bool,
                  backward: bool, cfg: Config) -> str | None:
    """Why a pinned backend cannot run these shapes (the CPU flash kernel and Dv != D, say),
    in PyTorch's words from its own selector, or None; ``auto`` always has a kernel."""
    backend = BACKENDS[cfg.backend]
    if backend is None:
        return None
    q = torch.empty(shape.b, shape.h, shape.nq, shape.d, device=device, dtype=dtype,
                    requires_grad=backward)  # (B, H, Nq, D)
    k = torch.empty(shape.b, shape.kv_heads, shape.nk, shape.d, device=device, dtype=dtype,
                    requires_grad=backward)  # (B, Hkv, Nk, D)
    v = torch.empty(shape.b, shape.kv_heads, shape.nk, shape.value_dim, device=device,
                    dtype=dtype, requires_grad=backward)  # (B, Hkv, Nk, Dv)
    try:
        _pinned(backend, cfg, lambda: torch._fused_sdp_choice(q, k, v, None, 0.0, causal,
                                                              enable_gqa=bool(shape.hkv)))
    except Unavailable as exc:
        return str(exc)
    return None


def _pinned(backend: SDPBackend, cfg: Config, call: Callable[[], Any]) -> Any:
    """``call`` with only ``backend`` enabled; PyTorch's "no kernel" becomes Unavailable with
    its reasons (the warnings it gave), never a fallback."""
    with warnings.catch_warnings(record=True) as caught, sdpa_kernel([backend]):
        warnings.simplefilter("always")
        try:
            return call()
        except RuntimeError as exc:
            if not NO_KERNEL.search(str(exc)):
                raise
            why = "; ".join(str(w.message) for w in caught) or str(exc)
            msg = f"SDPA backend {cfg.backend!r} cannot run these inputs: {why}"
            raise Unavailable(msg) from exc


def expected_peak_bytes(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
    hkv: int = 0, dv: int = 0,
) -> int:
    """math: materialised scores; fused: O(N) rows, plus, on CPU only, the CPU flash kernel's
    per-thread fp32 tiles (CUDA kernels keep their tiles on chip)."""
    if cfg.backend == "math":  # upcasts bf16/fp16 to fp32 on CPU and CUDA alike
        m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=True, hkv=hkv, dv=dv)
        return memory_models.materialised(m, causal=False, backward=backward)
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=device == "cpu",
                           hkv=hkv, dv=dv)
    workspace = 0
    if device == "cpu":
        per_thread = (min(256, nq) * min(512, nk) + min(256, nq) * m.value_dim) * 4  # qk, out
        workspace = torch.get_num_threads() * per_thread
    return memory_models.streaming(m, backward=backward, workspace=workspace)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """SDPA on q (B, H, Nq, D), k/v (B, H, Nk, D) -> (B, H, Nq, D) with the chosen backend."""
    return _sdpa(q, k, v, causal=causal, mask=None, scale=scale, cfg=cfg)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
    mask: torch.Tensor | None, scale: float | None, cfg: Config,
) -> torch.Tensor:
    """One scaled_dot_product_attention call on the config's backend (None: PyTorch picks);
    a pinned backend that cannot run it raises Unavailable with PyTorch's reasons."""
    backend, gqa = BACKENDS[cfg.backend], k.shape[1] != q.shape[1]  # enable_gqa: Hkv < H

    def call() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=scale, enable_gqa=gqa)
    return call() if backend is None else _pinned(backend, cfg, call)


prefill = prefill_kv  # the decode cache: every key and value, preallocated


def decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, *,
    scale: float | None = None, cfg: Config = Config(),
) -> tuple[torch.Tensor, KVCache]:
    """t new queries (B, H, t, D) against the cache in one SDPA call; for t > 1 a (t, L + t)
    bool mask makes it causal among the new tokens (is_causal is top-left aligned)."""
    cache = cache.append(k, v)
    keep = step_keep(q.shape[-2], cache.length, q.device)  # (t, L + t) or None for t = 1
    out = _sdpa(q, cache.keys(), cache.values(), causal=False, mask=keep, scale=scale, cfg=cfg)
    return out, cache  # (B, H, t, D)


def attention_padded(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...], *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """A padded ragged batch in one SDPA call: a (B, 1, N, Nk) bool mask of each sequence's
    keys (causal folded in, since is_causal cannot combine with a mask); rows past a length
    unspecified."""
    keep = padded_keep(lengths, q.shape[-2], k.shape[-2], causal, q.device)  # (B, 1, *, Nk)
    return _sdpa(q, k, v, causal=False, mask=keep, scale=scale, cfg=cfg)

"""``xformers.ops.memory_efficient_attention`` with this project's layout and causal mask.

xformers takes (B, N, H, D) ("BMHK"); we convert from and to (B, H, N, D). Causal maps to
``LowerTriangularMask``, which is top-left aligned like ours (query i sees keys j <= i).
``Config.op`` pins an op (``cutlass``, ``flash``: in 0.0.35 these call PyTorch's own
efficient and flash kernels; ``splitk``, ``fa3``: xformers' own kernels) or lets xformers
dispatch (``auto``); an op that cannot run the inputs raises ``Unavailable``, never a fallback.
Each row records the op that ran and the kernel under it (``dispatched``).
xformers 0.0.35 has no CPU kernels, so on CPU the variant is unavailable with that reason.
xformers is imported lazily: importing it prints a warning about its compiled extensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from variants import memory_models
from variants.contract import DTYPES, Shape, SoftmaxAttention, Supports, Unavailable
from variants.decoding import KVCache, prefill_kv

NAME = "xformers"

#: Config.op -> the module of xformers.ops.fmha whose FwOp (and BwOp) it pins; None: dispatch
OPS: dict[str, str | None] = {
    "auto": None,
    "cutlass": "cutlass",
    "flash": "flash",
    "splitk": "triton_splitk",  # xformers' own Triton kernel; forward only, built for decoding
    "fa3": "flash3",  # FlashAttention-3 (Hopper), when its package is importable
}


@dataclass(frozen=True)
class Config:
    """op: auto (xformers dispatches), cutlass, flash, splitk or fa3."""

    op: str = "auto"

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {list(OPS)}, got {self.op!r}")


PRESETS: dict[str, Config] = {name: Config(op=name) for name in OPS if name != "auto"}
SUPPORTS = Supports(
    devices=frozenset({"cpu", "cuda"}),  # cpu is declared so the reason below is given
    dtypes=frozenset({DTYPES["fp32"], DTYPES["bf16"], DTYPES["fp16"]}),
    gqa=True,  # xformers' grouped BMGHK layout, each kv head expanded (stride 0) over its group
)


def computes(cfg: Config) -> SoftmaxAttention:
    """Exact softmax attention."""
    return SoftmaxAttention()


def to_bmhk(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) -> xformers' (B, N, H, D)."""
    return x.transpose(1, 2)  # (B, N, H, D)


def from_bmhk(x: torch.Tensor) -> torch.Tensor:
    """xformers' (B, N, H, D) -> (B, H, N, D)."""
    return x.transpose(1, 2)  # (B, H, N, D)


def to_layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, H, N, D) q and (B, Hkv, N, D) k, v -> xformers' BMHK, or its grouped BMGHK
    (B, N, Hkv, G, D) when Hkv < H: each kv head expanded over its G query heads as a
    stride-0 view (query head h reads kv head h // G), nothing copied."""
    if k.shape[1] == q.shape[1]:
        return to_bmhk(q), to_bmhk(k), to_bmhk(v)
    (b, h, n, d), hkv = q.shape, k.shape[1]
    g = h // hkv
    grouped = q.transpose(1, 2).reshape(b, n, hkv, g, d)  # (B, Nq, Hkv, G, D)

    def expand(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).unsqueeze(3).expand(-1, -1, -1, g, -1)  # (B, Nk, Hkv, G, D)
    return grouped, expand(k), expand(v)


def from_layout(out: torch.Tensor, heads: int) -> torch.Tensor:
    """xformers' BMHK or BMGHK output -> (B, H, N, Dv)."""
    if out.dim() == 4:
        return from_bmhk(out)
    b, n = out.shape[:2]
    return out.reshape(b, n, heads, out.shape[-1]).transpose(1, 2)  # (B, H, Nq, Dv)


def causal_bias(causal: bool) -> Any:
    """The xformers attention bias for our top-left causal mask, or None."""
    if not causal:
        return None
    from xformers.ops.fmha.attn_bias import LowerTriangularMask

    return LowerTriangularMask()


def op_pair(cfg: Config) -> tuple[Any, Any] | None:
    """The pinned (FwOp, BwOp or None) of ``cfg.op``, or None to let xformers dispatch."""
    if OPS[cfg.op] is None:
        return None
    from xformers.ops import fmha

    module = getattr(fmha, OPS[cfg.op])
    return module.FwOp, getattr(module, "BwOp", None)


#: what runs under an xformers 0.0.35 FMHA op, by the start of its NAME ("-pt": PyTorch's)
UNDERNEATH = (
    ("cutlassF-pt", "PyTorch's memory-efficient kernel (aten._efficient_attention_forward), "
                    "the kernel of sdpa@efficient"),
    ("cutlassB-pt", "PyTorch's memory-efficient kernel (aten._efficient_attention_backward), "
                    "the kernel of sdpa@efficient"),
    ("fa2F@", "PyTorch's flash kernel (aten._flash_attention_forward), the kernel of sdpa@flash"),
    ("fa2B@", "PyTorch's flash kernel (aten._flash_attention_backward), the kernel of "
              "sdpa@flash"),
    ("triton_splitK", "xformers' own Triton split-K kernel"),
    ("fa3", "FlashAttention-3, through xformers"),
    ("ck", "xformers' own composable-kernel (ROCm) kernel"),
)


def underneath(op_name: str) -> str:
    """``NAME: the kernel under it`` for an xformers FMHA op."""
    for prefix, kernel in UNDERNEATH:
        if op_name.startswith(prefix) and (prefix[:3] != "fa2" or op_name.endswith("-pt")):
            return f"{op_name}: {kernel}"
    return f"{op_name}: xformers' own kernel"


def dispatched(shape: Shape, *, device: str, dtype: torch.dtype, causal: bool,
               backward: bool, cfg: Config) -> dict[str, str]:
    """The FwOp (and BwOp) xformers runs for these inputs and the kernel under each: the
    pinned ones, or what its dispatcher picks (``fmha.dispatch``, which
    ``memory_efficient_attention`` itself calls; xformers has no public API for it)."""
    from xformers.ops.fmha import dispatch
    from xformers.ops.fmha.common import Inputs

    q = torch.empty(shape.b, shape.nq, shape.h, shape.d, device=device, dtype=dtype)  # BMHK
    k = torch.empty(shape.b, shape.nk, shape.h, shape.d, device=device, dtype=dtype)
    inputs = Inputs(q, k, k, attn_bias=causal_bias(causal))
    pinned = op_pair(cfg)
    try:
        fw = pinned[0] if pinned else dispatch._dispatch_fw(inputs, backward)
        out = {"forward": underneath(fw.NAME)}
        if backward:
            bw = pinned[1] if pinned else dispatch._dispatch_bw(inputs, varlen_lse_packed=None)
            if bw is None:
                raise NotImplementedError(f"{fw.NAME} has no backward op")
            out["backward"] = underneath(bw.NAME)
    except NotImplementedError as exc:
        raise Unavailable(f"xformers dispatches no op for these inputs: {exc}") from exc
    return out


#: modules of xformers.ops.fmha holding FMHA ops (FwOp, and BwOp where there is one)
FMHA_MODULES = ("cutlass", "flash", "triton_splitk", "flash3", "ck")
#: Config.op -> the modules whose ops it may dispatch to
CANDIDATES = {op: FMHA_MODULES if module is None else (module,) for op, module in OPS.items()}


def op_reasons(device: str, dtype: torch.dtype, *, head_dim: int = 64, causal: bool = False,
               backward: bool = False, modules: tuple[str, ...] = FMHA_MODULES,
               ) -> dict[str, list[str]]:
    """Per xformers FMHA op (its NAME): why it cannot run such inputs, in xformers' own words
    (``not_supported_reasons``, what its dispatcher asks); [] means it can. ``harness
    doctor`` prints the same probe."""
    from xformers.ops import fmha
    from xformers.ops.fmha.common import Inputs

    q = torch.zeros(1, 2, 2, head_dim, device=device, dtype=dtype)  # (B, N, H, D)
    inputs = Inputs(q, q, q, attn_bias=causal_bias(causal))
    out = {}
    for name in modules:
        module = getattr(fmha, name, None)
        for kind in ("FwOp", "BwOp") if backward else ("FwOp",):
            op = getattr(module, kind, None)
            if op is not None:
                out[op.NAME] = list(op.not_supported_reasons(inputs))
    return out


def unavailable_reason(
    device: str, dtype: torch.dtype, *, causal: bool, backward: bool, cfg: Config
) -> str | None:
    """Unavailable when no op this config may dispatch to accepts the case, in xformers' own
    words (the probe ``harness doctor`` prints); on CUDA a tiny call confirms it."""
    try:
        import xformers.ops  # noqa: F401
    except ImportError as exc:
        return f"xformers cannot be imported: {exc}"
    pinned = op_pair(cfg)
    if backward and pinned is not None and pinned[1] is None:
        return (f"xformers' {OPS[cfg.op]} has a forward op only ({pinned[0].NAME}): no "
                "backward to time")
    reasons = op_reasons(device, dtype, causal=causal, backward=backward,
                         modules=CANDIDATES[cfg.op])
    if not any(not why for why in reasons.values()):
        return "no xformers op accepts these inputs: " + "; ".join(
            f"{name}: {', '.join(why)}" for name, why in reasons.items())
    if device == "cpu":  # an op that says yes on CPU would still have no kernel to run
        return "xformers has no CPU kernels (memory_efficient_attention is CUDA-only)"
    probe = torch.zeros(1, 2, 1, 64, device=device, dtype=dtype, requires_grad=backward)
    try:
        attention(probe, probe, probe, causal=causal, cfg=cfg)
    except Unavailable as exc:
        return str(exc)
    return None


def expected_peak_bytes(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
    hkv: int = 0, dv: int = 0,
) -> int:
    """Fused CUDA kernels keep tiles on chip: output, row statistics and gradients only."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=False, hkv=hkv, dv=dv)
    return memory_models.streaming(m, backward=backward)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """memory_efficient_attention on q (B, H, Nq, D), k/v (B, Hkv, Nk, D) -> (B, H, Nq, D)."""
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return _call(q, k, v, causal_bias(causal), scale, cfg, grad)


def _call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Any, scale: float | None,
          cfg: Config, grad: bool) -> torch.Tensor:
    """One xformers call in its layout, on the pinned op if any; Unavailable, never a
    fallback, when that op refuses the inputs."""
    import xformers.ops as xops

    pinned = op_pair(cfg)
    if grad and pinned is not None and pinned[1] is None:
        raise Unavailable(f"xformers' {OPS[cfg.op]} has a forward op only: no backward")
    qx, kx, vx = to_layout(q, k, v)  # (B, N, H, D) or (B, N, Hkv, G, D)
    try:
        if grad or pinned is None:
            out = xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias, scale=scale,
                                                  op=pinned)
        else:  # forward only: the forward op alone (split-K has no backward op)
            out = xops.memory_efficient_attention_forward(qx, kx, vx, attn_bias=bias,
                                                          scale=scale, op=pinned[0])
    except NotImplementedError as exc:
        why = " ".join(line.strip() for line in str(exc).strip().splitlines()[:8])
        raise Unavailable(f"xformers op {cfg.op!r} cannot run these inputs: {why}") from exc
    return from_layout(out, q.shape[1])  # (B, H, Nq, Dv)


prefill = prefill_kv  # the decode cache: every key and value, preallocated


def decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, *,
    scale: float | None = None, cfg: Config = Config(),
) -> tuple[torch.Tensor, KVCache]:
    """t new queries against the cache in one xformers call (``splitk`` is its decoding
    kernel); t > 1 takes ``LowerTriangularFromBottomRightMask``, causal among the new tokens."""
    cache = cache.append(k, v)
    bias = None
    if q.shape[-2] > 1:
        from xformers.ops.fmha.attn_bias import LowerTriangularFromBottomRightMask

        bias = LowerTriangularFromBottomRightMask()
    return _call(q, cache.keys(), cache.values(), bias, scale, cfg, grad=False), cache

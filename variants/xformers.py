"""``xformers.ops.memory_efficient_attention`` with this project's layout and causal mask.

xformers takes (B, N, H, D) ("BMHK"); we convert from and to (B, H, N, D). Causal maps to
``LowerTriangularMask``, which is top-left aligned like ours (query i sees keys j <= i).
``Config.op`` pins a kernel family (``cutlass``, ``flash``) or lets xformers dispatch
(``auto``); an op that cannot run the inputs raises ``Unavailable``, never a fallback.
xformers 0.0.35 has no CPU kernels, so on CPU the variant is unavailable with that reason.
xformers is imported lazily: importing it prints a warning about its compiled extensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from variants import memory_models
from variants.contract import DTYPES, SoftmaxAttention, Supports, Unavailable

NAME = "xformers"

#: op name -> attribute of xformers.ops.fmha holding the (forward, backward) op pair.
OPS: dict[str, str | None] = {
    "auto": None,
    "cutlass": "MemoryEfficientAttentionCutlassOp",
    "flash": "MemoryEfficientAttentionFlashAttentionOp",
}


@dataclass(frozen=True)
class Config:
    """op: auto (xformers dispatches), cutlass or flash."""

    op: str = "auto"

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {list(OPS)}, got {self.op!r}")


PRESETS: dict[str, Config] = {"cutlass": Config(op="cutlass"), "flash": Config(op="flash")}
SUPPORTS = Supports(
    devices=frozenset({"cpu", "cuda"}),  # cpu is declared so the reason below is given
    dtypes=frozenset({DTYPES["fp32"], DTYPES["bf16"], DTYPES["fp16"]}),
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


def causal_bias(causal: bool) -> Any:
    """The xformers attention bias for our top-left causal mask, or None."""
    if not causal:
        return None
    from xformers.ops.fmha.attn_bias import LowerTriangularMask

    return LowerTriangularMask()


def _op(cfg: Config) -> Any:
    """The pinned xformers op pair, or None to let xformers dispatch."""
    if OPS[cfg.op] is None:
        return None
    from xformers.ops import fmha

    return getattr(fmha, OPS[cfg.op])


#: modules of xformers.ops.fmha holding FMHA ops (FwOp, and BwOp where there is one)
FMHA_MODULES = ("cutlass", "flash", "triton_splitk", "flash3", "ck")
#: Config.op -> the modules whose ops it may dispatch to
CANDIDATES = {"auto": FMHA_MODULES, "cutlass": ("cutlass",), "flash": ("flash",)}


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
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config,
) -> int:
    """Fused CUDA kernels keep tiles on chip: output, row statistics and gradients only."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=False)
    return memory_models.streaming(m, backward=backward)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """memory_efficient_attention on q (B, H, Nq, D), k/v (B, H, Nk, D) -> (B, H, Nq, D)."""
    import xformers.ops as xops

    try:
        out = xops.memory_efficient_attention(
            to_bmhk(q), to_bmhk(k), to_bmhk(v),
            attn_bias=causal_bias(causal), scale=scale, op=_op(cfg),
        )  # (B, Nq, H, D)
    except NotImplementedError as exc:
        why = " ".join(line.strip() for line in str(exc).strip().splitlines()[:8])
        raise Unavailable(f"xformers op {cfg.op!r} cannot run these inputs: {why}") from exc
    return from_bmhk(out)  # (B, H, Nq, D)

"""Linear attention (Katharopoulos et al. 2020) with the feature map phi(x) = elu(x) + 1.

    out_i = phi(q_i) . sum_j phi(k_j) v_j^T / (phi(q_i) . sum_j phi(k_j) + eps)

Non-causal sums run over all keys in O(N D^2). Causal (top-left: query i sums keys j <= i,
the current token included) uses chunked prefix sums: within a chunk a small masked
(C, C) product, across chunks an exclusive cumulative sum of per-chunk (D, D) states, so no
(N, D, D) tensor is ever built. ``eps`` (Config) keeps the denominator away from zero.
There is no softmax, so ``scale`` is accepted and ignored: a factor on phi(Q) phi(K)^T cancels
in the normalisation. bf16/fp16 inputs are computed in float32 and the output cast back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from variants import memory_models
from variants.contract import DTYPES, LinearAttention, Supports

NAME = "linear"


@dataclass(frozen=True)
class Config:
    """eps: added to the normaliser; chunk: causal chunk length C (memory O(N C))."""

    eps: float = 1e-6
    chunk: int = 128

    def __post_init__(self) -> None:
        if not self.eps >= 0:
            raise ValueError(f"eps must be a float >= 0, got {self.eps!r}")
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {self.chunk!r}")


PRESETS: dict[str, Config] = {}
SUPPORTS = Supports(
    devices=frozenset({"cpu", "cuda", "mps"}),
    dtypes=frozenset({DTYPES["fp32"], DTYPES["bf16"], DTYPES["fp16"], DTYPES["fp64"]}),
)


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1, a positive feature map."""
    return F.elu(x) + 1.0


def computes(cfg: Config) -> LinearAttention:
    """Normalised linear attention with phi = elu + 1 and the config's eps."""
    return LinearAttention(feature_map=feature_map, eps=cfg.eps)


def unavailable_reason(
    device: str, dtype: torch.dtype, *, causal: bool, backward: bool, cfg: Config
) -> str | None:
    """Always available where SUPPORTS says so."""
    return None


def expected_peak_bytes(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config,
) -> int:
    """Feature maps and (D, D) states; causal adds (C, C) blocks per chunk."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=True)
    return memory_models.linear_form(m, causal=causal, chunk=cfg.chunk, backward=backward)


def _noncausal(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """Sum over all keys: (B, H, Nq, D) features -> (B, H, Nq, Dv)."""
    kv = fk.transpose(-2, -1) @ v  # (B, H, D, Dv)
    z = fk.sum(dim=-2)  # (B, H, D)
    den = fq @ z.unsqueeze(-1)  # (B, H, Nq, 1)
    return (fq @ kv) / (den + eps)  # (B, H, Nq, Dv)


def _chunks(x: torch.Tensor, length: int, chunk: int) -> torch.Tensor:
    """Zero-pad (B, H, N, D) to ``length`` rows and split: (B, H, nc, C, D)."""
    x = F.pad(x, (0, 0, 0, length - x.shape[-2]))  # (B, H, L, D)
    return x.unflatten(-2, (length // chunk, chunk))  # (B, H, nc, C, D)


def _causal(
    fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, eps: float, chunk: int
) -> torch.Tensor:
    """Top-left causal sums by chunked prefix sums; padded keys have zero features."""
    nq = fq.shape[-2]
    c = min(chunk, max(nq, fk.shape[-2]))
    length = -(-max(nq, fk.shape[-2]) // c) * c
    qc, kc, vc = (_chunks(t, length, c) for t in (fq, fk, v))  # (B, H, nc, C, D)
    kv = kc.transpose(-2, -1) @ vc  # (B, H, nc, D, Dv): one state per chunk
    state = kv.cumsum(dim=2) - kv  # (B, H, nc, D, Dv): keys of earlier chunks
    z = kc.sum(dim=-2)  # (B, H, nc, D)
    z_state = z.cumsum(dim=2) - z  # (B, H, nc, D)
    tril = torch.ones(c, c, dtype=torch.bool, device=fq.device).tril()  # (C, C)
    a = (qc @ kc.transpose(-2, -1)) * tril  # (B, H, nc, C, C)
    num = a @ vc + qc @ state  # (B, H, nc, C, Dv)
    den = a.sum(dim=-1) + (qc @ z_state.unsqueeze(-1)).squeeze(-1)  # (B, H, nc, C)
    out = num / (den.unsqueeze(-1) + eps)  # (B, H, nc, C, Dv)
    return out.flatten(2, 3)[..., :nq, :]  # (B, H, Nq, Dv)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """Normalised linear attention: q (B, H, Nq, D), k/v (B, H, Nk, D) -> (B, H, Nq, D)."""
    work = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
    fq, fk = feature_map(q.to(work)), feature_map(k.to(work))  # (B, H, N, D)
    vw = v.to(work)
    out = _causal(fq, fk, vw, cfg.eps, cfg.chunk) if causal else _noncausal(fq, fk, vw, cfg.eps)
    return out.to(q.dtype)  # (B, H, Nq, D)

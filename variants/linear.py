"""Linear attention (Katharopoulos et al. 2020) with the feature map phi(x) = elu(x) + 1.

    out_i = phi(q_i) . sum_j phi(k_j) v_j^T / (phi(q_i) . sum_j phi(k_j) + eps)

Non-causal sums run over all keys in O(N D^2), in row blocks so that no (B, H, N, D)
intermediate is allocated besides the output (large fresh allocations cost page faults that
grew t(16384) / t(4096) to 11 here). Causal (top-left: query i sums keys j <= i,
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
from variants.contract import LinearAttention, Supports, always_available

NAME = "linear"
#: Non-causal row blocks hold about this many values per temporary (2 MiB in fp32), so big
#: (B, H, N, D) intermediates are never allocated: only the output is, once.
ROW_BLOCK_ELEMENTS = 1 << 19


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
SUPPORTS = Supports()  # every device and dtype, causal and backward


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1, a positive feature map."""
    return F.elu(x).add_(1.0)  # in place: elu's backward does not need its output


def computes(cfg: Config) -> LinearAttention:
    """Normalised linear attention with phi = elu + 1 and the config's eps."""
    return LinearAttention(feature_map=feature_map, eps=cfg.eps)


unavailable_reason = always_available  # runs wherever SUPPORTS says


def expected_peak_bytes(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
) -> int:
    """Feature maps and (D, D) states; causal adds (C, C) blocks per chunk."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=True)
    return memory_models.linear_form(m, causal=causal, chunk=cfg.chunk, backward=backward,
                                     block=ROW_BLOCK_ELEMENTS)


def _row_block(x: torch.Tensor) -> int:
    """Rows per block so a (B, H, rows, D) temporary holds about ROW_BLOCK_ELEMENTS values."""
    b, h, _, d = x.shape
    return max(1, ROW_BLOCK_ELEMENTS // (b * h * d))


def _noncausal(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float, work: torch.dtype
) -> torch.Tensor:
    """Sum over all keys, in row blocks: (B, H, Nq, D) -> (B, H, Nq, Dv) in q's dtype."""
    rows = _row_block(k)
    kv = z = None
    for s in range(0, k.shape[-2], rows):
        fk = feature_map(k[..., s : s + rows, :].to(work))  # (B, H, r, D)
        kv_part = fk.transpose(-2, -1) @ v[..., s : s + rows, :].to(work)  # (B, H, D, Dv)
        z_part = fk.sum(dim=-2)  # (B, H, D)
        kv, z = (kv_part, z_part) if kv is None else (kv + kv_part, z + z_part)
    if _tracked(q, k, v):  # autograd: blocks joined at the end
        blocks = [_normalised(q[..., s : s + rows, :], kv, z, eps, work)
                  for s in range(0, q.shape[-2], rows)]
        return torch.cat(blocks, dim=-2)  # (B, H, Nq, Dv)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])  # (B, H, Nq, Dv): written block by block
    for s in range(0, q.shape[-2], rows):
        out[..., s : s + rows, :] = _normalised(q[..., s : s + rows, :], kv, z, eps, work)
    return out


def _tracked(*xs: torch.Tensor) -> bool:
    """Whether autograd records operations on any of xs."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


def _normalised(
    q: torch.Tensor, kv: torch.Tensor, z: torch.Tensor, eps: float, work: torch.dtype
) -> torch.Tensor:
    """One row block: phi(q) kv / (phi(q) z + eps), (B, H, r, D) -> (B, H, r, Dv)."""
    fq = feature_map(q.to(work))  # (B, H, r, D)
    den = (fq @ z.unsqueeze(-1)).add_(eps)  # (B, H, r, 1)
    return (fq @ kv).div_(den).to(q.dtype)  # (B, H, r, Dv)


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
    if not causal:
        return _noncausal(q, k, v, cfg.eps, work)  # (B, H, Nq, D)
    fq, fk = feature_map(q.to(work)), feature_map(k.to(work))  # (B, H, N, D)
    return _causal(fq, fk, v.to(work), cfg.eps, cfg.chunk).to(q.dtype)  # (B, H, Nq, D)

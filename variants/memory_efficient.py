"""Memory-efficient exact attention in pure PyTorch: tiled online softmax, O(N) memory.

Forward (Rabe & Staats 2021; FlashAttention): queries and keys are cut into tiles of
``block_q`` x ``block_k``; for each query tile a running row max ``m``, running sum ``l`` and
output accumulator are updated key tile by key tile, so no (Nq, Nk) matrix ever exists. Each
row's log-sum-exp ``lse = m + log(l)`` is kept for the backward.

Backward (FlashAttention-2): a custom ``torch.autograd.Function`` saves only q, k, v, out and
lse, and recomputes every score tile: D_i = rowsum(dO * O); P = exp(S * scale - LSE);
dV += P^T dO; dP = dO V^T; dS = P * (dP - D); dQ += dS K * scale; dK += dS^T Q * scale.
Forward and forward+backward memory are O(N) for fixed tiles (one or two score tiles alive).

Causal is top-left aligned (query i sees keys j <= i, any Nq and Nk). Tiles entirely above the
diagonal are skipped, never computed; only tiles crossing it get an element mask. Key tiles run
in ascending order, so the first one holds key 0, which every query sees: no row is empty.
The scale is folded into q once. bf16/fp16 run in float32 (max, sum and accumulators) and the
output and gradients are cast back to the input dtype; fp64 runs in fp64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from variants import memory_models
from variants.contract import SoftmaxAttention, Supports, always_available, default_scale

NAME = "memory_efficient"

Span = tuple[int, int]  # [start, stop) of a tile along one sequence axis


@dataclass(frozen=True)
class Config:
    """block_q, block_k: tile lengths; a score tile is (B*H, block_q, block_k) floats.

    Defaults measured on a 2-core CPU (fp32, B=1, H=8, D=64, N=4096, 2 threads), time relative
    to SDPA in the same run: 512x1024 gave forward 1.24x, forward+backward 1.26x (1024x1024:
    1.21x / 1.32x; 512x512: 1.35x / 1.31x; 256x1024: 1.40x forward). Large tiles amortise the
    Python loop over big matmuls and single vectorised passes; memory stays O(N) since the
    tile is a constant (16 MiB of scores at B*H=8).
    """

    block_q: int = 512
    block_k: int = 1024

    def __post_init__(self) -> None:
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


PRESETS: dict[str, Config] = {"small_tiles": Config(block_q=128, block_k=128)}
SUPPORTS = Supports(compile=True)  # every device and dtype, causal, backward, compile


def computes(cfg: Config) -> SoftmaxAttention:
    """Exact softmax attention."""
    return SoftmaxAttention()


unavailable_reason = always_available  # runs wherever SUPPORTS says


def expected_peak_bytes(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
) -> int:
    """O(N) rows plus one score tile forward, two backward (variants/memory_models.py)."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=True)
    return memory_models.tiled(m, tile_q=cfg.block_q, tile_k=cfg.block_k, backward=backward)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _spans(n: int, block: int) -> list[Span]:
    """Consecutive tiles [start, stop) covering 0..n; the last one may be partial."""
    return [(start, min(start + block, n)) for start in range(0, n, block)]


def _visible(rows: Span, cols: Span, causal: bool) -> bool:
    """False when causal and every key of ``cols`` lies above the diagonal for all ``rows``."""
    return not causal or cols[0] < rows[1]


def _scores(
    qs: torch.Tensor, k3: torch.Tensor, rows: Span, cols: Span, causal: bool, buf: torch.Tensor
) -> torch.Tensor:
    """Score tile (q*scale) K^T written into ``buf``, -inf where key j > query i if causal."""
    (i0, i1), (j0, j1) = rows, cols
    bh = qs.shape[0]
    s = buf[: bh * (i1 - i0) * (j1 - j0)].view(bh, i1 - i0, j1 - j0)  # (BH, bq, bk)
    torch.bmm(qs[:, i0:i1], k3[:, j0:j1].transpose(1, 2), out=s)  # (BH, bq, bk)
    if causal and j1 - 1 > i0:  # the tile crosses the diagonal
        key = torch.arange(j0, j1, device=s.device)  # (bk,)
        query = torch.arange(i0, i1, device=s.device).unsqueeze(1)  # (bq, 1)
        s.masked_fill_(key > query, float("-inf"))  # (BH, bq, bk)
    return s


def _forward_rows(
    qs: torch.Tensor, k3: torch.Tensor, v3: torch.Tensor, rows: Span, causal: bool,
    block_k: int, buf: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Online softmax of one query tile over its visible key tiles: (out, lse) rows."""
    row_max = row_sum = acc = None
    for cols in _spans(k3.shape[1], block_k):
        if not _visible(rows, cols, causal):
            break  # key tiles ascend: all later ones are above the diagonal too
        s = _scores(qs, k3, rows, cols, causal, buf)  # (BH, bq, bk)
        tile_max = s.amax(dim=-1, keepdim=True)  # (BH, bq, 1)
        m_new = tile_max if row_max is None else torch.maximum(row_max, tile_max)  # (BH, bq, 1)
        p = s.sub_(m_new).exp_()  # (BH, bq, bk), in place in buf
        v_tile = v3[:, cols[0] : cols[1]]  # (BH, bk, D)
        if acc is None:
            row_sum = p.sum(dim=-1, keepdim=True)  # (BH, bq, 1)
            acc = torch.bmm(p, v_tile)  # (BH, bq, D)
        else:
            alpha = (row_max - m_new).exp_()  # (BH, bq, 1): rescales the old max to the new one
            row_sum.mul_(alpha).add_(p.sum(dim=-1, keepdim=True))  # (BH, bq, 1)
            acc.mul_(alpha).baddbmm_(p, v_tile)  # (BH, bq, D)
        row_max = m_new
    return acc.div_(row_sum), row_max.add_(row_sum.log_())  # (BH, bq, D), (BH, bq, 1)


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled forward: out (B, H, Nq, D) in q's dtype and lse (B*H, Nq, 1) in compute dtype."""
    b, h, nq, d = q.shape
    nk, ct = k.shape[-2], _compute_dtype(q.dtype)
    qs = q.reshape(b * h, nq, d).to(ct) * scale  # (BH, Nq, D), scale folded in once
    k3 = k.reshape(b * h, nk, d).to(ct)  # (BH, Nk, D)
    v3 = v.reshape(b * h, nk, v.shape[-1]).to(ct)  # (BH, Nk, D)
    out = torch.empty(b * h, nq, v.shape[-1], dtype=q.dtype, device=q.device)  # (BH, Nq, D)
    lse = torch.empty(b * h, nq, 1, dtype=ct, device=q.device)  # (BH, Nq, 1)
    buf = qs.new_empty(b * h * min(cfg.block_q, nq) * min(cfg.block_k, nk))  # one score tile
    for i0, i1 in _spans(nq, cfg.block_q):
        out[:, i0:i1], lse[:, i0:i1] = _forward_rows(
            qs, k3, v3, (i0, i1), causal, cfg.block_k, buf
        )
    return out.view(b, h, nq, v.shape[-1]), lse


def _backward_cols(
    t: dict[str, torch.Tensor], cols: Span, causal: bool, cfg: Config,
    bufs: tuple[torch.Tensor, torch.Tensor], scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One key tile's dK, dV over its visible query tiles; adds into t["dq"] in place."""
    j0, j1 = cols
    k_tile, v_tile = t["k"][:, j0:j1], t["v"][:, j0:j1]  # (BH, bk, D)
    dk = torch.zeros_like(k_tile)  # (BH, bk, D)
    dv = torch.zeros_like(v_tile)  # (BH, bk, D)
    for rows in _spans(t["qs"].shape[1], cfg.block_q):
        if not _visible(rows, cols, causal):
            continue  # query tile entirely before this key tile's first key
        i0, i1 = rows
        p = _scores(t["qs"], t["k"], rows, cols, causal, bufs[0])  # (BH, bq, bk)
        p.sub_(t["lse"][:, i0:i1]).exp_()  # (BH, bq, bk): P, exactly as in the forward
        do = t["do"][:, i0:i1]  # (BH, bq, D)
        dv.baddbmm_(p.transpose(1, 2), do)  # (BH, bk, D)
        dp = bufs[1][: p.numel()].view(p.shape)  # (BH, bq, bk)
        torch.bmm(do, v_tile.transpose(1, 2), out=dp)  # (BH, bq, bk)
        ds = p.mul_(dp.sub_(t["delta"][:, i0:i1]))  # (BH, bq, bk): dS = P * (dP - D)
        t["dq"][:, i0:i1].baddbmm_(ds, k_tile, alpha=scale)  # (BH, bq, D)
        dk.baddbmm_(ds.transpose(1, 2), t["qs"][:, i0:i1])  # (BH, bk, D); qs carries scale
    return dk, dv


def _backward(
    dout: torch.Tensor, saved: tuple[torch.Tensor, ...], scale: float, causal: bool, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward from saved (q, k, v, out, lse): dq, dk, dv in input dtypes."""
    q, k, v, out, lse = saved
    b, h, nq, d = q.shape
    nk, ct = k.shape[-2], _compute_dtype(q.dtype)
    do = dout.reshape(b * h, nq, -1).to(ct)  # (BH, Nq, D)
    t = {
        "qs": q.reshape(b * h, nq, d).to(ct) * scale,  # (BH, Nq, D)
        "k": k.reshape(b * h, nk, d).to(ct),  # (BH, Nk, D)
        "v": v.reshape(b * h, nk, -1).to(ct),  # (BH, Nk, D)
        "do": do,
        "delta": (do * out.reshape(b * h, nq, -1).to(ct)).sum(-1, keepdim=True),  # (BH, Nq, 1)
        "lse": lse,  # (BH, Nq, 1)
        "dq": torch.zeros(b * h, nq, d, dtype=ct, device=q.device),  # (BH, Nq, D)
    }
    tile = b * h * min(cfg.block_q, nq) * min(cfg.block_k, nk)
    bufs = (do.new_empty(tile), do.new_empty(tile))  # P / dS and dP score tiles
    dk = torch.empty(b * h, nk, d, dtype=k.dtype, device=k.device)  # (BH, Nk, D)
    dv = torch.empty(b * h, nk, v.shape[-1], dtype=v.dtype, device=v.device)  # (BH, Nk, D)
    for j0, j1 in _spans(nk, cfg.block_k):
        dk[:, j0:j1], dv[:, j0:j1] = _backward_cols(t, (j0, j1), causal, cfg, bufs, scale)
    dq = t["dq"].to(q.dtype).view(q.shape)  # (B, H, Nq, D)
    return dq, dk.view(k.shape), dv.view(v.shape)


class _MemoryEfficientAttention(torch.autograd.Function):
    """Tiled forward saving (q, k, v, out, lse); backward recomputes score tiles."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        scale: float, causal: bool, cfg: Config,
    ) -> torch.Tensor:
        """Run the tiled forward and save what the backward needs."""
        out, lse = _forward(q, k, v, scale, causal, cfg)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.params = (scale, causal, cfg)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """dq, dk, dv by tile-wise recomputation; no gradient for scale, causal, cfg."""
        dq, dk, dv = _backward(dout, ctx.saved_tensors, *ctx.params)
        return dq, dk, dv, None, None, None


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """Exact softmax(Q K^T * scale) V in O(N) memory; (B, H, Nq, D) in the input dtype."""
    scale = default_scale(q.shape[-1], scale)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _MemoryEfficientAttention.apply(q, k, v, scale, causal, cfg)
    return _forward(q, k, v, scale, causal, cfg)[0]

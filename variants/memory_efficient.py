"""Memory-efficient exact attention in pure PyTorch: tiled online softmax, O(N) memory.

Forward (Rabe & Staats 2021; FlashAttention): queries and keys are cut into tiles of
``block_q`` x ``block_k``; for each query tile a running row max ``m``, running sum ``l`` and
output accumulator are updated key tile by key tile, so no (Nq, Nk) matrix ever exists. Each
row's log-sum-exp ``lse = m + log(l)`` is kept for the backward. Scores are kept in base 2
(log2(e) folded into q's scale), so every exponential is an exp2, several times cheaper on CPU.
The first key tile's row max is the reference m of every later tile: q and k carry an extra
column (-m, 1), so the GEMM returns S - m and a later tile costs one exp2 and one sum pass; a
tile whose row sum would near overflow is recomputed with its own max (the usual rescaling).

Backward (FlashAttention-2): a custom ``torch.autograd.Function`` saves only q, k, v, out and
lse, and recomputes every score tile: D_i = rowsum(dO * O); P = exp(S * scale - LSE);
dV += P^T dO; dP = dO V^T; dS = P * (dP - D); dQ += dS K * scale; dK += dS^T Q * scale.
The same extra column ([q, -LSE] [k, 1]^T, [dO, -D] [v, 1]^T) makes the GEMMs subtract LSE and
D; dK and dV accumulate transposed (dK^T += Q^T dS), the faster GEMM layout.
Heads are processed a few at a time, as many as keep one score tile within TILE_BYTES (two
at the default tiles, one per thread of a 2-core CPU), so a tile stays in cache.
Forward and forward+backward memory are O(N) for fixed tiles (one or two score tiles alive).

Causal is top-left aligned (query i sees keys j <= i, any Nq and Nk). Tiles entirely above the
diagonal are skipped, never computed; only tiles crossing it get an element mask. Key tiles run
in ascending order, so the first one holds key 0, which every query sees: no row is empty.
The scale is folded into q once. bf16/fp16 run in float32 (GEMMs, max, sum and accumulators)
and the output and gradients are cast back to the input dtype; fp64 runs in fp64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from variants import memory_models
from variants.contract import SoftmaxAttention, Supports, always_available, default_scale
from variants.decoding import KVCache, prefill_kv, step_keep
from variants.grouping import fold, group_size, per_group, repeat_rows, unfold

LOG2E = 1.4426950408889634  # 1 / ln 2: scores in base 2 turn every exp into a cheaper exp2
SUM_LIMIT = 2.0**64  # a later tile's row sum above this is redone with its own max
LN2 = 0.6931471805599453  # undoes LOG2E where a gradient multiplies the base-2 q
TILE_BYTES = 4 << 20  # heads share one score tile up to this size; at least one head
NAME = "memory_efficient"

Span = tuple[int, int]  # [start, stop) of a tile along one sequence axis


@dataclass(frozen=True)
class Config:
    """block_q, block_k: tile lengths; a score tile is (G, block_q, block_k) floats for the G
    heads that fit TILE_BYTES (G=2 at the defaults: 4 MiB of fp32 scores).

    Defaults measured on a 2-core CPU (fp32, B=1, H=8, D=64, N=4096, CPU time of one thread
    beside SDPA in the same run, the machine shared): 512x1024 gave forward ~1.05x and
    forward+backward ~1.01x of SDPA; 1024x1024, 512x2048 and 256x1024 were no faster, and
    sharing the tile among all 8 heads cost 5-10%. Large per-head tiles amortise the Python loop
    over big GEMMs; memory stays O(N) since the tile is a constant. At 2 threads two heads a
    tile (one per thread) measured ~1.04x forward, ~1.17x forward+backward (one: 1.12x, 1.36x).
    """

    block_q: int = 512
    block_k: int = 1024

    def __post_init__(self) -> None:
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


PRESETS: dict[str, Config] = {"small_tiles": Config(block_q=128, block_k=128)}
SUPPORTS = Supports(compile=True, gqa=True, value_dim=True)  # every device, dtype, mode


def computes(cfg: Config) -> SoftmaxAttention:
    """Exact softmax attention."""
    return SoftmaxAttention()


unavailable_reason = always_available  # runs wherever SUPPORTS says


def expected_peak_bytes(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
    hkv: int = 0, dv: int = 0,
) -> int:
    """O(N) rows plus one score tile forward, two backward (variants/memory_models.py)."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=True, hkv=hkv, dv=dv)
    tq, tk = min(cfg.block_q, nq), min(cfg.block_k, nk)
    tiles = 2 if backward else 1
    unshared = tiles * (b * h - _heads_per_tile(b * h, tq, tk, dtype)) * tq * tk * m.c
    upcast = m.c > m.e  # low precision is copied to float32 anyway
    if backward:  # fp32 copies k, v to append a column; no delta temporary outlives delta
        extra = -m.o_rows * m.c if upcast else m.kv_rows * m.c
    else:  # fp32 copies k to append a column
        extra = 0 if upcast else m.k_rows * m.c
    tiled = memory_models.tiled(m, tile_q=cfg.block_q, tile_k=cfg.block_k, backward=backward)
    return tiled - unshared + extra


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _spans(n: int, block: int) -> list[Span]:
    """Consecutive tiles [start, stop) covering 0..n; the last one may be partial."""
    return [(start, min(start + block, n)) for start in range(0, n, block)]


def _heads_per_tile(bh: int, rows: int, cols: int, dtype: torch.dtype) -> int:
    """Heads computed together: as many as keep one score tile within TILE_BYTES, at least 1."""
    per_head = rows * cols * _compute_dtype(dtype).itemsize
    return max(1, min(bh, TILE_BYTES // per_head))


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


def _append(x: torch.Tensor, column: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
    """(BH, N, D) -> (BH, N, D+1) in ``dtype``: x, then ``column`` as the last column."""
    out = x.new_empty(*x.shape[:-1], x.shape[-1] + 1, dtype=dtype)  # (BH, N, D+1)
    out[..., :-1].copy_(x)
    out[..., -1:] = column
    return out


def _first_tile(
    s: torch.Tensor, v_tile: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row max, row sum and P V of the first key tile: the reference every later tile uses."""
    row_max = s.amax(dim=-1, keepdim=True)  # (BH, bq, 1)
    p = s.sub_(row_max).exp2_()  # (BH, bq, bk), in place in buf
    return row_max, p.sum(dim=-1, keepdim=True), torch.bmm(p, v_tile)  # (BH, bq, 1|1|D)


def _shifted(
    qs: torch.Tensor, k3: torch.Tensor, rows: Span, cols: Span, causal: bool,
    buf: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """2^(S - m') of a key tile for m' = max(m, its own row max); the running (row max, row
    sum, acc) and q's extra column are moved to m' in place (classic online softmax)."""
    row_max, row_sum, acc = state
    s = _scores(qs, k3, rows, cols, causal, buf)  # (BH, bq, bk): S - m
    shift = s.amax(dim=-1, keepdim=True).clamp_(min=0.0)  # (BH, bq, 1)
    alpha = shift.neg().exp2()  # (BH, bq, 1): rescales the old sums
    row_sum.mul_(alpha)
    acc.mul_(alpha)
    row_max.add_(shift)
    qs[:, rows[0]:rows[1], -1:] = -row_max
    return s.sub_(shift).exp2_()  # (BH, bq, bk)


def _forward_rows(
    qs: torch.Tensor, k3: torch.Tensor, v3: torch.Tensor, rows: Span, causal: bool,
    block_k: int, buf: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Online softmax of one query tile over its visible key tiles: (out, lse) rows.

    qs and k3 carry an extra column, (-m, 1), so later GEMMs return S - m for the first tile's
    row max m: no max or subtraction pass. A tile whose sum nears overflow is redone with its
    own max, rescaling what came before; under torch.compile every later tile is (a graph
    cannot branch on a tensor's value)."""
    i0, i1 = rows
    spans = [cols for cols in _spans(k3.shape[1], block_k) if _visible(rows, cols, causal)]
    qs[:, i0:i1, -1] = 0.0  # the first tile: plain scores
    s = _scores(qs, k3, rows, spans[0], causal, buf)  # (BH, bq, bk)
    row_max, row_sum, acc = _first_tile(s, v3[:, spans[0][0] : spans[0][1]])
    qs[:, i0:i1, -1:] = -row_max  # later GEMMs give S - m
    for cols in spans[1:]:
        v_tile = v3[:, cols[0] : cols[1]]  # (BH, bk, D)
        # a graph takes no data-dependent branch: compiled, every later tile shifts
        compiling = torch.compiler.is_compiling()
        p = None if compiling else _scores(qs, k3, rows, cols, causal, buf).exp2_()  # 2^(S-m)
        tile_sum = None if p is None else p.sum(dim=-1, keepdim=True)  # (BH, bq, 1)
        if tile_sum is None or not bool(tile_sum.max() < SUM_LIMIT):  # near overflow (or inf)
            p = _shifted(qs, k3, rows, cols, causal, buf, (row_max, row_sum, acc))
            tile_sum = p.sum(dim=-1, keepdim=True)  # (BH, bq, 1)
        row_sum.add_(tile_sum)
        acc.baddbmm_(p, v_tile)  # (BH, bq, D)
    return acc.div_(row_sum), row_max.add_(row_sum.log2_())  # (BH, bq, D), (BH, bq, 1)


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled forward: out (B, H, Nq, D) in q's dtype and lse (B*H, Nq, 1) in compute dtype."""
    b, h, nq, d = q.shape
    nk, ct = k.shape[-2], _compute_dtype(q.dtype)
    qs = _append(q.reshape(b * h, nq, d), 0.0, ct)  # (BH, Nq, D+1)
    qs[..., :-1].mul_(scale * LOG2E)  # base-2 scores, the scale folded in once
    k3 = _append(k.reshape(b * h, nk, d), 1.0, ct)  # (BH, Nk, D+1)
    v3 = v.reshape(b * h, nk, v.shape[-1]).to(ct)  # (BH, Nk, D)
    out = torch.empty(b * h, nq, v.shape[-1], dtype=q.dtype, device=q.device)  # (BH, Nq, D)
    lse = torch.empty(b * h, nq, 1, dtype=ct, device=q.device)  # (BH, Nq, 1)
    tq, tk = min(cfg.block_q, nq), min(cfg.block_k, nk)
    group = _heads_per_tile(b * h, tq, tk, ct)
    buf = qs.new_empty(group * tq * tk)  # one score tile
    for h0, h1 in _spans(b * h, group):
        for i0, i1 in _spans(nq, cfg.block_q):
            out[h0:h1, i0:i1], lse[h0:h1, i0:i1] = _forward_rows(
                qs[h0:h1], k3[h0:h1], v3[h0:h1], (i0, i1), causal, cfg.block_k, buf
            )
    return out.view(b, h, nq, v.shape[-1]), lse


def _backward_cols(
    t: dict[str, torch.Tensor], cols: Span, causal: bool, cfg: Config,
    bufs: tuple[torch.Tensor, torch.Tensor], scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One key tile's dK^T, dV^T over its visible query tiles; adds into t["dq"] in place."""
    j0, j1 = cols
    k_tile, v_tile = t["k"][:, j0:j1], t["v"][:, j0:j1]  # (BH, bk, D+1): last column ones
    # Transposed accumulators: dK^T += Q^T dS runs as a plain GEMM, dS^T Q does not.
    dkt = k_tile.new_zeros(k_tile.shape[0], k_tile.shape[2] - 1, j1 - j0)  # (BH, D, bk)
    dvt = v_tile.new_zeros(v_tile.shape[0], v_tile.shape[2] - 1, j1 - j0)  # (BH, D, bk)
    for rows in _spans(t["qs"].shape[1], cfg.block_q):
        if not _visible(rows, cols, causal):
            continue  # query tile entirely before this key tile's first key
        i0, i1 = rows
        p = _scores(t["qs"], t["k"], rows, cols, causal, bufs[0]).exp2_()  # (BH, bq, bk): P
        do = t["do"][:, i0:i1]  # (BH, bq, D+1): last column -D
        dvt.baddbmm_(do[..., :-1].transpose(1, 2), p)  # (BH, D, bk)
        dp = bufs[1][: p.numel()].view(p.shape)  # (BH, bq, bk)
        torch.bmm(do, v_tile.transpose(1, 2), out=dp)  # (BH, bq, bk): dP - D
        ds = p.mul_(dp)  # (BH, bq, bk): dS = P * (dP - D)
        t["dq"][:, i0:i1].baddbmm_(ds, k_tile[..., :-1], alpha=scale)  # (BH, bq, D)
        dkt.baddbmm_(t["qs"][:, i0:i1, :-1].transpose(1, 2), ds, alpha=LN2)  # (BH, D, bk)
    return dkt.transpose(1, 2), dvt.transpose(1, 2)  # (BH, bk, D) views


def _backward(
    dout: torch.Tensor, saved: tuple[torch.Tensor, ...], scale: float, causal: bool, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward from saved (q, k, v, out, lse): dq, dk, dv in input dtypes."""
    q, k, v, out, lse = saved
    b, h, nq, d = q.shape
    nk, ct = k.shape[-2], _compute_dtype(q.dtype)
    do = dout.reshape(b * h, nq, -1)  # (BH, Nq, D)
    delta = (do.to(ct) * out.reshape(b * h, nq, -1)).sum(-1, keepdim=True)  # (BH, Nq, 1)
    # An extra column makes the GEMMs subtract lse and D: [q, -lse] [k, 1]^T = S - lse.
    t = {
        "qs": _append(q.reshape(b * h, nq, d), lse.neg(), ct),  # (BH, Nq, D+1)
        "k": _append(k.reshape(b * h, nk, d), 1.0, ct),  # (BH, Nk, D+1)
        "v": _append(v.reshape(b * h, nk, -1), 1.0, ct),  # (BH, Nk, D+1)
        "do": _append(do, delta.neg_(), ct),  # (BH, Nq, D+1)
        "dq": torch.zeros(b * h, nq, d, dtype=ct, device=q.device),  # (BH, Nq, D)
    }
    t["qs"][..., :-1].mul_(scale * LOG2E)  # base-2 scores, as in the forward
    tq, tk = min(cfg.block_q, nq), min(cfg.block_k, nk)
    group = _heads_per_tile(b * h, tq, tk, ct)
    bufs = (do.new_empty(group * tq * tk, dtype=ct), do.new_empty(group * tq * tk, dtype=ct))
    dk = torch.empty(b * h, nk, d, dtype=k.dtype, device=k.device)  # (BH, Nk, D)
    dv = torch.empty(b * h, nk, v.shape[-1], dtype=v.dtype, device=v.device)  # (BH, Nk, D)
    for h0, h1 in _spans(b * h, group):
        heads = {name: x[h0:h1] for name, x in t.items()}  # views: dq updates land in t["dq"]
        for j0, j1 in _spans(nk, cfg.block_k):
            dk[h0:h1, j0:j1], dv[h0:h1, j0:j1] = _backward_cols(
                heads, (j0, j1), causal, cfg, bufs, scale
            )
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
    """Exact softmax(Q K^T * scale) V in O(N) memory; (B, H, Nq, D) in the input dtype.
    Grouped queries (k, v of Hkv < H heads) fold onto their kv head when rows are independent
    (not causal); causal tiles skip by row position, so they run one group member at a time."""
    scale = default_scale(q.shape[-1], scale)
    g = group_size(q, k)
    if g > 1 and causal:
        return per_group(lambda qg, kg, vg: attention(qg, kg, vg, causal=True, scale=scale,
                                                      cfg=cfg), q, k, v)
    if g > 1:  # rows are independent: each kv head's G query heads as one (B, Hkv, G Nq, D)
        return unfold(attention(fold(q, k.shape[1]), k, v, scale=scale, cfg=cfg), q.shape[1])
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _MemoryEfficientAttention.apply(q, k, v, scale, causal, cfg)
    return _forward(q, k, v, scale, causal, cfg)[0]


prefill = prefill_kv  # the decode cache: every key and value, preallocated


def decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, *,
    scale: float | None = None, cfg: Config = Config(),
) -> tuple[torch.Tensor, KVCache]:
    """t new queries against the cache, tiled over the cached keys (split-K, merged by the
    online softmax): one score tile of TILE_BYTES (B H t rows x at least block_k keys: few
    rows make long tiles, so the loop is short) at a time, O(t) rows besides."""
    cache = cache.append(k, v)
    g, heads = group_size(q, k), q.shape[1]
    keep = repeat_rows(step_keep(q.shape[-2], cache.length, q.device), g)  # (G t, L + t)
    ct = _compute_dtype(q.dtype)
    q = fold(q, k.shape[1])  # (B, Hkv, G t, D): grouped queries share their kv head's tiles
    qs = q.to(ct) * (default_scale(q.shape[-1], scale) * LOG2E)  # (B, Hkv, G t, D), base 2
    keys, values = cache.keys(), cache.values()  # (B, H, L + t, D) views
    row_max = torch.full((*q.shape[:-1], 1), float("-inf"), dtype=ct, device=q.device)
    row_sum = torch.zeros_like(row_max)  # (B, H, t, 1)
    acc = q.new_zeros(*q.shape[:-1], values.shape[-1], dtype=ct)  # (B, H, t, Dv)
    rows = qs.numel() // qs.shape[-1]  # B Hkv G t query rows meet each key tile
    block = max(cfg.block_k, TILE_BYTES // (rows * qs.element_size()))  # one TILE_BYTES tile
    for j0, j1 in _spans(cache.length, block):
        s = qs @ keys[:, :, j0:j1].to(ct).transpose(-2, -1)  # (B, H, t, bk)
        if keep is not None:
            s.masked_fill_(~keep[:, j0:j1], float("-inf"))
        new_max = torch.maximum(row_max, s.amax(dim=-1, keepdim=True))  # (B, H, t, 1)
        alpha = (row_max - new_max).exp2_()  # (B, H, t, 1): 0 on the first tile
        p = s.sub_(new_max).exp2_()  # (B, H, t, bk)
        row_sum = row_sum.mul_(alpha).add_(p.sum(dim=-1, keepdim=True))
        acc = acc.mul_(alpha).add_(p @ values[:, :, j0:j1].to(ct))  # (B, H, t, Dv)
        row_max = new_max
    return unfold(acc.div_(row_sum).to(q.dtype), heads), cache  # (B, H, t, Dv)

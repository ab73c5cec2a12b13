"""Sparse softmax attention, computed block-wise: a sliding window, or BigBird-style blocks.

Causal masking is top-left aligned (query i sees keys j <= i) for any Nq, Nk. Softmax runs
over exactly the kept entries; a row that keeps none yields zeros and zero gradients.

Patterns (what ``computes(cfg).keep`` returns as a dense (Nq, Nk) mask, for the oracle only):

``window``, width w = ``Config.window``: non-causal, query i keeps key j iff |i - j| <= w;
causal, iff i - w <= j <= i. The diagonal counts, so interior rows keep 2w + 1 (causal: w + 1)
keys; rows i >= Nk + w keep none.

``bigbird``, blocks of b = ``Config.block`` rows (the last query or key block may be partial):
query block I keeps key blocks {I - 1, I, I + 1} (local); the first g = ``num_global_blocks``
key blocks; every key block if I < g (global query rows); and r = ``num_random_blocks`` more,
drawn without replacement from the blocks not yet kept (fewer if fewer remain) with a CPU
``torch.Generator`` seeded by ``Config.seed``: the draw depends only on the seed and the numbers
of query and key blocks. A block kept for two reasons counts once. If causal, the element-wise
mask j <= i applies on top.

Computation: ``attention`` never builds anything Nq x Nk; work and memory follow the kept
entries. Window: query tiles of t = ``Config.block`` rows, all (b, h, tile) in one batch; tile I
reads keys j in [I t - w, I t + t - 1 + w] (causal: to I t + t - 1) through an ``unfold`` view of
a flat, padded key buffer, so scores are (tiles, t, t + 2w) and a constant (t, span) band bias
masks by position. BigBird: global query rows as one dense (g b, Nk) block per (b, h); every
other block row gathers its kept key blocks, padded to kmax <= 3 + g + r with an empty sentinel
block: scores (block rows, b, kmax b). Forward-only calls run over groups of (b, h) pairs and
chunks of about CHUNK_ELEMENTS scores, copied into the output as they come; under autograd,
which saves every part anyway, one pass.
Padding keys carry an extra feature (PAD_LOGIT / scale) that queries meet with a 1, so they
score about PAD_LOGIT = -1e30 (finite) without any per-tile mask, for any nonzero scale.
Softmax is ``torch.softmax`` (max-subtracted); no row is ever all -inf, so nothing turns NaN,
and rows that keep no key are set to zero afterwards.
bf16/fp16 inputs are computed in float32 and the output cast back. The output may be a strided
view (B, H, Nq, D) of a slightly longer buffer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from variants import memory_models, patterns
from variants.contract import SparseSoftmax, Supports, always_available, default_scale

NAME = "sparse"
PATTERNS = ("window", "bigbird")
#: Score elements (B * H * tiles * rows * keys) per chunk: big GEMMs, temporaries stay in cache.
CHUNK_ELEMENTS = 1 << 22
#: The extra key feature of padding keys (queries carry 1 there): a hugely negative score.
PAD_LOGIT = -1e30
#: Elements of one (b, h) group's q, k or v: their padded copies stay small and get reused.
GROUP_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class Config:
    """pattern: window | bigbird; window: w; block: BigBird block size and window query tile;
    num_global_blocks, num_random_blocks, seed: BigBird's g, r and random seed."""

    pattern: str = "window"
    window: int = 256
    block: int = 64
    num_global_blocks: int = 1
    num_random_blocks: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {list(PATTERNS)}, got {self.pattern!r}")
        for name, low in (("window", 0), ("block", 1), ("num_global_blocks", 0),
                          ("num_random_blocks", 0), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


PRESETS: dict[str, Config] = {name: Config(pattern=name) for name in PATTERNS}
SUPPORTS = Supports(compile=True)  # every device and dtype, causal, backward, compile


# ---------------------------------------------------------------- patterns (dense, for the oracle)


def window_keep(
    nq: int, nk: int, causal: bool, device: torch.device, *, window: int
) -> torch.Tensor:
    """Dense (Nq, Nk) window mask: |i - j| <= w, or i - w <= j <= i if causal."""
    d = torch.arange(nq, device=device)[:, None] - torch.arange(nk, device=device)  # (Nq, Nk)
    return (d <= window) & (d >= (0 if causal else -window))  # (Nq, Nk)


@functools.lru_cache(maxsize=32)
def block_table(nqb: int, nkb: int, globals_: int, randoms: int, seed: int) -> torch.Tensor:
    """BigBird block-level keep table (nqb, nkb) on the CPU; shared (cached): do not modify."""
    rows = torch.arange(nqb)[:, None]  # (nqb, 1)
    cols = torch.arange(nkb)[None, :]  # (1, nkb)
    table = ((rows - cols).abs() <= 1) | (cols < globals_) | (rows < globals_)  # (nqb, nkb)
    gen = torch.Generator().manual_seed(seed)
    draw = torch.rand(nqb, nkb, generator=gen, dtype=torch.float64)  # (nqb, nkb) in [0, 1)
    draw = draw.masked_fill(table, math.inf)  # kept blocks sort last and are never drawn
    order = draw.argsort(dim=1, stable=True)[:, :randoms]  # (nqb, r); an inf pick is kept already
    return table.scatter(1, order, True)  # (nqb, nkb)


def bigbird_keep(
    nq: int, nk: int, causal: bool, device: torch.device, *, cfg: Config
) -> torch.Tensor:
    """Dense (Nq, Nk) BigBird mask: the block table expanded, causal j <= i on top."""
    b = cfg.block
    table = _table(cfg, -(-nq // b), -(-nk // b)).to(device)  # (nqb, nkb)
    keep = table.repeat_interleave(b, 0).repeat_interleave(b, 1)[:nq, :nk]  # (Nq, Nk)
    if causal:
        keep = keep & torch.ones(nq, nk, dtype=torch.bool, device=device).tril()
    return keep  # (Nq, Nk)


def window_kept(nq: int, nk: int, causal: bool, *, window: int) -> int:
    """Number of kept (i, j) pairs of the window pattern, in O(Nq) without a dense mask."""
    i = torch.arange(nq, dtype=torch.int64)  # (Nq,)
    lo = (i - window).clamp(min=0)  # (Nq,)
    hi = (i if causal else i + window).clamp(max=nk - 1)  # (Nq,)
    return int((hi - lo + 1).clamp(min=0).sum())


def bigbird_kept(nq: int, nk: int, causal: bool, *, cfg: Config) -> int:
    """Number of kept (i, j) pairs of the BigBird pattern, from its block table."""
    bs = cfg.block
    table = _table(cfg, -(-nq // bs), -(-nk // bs))  # (nqb, nkb)
    q0, k0 = torch.arange(table.shape[0]) * bs, torch.arange(table.shape[1]) * bs
    q1, k1 = (q0 + bs).clamp(max=nq), (k0 + bs).clamp(max=nk)
    sizes = (q1 - q0)[:, None] * (k1 - k0)[None, :]  # (nqb, nkb) pairs per block pair
    if not causal:
        return int((sizes * table).sum())
    below = (k1 - 1)[None, :] <= q0[:, None]  # every pair of the block pair has j <= i
    above = k0[None, :] > (q1 - 1)[:, None]  # no pair has j <= i
    total = int((sizes * (table & below)).sum())
    for qi, kj in (table & ~below & ~above).nonzero().tolist():  # diagonal-crossing pairs
        rows = torch.arange(int(q0[qi]), int(q1[qi]))[:, None]  # (b, 1)
        total += int((torch.arange(int(k0[kj]), int(k1[kj])) <= rows).sum())
    return total


def _table(cfg: Config, nqb: int, nkb: int) -> torch.Tensor:
    """The config's block table for nqb query blocks and nkb key blocks."""
    return block_table(nqb, nkb, cfg.num_global_blocks, cfg.num_random_blocks, cfg.seed)


def computes(cfg: Config) -> SparseSoftmax:
    """Softmax over the window or BigBird pattern of ``cfg``."""
    if cfg.pattern == "window":
        w = cfg.window
        text = patterns.window_description(w)
        return SparseSoftmax(keep=functools.partial(window_keep, window=w), description=text,
                             kept=functools.partial(window_kept, window=w))
    text = (f"BigBird blocks of {cfg.block}: local +-1 block, {cfg.num_global_blocks} global, "
            f"{cfg.num_random_blocks} random per block row (seed {cfg.seed})")
    return SparseSoftmax(keep=functools.partial(bigbird_keep, cfg=cfg), description=text,
                         kept=functools.partial(bigbird_kept, cfg=cfg))


def computed_scores(nq: int, nk: int, causal: bool, cfg: Config) -> int:
    """Scores the block-wise algorithm computes per (b, h): kept ones plus band padding."""
    bs = cfg.block
    if cfg.pattern == "window":
        span = bs + cfg.window + (0 if causal else cfg.window)
        return bs * -(-max(nq, nk) // bs) * span
    nqb, nkb = -(-nq // bs), -(-nk // bs)
    g = min(cfg.num_global_blocks, nqb)
    kmax = min(nkb, 3 + cfg.num_global_blocks + cfg.num_random_blocks)
    return g * bs * nk + (nqb - g) * bs * kmax * bs


def expected_peak_bytes(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
) -> int:
    """Forward: O(N) rows plus one chunk of scores (and, for BigBird, gathered key blocks);
    fwd+bwd (one pass, all saved): four score-sized tensors plus rows and their gradients."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=True)
    scores = b * h * computed_scores(nq, nk, causal, cfg)
    if backward:
        return 4 * scores * m.c + 8 * m.q_rows * m.c
    chunk = min(scores, CHUNK_ELEMENTS)
    gathered = 2 * chunk * d // cfg.block if cfg.pattern == "bigbird" else 0
    return 4 * m.q_rows * m.c + (2 * chunk + gathered) * m.c


unavailable_reason = always_available  # runs wherever SUPPORTS says


# ---------------------------------------------------------------- block-wise computation
# Keys carry one extra feature and queries a matching 1: padding keys get PAD_LOGIT there, so
# their scores are hugely negative (finite: no NaN) with no per-tile mask. Real keys get 0.


def _attend(
    q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor, scale: float,
    bias: torch.Tensor | None = None, drop: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q kt * scale + bias, masked where drop) v over a batch of (rows, keys) blocks."""
    if bias is None:
        scores = torch.baddbmm(kt.new_zeros(()), q, kt, beta=0, alpha=scale)  # (n, T, S)
    else:
        scores = torch.baddbmm(bias, q, kt, alpha=scale)  # (n, T, S); bias (T, S) broadcast
    if drop is not None:  # drop (m, T, S), shared by the leading n / m batch entries
        scores.unflatten(0, (-1, drop.shape[0])).masked_fill_(drop, torch.finfo(q.dtype).min)
    return torch.softmax(scores, dim=-1) @ v  # (n, T, D); max-subtracted inside softmax


def _tracked(*xs: torch.Tensor) -> bool:
    """Whether autograd records ops on xs (then chunking saves nothing: all parts are saved)."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


def _assemble(
    run: Callable[[int, int], torch.Tensor], n: int, per_item: int, dim: int, *,
    whole: bool, budget: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """run(s, e) over range(n) in chunks of about budget / per_item items, joined along dim.

    Parts are copied into one buffer as they come: no list grows and the heap is reused. With
    ``whole`` (autograd) one part covers everything: slicing autograd views per chunk would cost
    a full-size zero gradient per chunk in backward, and all parts are saved anyway."""
    step = max(1, n) if whole else max(1, budget // max(1, per_item))
    spans = [(s, min(n, s + step)) for s in range(0, n, step)]
    if len(spans) == 1:
        return run(0, n)
    out = None
    for s, e in spans:
        part = run(s, e)
        if out is None:
            out = part.new_empty((*part.shape[:dim], spans[-1][1], *part.shape[dim + 1:]))
        out.narrow(dim, s, e - s).copy_(part)
    return out


def pad_feature(scale: float, dtype: torch.dtype) -> float:
    """The padding keys' extra feature: times ``scale`` it scores about PAD_LOGIT.

    Dividing by the scale keeps padding masked for negative and tiny scales too (clamped to
    stay finite in ``dtype``); a zero scale cannot be told apart, so it is refused.
    """
    if scale == 0:
        raise ValueError("sparse attention needs a nonzero scale (got 0)")
    limit = torch.finfo(dtype).max / 16
    return max(-limit, min(limit, PAD_LOGIT / scale))


def _flat_keys(
    x: torch.Tensor, lead: int, count: int, rows: int, tail: int, aug: float | None
) -> torch.Tensor:
    """(B, H, N, D) -> flat (B H rows + tail, D [+ 1]): key j < count at row bh rows + lead + j.

    With ``aug`` (keys only) an extra feature holds ``aug`` at padding rows, 0 at real keys.
    """
    b, h, _, d = x.shape
    width = d + int(aug is not None)
    buf = x.new_zeros(b * h * rows + tail, width)  # (B H rows + tail, D [+ 1])
    body = buf[: b * h * rows].view(b, h, rows, width)  # (B, H, rows, D [+ 1])
    body[:, :, lead:lead + count, :d] = x[:, :, :count]
    if aug is not None:
        buf[:, d] = aug  # (B H rows + tail,): padding everywhere ...
        body[:, :, lead:lead + count, d] = 0.0  # ... except at real keys
    return buf


def _window(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, cfg: Config
) -> torch.Tensor:
    """Sliding window: all B H (rows / t) query tiles as one batch against strided key spans."""
    (b, h, nq, d), nk, w, t = q.shape, k.shape[-2], cfg.window, cfg.block
    right = 0 if causal else w  # query i sees keys up to i + right
    span = t + w + right
    reach = min(nk, nq + right)  # keys beyond reach are seen by no query: left out
    live = min(nq, nk + w)  # rows live.. see no key
    # Per (b, h) `rows` rows: w padding, the keys, padding. A live row's band then ends in its
    # own rows or in the next (b, h)'s leading padding (the last one gets a padding tail).
    rows = t * -(-max(nq, reach + w, live + right) // t)
    qt = F.pad(q, (0, 1, 0, rows - nq), value=1.0).view(-1, t, d + 1)  # (n, t, D + 1)
    pad = pad_feature(scale, k.dtype)
    kt = _flat_keys(k, w, reach, rows, span - t, pad).unfold(0, span, t)  # (n, D + 1, span)
    vs = _flat_keys(v, w, reach, rows, span - t, None).unfold(0, span, t).transpose(1, 2)
    # vs (n, span, D); tile I of a (b, h) covers keys j = I t - w + c, c < span
    c = torch.arange(span, device=q.device)  # (span,)
    r = torch.arange(t, device=q.device)[:, None]  # (t, 1)
    band = torch.zeros(t, span, dtype=q.dtype, device=q.device)  # (t, span)
    band.masked_fill_((c < r) | (c > r + w + right), -math.inf)  # keep i - w <= j <= i + right
    def chunk(s: int, e: int) -> torch.Tensor:
        return _attend(qt[s:e], kt[s:e], vs[s:e], scale, bias=band)  # (m, t, D)

    out = _assemble(chunk, qt.shape[0], t * span, 0, whole=_tracked(q, k, v))  # (n, t, D)
    out = out.view(b, h, rows, d)[:, :, :nq]  # (B, H, Nq, D)
    if nq > live:  # rows i >= Nk + w see no key: zeros
        out = F.pad(out[:, :, :live], (0, 0, 0, nq - live))  # (B, H, Nq, D)
    return out


def _key_lists(table: torch.Tensor, nkb: int) -> torch.Tensor:
    """Per block row, its kept key blocks ascending, padded with the sentinel nkb: (n, kmax)."""
    cols = torch.arange(nkb).expand_as(table)  # (n, nkb)
    ids = torch.where(table, cols, nkb).sort(dim=1).values  # (n, nkb): kept first
    return ids[:, : max(1, int(table.sum(dim=1).max()))]  # (n, kmax)


def _global_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> torch.Tensor:
    """Global query rows see every key (causal: j <= i): one dense (G, Nk) block per (b, h)."""
    b, h, g, d = q.shape
    drop = torch.ones(1, g, k.shape[-2], dtype=torch.bool, device=q.device).triu(1)  # (1, G, Nk)
    kt = k.flatten(0, 1).transpose(1, 2)  # (B H, D, Nk)
    out = _attend(q.flatten(0, 1), kt, v.flatten(0, 1), scale, drop=drop if causal else None)
    return out.view(b, h, g, d)  # (B, H, G, D)


def _block_rows(
    qb: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor, ids: torch.Tensor, first: int,
    causal: bool, scale: float,
) -> torch.Tensor:
    """Block rows first.. (qb (BH, m, b, D+1)) against their gathered key blocks: (BH, m, b, D)."""
    bh, m, bs, _ = qb.shape
    pos = torch.arange(bs, device=qb.device)  # (b,)
    kc = kb[:, ids].flatten(0, 1).flatten(1, 2)  # (BH m, K, D + 1), K = kmax b
    vc = vb[:, ids].flatten(0, 1).flatten(1, 2)  # (BH m, K, D)
    drop = None
    if causal:
        j = (ids[:, :, None] * bs + pos).flatten(1)  # (m, K): key positions
        i = (first + torch.arange(m, device=qb.device))[:, None] * bs + pos  # (m, b)
        drop = j[:, None, :] > i[:, :, None]  # (m, b, K)
    out = _attend(qb.flatten(0, 1), kc.transpose(1, 2), vc, scale, drop=drop)  # (BH m, b, D)
    return out.view(bh, m, bs, -1)  # (BH, m, b, D)


def _bigbird(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, cfg: Config
) -> torch.Tensor:
    """BigBird: dense global query rows, then each block row against its kept key blocks."""
    (b, h, nq, d), nk, bs = q.shape, k.shape[-2], cfg.block
    nqb, nkb = -(-nq // bs), -(-nk // bs)
    g = min(cfg.num_global_blocks, nqb)
    out_g = _global_rows(q[:, :, : g * bs], k, v, causal, scale)  # (B, H, G, D)
    if g == nqb:
        return out_g
    ids = _key_lists(_table(cfg, nqb, nkb)[g:], nkb)  # (n, kmax) on the CPU, sentinel nkb
    row_ok = ids[:, 0] < nkb  # (n,): False where a block row keeps no key block at all
    ids = ids.to(q.device)
    pad = pad_feature(scale, k.dtype)
    kb = _flat_keys(k, 0, nk, (nkb + 1) * bs, 0, pad).view(b * h, nkb + 1, bs, d + 1)
    vb = _flat_keys(v, 0, nk, (nkb + 1) * bs, 0, None).view(b * h, nkb + 1, bs, d)
    qb = F.pad(q[:, :, g * bs:], (0, 1, 0, nqb * bs - nq), value=1.0)  # (B, H, n b, D + 1)
    qb = qb.view(b * h, nqb - g, bs, d + 1)  # (BH, n, b, D + 1)
    def chunk(s: int, e: int) -> torch.Tensor:
        return _block_rows(qb[:, s:e], kb, vb, ids[s:e], g + s, causal, scale)  # (BH, m, b, D)

    per_row = b * h * bs * ids.shape[1] * bs  # scores per block row
    out_b = _assemble(chunk, nqb - g, per_row, 1, whole=_tracked(q, k, v))  # (BH, n, b, D)
    if not row_ok.all():
        out_b = out_b * row_ok.to(q.device)[:, None, None]  # empty block rows: zeros
    return torch.cat([out_g, out_b.view(b, h, -1, d)], dim=2)  # (B, H, nqb b, D)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """Sparse softmax attention: q (B, H, Nq, D), k/v (B, H, Nk, D) -> (B, H, Nq, D)."""
    (b, h, nq, d), nk = q.shape, k.shape[-2]
    work = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
    qw, kw, vw = (x.to(work).flatten(0, 1)[None] for x in (q, k, v))  # (1, B H, N, D)
    run = _window if cfg.pattern == "window" else _bigbird
    sc = default_scale(d, scale)
    def group(s: int, e: int) -> torch.Tensor:
        return run(qw[:, s:e], kw[:, s:e], vw[:, s:e], causal, sc, cfg)[:, :, :nq]  # (1, S, Nq, D)

    out = _assemble(group, b * h, max(nq, nk) * d, 1, whole=_tracked(q, k, v),
                    budget=GROUP_ELEMENTS)  # (1, B H, Nq, D)
    return out.reshape(b, h, nq, d).to(q.dtype)  # (B, H, Nq, D)

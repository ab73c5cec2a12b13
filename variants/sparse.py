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

Computation: ``attention`` never builds anything Nq x Nk, in either direction; work and memory
follow the kept entries. A custom ``torch.autograd.Function`` runs over groups of about
GROUP_ELEMENTS (b, h) pairs and, inside a group, chunks of about CHUNK_ELEMENTS scores
(BACKWARD_CHUNK_ELEMENTS under autograd), in ``variants/sparse_kernels.py``. Its forward writes
the output and each row's logsumexp and saves only q, k, v, the output and the logsumexps; its
backward recomputes each chunk's scores (FlashAttention-2 style: P = exp(S - lse),
dS = P (dP - rowsum(dO O)) scale), so fwd+bwd holds O(N) rows plus one chunk.
Window: query tiles of t = ``Config.block`` rows; tile I reads keys j in [I t - w,
I t + t - 1 + w] (causal: to I t + t - 1) through an ``unfold`` view of a flat, padded key
buffer, so scores are (tiles, t, t + 2w) and a constant (t, span) band bias masks by position;
key gradients are added back onto a flat buffer of the same layout (the adjoint of
the unfold). BigBird: global query rows as one dense (g b, Nk) block per (b, h); every other
block row gathers its kept key blocks, padded to kmax <= 3 + g + r with an empty sentinel block:
scores (block rows, b, kmax b); key gradients go back with ``index_add_`` over the block lists.
Padding keys carry an extra feature (PAD_LOGIT / scale) that queries meet with a 1, so they
score about PAD_LOGIT = -1e30 (finite) without any per-tile mask, for any nonzero scale.
Softmax is max-subtracted; no row is ever all -inf, so nothing turns NaN. A row that keeps no
key sees only zero padding values (window: or is zeroed), so its output is zero, and dP and
rowsum(dO O) vanish there (window: its dO is dropped): it adds no gradient anywhere.
bf16/fp16 inputs are computed in float32 and the output cast back. The output may be a strided
view (B, H, Nq, D) of a buffer padded to whole tiles, and so may the gradients.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

from variants import memory_models, patterns
from variants import sparse_kernels as kernels
from variants.contract import SparseSoftmax, Supports, always_available, default_scale
from variants.decoding import KVCache, WindowCache, block_step_keys
from variants.grouping import fold, group_size, per_group, repeat_rows, unfold
from variants.naive import masked_softmax_attention

NAME = "sparse"
PATTERNS = ("window", "bigbird")
#: Score elements (pairs * tiles * rows * keys) per chunk: GEMMs big enough, temporaries in cache.
CHUNK_ELEMENTS = 1 << 19
#: The same under autograd (forward and backward): fewer, bigger GEMMs; fwd+bwd holds more rows.
BACKWARD_CHUNK_ELEMENTS = 1 << 21
#: The extra key feature of padding keys (queries carry 1 there): a hugely negative score.
PAD_LOGIT = -1e30
#: Elements of one group's q, k or v (at least one (b, h) pair): padded copies stay small.
GROUP_ELEMENTS = 1 << 18


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
SUPPORTS = Supports(compile=True, gqa=True)  # every device, dtype and mode


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
    hkv: int = 0, dv: int = 0,
) -> int:
    """Rows padded to whole tiles (output and logsumexp; in backward dq, dk, dv too), one
    group's padded q, k, v (and dO), one chunk's scores twice (backward: and their band
    gradients), or BigBird's dense global rows of one group if larger; low precision adds
    float32 copies of q, k, v (backward: of dO too) and the casts back."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=True, hkv=hkv, dv=dv)
    bs, bh, low = cfg.block, b * h, m.c > m.e
    if cfg.pattern == "window":
        q_len = k_len = kernels.window_plan(nq, nk, cfg.window, bs, causal).rows
    else:
        q_len, k_len = bs * -(-nq // bs), bs * (-(-nk // bs) + 1)
    pairs = min(bh, max(1, GROUP_ELEMENTS // max(1, max(nq, nk) * d)))
    group = pairs * (q_len + 2 * k_len) * (d + 1)  # padded q, k, v of one group
    budget = BACKWARD_CHUNK_ELEMENTS if backward else CHUNK_ELEMENTS
    chunk = min(pairs * computed_scores(nq, nk, causal, cfg), budget)  # within a group
    dense = 0
    if cfg.pattern == "bigbird":  # global rows: (G, Nk) scores per pair, as many as fit
        dense = min(cfg.num_global_blocks * bs, nq) * nk
        dense *= min(pairs, max(1, budget // max(1, dense)))
    rows = bh * q_len * (d + 1) * m.c + ((m.q_rows + m.kv_rows) * m.c if low else 0)
    if not backward:
        return rows + (m.q_rows * m.e if low else 0) + (group + 2 * max(chunk, dense)) * m.c
    grads = bh * (q_len + 2 * k_len) * d * m.c  # dq, dk, dv buffers
    casts = (m.q_rows + m.kv_rows) * m.e + m.q_rows * m.c if low else 0
    work = max(2 * chunk + chunk * d // bs, 3 * dense)  # scores, dS and a band gradient
    return rows + grads + casts + (group + pairs * q_len * d + work) * m.c


unavailable_reason = always_available  # runs wherever SUPPORTS says


# ---------------------------------------------------------------- block-wise computation
# Keys carry one extra feature and queries a matching 1: padding keys get PAD_LOGIT there, so
# their scores are hugely negative (finite: no NaN) with no per-tile mask. Real keys get 0.


def pad_feature(scale: float, dtype: torch.dtype) -> float:
    """The padding keys' extra feature: times ``scale`` it scores about PAD_LOGIT.

    Dividing by the scale keeps padding masked for negative and tiny scales too (clamped to
    stay finite in ``dtype``); a zero scale cannot be told apart, so it is refused.
    """
    if scale == 0:
        raise ValueError("sparse attention needs a nonzero scale (got 0)")
    limit = torch.finfo(dtype).max / 16
    return max(-limit, min(limit, PAD_LOGIT / scale))


def _key_lists(table: torch.Tensor, nkb: int) -> torch.Tensor:
    """Per block row, its kept key blocks ascending, padded with the sentinel nkb: (n, kmax)."""
    cols = torch.arange(nkb).expand_as(table)  # (n, nkb)
    ids = torch.where(table, cols, nkb).sort(dim=1).values  # (n, nkb): kept first
    return ids[:, : max(1, int(table.sum(dim=1).max()))]  # (n, kmax)


def _plan(
    nq: int, nk: int, causal: bool, cfg: Config, device: torch.device
) -> kernels.WindowPlan | kernels.BlockPlan:
    """The kernels' plan: window geometry, or BigBird's global blocks and key block lists."""
    if cfg.pattern == "window":
        return kernels.window_plan(nq, nk, cfg.window, cfg.block, causal)
    bs = cfg.block
    nqb, nkb = -(-nq // bs), -(-nk // bs)
    g = min(cfg.num_global_blocks, nqb)
    ids = (_key_lists(_table(cfg, nqb, nkb)[g:], nkb) if g < nqb
           else torch.full((0, 1), nkb))  # (nqb - g, kmax) on the CPU, sentinel nkb
    return kernels.BlockPlan(nq, nk, bs, g, ids.to(device), causal)


class _Attention(torch.autograd.Function):
    """Sparse attention over (B H, N, D) rows; saves q, k, v, out and row logsumexps only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
        scale: float, cfg: Config,
    ) -> torch.Tensor:
        """Output (B H, Nq, D), a view of (B H, rows, D), group by group of (b, h) pairs."""
        plan = _plan(q.shape[1], k.shape[1], causal, cfg, q.device)
        run = kernels.window_forward if cfg.pattern == "window" else kernels.bigbird_forward
        pad = pad_feature(scale, q.dtype)
        out = q.new_empty(q.shape[0], plan.rows, q.shape[2])  # (B H, rows, D)
        lse = q.new_empty(q.shape[0], plan.rows)  # (B H, rows)
        tracked = torch.is_grad_enabled() and any(ctx.needs_input_grad)
        chunk = BACKWARD_CHUNK_ELEMENTS if tracked else CHUNK_ELEMENTS
        for s, e in _groups(q, k):
            run(q[s:e], k[s:e], v[s:e], plan, scale, pad, chunk, out[s:e], lse[s:e])
        out = out[:, : q.shape[1]]  # (B H, Nq, D)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.scale, ctx.pattern = plan, scale, cfg.pattern
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """dq, dk, dv, recomputing scores chunk by chunk, group by group."""
        q, k, v, out, lse = ctx.saved_tensors
        plan, bh = ctx.plan, q.shape[0]
        run = kernels.window_backward if ctx.pattern == "window" else kernels.bigbird_backward
        pad = pad_feature(ctx.scale, q.dtype)
        dq = q.new_empty(bh, plan.rows, q.shape[2])  # (B H, rows, D)
        dk, dv = (plan.key_buffer(bh, k) for _ in "kv")  # zeroed, laid out like the keys
        for s, e in _groups(q, k):
            grads = (dq[s:e], plan.key_part(dk, s, e), plan.key_part(dv, s, e))
            run(q[s:e], k[s:e], v[s:e], out[s:e], lse[s:e], dout[s:e], plan, ctx.scale, pad,
                BACKWARD_CHUNK_ELEMENTS, grads)
        dq = dq[:, : q.shape[1]]  # (B H, Nq, D)
        return dq, plan.keys(dk, bh), plan.keys(dv, bh), None, None, None


def _groups(q: torch.Tensor, k: torch.Tensor) -> list[tuple[int, int]]:
    """Groups (s, e) of (b, h) pairs, about GROUP_ELEMENTS elements of q, k or v each."""
    bh, nq, d = q.shape
    return kernels.spans(bh, max(nq, k.shape[1]) * d, GROUP_ELEMENTS)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """Sparse softmax attention: q (B, H, Nq, D), k/v (B, Hkv, Nk, D) -> (B, H, Nq, D);
    grouped queries run one group member at a time, sharing k and v (variants/grouping.py)."""
    if group_size(q, k) > 1:
        return per_group(lambda qg, kg, vg: attention(qg, kg, vg, causal=causal, scale=scale,
                                                      cfg=cfg), q, k, v)
    (b, h, nq, d), nk = q.shape, k.shape[-2]
    work = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
    qw = q.to(work).reshape(b * h, nq, d)  # (B H, Nq, D)
    kw, vw = (x.to(work).reshape(b * h, nk, d) for x in (k, v))  # (B H, Nk, D)
    out = _Attention.apply(qw, kw, vw, causal, default_scale(d, scale), cfg)  # (B H, Nq, D)
    return out.view(b, h, nq, d).to(q.dtype)  # (B, H, Nq, D)


@dataclass(frozen=True)
class BlockCache(KVCache):
    """BigBird's decode cache: every key and value (a later query block may draw any key
    block), of which a step reads the blocks its rows keep."""

    cfg: Config = Config(pattern="bigbird")

    def step_keys(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``block_step_keys`` of t new tokens after this cache, from the table of N + t."""
        n, bs = self.length + t, self.cfg.block
        return block_step_keys(_table(self.cfg, -(-n // bs), -(-n // bs)), t, n, bs)

    def read_nbytes(self, t: int) -> int:
        """Bytes of the cached positions a step of t tokens reads (its kept blocks)."""
        cached = int((self.step_keys(t)[0] < self.length).sum())
        per_position = self.k.element_size() * self.k.shape[0] * self.k.shape[1]
        return cached * per_position * (self.k.shape[-1] + self.v.shape[-1])


def prefill(k: torch.Tensor, v: torch.Tensor, *, capacity: int, cfg: Config = Config()
            ) -> WindowCache | BlockCache:
    """The window's decode cache: a ring of the last w + t keys and values, no more;
    BigBird's: every key and value (``BlockCache``)."""
    if cfg.pattern == "window":  # a ring with room for the step's capacity - L tokens
        return WindowCache.prefill(k, v, cfg.window, capacity - k.shape[-2])
    full = KVCache.prefill(k, v, capacity)
    return BlockCache(full.k, full.v, full.length, cfg)


def decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: WindowCache | BlockCache, *,
    scale: float | None = None, cfg: Config = Config(),
) -> tuple[torch.Tensor, WindowCache | BlockCache]:
    """t new queries (B, H, t, D) under the pattern: the window's ring of the last w + t
    keys, the new ones written over the oldest (query - key in [0, w]): O(w) per token
    whatever the context; BigBird's rows of the block table for all N + t positions,
    gathered from the cache: O((3 + g + r) block) per token, except in the global query
    blocks, which see every key."""
    scale, g = default_scale(q.shape[-1], scale), group_size(q, k)
    if isinstance(cache, WindowCache):
        cache = cache.append(k, v)  # the ring (B, Hkv, w + t, D), written in place
        keep = cache.step_keep(q.shape[-2])  # (t, w + t)
        out = masked_softmax_attention(fold(q, k.shape[1]), cache.k, cache.v, scale,
                                       repeat_rows(keep, g))  # (B, Hkv, G t, Dv)
        return unfold(out, q.shape[1]), cache
    pos, keep = cache.step_keys(q.shape[-2])  # (P,) kept key positions, (t, P)
    cache, pos = cache.append(k, v), pos.to(q.device)
    keys, values = (x.index_select(2, pos)  # (B, Hkv, P, D | Dv): the kept keys only
                    for x in (cache.keys(), cache.values()))
    out = masked_softmax_attention(fold(q, k.shape[1]), keys, values, scale,
                                   repeat_rows(keep.to(q.device), g))  # (B, Hkv, G t, Dv)
    return unfold(out, q.shape[1]), cache  # (B, H, t, Dv)

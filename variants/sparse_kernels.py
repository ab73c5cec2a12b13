"""Kernels of ``variants/sparse.py`` over one group of S (b, h) pairs, q (S, Nq, D), k/v (S, Nk, D).

Each pattern has a forward returning the output and the per-row logsumexp of its scores, and a
backward that recomputes the score tiles chunk by chunk from q, k, v and that logsumexp
(FlashAttention-2 style: P = exp(S - lse), dS = P * (dP - rowsum(dO * O)) * scale), so nothing
score-sized outlives a chunk. Key gradients of overlapping tiles are added back onto their band:
window tiles through a flat padded buffer (the adjoint of ``unfold``), BigBird blocks with
``index_add_`` over the gathered block lists. Padding query rows keep a real logsumexp and get a
zero output gradient, so they contribute nothing. Inputs are float32 or float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Grads = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
#: 1 / ln 2: exp(x) = 2^(x LOG2E)
LOG2E = 1.4426950408889634


def spans(n: int, per_item: int, budget: int) -> list[tuple[int, int]]:
    """(s, e) ranges over range(n), even, of at most about budget / per_item items each."""
    parts = -(-n // max(1, budget // max(1, per_item)))
    step = -(-n // max(1, parts))
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def flat_keys(
    x: torch.Tensor, lead: int, count: int, rows: int, tail: int, aug: float | None
) -> torch.Tensor:
    """(S, N, D) -> flat (S rows + tail, D [+ 1]): key j < count at row s rows + lead + j.

    With ``aug`` (keys only) an extra feature holds ``aug`` at padding rows, 0 at real keys.
    """
    s, _, d = x.shape
    width = d + int(aug is not None)
    buf = x.new_zeros(s * rows + tail, width)  # (S rows + tail, D [+ 1])
    body = buf[: s * rows].view(s, rows, width)  # (S, rows, D [+ 1])
    body[:, lead:lead + count, :d] = x[:, :count]
    if aug is not None:
        buf[:, d] = aug  # (S rows + tail,): padding everywhere ...
        body[:, lead:lead + count, d] = 0.0  # ... except at real keys
    return buf


def _exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) in place, as 2^(x log2 e): torch's exp2 is several times faster than its exp on
    this CPU (0.2 against 0.7-1 ns an element), most of all where padding scores -1e30."""
    return x.mul_(LOG2E).exp2_()


def _exp_rows(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place scores (n, T, K) -> exp(scores - row max); returns sums (n, T, 1), lse (n, T)."""
    top = scores.amax(dim=-1, keepdim=True)  # (n, T, 1); never -inf: no row is all -inf
    total = _exp(scores.sub_(top)).sum(dim=-1, keepdim=True)  # (n, T, 1)
    return total, (top + total.log()).squeeze(-1)  # (n, T, 1), (n, T)


def _probs_and_ds(
    scores: torch.Tensor, lse: torch.Tensor, dp: torch.Tensor, delta: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """P = exp(scores - lse) (in place) and dS = P (dP - delta) scale (in dp): (n, T, K) each."""
    p = _exp(scores.sub_(lse[..., None]))  # (n, T, K)
    return p, dp.sub_(delta[..., None]).mul_(p).mul_(scale)  # (n, T, K)


def _row_terms(dout: torch.Tensor, out: torch.Tensor, rows: int) -> tuple[torch.Tensor, ...]:
    """dO and rowsum(dO * O) of (S, N, D) rows, zero-padded to ``rows``: (S, rows, D), (S, rows)."""
    n = dout.shape[1]
    delta = F.pad((dout * out).sum(dim=-1), (0, rows - n))  # (S, rows)
    return F.pad(dout, (0, 0, 0, rows - n)), delta  # (S, rows, D), (S, rows)


# ---------------------------------------------------------------- sliding window


@dataclass(frozen=True)
class WindowPlan:
    """Geometry of Nq query rows in tiles of t against keys j in [i - w, i + right]."""

    nq: int
    nk: int
    w: int
    t: int
    right: int  # query i sees keys up to i + right (0 if causal, else w)
    reach: int  # keys >= reach are seen by no query: left out
    live: int  # rows >= live see no key: zero output and gradients
    rows: int  # per (b, h) rows: w padding, the keys, padding; a multiple of t

    @property
    def span(self) -> int:
        """Keys a query tile reads: t + w + right."""
        return self.t + self.w + self.right

    @property
    def tail(self) -> int:
        """Flat rows past the last pair that its last tile's band reaches, in whole tiles."""
        return self.t * -(-self.span // self.t) - self.t

    def key_buffer(self, bh: int, like: torch.Tensor) -> torch.Tensor:
        """Zeroed flat key gradients (bh rows + tail, D), laid out like the key spans."""
        return like.new_zeros(bh * self.rows + self.tail, like.shape[-1])

    def key_part(self, buf: torch.Tensor, s: int, e: int) -> torch.Tensor:
        """Pairs s..e's region of a key buffer (it overlaps the next pairs' padding)."""
        return buf[s * self.rows:e * self.rows + self.tail]

    def keys(self, buf: torch.Tensor, bh: int) -> torch.Tensor:
        """A key buffer's gradients (BH, Nk, D): keys >= reach get zeros."""
        body = buf[: bh * self.rows].view(bh, self.rows, -1)[:, self.w:self.w + self.reach]
        return F.pad(body, (0, 0, 0, self.nk - self.reach)) if self.reach < self.nk else body


def window_plan(nq: int, nk: int, w: int, t: int, causal: bool) -> WindowPlan:
    """The plan; a live row's band ends in its own rows or the next (b, h)'s leading padding."""
    right = 0 if causal else w
    reach, live = min(nk, nq + right), min(nq, nk + w)
    rows = t * -(-max(nq, reach + w, live + right) // t)
    return WindowPlan(nq, nk, w, t, right, reach, live, rows)


def _window_operands(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: WindowPlan, pad: float
) -> tuple[torch.Tensor, ...]:
    """Query tiles (n, t, D + 1), their key spans (n, D + 1, span), (n, span, D), band bias."""
    d, t, span, rows = q.shape[-1], plan.t, plan.span, plan.rows
    qt = F.pad(q, (0, 1, 0, rows - plan.nq), value=1.0).view(-1, t, d + 1)  # (n, t, D + 1)
    kt = flat_keys(k, plan.w, plan.reach, rows, span - t, pad).unfold(0, span, t)
    vs = flat_keys(v, plan.w, plan.reach, rows, span - t, None).unfold(0, span, t)
    # tile I of a (b, h) covers keys j = I t - w + c, c < span: keep i - w <= j <= i + right
    c = torch.arange(span, device=q.device)  # (span,)
    r = torch.arange(t, device=q.device)[:, None]  # (t, 1)
    band = torch.zeros(t, span, dtype=q.dtype, device=q.device)  # (t, span)
    band.masked_fill_((c < r) | (c > r + plan.w + plan.right), -math.inf)
    return qt, kt, vs.transpose(1, 2), band  # kt (n, D + 1, span), vs (n, span, D)


def window_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: WindowPlan, scale: float,
    pad: float, budget: int, out: torch.Tensor, lse: torch.Tensor,
) -> None:
    """Write out (S, rows, D) and lse (S, rows), tiles in chunks of about budget scores."""
    d, t = q.shape[-1], plan.t
    qt, kt, vs, band = _window_operands(q, k, v, plan, pad)
    tiles, tiles_lse = out.view(-1, t, d), lse.view(-1, t)  # (n, t, D), (n, t)
    for a, e in spans(qt.shape[0], t * plan.span, budget):
        scores = torch.baddbmm(band, qt[a:e], kt[a:e], alpha=scale)  # (m, t, span)
        total, tiles_lse[a:e] = _exp_rows(scores)
        torch.bmm(scores, vs[a:e], out=tiles[a:e]).div_(total)  # (m, t, D)
    out[:, plan.live:] = 0.0  # rows i >= Nk + w see no key


def _fold(buf: torch.Tensor, band: torch.Tensor, first: int, t: int) -> None:
    """Add band (m, span, D), tile i's rows from flat row (first + i) t on, into buf."""
    m, span, d = band.shape
    if span % t == 0:  # one index_add_ of whole (t, D) blocks: block first + i + c gets (i, c)
        c = torch.arange(span // t, device=buf.device)  # (P,)
        blocks = (first + torch.arange(m, device=buf.device)[:, None] + c).flatten()  # (m P,)
        buf[: (buf.shape[0] // t) * t].view(-1, t, d).index_add_(0, blocks, band.view(-1, t, d))
        return
    for c in range(0, span, t):
        size, start = min(t, span - c), (first * t) + c
        buf[start:start + m * t].view(m, t, d)[:, :size] += band[:, c:c + size]


def window_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    dout: torch.Tensor, plan: WindowPlan, scale: float, pad: float, budget: int, grads: Grads,
) -> None:
    """Write dq (S, rows, D) and add into flat dk, dv (key_part), recomputing each chunk."""
    d, t, span = q.shape[-1], plan.t, plan.span
    qt, kt, vs, band = _window_operands(q, k, v, plan, pad)
    live = min(plan.nq, plan.live)
    do, delta = (x.reshape(-1, t, *x.shape[2:]) for x in _row_terms(dout[:, :live],
                                                                      out[:, :live], plan.rows))
    lse = lse.view(-1, t)  # (n, t)
    dq, dk, dv = grads[0].view(-1, t, d), grads[1], grads[2]  # (n, t, D), flat, flat
    for a, e in spans(qt.shape[0], t * span, budget):
        scores = torch.baddbmm(band, qt[a:e], kt[a:e], alpha=scale)  # (m, t, span)
        dp = torch.bmm(do[a:e], vs[a:e].transpose(1, 2))  # (m, t, span)
        p, ds = _probs_and_ds(scores, lse[a:e], dp, delta[a:e], scale)
        torch.bmm(ds, kt[a:e, :d].transpose(1, 2), out=dq[a:e])  # (m, t, D)
        _fold(dk, torch.bmm(ds.transpose(1, 2), qt[a:e, :, :d]), a, t)  # (m, span, D)
        _fold(dv, torch.bmm(p.transpose(1, 2), do[a:e]), a, t)  # (m, span, D)


# ---------------------------------------------------------------- BigBird blocks


@dataclass(frozen=True)
class BlockPlan:
    """g global query blocks, then block rows against key block lists ids (n, kmax)."""

    nq: int
    nk: int
    bs: int
    g: int
    ids: torch.Tensor  # (nqb - g, kmax) on the device; the sentinel nkb is an empty block
    causal: bool

    @property
    def nkb(self) -> int:
        """Key blocks (the sentinel is block nkb)."""
        return -(-self.nk // self.bs)

    @property
    def rows(self) -> int:
        """Query rows per (b, h) pair, in whole blocks."""
        return -(-self.nq // self.bs) * self.bs

    def key_buffer(self, bh: int, like: torch.Tensor) -> torch.Tensor:
        """Zeroed key block gradients (bh, nkb + 1, b, D); the last block is the sentinel's."""
        return like.new_zeros(bh, self.nkb + 1, self.bs, like.shape[-1])

    def key_part(self, buf: torch.Tensor, s: int, e: int) -> torch.Tensor:
        """Pairs s..e of a key buffer."""
        return buf[s:e]

    def keys(self, buf: torch.Tensor, bh: int) -> torch.Tensor:
        """A key buffer's gradients (BH, Nk, D)."""
        return buf.view(bh, -1, buf.shape[-1])[:, : self.nk]


def _block_operands(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, pad: float
) -> tuple[torch.Tensor, ...]:
    """Block rows (S, n, b, D + 1) and key/value blocks (S, nkb + 1, b, D [+ 1])."""
    s, d, bs, nkb = q.shape[0], q.shape[-1], plan.bs, plan.nkb
    rest = q[:, plan.g * bs:]  # (S, Nq - g b, D): the block rows' queries
    qb = F.pad(rest, (0, 1, 0, plan.ids.shape[0] * bs - rest.shape[1]), value=1.0)
    kb = flat_keys(k, 0, plan.nk, (nkb + 1) * bs, 0, pad).view(s, nkb + 1, bs, d + 1)
    vb = flat_keys(v, 0, plan.nk, (nkb + 1) * bs, 0, None).view(s, nkb + 1, bs, d)
    return qb.view(s, -1, bs, d + 1), kb, vb  # qb (S, n, b, D + 1)


def _block_scores(
    qb: torch.Tensor, kc: torch.Tensor, ids: torch.Tensor, first: int, plan: BlockPlan,
    scale: float,
) -> torch.Tensor:
    """Scores (S m, b, K) of block rows first.. (qb (S m, b, D + 1)) and gathered kc (S m, K, .)."""
    scores = torch.baddbmm(kc.new_zeros(()), qb, kc.transpose(1, 2), beta=0, alpha=scale)
    if plan.causal:
        pos = torch.arange(plan.bs, device=qb.device)  # (b,)
        j = (ids[:, :, None] * plan.bs + pos).flatten(1)  # (m, K): key positions
        i = (first + torch.arange(ids.shape[0], device=qb.device))[:, None] * plan.bs + pos
        drop = j[:, None, :] > i[:, :, None]  # (m, b, K)
        scores.unflatten(0, (-1, ids.shape[0])).masked_fill_(drop, torch.finfo(qb.dtype).min)
    return scores  # (S m, b, K)


def _global_scores(qg: torch.Tensor, k: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """Scores (S, G, Nk) of the global query rows qg (S, G, D) against every key."""
    scores = torch.baddbmm(k.new_zeros(()), qg, k.transpose(1, 2), beta=0, alpha=scale)
    if causal:  # global row i keeps j <= i
        drop = torch.ones(qg.shape[1], k.shape[1], dtype=torch.bool, device=k.device).triu(1)
        scores.masked_fill_(drop, torch.finfo(k.dtype).min)
    return scores  # (S, G, Nk)


def _gather(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Blocks x (S, nkb + 1, b, W) listed by ids (m, kmax) -> (S m, kmax b, W)."""
    return x[:, ids].flatten(0, 1).flatten(1, 2)  # (S m, K, W)


def bigbird_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float,
    pad: float, budget: int, out: torch.Tensor, lse: torch.Tensor,
) -> None:
    """Write out (S, rows, D) and lse (S, rows): dense global rows, then block rows."""
    (s, nq, d), bs = q.shape, plan.bs
    gq = min(plan.g * bs, nq)
    for a, e in spans(s, gq * plan.nk, budget):
        scores = _global_scores(q[a:e, :gq], k[a:e], plan.causal, scale)  # (m, G, Nk)
        total, lse[a:e, :gq] = _exp_rows(scores)
        out[a:e, :gq] = torch.bmm(scores, v[a:e]).div_(total)  # (m, G, D)
    if not plan.ids.shape[0]:  # every query block is global
        return
    qb, kb, vb = _block_operands(q, k, v, plan, pad)
    n, kmax = plan.ids.shape
    o = out[:, plan.g * bs:].view(s, n, bs, d)  # (S, n, b, D)
    lo = lse[:, plan.g * bs:].view(s, n, bs)  # (S, n, b)
    for a, e in spans(n, s * kmax * bs * (bs + 2 * d + 1), budget):  # scores and gathers
        ids = plan.ids[a:e]  # (m, kmax)
        scores = _block_scores(qb[:, a:e].flatten(0, 1), _gather(kb, ids), ids, plan.g + a,
                               plan, scale)  # (S m, b, K)
        total, part = _exp_rows(scores)
        lo[:, a:e] = part.view(s, e - a, bs)
        o[:, a:e] = torch.bmm(scores, _gather(vb, ids)).div_(total).view(s, e - a, bs, d)


def bigbird_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    dout: torch.Tensor, plan: BlockPlan, scale: float, pad: float, budget: int, grads: Grads,
) -> None:
    """Write dq (S, rows, D), add into dk, dv blocks: global rows, then block rows."""
    (s, nq), bs = q.shape[:2], plan.bs
    gq = min(plan.g * bs, nq)
    do, delta = _row_terms(dout, out, plan.rows)  # (S, rows, D), (S, rows)
    dq, dkb, dvb = grads  # (S, rows, D), (S, nkb + 1, b, D) twice
    dk, dv = (plan.keys(x, s) for x in (dkb, dvb))  # (S, Nk, D) views
    for a, e in spans(s, gq * plan.nk, budget):
        scores = _global_scores(q[a:e, :gq], k[a:e], plan.causal, scale)  # (m, G, Nk)
        dp = torch.bmm(do[a:e, :gq], v[a:e].transpose(1, 2))  # (m, G, Nk)
        p, ds = _probs_and_ds(scores, lse[a:e, :gq], dp, delta[a:e, :gq], scale)
        dq[a:e, :gq] = torch.bmm(ds, k[a:e])  # (m, G, D)
        dk[a:e] += torch.bmm(ds.transpose(1, 2), q[a:e, :gq])  # (m, Nk, D)
        dv[a:e] += torch.bmm(p.transpose(1, 2), do[a:e, :gq])  # (m, Nk, D)
    if plan.ids.shape[0]:  # block rows beside the global ones
        _block_backward(q, k, v, (do, delta, lse), plan, scale, pad, budget, grads)


def _block_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: tuple[torch.Tensor, ...],
    plan: BlockPlan, scale: float, pad: float, budget: int, grads: Grads,
) -> None:
    """Add the block rows' gradients: rows = (dO, delta, lse), grads = (dq, dk, dv blocks)."""
    qb, kb, vb = _block_operands(q, k, v, plan, pad)
    (s, n, bs, _), d, g0 = qb.shape, q.shape[-1], plan.g * plan.bs
    do, delta, lse = (x[:, g0:].unflatten(1, (n, bs)) for x in rows)  # (S, n, b[, D])
    dq, dkb, dvb = grads
    dqb = dq[:, g0:].unflatten(1, (n, bs))  # (S, n, b, D)
    kmax = plan.ids.shape[1]
    for a, e in spans(n, s * kmax * bs * (bs + 2 * d + 1), budget):  # scores and gathers
        ids, m = plan.ids[a:e], e - a  # (m, kmax)
        kc, vc = _gather(kb, ids), _gather(vb, ids)  # (S m, K, D + 1), (S m, K, D)
        dom = do[:, a:e].flatten(0, 1)  # (S m, b, D)
        scores = _block_scores(qb[:, a:e].flatten(0, 1), kc, ids, plan.g + a, plan, scale)
        dp = torch.bmm(dom, vc.transpose(1, 2))  # (S m, b, K)
        p, ds = _probs_and_ds(scores, lse[:, a:e].flatten(0, 1), dp,
                              delta[:, a:e].flatten(0, 1), scale)
        dqb[:, a:e] = torch.bmm(ds, kc[..., :d]).view(s, m, bs, d)
        dkc = torch.bmm(ds.transpose(1, 2), qb[:, a:e, :, :d].flatten(0, 1))  # (S m, K, D)
        dkb.index_add_(1, ids.flatten(), dkc.view(s, m * kmax, bs, d))
        dvc = torch.bmm(p.transpose(1, 2), dom)  # (S m, K, D)
        dvb.index_add_(1, ids.flatten(), dvc.view(s, m * kmax, bs, d))

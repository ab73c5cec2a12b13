"""Linear attention (Katharopoulos et al. 2020) with the feature map phi(x) = elu(x) + 1.

    out_i = phi(q_i) . sum_j phi(k_j) v_j^T / (phi(q_i) . sum_j phi(k_j) + eps)

Everything runs in row blocks of about ROW_BLOCK_ELEMENTS values, so that no (B, H, N, D)
temporary is ever allocated: only the output and, in backward, dq, dk and dv, each written
block by block. (At B=4, N=4096 an fp32 (B, H, N, D) tensor is 32 MiB, glibc's largest mmap
threshold: every such temporary was a fresh mapping that page-faulted on each call, and
fwd+bwd cost 5.4x from N=2048 to 4096.) With autograd, a custom Function saves only q, k, v
and the final (D, Dv) state; its backward recomputes phi block by block.

Non-causal: the state S = sum_j phi(k_j) v_j^T (B, H, D, Dv) and z = sum_j phi(k_j) in
O(N D^2); backward gives dS and dz from the queries, then dk and dv from them.
Causal (top-left: query i sums keys j <= i, the current token included): chunked prefix sums,
in blocks of whole chunks taken in order with the state of every earlier block carried in:
within a chunk a small masked (C, C) product, across chunks an exclusive cumulative sum of
per-chunk (D, Dv) states, so no (N, D, D) tensor is ever built. Backward takes the blocks in
reverse, recovering each block's incoming state from the one after it (the carry is kept in
float64 so that this subtraction loses nothing) and carrying the gradient of later states.
``eps`` (Config) keeps the denominator away from zero. There is no softmax, so ``scale`` is
accepted and ignored: a factor on phi(Q) phi(K)^T cancels in the normalisation. bf16/fp16
inputs are computed in float32, outputs and gradients cast back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from variants import memory_models
from variants.contract import LinearAttention, Supports, always_available
from variants.decoding import nbytes
from variants.grouping import fold, group_size, per_group, repeat_rows, unfold

NAME = "linear"
#: Row blocks hold about this many values per (B, H, rows, D) temporary (2 MiB in fp32), far
#: below glibc's mmap threshold, so the allocator reuses their memory from call to call.
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
SUPPORTS = Supports(compile=True, gqa=True, value_dim=True)  # every device, dtype, mode


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
    hkv: int = 0, dv: int = 0,
) -> int:
    """Output (and gradients) plus row-block temporaries; causal adds (C, C) chunk blocks."""
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=True, hkv=hkv, dv=dv)
    return memory_models.linear_form(m, causal=causal, chunk=cfg.chunk, backward=backward,
                                     block=ROW_BLOCK_ELEMENTS)


def _row_block(x: torch.Tensor) -> int:
    """Rows per block so a (B, H, rows, D) temporary holds about ROW_BLOCK_ELEMENTS values."""
    b, h, _, d = x.shape
    return max(1, ROW_BLOCK_ELEMENTS // max(1, b * h * d))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The compute dtype: float32 for bf16/fp16, the input's own otherwise."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _phi_grad(f: torch.Tensor) -> torch.Tensor:
    """phi'(x) from f = phi(x): 1 where x > 0 (f > 1), exp(x) = f elsewhere: min(f, 1)."""
    return f.clamp(max=1.0)


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of x (B, H, r, D) with y (B, H, D) or (B, H, r, D): (B, H, r, 1).

    A (B, H, r, D) @ (B, H, D, 1) product would run as a slow matrix-vector bmm."""
    return torch.linalg.vecdot(x, y if y.dim() == x.dim() else y.unsqueeze(-2)).unsqueeze(-1)


def _features(x: torch.Tensor, s: int, rows: int, work: torch.dtype) -> torch.Tensor:
    """phi of rows s .. s + rows of x (B, H, N, D), in the work dtype: (B, H, r, D)."""
    return feature_map(x[..., s : s + rows, :].to(work))


# ---- non-causal ------------------------------------------------------------------------


def _state(k: torch.Tensor, v: torch.Tensor, work: torch.dtype) -> tuple[torch.Tensor, ...]:
    """S = sum_j phi(k_j) v_j^T (B, H, D, Dv) and z = sum_j phi(k_j) (B, H, D), in blocks."""
    b, h, nk, d = k.shape
    s_ = k.new_zeros(b, h, d, v.shape[-1], dtype=work)  # (B, H, D, Dv)
    z = k.new_zeros(b, h, d, dtype=work)  # (B, H, D)
    rows = _row_block(k)
    for s in range(0, nk, rows):  # each block's temporaries die with its call
        _add_state(_features(k, s, rows, work), v[..., s : s + rows, :].to(work), s_, z)
    return s_, z


def _add_state(fk: torch.Tensor, vb: torch.Tensor, s_: torch.Tensor, z: torch.Tensor) -> None:
    """Add one block's keys, phi(k) (B, H, r, D) and v (B, H, r, Dv), to S and z in place."""
    s_ += fk.transpose(-2, -1) @ vb  # (B, H, D, Dv)
    z += fk.sum(dim=-2)  # (B, H, D)


def _normalised(
    fq: torch.Tensor, s_: torch.Tensor, z: torch.Tensor, eps: float
) -> torch.Tensor:
    """One block's output phi(q_i) S / (phi(q_i) . z + eps): (B, H, r, D) -> (B, H, r, Dv)."""
    den = _dot(fq, z).add_(eps)  # (B, H, r, 1)
    return (fq @ s_).div_(den)  # (B, H, r, Dv)


def _noncausal_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float
) -> tuple[torch.Tensor, ...]:
    """Output (B, H, Nq, Dv) in q's dtype, written block by block, and S, z (work dtype)."""
    work = _work_dtype(q.dtype)
    s_, z = _state(k, v, work)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])  # (B, H, Nq, Dv): the one N-sized tensor
    rows = _row_block(q)
    for s in range(0, q.shape[-2], rows):
        out[..., s : s + rows, :] = _normalised(_features(q, s, rows, work), s_, z, eps)
    return out, s_, z


def _query_grads(
    q: torch.Tensor, dout: torch.Tensor, s_: torch.Tensor, z: torch.Tensor, eps: float,
    dq: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write dq block by block; return dS (B, H, D, Dv) and dz (B, H, D) summed over queries."""
    ds, dz = torch.zeros_like(s_), torch.zeros_like(z)
    rows = _row_block(q)
    for s in range(0, q.shape[-2], rows):
        do = dout[..., s : s + rows, :].to(s_.dtype)  # (B, H, r, Dv)
        dq[..., s : s + rows, :] = _query_block(_features(q, s, rows, s_.dtype), do, (s_, z),
                                                eps, (ds, dz))
    return ds, dz


def _query_block(
    a: torch.Tensor, do: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], eps: float,
    grads: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """One block of queries, a = phi(q) (B, H, r, D): add to dS, dz in place; return dq.

    With den = a.z + eps and g = S dO_i: d(num) = dO_i / den,
    d(den) = -(dO_i . out_i) / den = -(a . g) / den^2, d(a) = g / den + z d(den)."""
    (s_, z), (ds, dz) = state, grads
    den = _dot(a, z).add_(eps)  # (B, H, r, 1)
    g = do @ s_.transpose(-2, -1)  # (B, H, r, D)
    dden = _dot(a, g).div_(den.square()).neg_()  # (B, H, r, 1)
    ds += a.transpose(-2, -1) @ (do / den)  # (B, H, D, Dv): sum_i a_i d(num_i)^T
    dz += torch.linalg.vecdot(a, dden, dim=-2)  # (B, H, D)
    da = g.div_(den).addcmul_(dden, z.unsqueeze(-2))  # (B, H, r, D)
    return da.mul_(_phi_grad(a))  # (B, H, r, D)


def _key_grads(
    k: torch.Tensor, v: torch.Tensor, ds: torch.Tensor, dz: torch.Tensor,
    dk: torch.Tensor, dv: torch.Tensor,
) -> None:
    """Write dk, dv block by block: d(phi(k_j)) = dS v_j + dz, dv_j = dS^T phi(k_j)."""
    rows = _row_block(k)
    for s in range(0, k.shape[-2], rows):
        b = _features(k, s, rows, ds.dtype)  # (B, H, r, D)
        dv[..., s : s + rows, :] = b @ ds  # (B, H, r, Dv)
        db = v[..., s : s + rows, :].to(ds.dtype) @ ds.transpose(-2, -1)  # (B, H, r, D)
        dk[..., s : s + rows, :] = db.add_(dz.unsqueeze(-2)).mul_(_phi_grad(b))
        del b, db  # not alive while the next block's are built


class _NonCausal(torch.autograd.Function):
    """Non-causal linear attention saving q, k, v, S and z; backward recomputes phi."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """Output (B, H, Nq, Dv); saves the inputs and the (D, Dv) states."""
        out, s_, z = _noncausal_forward(q, k, v, eps)
        ctx.save_for_backward(q, k, v, s_, z)
        ctx.eps = eps
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """dq, dk, dv, each allocated once and written block by block; none for eps."""
        q, k, v, s_, z = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        ds, dz = _query_grads(q, dout, s_, z, ctx.eps, dq)
        _key_grads(k, v, ds, dz, dk, dv)
        return dq, dk, dv, None


# ---- causal ----------------------------------------------------------------------------


def _geometry(q: torch.Tensor, chunk: int) -> tuple[int, int]:
    """Chunk length C and rows per block (whole chunks, about ROW_BLOCK_ELEMENTS values)."""
    c = max(1, min(chunk, q.shape[-2]))
    return c, max(1, _row_block(q) // c) * c


def _block_rows(s: int, rows: int, c: int, nq: int) -> int:
    """Rows of the block starting at s: ``rows``, or the queries left rounded up to chunks."""
    return min(rows, -(-(nq - s) // c) * c)


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero-pad (B, H, r, D) to ``rows`` rows (padded keys and queries have zero features)."""
    return x if x.shape[-2] == rows else F.pad(x, (0, 0, 0, rows - x.shape[-2]))


def _block_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: int, rows: int, c: int,
    work: torch.dtype,
) -> tuple[torch.Tensor, ...]:
    """phi(q), phi(k), v of rows s .. s + rows, zero-padded, split into chunks: (B, H, m, C, D)."""
    a = _padded(_features(q, s, rows, work), rows)  # (B, H, R, D)
    b = _padded(_features(k, s, rows, work), rows)  # (B, H, R, D)
    vb = _padded(v[..., s : s + rows, :].to(work), rows)  # (B, H, R, Dv)
    return tuple(t.unflatten(-2, (rows // c, c)) for t in (a, b, vb))  # (B, H, m, C, D)


def _chunk_sums(b: torch.Tensor, vc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each chunk's own state phi(K_c)^T V_c (B, H, m, D, Dv) and sum phi(K_c) (B, H, m, D)."""
    return b.transpose(-2, -1) @ vc, b.sum(dim=-2)


def _causal_terms(
    a: torch.Tensor, b: torch.Tensor, vc: torch.Tensor, sums: tuple[torch.Tensor, ...],
    carry: tuple[torch.Tensor, torch.Tensor], valid: int, eps: float,
) -> dict[str, torch.Tensor]:
    """One block's masked (C, C) products p, incoming per-chunk states and denominators."""
    kv, kz = sums  # (B, H, m, D, Dv), (B, H, m, D)
    s_in, z_in = (t.to(kv.dtype) for t in carry)  # (B, H, D, Dv), (B, H, D)
    states = torch.cat((s_in.unsqueeze(2), kv[:, :, :-1]), dim=2).cumsum(dim=2)  # exclusive
    zs = torch.cat((z_in.unsqueeze(2), kz[:, :, :-1]), dim=2).cumsum(dim=2)  # (B, H, m, D)
    p = (a @ b.transpose(-2, -1)).tril_()  # (B, H, m, C, C): keys j <= i within the chunk
    den = torch.linalg.vecdot(a, zs.unsqueeze(-2)).add_(p.sum(dim=-1)).add_(eps)  # (B,H,m,C)
    den.flatten(2, 3)[..., valid:] = 1.0  # padded query rows: no 0 / 0 when eps = 0
    return {"p": p, "states": states, "zs": zs, "den": den}


def _causal_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float, chunk: int
) -> tuple[torch.Tensor, ...]:
    """Output (B, H, Nq, Dv) block by block; returns the final state S, z (float64 carry)."""
    c, rows = _geometry(q, chunk)
    work, nq = _work_dtype(q.dtype), q.shape[-2]
    carry = _zero_carry(q, v)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])  # (B, H, Nq, Dv)
    for s in range(0, nq, rows):
        r = _block_rows(s, rows, c, nq)
        carry = _causal_block(_block_inputs(q, k, v, s, r, c, work), carry, eps,
                              out[..., s : s + r, :])
    return out, *carry


def _causal_block(
    inputs: tuple[torch.Tensor, ...], carry: tuple[torch.Tensor, torch.Tensor], eps: float,
    dst: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write one block's output rows into dst (B, H, rows, Dv); return the carry past it."""
    a, b, vc = inputs  # (B, H, m, C, D)
    sums = _chunk_sums(b, vc)
    t = _causal_terms(a, b, vc, sums, carry, dst.shape[-2], eps)
    num = (a @ t["states"]).add_(t["p"] @ vc)  # (B, H, m, C, Dv)
    out = num.div_(t["den"].unsqueeze(-1)).flatten(2, 3)  # (B, H, R, Dv)
    dst.copy_(out[..., : dst.shape[-2], :])
    return _advance(carry, sums, 1.0)


def _zero_carry(q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero state S (B, H, D, Dv) and z (B, H, D) in the carry dtype."""
    b, h, _, d = q.shape
    dt = torch.float32 if q.device.type == "mps" else torch.float64  # MPS has no float64
    return q.new_zeros(b, h, d, v.shape[-1], dtype=dt), q.new_zeros(b, h, d, dtype=dt)


def _advance(
    carry: tuple[torch.Tensor, torch.Tensor], sums: tuple[torch.Tensor, ...], sign: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The carried state past (sign 1) or back before (sign -1) one block's chunks."""
    s_, z = carry
    kv, kz = (t.sum(dim=2).to(s_.dtype) for t in sums)  # (B, H, D, Dv), (B, H, D)
    return s_ + sign * kv, z + sign * kz


def _suffix(per_chunk: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
    """For each chunk, ``later`` plus the sum over the block's later chunks (dim 2)."""
    shifted = torch.cat((per_chunk[:, :, 1:], later.unsqueeze(2)), dim=2)
    return shifted.flip(2).cumsum(dim=2).flip(2)  # (B, H, m, ...)


def _causal_block_grads(
    a: torch.Tensor, b: torch.Tensor, vc: torch.Tensor, do: torch.Tensor,
    t: dict[str, torch.Tensor], later: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """d(phi(q)), d(phi(k)), dv of one block (B, H, m, C, D), and the new later-state grads.

    d(den) = -(d(num) . num) / den needs no num: d(num) . (P V + A S) is
    rowsum(P * d(num) V^T) + rowsum(A * d(num) S^T), two products d(a) needs anyway."""
    dnum = do / t["den"].unsqueeze(-1)  # (B, H, m, C, Dv)
    x = dnum @ vc.transpose(-2, -1)  # (B, H, m, C, C)
    y = dnum @ t["states"].transpose(-2, -1)  # (B, H, m, C, D)
    dden = torch.linalg.vecdot(t["p"], x).add_(torch.linalg.vecdot(a, y))  # (B, H, m, C)
    dden.div_(t["den"]).neg_()
    dp = x.add_(dden.unsqueeze(-1)).tril_()  # (B, H, m, C, C)
    da = (dp @ b).add_(y)  # (B, H, m, C, D)
    da.addcmul_(dden.unsqueeze(-1), t["zs"].unsqueeze(-2))
    ds = a.transpose(-2, -1) @ dnum  # (B, H, m, D, Dv): this block's queries' dS per chunk
    dz = torch.linalg.vecdot(a, dden.unsqueeze(-1), dim=-2)  # (B, H, m, D)
    gs, gz = _suffix(ds, later[0]), _suffix(dz, later[1])  # from every later chunk
    db = (dp.transpose(-2, -1) @ a).add_(vc @ gs.transpose(-2, -1)).add_(gz.unsqueeze(-2))
    dv = (t["p"].transpose(-2, -1) @ dnum).add_(b @ gs)  # (B, H, m, C, Dv)
    return da, db, dv, (gs[:, :, 0] + ds[:, :, 0], gz[:, :, 0] + dz[:, :, 0])


def _causal_backward(
    dout: torch.Tensor, saved: tuple[torch.Tensor, ...], eps: float, chunk: int
) -> tuple[torch.Tensor, ...]:
    """dq, dk, dv block by block, blocks in reverse, each block's incoming state recovered."""
    q, k, v, *final = saved
    carry = tuple(final)  # (B, H, D, Dv), (B, H, D): the state after the last block
    c, rows = _geometry(q, chunk)
    work, nq, nk = _work_dtype(q.dtype), q.shape[-2], k.shape[-2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dk[..., min(nq, nk) :, :], dv[..., min(nq, nk) :, :] = 0.0, 0.0  # keys no query sees
    later = tuple(torch.zeros_like(x, dtype=work) for x in final)  # grads of later states
    for s in reversed(range(0, nq, rows)):
        r = _block_rows(s, rows, c, nq)
        do = _padded(dout[..., s : s + r, :].to(work), r).unflatten(-2, (r // c, c))
        dst = tuple(x[..., s : s + r, :] for x in (dq, dk, dv))  # rows past Nq, Nk cut off
        carry, later = _causal_block_backward(_block_inputs(q, k, v, s, r, c, work), do,
                                              (carry, later), eps, dst)
    return dq, dk, dv


def _causal_block_backward(
    inputs: tuple[torch.Tensor, ...], do: torch.Tensor,
    carries: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]], eps: float,
    dst: tuple[torch.Tensor, ...],
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Write one block's dq, dk, dv rows into dst; return the carry before the block and the
    gradients of the states of every chunk from this block on."""
    a, b, vc = inputs  # (B, H, m, C, D)
    sums = _chunk_sums(b, vc)
    carry = _advance(carries[0], sums, -1.0)  # the state before this block
    t = _causal_terms(a, b, vc, sums, carry, dst[0].shape[-2], eps)
    da, db, dvb, later = _causal_block_grads(a, b, vc, do, t, carries[1])
    for x, g in zip(dst, (da.mul_(_phi_grad(a)), db.mul_(_phi_grad(b)), dvb), strict=True):
        x.copy_(g.flatten(2, 3)[..., : x.shape[-2], :])  # (B, H, rows, D)
    return carry, later


class _Causal(torch.autograd.Function):
    """Causal linear attention saving q, k, v and the final state; backward recomputes."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float, chunk: int
    ) -> torch.Tensor:
        """Output (B, H, Nq, Dv); saves the inputs and the final float64 state."""
        out, s_, z = _causal_forward(q, k, v, eps, chunk)
        ctx.save_for_backward(q, k, v, s_, z)
        ctx.params = (eps, chunk)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """dq, dk, dv by block-wise recomputation; none for eps and chunk."""
        return (*_causal_backward(dout, ctx.saved_tensors, *ctx.params), None, None)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """Normalised linear attention: q (B, H, Nq, D), k/v (B, Hkv, Nk, D) -> (B, H, Nq, D).
    Grouped queries fold onto their kv head's state when not causal; causal chunks follow row
    positions, so they run one group member at a time (variants/grouping.py)."""
    g = group_size(q, k)
    if g > 1 and causal:
        return per_group(lambda qg, kg, vg: attention(qg, kg, vg, causal=True, cfg=cfg), q, k, v)
    if g > 1:
        return unfold(attention(fold(q, k.shape[1]), k, v, causal=False, cfg=cfg), q.shape[1])
    tracked = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if causal:
        if tracked:
            return _Causal.apply(q, k, v, cfg.eps, cfg.chunk)
        return _causal_forward(q, k, v, cfg.eps, cfg.chunk)[0]
    if tracked:
        return _NonCausal.apply(q, k, v, cfg.eps)
    return _noncausal_forward(q, k, v, cfg.eps)[0]


@dataclass(frozen=True)
class State:
    """The decode cache of causal linear attention: S = sum_j phi(k_j) v_j^T (B, H, D, Dv)
    and z = sum_j phi(k_j) (B, H, D) over the ``length`` positions seen: O(1) in the context."""

    s: torch.Tensor
    z: torch.Tensor
    length: int

    def nbytes(self) -> int:
        """Bytes held: D x (Dv + 1) per head, whatever the context."""
        return nbytes(self.s, self.z)

    def state(self) -> dict[str, torch.Tensor]:
        """The logical contents, for the oracle."""
        return {"s": self.s, "z": self.z}


def prefill(k: torch.Tensor, v: torch.Tensor, *, capacity: int, cfg: Config = Config()
            ) -> State:
    """The state of a prefix k, v (B, H, L, D), summed in row blocks (capacity is unused)."""
    s_, z = _state(k, v, _work_dtype(k.dtype))
    return State(s_, z, k.shape[-2])


def decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: State, *,
    scale: float | None = None, cfg: Config = Config(),
) -> tuple[torch.Tensor, State]:
    """t new tokens (B, H, t, D): each reads the state, plus the new keys up to itself
    (a (t, t) lower-triangular product); the state gains the new keys. O(t D Dv) per head,
    independent of the context's length."""
    work, (heads, t) = _work_dtype(q.dtype), q.shape[1:3]
    g = group_size(q, k)
    fq = feature_map(fold(q, k.shape[1]).to(work))  # (B, Hkv, G t, D): grouped queries fold
    fk, vw = feature_map(k.to(work)), v.to(work)  # (B, Hkv, t, D)
    keep = repeat_rows(torch.ones(t, t, dtype=torch.bool, device=q.device).tril_(), g)
    a = (fq @ fk.transpose(-2, -1)).mul_(keep)  # (B, Hkv, G t, t): new key j <= new query i
    num = fq @ cache.s + a @ vw  # (B, Hkv, G t, Dv)
    den = _dot(fq, cache.z).add_(a.sum(dim=-1, keepdim=True)).add_(cfg.eps)  # (B, Hkv, G t, 1)
    after = State(cache.s + fk.transpose(-2, -1) @ vw, cache.z + fk.sum(dim=-2),
                  cache.length + t)
    return unfold(num.div_(den).to(q.dtype), heads), after  # (B, H, t, Dv)

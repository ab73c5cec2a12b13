"""Analytic peak-memory models shared by variant families (bytes above the inputs).

Each variant's ``expected_peak_bytes`` composes these. They count the large tensors an
algorithm must hold at its peak (score matrices or tiles, outputs, gradients, saved
statistics), not allocator rounding or small temporaries, so measured peaks sit at or a little
above them. ``e`` is the input element size, ``c`` the size of the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from variants.contract import Shape


@dataclass(frozen=True, kw_only=True)
class Dims(Shape):
    """A problem size plus the element sizes a memory model needs."""

    e: int  # bytes per input element
    c: int  # bytes per element of the compute dtype

    @property
    def scores(self) -> int:
        """Elements of one (B, H, Nq, Nk) score matrix."""
        return self.b * self.h * self.nq * self.nk

    @property
    def q_rows(self) -> int:
        """Elements of one (B, H, Nq, D) tensor."""
        return self.b * self.h * self.nq * self.d

    @property
    def k_rows(self) -> int:
        """Elements of k: (B, Hkv, Nk, D)."""
        return self.b * self.kv_heads * self.nk * self.d

    @property
    def v_rows(self) -> int:
        """Elements of v: (B, Hkv, Nk, Dv)."""
        return self.b * self.kv_heads * self.nk * self.value_dim

    @property
    def kv_rows(self) -> int:
        """Elements of k and v together."""
        return self.k_rows + self.v_rows

    @property
    def o_rows(self) -> int:
        """Elements of the output (and of dout): (B, H, Nq, Dv)."""
        return self.b * self.h * self.nq * self.value_dim


def dims(
    b: int, h: int, nq: int, nk: int, d: int, dtype: torch.dtype, upcast_low_precision: bool,
    *, hkv: int = 0, dv: int = 0,
) -> Dims:
    """Dims for a dtype (grouped k, v with ``hkv`` heads; v and out with head dim ``dv``);
    the compute dtype is float32 for bf16/fp16 if the variant upcasts."""
    e = dtype.itemsize
    c = 4 if upcast_low_precision and e < 4 else e
    return Dims(b, h, nq, nk, d, hkv, dv, e=e, c=c)


def materialised(m: Dims, *, causal: bool, backward: bool) -> int:
    """Full score matrix: forward holds 2 (scores, exp); fwd+bwd 3, plus rows of gradients.

    Scores are counted in the compute dtype (``c``): a kernel that upcasts bf16 scores to
    float32 holds float32 matrices."""
    mask = m.nq * m.nk if causal else 0  # the bool keep-mask
    if not backward:
        return 2 * m.scores * m.c + mask
    return 3 * m.scores * m.c + (m.q_rows + m.k_rows) * m.e + mask


def tiled(m: Dims, *, tile_q: int, tile_k: int, backward: bool) -> int:
    """Online softmax over (tile_q, tile_k) tiles: O(N) rows plus one or two score tiles."""
    tq, tk = min(tile_q, m.nq), min(tile_k, m.nk)
    tile = m.b * m.h * tq * tk * m.c
    lse = m.b * m.h * m.nq * m.c
    upcast_kv = m.kv_rows * m.c if m.c > m.e else 0  # k, v copied to the compute dtype
    acc = m.b * m.h * tq * m.value_dim * m.c  # one query tile's output accumulator
    fwd = m.o_rows * m.e + m.q_rows * m.c + lse + tile + acc + upcast_kv  # out, scaled q
    if not backward:
        return fwd
    # out and lse saved; backward holds scaled q, dq, a delta temporary (out-sized), dk, dv,
    # two tiles, and, for low precision, float32 copies of k, v, dout and out.
    upcast_rows = 2 * m.o_rows * m.c if m.c > m.e else 0
    return (m.o_rows * (m.e + m.c) + 2 * m.q_rows * m.c + m.kv_rows * m.e + lse + 2 * tile
            + upcast_kv + upcast_rows)


def streaming(m: Dims, *, backward: bool, workspace: int = 0) -> int:
    """Fused kernels: output and row statistics, plus dq, dk, dv and a grad-sized buffer."""
    fwd = m.o_rows * m.e + m.b * m.h * m.nq * 4 + workspace
    return fwd + (2 * m.q_rows + m.kv_rows) * m.e if backward else fwd


def linear_form(m: Dims, *, causal: bool, chunk: int, backward: bool, block: int) -> int:
    """Linear attention in row blocks of about ``block`` values: the output (and dq, dk, dv)
    are its only N-sized tensors, besides a few (B, H, rows, D) block temporaries and, if
    causal, (B, H, rows, C) masked chunk products. Low precision blocks are upcast first."""
    out = m.o_rows * m.e
    grads = (m.q_rows + m.kv_rows) * m.e if backward else 0
    if causal:  # blocks of whole chunks: C = min(chunk, Nq), rows = queries left if fewer
        c = max(1, min(chunk, m.nq))
        rows = min(max(1, block // max(1, m.b * m.h * m.d) // c) * c, -(-m.nq // c) * c)
        u, p = m.b * m.h * rows * m.d * m.c, m.b * m.h * rows * c * m.c
        return out + grads + (10 * u + 2 * p if backward else 5 * u + p)
    up = 1 if m.c > m.e else 0
    qb, kb = (min(block, n) * m.c for n in (m.q_rows, m.k_rows))
    if backward:  # queries' pass, then keys' pass
        return out + grads + max((3 + up) * qb, 3 * kb)
    return max((1 + up) * kb, out + 2 * qb)  # states from the keys, then the output


# ---------------------------------------------------------------- traffic (bytes moved)


def io_traffic(m: Dims, *, backward: bool) -> int:
    """The least any implementation moves: forward reads q, k, v and writes out (and float32
    row statistics); backward reads q, k, v, out, dout, the statistics, writes dq, dk, dv.
    Grouped k, v count their Hkv heads once (a kernel that re-reads them per query head moves
    more), v, out and dout their head dim Dv."""
    lse = m.b * m.h * m.nq * 4
    fwd = (m.q_rows + m.kv_rows + m.o_rows) * m.e + lse
    bwd = (m.q_rows + m.kv_rows + 2 * m.o_rows) * m.e + lse + (m.q_rows + m.kv_rows) * m.e
    return fwd + bwd if backward else fwd


#: passes over a materialised (B, H, Nq, Nk) matrix: forward writes S, scales it in place
#: (read, write), softmax reads S and writes P, P @ V reads P (6; a mask adds a masked_fill,
#: read and write); backward writes dP, softmax's backward reads P and dP and writes dS, the
#: scale reads and writes dS, dQ and dK read dS, dV reads P (9)
SCORE_PASSES_FWD, SCORE_PASSES_BWD, MASK_PASSES = 6, 9, 2


def materialised_traffic(m: Dims, *, masked: bool, backward: bool) -> int:
    """io_traffic plus every pass over the score matrices, in the compute dtype, and a bool
    keep-mask read once a direction when masked."""
    passes = SCORE_PASSES_FWD + MASK_PASSES * masked + SCORE_PASSES_BWD * backward
    mask = m.nq * m.nk * (1 + backward) if masked else 0
    return io_traffic(m, backward=backward) + passes * m.scores * m.c + mask

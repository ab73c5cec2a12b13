"""What a measured row held at its peak, inputs included: the quantity a memory budget
bounds ("how long can I go?", harness/longest.py and the report's table)."""

from __future__ import annotations

from harness.rows import Row
from harness.vocab import BACKWARD_MODES, DECODE, ELEMENT_BYTES, MEASURED

MIB = 2**20


def input_bytes(b: int, h: int, kv_heads: int, nq: int, nk: int, d: int, dv: int, *,
                element: int, dout: bool) -> int:
    """Bytes of a call's inputs: q (B, H, Nq, D), k and v (B, Hkv, Nk, D | Dv), and, with a
    backward, dout (B, H, Nq, Dv)."""
    return element * b * (h * nq * (d + (dv if dout else 0)) + kv_heads * nk * (d + dv))


def held_bytes(row: Row) -> float | None:
    """What a measured row held at its peak: the mode's peak above the inputs, plus the
    inputs (q, k, v, and dout with a backward) or, for decode, the cache; None unmeasured."""
    peak = row.peak_fwd_bwd_mib if row.mode in BACKWARD_MODES else row.peak_fwd_mib
    if row.status not in MEASURED or peak is None:
        return None
    element = ELEMENT_BYTES[row.dtype]
    if row.mode == DECODE:
        return peak * MIB + (row.cache_mib or 0.0) * MIB
    return peak * MIB + input_bytes(row.b, row.h, row.kv_heads or row.h, row.nq, row.nk, row.d,
                                    row.dv or row.d, element=element,
                                    dout=row.mode in BACKWARD_MODES)


def fits(row: Row, budget: float) -> bool:
    """A measured row whose peak plus inputs is within the budget (bytes)."""
    held = held_bytes(row)
    return held is not None and held <= budget

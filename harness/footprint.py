"""What a measured row held at its peak, inputs included: the quantity a memory budget
bounds ("how long can I go?", harness/longest.py and the report's table)."""

from __future__ import annotations

from harness.rows import Row
from harness.vocab import BACKWARD_MODES, DECODE, ELEMENT_BYTES, MEASURED

MIB = 2**20


def held_bytes(row: Row) -> float | None:
    """What a measured row held at its peak: the mode's peak above the inputs, plus the
    inputs (q, k, v, and dout with a backward) or, for decode, the cache; None unmeasured."""
    peak = row.peak_fwd_bwd_mib if row.mode in BACKWARD_MODES else row.peak_fwd_mib
    if row.status not in MEASURED or peak is None:
        return None
    element = ELEMENT_BYTES[row.dtype]
    kv, dv = row.kv_heads or row.h, row.dv or row.d
    if row.mode == DECODE:
        return peak * MIB + (row.cache_mib or 0.0) * MIB
    dout = row.h * row.nq * dv if row.mode in BACKWARD_MODES else 0
    inputs = row.h * row.nq * row.d + dout + kv * row.nk * (row.d + dv)  # q, dout, k, v
    return peak * MIB + element * row.b * inputs


def fits(row: Row, budget: float) -> bool:
    """A measured row whose peak plus inputs is within the budget (bytes)."""
    held = held_bytes(row)
    return held is not None and held <= budget

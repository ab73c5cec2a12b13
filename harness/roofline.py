"""Bytes a call moves, and the roofline each row is judged against beside the compute roof.

A variant may model its traffic (``bytes_moved`` in its module: bytes read and written by a
forward, or by a forward and backward); one without a model is counted at the least any
implementation moves: every input read once and every output written once
(``vocab.IO_ONLY_BYTES``). Too few bytes overstate the intensity, so such a row's GiB/s and
its efficiency against the roofline are both lower bounds. The roofline is min(compute roof,
bandwidth x intensity), with both ceilings measured in the same run (``harness/flops.py``:
the GEMM roof and a 256 MiB copy); a row whose intensity (FLOPs per byte) sits below the
ridge point is memory-bound and is judged by bandwidth, as a decode step should be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.cases import Case
from harness.vocab import IO_ONLY_BYTES
from variants import memory_models
from variants.contract import DTYPES, Shape

GIB = 2**30


@dataclass(frozen=True)
class Traffic:
    """Bytes one call of a mode moves, and how they were counted."""

    bytes: int
    convention: str


def io_bytes(shape: Shape, *, dtype: torch.dtype, backward: bool) -> int:
    """The least traffic of attention (``memory_models.io_traffic``): inputs read once,
    outputs written once; grouped k, v at their Hkv heads, v and out at Dv."""
    s = shape
    m = memory_models.dims(s.b, s.h, s.nq, s.nk, s.d, dtype, upcast_low_precision=False,
                           hkv=s.hkv, dv=s.dv)
    return memory_models.io_traffic(m, backward=backward)


def call_shapes(case: Case) -> list[Shape]:
    """The shapes one call attends: the case's own, or for a packed ragged batch each
    sequence at its own length (B = 1); a padded batch moves its whole padded shape."""
    s = case.shape
    if case.ragged_form != "packed":
        return [s]
    return [Shape(1, s.h, n, n, s.d, s.hkv, s.dv) for n in case.lengths]


def traffic(case: Case) -> Traffic:
    """Bytes the case's mode moves per call: the variant's model, or ``io_bytes``, summed
    over the shapes the call attends."""
    variant, cfg, dtype = case.spec.variant, case.spec.cfg, DTYPES[case.dtype]

    def count(shape: Shape, backward: bool) -> tuple[int, bool]:
        own = variant.bytes_moved(shape, dtype=dtype, causal=case.causal, backward=backward,
                                  cfg=cfg, device=case.device)
        return (own, True) if own is not None else (io_bytes(shape, dtype=dtype,
                                                             backward=backward), False)
    shapes = call_shapes(case)
    forward = [count(s, False) for s in shapes]
    fwd, modelled = sum(n for n, _ in forward), forward[0][1]
    both = sum(count(s, True)[0] for s in shapes) if case.mode != "fwd" else fwd
    moved = {"fwd": fwd, "bwd": both - fwd, "fwd+bwd": both}[case.mode]
    return Traffic(moved, f"{variant.name}'s traffic model" if modelled else IO_ONLY_BYTES)


def attainable_gflops(flops: int, moved: int, roof_gflops: float, copy_gib_s: float) -> float:
    """The roofline at this row's intensity: min(compute roof, bandwidth x FLOPs per byte)."""
    return min(roof_gflops, copy_gib_s * GIB / 1e9 * flops / moved)


def traffic_fields(case: Case, median_ms: float | None) -> dict[str, Any]:
    """bytes_moved and achieved GiB/s of a timed case, and the convention (into extra)."""
    t = traffic(case)
    rate = t.bytes / (median_ms * 1e-3) / GIB if median_ms else None
    return {"bytes_moved": t.bytes, "gib_s": rate, "bytes_convention": t.convention}


def roofline_fields(flops: int | None, moved: int | None, gflops: float | None,
                    roof_gflops: float, copy_gib_s: float) -> dict[str, Any]:
    """The attainable GFLOP/s, the row's efficiency against it, and which ceiling binds."""
    if not flops or not moved or gflops is None:
        return {}
    attainable = attainable_gflops(flops, moved, roof_gflops, copy_gib_s)
    return {"attainable_gflops": attainable, "roofline_efficiency": gflops / attainable,
            "bound": "compute" if attainable >= roof_gflops else "memory"}

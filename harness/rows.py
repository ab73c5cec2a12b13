"""Result rows: one typed, frozen record per case; everything a user reads derives from them.

Units are in the field names: ``_ms`` milliseconds, ``_mib`` MiB (2^20 bytes), ``gflops``
10^9 FLOP/s. ``SCHEMA_VERSION`` changes whenever a field changes meaning or is removed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Row:
    """One measured case: identity, status, time, throughput, memory and agreement."""

    key: str
    variant: str
    label: str
    config: dict[str, Any]
    device: str
    dtype: str
    mode: str
    causal: bool
    b: int
    h: int
    nq: int
    nk: int
    d: int
    status: str  # a harness.vocab.Status
    compile: bool = False  # identity, added after schema 1: run through torch.compile
    new_tokens: int = 0  # identity, added after schema 1: decode's tokens per step (else 0)
    kv_heads: int = 0  # identity, added after schema 1: k/v heads when grouped (0: h of them)
    ragged: str = ""  # identity, added after schema 1: how a ragged batch's lengths are drawn
    ragged_form: str = ""  # identity, added after schema 1: padded or packed
    dv: int = 0  # identity, added after schema 1: value head dim when not d (0: d)
    reason: str = ""
    schema: int = SCHEMA_VERSION
    # time
    threads: int | None = None
    times_ms: tuple[float, ...] = ()  # per-iteration time of each measured block
    median_ms: float | None = None
    iqr_ms: float | None = None
    samples: int = 0
    number_per_run: int = 0
    # minor page faults per timed call (CPU): fresh pages mapped, e.g. when glibc returned
    # blocks of >= 32 MiB to the OS and each call maps them again
    minor_faults_per_call: float | None = None
    # throughput
    flops: int | None = None
    gflops: float | None = None
    roof_gflops: float | None = None
    efficiency: float | None = None  # gflops / roof_gflops, same run, same device and dtype
    copy_gib_s: float | None = None
    # traffic and the roofline (harness/roofline.py): bytes read and written per call, the
    # achieved GiB/s, min(roof, copy bandwidth x FLOPs per byte) and gflops against it
    bytes_moved: int | None = None
    gib_s: float | None = None
    attainable_gflops: float | None = None
    roofline_efficiency: float | None = None
    # memory (peak above entry, inputs excluded)
    peak_fwd_mib: float | None = None
    peak_fwd_bwd_mib: float | None = None
    expected_fwd_mib: float | None = None
    expected_fwd_bwd_mib: float | None = None
    cache_mib: float | None = None  # decode: the cache the step holds (KV, window or state)
    # ragged batches: real tokens per second, and the share of computed pairs that are padding
    tokens_per_s: float | None = None
    padding_waste: float | None = None
    # agreement with the float64 oracle
    check_ok: bool | None = None
    check_shape: str = ""  # the shape checked (the case's own, or a smaller one)
    check_tensor: str = ""  # the worst tensor (out, dq, dk, dv)
    check_max_abs: float | None = None
    check_max_rel: float | None = None
    check_allowed: float | None = None
    err_vs_softmax: float | None = None
    # bookkeeping
    wall_s: float | None = None  # measure()'s own wall time for this case
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        data = dataclasses.asdict(self)
        data["times_ms"] = list(self.times_ms)
        return data

    def to_json(self) -> dict[str, Any]:
        """Strict-JSON data: non-finite numbers become null, their values kept (as text) in
        ``extra["nonfinite"]`` so that the row reads back the same."""
        data = self.to_dict()
        nonfinite = {}
        for name, value in data.items():
            if isinstance(value, float) and not math.isfinite(value):
                nonfinite[name], data[name] = repr(value), None
        data = finite(data)
        if nonfinite:
            data["extra"] = {**data["extra"], "nonfinite": nonfinite}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """Rebuild a row (from strict or older JSON); refuses other schema versions."""
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(
                f"row schema {data.get('schema')!r} is not supported (expected {SCHEMA_VERSION})"
            )
        extra = dict(data.get("extra") or {})
        restored = {name: float(text) for name, text in extra.pop("nonfinite", {}).items()}
        times = tuple(math.nan if t is None else t for t in data.get("times_ms", ()))
        return cls(**{**data, **restored, "extra": extra, "times_ms": times})


def finite(data: Any) -> Any:
    """The same data with NaN and infinities as None, at any depth (strict JSON)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data

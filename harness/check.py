"""``python -m harness check``: the agreement matrix of every variant against the oracle.

Each variant spec runs over dtypes x causal x awkward shapes: N in {1, 3, 127, 257}; the
lengths that cross each of the variant's boundaries (b + 1 and 2b + 1, square and Nq != Nk
both ways), where the boundaries are every positive int of its Config (tiles, blocks, windows,
whatever the fields are called) and, for a sparse pattern, the reach its ``keep`` mask
declares; D in {16, 80}; Nq != Nk both ways; q, k scaled x30 for large logits; and explicit
scales far from 1/sqrt(D) (a variant that ignores ``scale`` fails). Gradients are checked too
where the variant supports backward. Exit code: 1 on any disagreement, else 0.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import pandas as pd

from harness.config import CheckSettings
from harness.oracle import Shape, check_agreement
from harness.specs import VariantSpec
from harness.vocab import FAILING, Status
from variants.contract import DTYPES, SparseSoftmax, Unavailable, Variant

MAX_BOUNDARY = 2048  # boundaries above this are not probed (the check would take minutes)
EXPLICIT_SCALES = (0.3, 0.05)  # far from 1/sqrt(D) = 0.125 at D = 64


@dataclass(frozen=True)
class Probe:
    """One shape of the matrix, with the factor applied to q and k."""

    shape: Shape
    logit_scale: float = 1.0
    scale: float | None = None  # passed to the variant and the oracle; None = 1/sqrt(D)

    def label(self) -> str:
        """Shape label, with the logit scale when it is not 1 and an explicit scale."""
        suffix = f" x{self.logit_scale:g}" if self.logit_scale != 1.0 else ""
        suffix += f" scale={self.scale:g}" if self.scale is not None else ""
        return self.shape.label() + suffix


@dataclass(frozen=True)
class CheckRow:
    """The verdict of one (spec, dtype, causal, probe); errors are of the worst tensor."""

    variant: str
    dtype: str
    causal: bool
    shape: str
    status: str  # a Status: ok, unavailable, or one of FAILING (the matrix fails)
    tensor: str = ""
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    allowed: float = float("nan")
    err_vs_softmax: float | None = None
    reason: str = ""


def pattern_reach(variant: Variant, cfg: Any, n: int = 1024) -> int | None:
    """How far back a sparse pattern's band reaches (max i - j kept below the diagonal, at
    N = n), or None for a dense variant or a pattern that reaches everything."""
    semantics = variant.computes(cfg)
    if not isinstance(semantics, SparseSoftmax):
        return None
    import torch

    keep = semantics.keep(n, n, True, torch.device("cpu"))  # (N, N) bool, causal folded in
    rows, cols = torch.nonzero(keep, as_tuple=True)
    reach = int((rows - cols).max()) if rows.numel() else 0
    return reach if 0 < reach < n - 1 else None


def boundaries(variant: Variant, cfg: Any) -> list[int]:
    """Every length the variant declares a change at: its Config's positive ints (whatever
    their names) and its sparse pattern's reach, up to MAX_BOUNDARY."""
    found = [getattr(cfg, f.name) for f in dataclasses.fields(cfg)]
    found = [v for v in found if isinstance(v, int) and not isinstance(v, bool) and v > 1]
    found.append(pattern_reach(variant, cfg) or 0)
    return sorted({v for v in found if 1 < v <= MAX_BOUNDARY})


def tile_lengths(variant: Variant, cfg: Any) -> list[int]:
    """N values that straddle the variant's boundaries: b + 1 and 2 x b + 1."""
    return sorted({n for b in boundaries(variant, cfg) for n in (b + 1, 2 * b + 1)})


def probes(variant: Variant, cfg: Any) -> list[Probe]:
    """The awkward shapes for one config."""
    square = [Probe(Shape(2, 3, n, n, 64)) for n in (1, 3, 127, 257)]
    lengths = tile_lengths(variant, cfg)
    tiles = [Probe(Shape(1, 2, n, n, 64)) for n in lengths]
    crossed = [Probe(Shape(1, 2, nq, nk, 64)) for b in boundaries(variant, cfg)
               for nq, nk in ((b + 1, 2 * b + 1), (2 * b + 1, b + 1))]  # Nq != Nk both ways
    dims = [Probe(Shape(2, 3, 127, 127, d)) for d in (16, 80)]
    ragged = [Probe(Shape(2, 3, 127, 257, 64)), Probe(Shape(2, 3, 257, 127, 64))]
    scaled = [Probe(Shape(2, 3, 127, 127, 64), scale=x) for x in EXPLICIT_SCALES]
    return [*square, *tiles, *crossed, *dims, *ragged, *scaled,
            Probe(Shape(2, 3, 257, 257, 64), 30.0)]


def run_cell(spec: VariantSpec, dtype: str, causal: bool, *, device: str, backward: bool,
             seed: int) -> list[CheckRow]:
    """Rows for one spec at one dtype and causal setting (run in the supervised worker);
    an exception from the variant is an ``error`` row, the other probes still run."""
    backward = backward and spec.variant.supports.backward
    base = {"variant": spec.label, "dtype": dtype, "causal": causal}
    reason = spec.variant.unavailable_reason(
        device, DTYPES[dtype], causal=causal, backward=backward, cfg=spec.cfg
    )
    if reason:
        return [CheckRow(**base, shape="*", status=Status.UNAVAILABLE, reason=reason)]
    rows = []
    for probe in probes(spec.variant, spec.cfg):
        try:
            agreement = check_agreement(
                spec.variant, spec.cfg, probe.shape, device=device, dtype=DTYPES[dtype],
                causal=causal, backward=backward, seed=seed, logit_scale=probe.logit_scale,
                scale=probe.scale,
            )
        except Unavailable as exc:
            rows.append(CheckRow(**base, shape=probe.label(), status=Status.UNAVAILABLE,
                                 reason=str(exc)))
            continue
        except Exception as exc:  # the variant's bug: recorded, the matrix goes on
            rows.append(CheckRow(**base, shape=probe.label(), status=Status.ERROR,
                                 reason=f"{type(exc).__name__}: {exc}"))
            continue
        worst = agreement.worst()
        rows.append(CheckRow(
            **base, shape=probe.label(), status=Status.OK if agreement.ok else Status.MISMATCH,
            tensor=worst.tensor, max_abs=worst.max_abs, max_rel=worst.max_rel,
            allowed=worst.allowed, err_vs_softmax=agreement.err_vs_softmax,
        ))
    return rows


def run_matrix(settings: CheckSettings) -> list[CheckRow]:
    """Every row of the agreement matrix, each cell in a supervised worker: a variant that
    crashes or hangs is one ``crashed`` or ``timeout`` row, the others still run."""
    from harness.worker import CheckRequest, Supervisor

    rows = []
    with Supervisor(timeout_s=settings.timeout_s) as sup:
        for spec in settings.specs:
            for dtype in settings.dtypes:
                for causal in settings.causal:
                    request = CheckRequest(
                        spec.variant.module.__name__, spec.label,
                        dataclasses.asdict(spec.cfg), dtype, causal, settings.device,
                        settings.backward, settings.seed)
                    status, result = sup.call(request)
                    if status == Status.OK:
                        rows.extend(CheckRow(**r) for r in result)
                    else:
                        rows.append(CheckRow(spec.label, dtype, causal, "*", status,
                                             reason=result))
    return rows


def summary(rows: list[CheckRow]) -> pd.DataFrame:
    """One line per (variant, dtype, causal) over its shapes: worst errors and a verdict."""
    df = pd.DataFrame([dataclasses.asdict(r) for r in rows if r.status != Status.UNAVAILABLE])
    if df.empty:
        return df
    df["err/allowed"] = df["max_abs"] / df["allowed"]
    grouped = df.groupby(["variant", "dtype", "causal"], sort=False)
    table = grouped.agg(  # NaN and inf are the worst values, never skipped
        shapes=("shape", "size"), max_abs=("max_abs", worst), max_rel=("max_rel", worst),
        worst_ratio=("err/allowed", worst), err_vs_softmax=("err_vs_softmax", worst),
    )
    failed = grouped["status"].apply(lambda s: int((s != Status.OK).sum()))
    table["verdict"] = ["ok" if n == 0 else f"MISMATCH ({n})" for n in failed]
    return table.reset_index()


def worst(values: pd.Series) -> float:
    """The largest value, NaN if any is NaN (pandas' max would skip it)."""
    values = values.astype(float)
    return math.nan if values.isna().any() else float(values.max())


def report(rows: list[CheckRow], out: TextIO = sys.stdout) -> int:
    """Print the summary, failures and unavailable combinations; return the exit code."""
    table = summary(rows)
    with pd.option_context("display.width", 200, "display.max_rows", None):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"), file=out)
        bad = [r for r in rows if r.status in FAILING]
        for r in bad:
            if r.status == Status.MISMATCH:
                print(f"MISMATCH {r.variant} {r.dtype} causal={r.causal} {r.shape}: "
                      f"{r.tensor} max abs {r.max_abs:.3g} > allowed {r.allowed:.3g}", file=out)
            else:
                print(f"{r.status.upper()} {r.variant} {r.dtype} causal={r.causal} {r.shape}: "
                      f"{r.reason}", file=out)
        unavailable: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            if r.status == Status.UNAVAILABLE:
                combo = f"{r.dtype}/{'causal' if r.causal else 'full'}"
                unavailable.setdefault((r.variant, r.reason), []).append(combo)
        if unavailable:
            print("\nunavailable:", file=out)
        for (variant, reason), combos in unavailable.items():
            print(f"  {variant} [{', '.join(dict.fromkeys(combos))}]: {reason}", file=out)
    ok = sum(r.status == Status.OK for r in rows)
    print(f"\n{ok} agree, {len(bad)} disagree, {len(rows) - ok - len(bad)} unavailable",
          file=out)
    return 1 if bad else 0

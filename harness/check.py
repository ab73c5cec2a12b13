"""``python -m harness check``: the agreement matrix of every variant against the oracle.

Each variant spec runs over dtypes x causal x awkward shapes: N in {1, 3, 127, 257}, every
tile-like Config field (``block*``, ``chunk``, ``window``) + 1 and 2 x it + 1, D in {16, 80},
Nq != Nk both ways, and q, k scaled x30 for large logits. Gradients are checked too where
the variant supports backward. Exit code: 1 on any disagreement, else 0.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import pandas as pd

from harness.config import CheckSettings
from harness.oracle import Shape, check_agreement
from harness.specs import VariantSpec
from variants.contract import DTYPES, Unavailable

TILE_FIELDS = ("block", "chunk", "window")


@dataclass(frozen=True)
class Probe:
    """One shape of the matrix, with the factor applied to q and k."""

    shape: Shape
    logit_scale: float = 1.0

    def label(self) -> str:
        """Shape label, with the logit scale when it is not 1."""
        suffix = f" x{self.logit_scale:g}" if self.logit_scale != 1.0 else ""
        return self.shape.label() + suffix


@dataclass(frozen=True)
class CheckRow:
    """The verdict of one (spec, dtype, causal, probe); errors are of the worst tensor."""

    variant: str
    dtype: str
    causal: bool
    shape: str
    status: str  # ok | mismatch | unavailable
    tensor: str = ""
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    allowed: float = float("nan")
    err_vs_softmax: float | None = None
    reason: str = ""


def tile_lengths(cfg: Any) -> list[int]:
    """N values that straddle the config's tiles: tile + 1 and 2 x tile + 1."""
    lengths = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name.startswith(TILE_FIELDS) and isinstance(value, int) and value > 0:
            lengths += [value + 1, 2 * value + 1]
    return sorted(set(lengths))


def probes(cfg: Any) -> list[Probe]:
    """The awkward shapes for one config."""
    square = [Probe(Shape(2, 3, n, n, 64)) for n in (1, 3, 127, 257)]
    tiles = [Probe(Shape(1, 2, n, n, 64)) for n in tile_lengths(cfg)]
    dims = [Probe(Shape(2, 3, 127, 127, d)) for d in (16, 80)]
    ragged = [Probe(Shape(2, 3, 127, 257, 64)), Probe(Shape(2, 3, 257, 127, 64))]
    return [*square, *tiles, *dims, *ragged, Probe(Shape(2, 3, 257, 257, 64), 30.0)]


def run_spec(spec: VariantSpec, dtype: str, causal: bool, s: CheckSettings) -> Iterator[CheckRow]:
    """Rows for one spec at one dtype and causal setting."""
    backward = s.backward and spec.variant.supports.backward
    base = {"variant": spec.label, "dtype": dtype, "causal": causal}
    reason = spec.variant.unavailable_reason(
        s.device, DTYPES[dtype], causal=causal, backward=backward, cfg=spec.cfg
    )
    if reason:
        yield CheckRow(**base, shape="*", status="unavailable", reason=reason)
        return
    for probe in probes(spec.cfg):
        try:
            agreement = check_agreement(
                spec.variant, spec.cfg, probe.shape, device=s.device, dtype=DTYPES[dtype],
                causal=causal, backward=backward, seed=s.seed, logit_scale=probe.logit_scale,
            )
        except Unavailable as exc:
            yield CheckRow(**base, shape=probe.label(), status="unavailable", reason=str(exc))
            continue
        worst = agreement.worst()
        yield CheckRow(
            **base, shape=probe.label(), status="ok" if agreement.ok else "mismatch",
            tensor=worst.tensor, max_abs=worst.max_abs, max_rel=worst.max_rel,
            allowed=worst.allowed, err_vs_softmax=agreement.err_vs_softmax,
        )


def run_matrix(settings: CheckSettings) -> list[CheckRow]:
    """Every row of the agreement matrix."""
    rows = []
    for spec in settings.specs:
        for dtype in settings.dtypes:
            for causal in settings.causal:
                rows.extend(run_spec(spec, dtype, causal, settings))
    return rows


def summary(rows: list[CheckRow]) -> pd.DataFrame:
    """One line per (variant, dtype, causal) over its shapes: worst errors and a verdict."""
    df = pd.DataFrame([dataclasses.asdict(r) for r in rows if r.status != "unavailable"])
    if df.empty:
        return df
    df["err/allowed"] = df["max_abs"] / df["allowed"]
    grouped = df.groupby(["variant", "dtype", "causal"], sort=False)
    table = grouped.agg(
        shapes=("shape", "size"), max_abs=("max_abs", "max"), max_rel=("max_rel", "max"),
        worst_ratio=("err/allowed", "max"), err_vs_softmax=("err_vs_softmax", "max"),
    )
    failed = grouped["status"].apply(lambda s: int((s != "ok").sum()))
    table["verdict"] = ["ok" if n == 0 else f"MISMATCH ({n})" for n in failed]
    return table.reset_index()


def report(rows: list[CheckRow], out: TextIO = sys.stdout) -> int:
    """Print the summary, failures and unavailable combinations; return the exit code."""
    table = summary(rows)
    with pd.option_context("display.width", 200, "display.max_rows", None):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"), file=out)
        bad = [r for r in rows if r.status == "mismatch"]
        for r in bad:
            print(f"MISMATCH {r.variant} {r.dtype} causal={r.causal} {r.shape}: {r.tensor} "
                  f"max abs {r.max_abs:.3g} > allowed {r.allowed:.3g}", file=out)
        unavailable: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            if r.status == "unavailable":
                combo = f"{r.dtype}/{'causal' if r.causal else 'full'}"
                unavailable.setdefault((r.variant, r.reason), []).append(combo)
        if unavailable:
            print("\nunavailable:", file=out)
        for (variant, reason), combos in unavailable.items():
            print(f"  {variant} [{', '.join(dict.fromkeys(combos))}]: {reason}", file=out)
    ok = sum(r.status == "ok" for r in rows)
    print(f"\n{ok} agree, {len(bad)} disagree, {len(rows) - ok - len(bad)} unavailable",
          file=out)
    return 1 if bad else 0

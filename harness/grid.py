"""Expand validated grid settings into cases, measure them, and print rows as a table."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

import pandas as pd

from harness.cases import Case
from harness.config import GridSettings
from harness.rows import Row
from harness.vocab import DECODE, Status, describe

TABLE_COLUMNS = {
    "label": "variant", "dtype": "dtype", "mode": "mode", "causal": "causal", "b": "B",
    "nq": "N", "status": "status", "median_ms": "median ms", "iqr_ms": "IQR ms",
    "gflops": "GFLOP/s", "efficiency": "eff", "peak_fwd_mib": "fwd MiB",
    "expected_fwd_mib": "fwd MiB exp", "peak_fwd_bwd_mib": "f+b MiB",
    "expected_fwd_bwd_mib": "f+b MiB exp", "check_max_abs": "max err",
}


def cases(s: GridSettings) -> Iterator[Case]:
    """Every combination of the grid's axes, variants outermost, eager before compiled.
    Decode cases take their own axes (decode_tokens, decode_contexts) and are causal."""
    outer = itertools.product(s.specs, s.compile, s.dtypes, s.head_dims, s.kv_heads, s.modes)
    for spec, compiled, dtype, d, kv, mode in outer:
        if mode == DECODE:
            axes = itertools.product([True], s.batch_sizes, s.decode_contexts, s.decode_tokens,
                                     [("", "")])
        else:
            batches = [(r, f) for r in s.ragged for f in (s.ragged_forms if r else [""])]
            axes = itertools.product(s.causal, s.batch_sizes, s.seq_lens, [0], batches)
        for causal, b, n, tokens, (ragged, form) in axes:
            yield Case(spec, s.device, dtype, mode, causal, b, s.heads, n, n, d,
                       compile=compiled, new_tokens=tokens, kv_heads=kv, ragged=ragged,
                       ragged_form=form, dv=0 if s.v_head_dim == d else s.v_head_dim)


def measure_grid(s: GridSettings, progress: TextIO = sys.stderr) -> list[Row]:
    """Measure every case of the grid, each in a supervised worker (a crash or hang is one
    row), saying each status as it comes."""
    from harness.worker import Supervisor

    rows = []
    with Supervisor(timeout_s=s.timeout_s, env=s.worker_env) as sup:
        for case in cases(s):
            rows.append(sup.run(case, s.measure))
            print(f"{describe(case)}: {rows[-1].status}", file=progress, flush=True)
    return rows


def table(rows: Iterable[Row]) -> pd.DataFrame:
    """Rows as a compact table (units in the headers)."""
    df = pd.DataFrame([r.to_dict() for r in rows])
    if df.empty:
        return df
    df = df[list(TABLE_COLUMNS)].rename(columns=TABLE_COLUMNS)
    df["eff"] = (df["eff"] * 100).round(1).astype("string") + "%"
    return df


def print_table(rows: list[Row], out: TextIO = sys.stdout) -> None:
    """Print the table with 3 significant figures, then the reason for each non-ok status."""
    with pd.option_context("display.width", 250, "display.max_rows", None,
                           "display.max_columns", None):
        print(table(rows).to_string(index=False, float_format=lambda x: f"{x:.3g}"), file=out)
    reasons = {(r.label, r.status, r.reason) for r in rows if r.status != Status.OK}
    for label, status, reason in sorted(reasons):
        print(f"  {label} {status}: {reason or 'the oracle disagreed (see max err)'}", file=out)

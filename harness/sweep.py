"""The sweep: expand the grid, run each case in a supervised worker, keep every row.

Rows are appended to ``rows.jsonl`` as each case finishes (``harness/store.py``); a resumed
sweep runs only the cases whose keys are missing. Three rules skip cases without running them,
each recorded as a ``skipped`` row with its reason: the OOM frontier (once a variant runs out
of memory at some N, larger N with the same other axes are not attempted), predicted OOM
(the variant's memory model plus the inputs exceed ``memory_margin`` of the free memory,
unless ``force``) and the budget (once ``budget_s`` seconds have passed since the sweep began
measuring, every case left; the first case always runs). With a budget, cases run smallest
shape first across all variants, so a budget cuts the largest shapes, not whole variants.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import torch
from tqdm import tqdm

from harness.cases import Case
from harness.config import SweepSettings
from harness.decode import predicted_step_bytes
from harness.doctor import summary as doctor_summary
from harness.fingerprint import fingerprint
from harness.flops import measure_roof
from harness.footprint import input_bytes
from harness.grid import cases
from harness.interop import to_pytest_benchmark
from harness.longest import first_guess, search, templates, with_n
from harness.measure import base_row
from harness.memory import MIB
from harness.rows import Row
from harness.rundir import FREE_KEYS
from harness.store import RunStore, StoreError, iter_status_counts, measured_machine
from harness.support import as_records, support_matrix
from harness.vocab import BUDGET_PREFIX, DECODE, MEASURED, PACE_PREFIX, Status, describe
from harness.worker import Supervisor
from variants.contract import DTYPES


def frontier_key(case_or_row: Case | Row) -> tuple[Any, ...]:
    """The axes an OOM frontier is shared along: everything but the sequence length."""
    c = case_or_row
    return (c.label, c.device, c.dtype, c.mode, c.causal, c.b, c.h, c.d)


def free_bytes(device: str) -> int:
    """Memory free for a new case: MemAvailable on CPU, the CUDA driver's free bytes on GPU."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")


def predicted_bytes(case: Case) -> int | None:
    """The memory model's peak for the case plus its inputs (q, k, v, dout), or None; for a
    decode case, its context drawn and cached."""
    if case.mode == DECODE:
        return predicted_step_bytes(case)
    model = case.spec.variant.expected_peak_bytes(
        case.shape, dtype=DTYPES[case.dtype],
        causal=case.causal, backward=case.backward, cfg=case.spec.cfg, device=case.device,
    )
    if model is None:
        return None
    s = case.shape  # inputs as a backward holds them (dout too): an upper bound
    return model + input_bytes(s.b, s.h, s.kv_heads, s.nq, s.nk, s.d, s.value_dim,
                               element=DTYPES[case.dtype].itemsize, dout=True)


def skip_reason(case: Case, frontier: dict[tuple[Any, ...], int], s: SweepSettings,
                free: int) -> str | None:
    """Why the case is skipped without running, or None to run it."""
    oom_n = frontier.get(frontier_key(case))
    if oom_n is not None and case.nq > oom_n:
        return f"skipped: {case.label} ran out of memory at N={oom_n} (same other axes)"
    predicted = predicted_bytes(case)
    if not s.force and predicted is not None and predicted > s.memory_margin * free:
        return (f"predicted OOM: the memory model needs {predicted / MIB:.0f} MiB, "
                f"{s.memory_margin:.0%} of the {free / MIB:.0f} MiB free is "
                f"{s.memory_margin * free / MIB:.0f} MiB (force=true runs it anyway)")
    return None




def budget_order(todo: list[Case]) -> list[Case]:
    """The cases smallest shape first (N, then B), keeping the grid's order within a shape:
    under a budget every variant gets its small cases before any gets its large ones."""
    return sorted(todo, key=lambda c: (c.nq, c.nk, c.b))


def budget_reason(s: SweepSettings, started: float, i: int, total: int,
                  budget: dict[str, Any]) -> str | None:
    """Why case ``i`` of ``total`` is not attempted once the sweep's budget_s is spent (the
    first case always runs), or None; ``budget`` records where it was spent and the count."""
    if not s.budget_s or i == 0:
        return None
    if "spent_after_cases" not in budget:
        if time.monotonic() - started <= s.budget_s:
            return None
        budget["spent_after_cases"] = i
    budget["skipped"] = budget.get("skipped", 0) + 1
    return (f"{BUDGET_PREFIX}the sweep's budget_s={s.budget_s:g} s was spent after "
            f"{budget['spent_after_cases']} of {total} cases (not attempted)")


def _note_oom(frontier: dict[tuple[Any, ...], int], row: Row) -> None:
    if row.status == Status.OOM:
        key = frontier_key(row)
        frontier[key] = min(row.nq, frontier.get(key, row.nq))


def manifest(s: SweepSettings, resolved: dict[str, Any], store: RunStore, **extra: Any) -> dict:
    """The run manifest: config, fingerprint, times and counts per status."""
    rows = store.rows()
    fp = fingerprint(s.grid.device, resolved)
    soft = {**fp.soft, **measured_machine(rows)}
    cells = support_matrix(s.grid.specs, (s.grid.device,), s.grid.dtypes)
    return {
        "preset": s.preset, "config": resolved, "fingerprint": {"hard": fp.hard, "soft": soft},
        "doctor": doctor_summary(s.grid.device), "support": as_records(cells),
        "counts": dict(iter_status_counts(rows)), "rows": len(rows), **extra,
    }


def run_sweep(s: SweepSettings, out_dir: Path, resolved: dict[str, Any],
              out: TextIO = sys.stdout) -> list[Row]:
    """Run every missing case of the grid into ``out_dir``; return all rows there.

    The directory is locked for as long as this runs; a new run refuses a directory that
    already holds one (StoreError, naming it)."""
    store = RunStore.open(out_dir)
    with store.locked():
        if not s.resume and (store.rows_path.exists() or store.manifest_path.exists()):
            raise StoreError(f"{out_dir}: already holds a run; a new run never writes into "
                             "another's directory (resume= completes it)")
        return _sweep(s, store, resolved, out)


def _extensions(previous: dict[str, Any], resolved: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's record of grid extensions (resume with extend=true)."""
    old = previous.get("config") or {}
    changed = {k: {"was": old[k], "now": v} for k, v in resolved.items()
               if k in old and old[k] != v and k not in FREE_KEYS}
    done = list(previous.get("extensions", []))
    if changed:
        done.append({"at": dt.datetime.now(dt.UTC).isoformat(), "changed": changed})
    return done


def _sweep(s: SweepSettings, store: RunStore, resolved: dict[str, Any],
           out: TextIO) -> list[Row]:
    """The locked body of run_sweep."""
    out_dir = store.directory
    previous = store.read_manifest() or {}
    extensions = _extensions(previous, resolved)
    started = previous.get("started") or dt.datetime.now(dt.UTC).isoformat()
    all_cases = list(cases(s.grid))
    done = store.done_keys()
    frontier: dict[tuple[Any, ...], int] = {}
    for row in store.rows():
        _note_oom(frontier, row)
    todo = [c for c in all_cases if c.key() not in done]
    todo = budget_order(todo) if s.budget_s else todo
    budget: dict[str, Any] = {"budget_s": s.budget_s, "skipped": 0} if s.budget_s else {}
    store.write_manifest(manifest(s, resolved, store, started=started, status="running",
                                  cases_total=len(all_cases), extensions=extensions,
                                  dropped=store.dropped))
    status = "interrupted"
    roofs: list[dict[str, Any]] = list(previous.get("roofs", []))
    if s.paced:
        _pace_signal(f"ready {len(todo)} {out_dir.resolve()}")
    longest = {"budget_mib": longest_budget(s) / MIB} if s.longest else {}
    try:
        if s.longest:
            _run_longest(all_cases, s, store, longest)
        else:
            _run_cases(todo, s, store, frontier, roofs, budget)
        status = "complete"
    except (KeyboardInterrupt, PaceEnded):
        print(f"\ninterrupted: {len(store.rows())} rows kept in {out_dir}; finish them with "
              f"the same command plus resume={out_dir}", file=sys.stderr)
        raise
    finally:
        store.write_manifest(manifest(s, resolved, store, started=started, status=status,
                                      finished=dt.datetime.now(dt.UTC).isoformat(),
                                      cases_total=len(all_cases), extensions=extensions,
                                      dropped=store.dropped, roofs=roofs,
                                      **({"budget": budget} if budget else {}),
                                      **({"longest": longest} if longest else {})))
    if budget.get("skipped"):
        print(f"budget: {budget['skipped']} of {len(todo)} cases skipped, not attempted: "
              f"budget_s={s.budget_s:g} s was spent after {budget['spent_after_cases']} "
              f"cases (their rows say so)", file=out)
    rows = store.rows()
    write_csv(rows, out_dir / "rows.csv")
    write_pytest_benchmark(rows, out_dir / "pytest_benchmark.json",
                           (store.read_manifest() or {}).get("fingerprint", {}))
    print_summary(rows, out_dir, out)
    return rows


def checkpoint_roofs(s: SweepSettings, when: str) -> list[dict[str, Any]]:
    """The GEMM roof and copy bandwidth measured now, per dtype of the grid (the run's start
    and end: compare and report flag a run whose roof drifted)."""
    threads = s.grid.measure.threads or torch.get_num_threads()
    out = []
    for dtype in s.grid.dtypes:
        roof = measure_roof.__wrapped__(s.grid.device, dtype, threads=threads)  # as workers do
        out.append({"when": when, "at": dt.datetime.now(dt.UTC).isoformat(), "dtype": dtype,
                    "gflops": roof.gemm_gflops, "copy_gib_s": roof.copy_gib_s,
                    "load1": os.getloadavg()[0]})
    return out


def _run_cases(todo: list[Case], s: SweepSettings, store: RunStore,
               frontier: dict[tuple[Any, ...], int], roofs: list[dict[str, Any]],
               budget: dict[str, Any]) -> None:
    """Supervise the remaining cases, appending each row as soon as it exists; measure the
    roof before the first and after the last (in a paced run, within this side's turn)."""
    started = time.monotonic()
    with Supervisor(timeout_s=s.grid.timeout_s, env=s.grid.worker_env) as sup, tqdm(
        total=len(todo), unit="case", file=sys.stderr, dynamic_ncols=True
    ) as bar:
        for i, case in enumerate(todo):
            if s.paced and not sys.stdin.readline():
                raise PaceEnded("the driver closed stdin before every case ran")
            if i == 0 and s.grid.measure.roof:
                roofs.extend(checkpoint_roofs(s, "start"))
            bar.set_postfix_str(f"{case.spec.label} {case.dtype} {case.mode} "
                                f"causal={case.causal} B={case.b} N={case.nq}")
            reason = (budget_reason(s, started, i, len(todo), budget)
                      or skip_reason(case, frontier, s, free_bytes(case.device)))
            if reason:
                row = replace(base_row(case), status=Status.SKIPPED, reason=reason)
            else:
                row = sup.run(case, s.grid.measure)
            store.append(row)
            _note_oom(frontier, row)
            bar.update()
            if i == len(todo) - 1 and s.grid.measure.roof:
                roofs.extend(checkpoint_roofs(s, "end"))
            if s.paced:
                _pace_signal("done")
        if s.paced:  # stop the worker and write outputs only once the other side of an A/B
            sys.stdin.readline()  # run has measured its last case too


def longest_budget(s: SweepSettings) -> float:
    """The longest search's budget in bytes: memory_budget_mib, or memory_margin of what is
    free now."""
    if s.memory_budget_mib:
        return s.memory_budget_mib * MIB
    return s.memory_margin * free_bytes(s.grid.device)


def _run_longest(all_cases: list[Case], s: SweepSettings, store: RunStore,
                 record: dict[str, Any]) -> None:
    """Search each series' longest N that fits the budget (harness/longest.py); every probe
    a supervised case appended as a row; a probe already in the store is not run again."""
    budget = record["budget_mib"] * MIB
    done = {r.key: r for r in store.rows()}
    answers = []
    with Supervisor(timeout_s=s.grid.timeout_s, env=s.grid.worker_env) as sup:
        def probe(case: Case) -> Row:
            if case.key() in done:
                return done[case.key()]
            reason = skip_reason(case, {}, s, free_bytes(case.device))
            row = (replace(base_row(case), status=Status.SKIPPED, reason=reason) if reason
                   else sup.run(case, s.grid.measure))
            store.append(row)
            done[row.key] = row
            print(f"{describe(case)}: {row.status}", file=sys.stderr, flush=True)
            return row

        for template in templates(all_cases):
            guess = first_guess(template, budget, predicted_bytes, s.longest_max_n)
            answer = search(template, budget, probe, guess=guess, max_n=s.longest_max_n,
                            resolution=s.longest_resolution)
            answers.append({"case": describe(with_n(template, answer.longest or 1)),
                            "longest": answer.longest, "too_long": answer.too_long})
    record["answers"] = answers


class PaceEnded(KeyboardInterrupt):
    """A paced sweep's driver (harness ab) stopped sending cases: the run is interrupted."""


def _pace_signal(message: str) -> None:
    """Tell the driver of a paced sweep where it stands (one line on stdout)."""
    print(PACE_PREFIX + message, flush=True)


def write_csv(rows: Iterable[Row], path: Path) -> None:
    """The derived CSV: one line per row, block times joined by spaces."""
    records = []
    for row in rows:
        data = row.to_dict()
        data["times_ms"] = " ".join(f"{t:.6g}" for t in row.times_ms)
        records.append(data)
    pd.DataFrame(records).to_csv(path, index=False)


def write_pytest_benchmark(rows: list[Row], path: Path, fp: dict[str, Any]) -> None:
    """The derived pytest-benchmark JSON (for github-action-benchmark and its compare)."""
    path.write_text(json.dumps(to_pytest_benchmark(rows, fp), indent=1, default=str,
                               allow_nan=False) + "\n")


def print_summary(rows: list[Row], out_dir: Path, out: TextIO) -> None:
    """Median ms per variant x N (non-ok statuses in the cell), counts, and where it all is."""
    df = pd.DataFrame([r.to_dict() for r in rows])
    if not df.empty:
        df["cell"] = [f"{m:.3g}" if s in MEASURED and m == m else s.upper()
                      for m, s in zip(df["median_ms"], df["status"], strict=True)]
        df.loc[df["status"] == Status.MISMATCH, "cell"] += "!"
        table = df.pivot_table(index=["label", "dtype", "mode", "causal", "b"], columns="nq",
                               values="cell", aggfunc="first")
        with pd.option_context("display.width", 250, "display.max_rows", None,
                               "display.max_columns", None):
            print("median ms by N (! = oracle mismatch)", file=out)
            print(table.to_string(), file=out)
    counts = ", ".join(f"{n} {status}" for status, n in iter_status_counts(rows))
    print(f"\n{len(rows)} rows: {counts}\nresults: {out_dir.resolve()}", file=out)

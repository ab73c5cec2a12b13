"""``python -m harness report RUN [RUN ...]``: report.md and its figures, derived from rows.

The report answers: which variant is fastest at my shapes, where does each run out of memory,
from which N does linear or sparse attention pay off, and is every variant correct. It is
written into the (first) run directory or ``--out``: ``report.md`` plus ``figures/*.png`` and
``*.svg``. Whatever is missing (failed, unavailable or skipped cases, a single N, an absent
baseline) is said in the report instead of stopping it.

The figures are whatever ``harness.report_figures`` registers: run-wide ones once, each in its
own section after the scaling table; per-setting ones in each setting's section, in registry
order. This module names none of them.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import harness.report_decode  # noqa: F401  (registers the decode figure)
from harness.report_data import Footnotes, cell, group, peak_mib, scaling_table
from harness.report_figures import FigureKind, FigureView, registered
from harness.report_longest import longest_lines
from harness.report_plot import colours, save
from harness.report_roofline import roofline_lines  # registers the roofline figure too
from harness.report_text import (
    fault_lines,
    fingerprint_lines,
    legend_names,
    md_table,
    missing_lines,
    scaling_lines,
    support_lines,
    variant_lines,
    which_lines,
)
from harness.results import ResultSet, load
from harness.rows import Row
from harness.store import StoreError
from harness.vocab import DECODE

USAGE_ERROR = 2


def pivot(rows: list[Row], value: str, notes: Footnotes) -> list[str]:
    """Markdown table variant (and B) x N of median ms or peak MiB, statuses in the cells."""
    ns = sorted({r.nq for r in rows})
    several_b = len({r.b for r in rows}) > 1
    index = sorted({(r.label, r.b) for r in rows})
    cells = {(r.label, r.b, r.nq): r for r in rows}
    body = []
    for label, b in index:
        name = f"{label}, B={b}" if several_b else label
        line = []
        for n in ns:
            r = cells.get((label, b, n))
            number = None if r is None else {
                "time": r.median_ms, "memory": peak_mib(r), "cache": r.cache_mib,
                "tokens": r.tokens_per_s and r.tokens_per_s / 1e3,
                "waste": r.padding_waste and 100 * r.padding_waste}[value]
            line.append("" if r is None else cell(r, number, notes))
        body.append([name, *line])
    head = ["variant" + (", B" if several_b else ""), *(f"N={n}" for n in ns)]
    return md_table(head, body)


def figure_line(kind: FigureKind, view: FigureView, fig_dir: Path) -> str:
    """Draw and save one figure; its markdown image line, or the reason it is not drawn."""
    drawn = kind.draw(view)
    if isinstance(drawn, str):
        return drawn
    if view.setting is None:
        stem, alt = kind.name, kind.name
    else:
        stem, alt = f"{kind.name}_{view.setting.slug()}", f"{kind.name}: {view.title()}"
    png = save(drawn, fig_dir, stem)[0]
    return f"![{alt}](figures/{png.name})"


def run_figures(view: FigureView, fig_dir: Path) -> list[str]:
    """Every run-wide figure, each under its own heading."""
    lines = []
    for kind in registered("run"):
        lines += [f"## {kind.title}", "", figure_line(kind, view, fig_dir), ""]
    return lines


def section(view: FigureView, notes: Footnotes, fig_dir: Path) -> list[str]:
    """One setting: time and memory tables, then its figures."""
    lines = [f"## {view.title()}", "", "Median time per call (ms):", "",
             *pivot(view.rows, "time", notes), "",
             "Peak memory above the inputs (MiB) for this mode:", "",
             *pivot(view.rows, "memory", notes), "", *which_lines(view.rows)]
    if view.setting is not None and view.setting.mode == DECODE:
        lines += ["Cache the step holds (MiB; N is the cached context):", "",
                  *pivot(view.rows, "cache", notes), ""]
    if view.setting is not None and view.setting.ragged:
        lines += ["Effective throughput (thousand real tokens per second):", "",
                  *pivot(view.rows, "tokens", notes), "",
                  "Padding waste (% of computed query-key pairs that are padding):", "",
                  *pivot(view.rows, "waste", notes), ""]
    for kind in registered("setting"):
        drawn = figure_line(kind, view, fig_dir)
        lines += [drawn, ""] if drawn else []  # "": the figure has nothing to do here
    return lines


def _support(results: ResultSet) -> list[dict]:
    """The support matrices the runs' manifests recorded, each cell once."""
    cells = (tuple(sorted(c.items())) for m in results.manifests for c in m.get("support", []))
    return [dict(c) for c in dict.fromkeys(cells)]


def build(results: ResultSet, out: Path, baseline: str) -> Path:
    """Write report.md and the figures into ``out``; return the report's path."""
    rows = list(results.rows)
    groups, notes = group(rows), Footnotes()
    fig_dir = out / "figures"
    run = FigureView(setting=None, rows=rows, names=legend_names(rows),
                     colour=colours([r.label for r in rows]), baseline=baseline)
    exact = [b for b in dict.fromkeys([baseline, "sdpa"]) if any(r.label == b for r in rows)]
    lines = [f"# attnbench report: {results.name}", "", *fingerprint_lines(results), "",
             *missing_lines(rows, baseline), "", *variant_lines(rows), "",
             *support_lines(_support(results)), *longest_lines(rows, results.manifests),
             *scaling_lines(scaling_table(groups, exact), exact), "",
             *fault_lines(rows), "", *roofline_lines(rows), "",
             *run_figures(run, fig_dir)]
    for setting, mine in groups.items():
        lines += section(replace(run, setting=setting, rows=mine), notes, fig_dir)
    if notes.texts:
        lines += ["", *(f"[^{n}]: {text}" for text, n in notes.texts.items())]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def report_runs(runs: list[Path], out: Path | None, baseline: str, results_dir: Path) -> int:
    """Load the runs (none: the newest under results_dir), build, print where; 2 if unreadable."""
    try:
        runs = runs or [newest_run(results_dir)]
        results = load(runs, allow_no_manifest=True)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    first = runs[0]
    out = out or (first if (first / "rows.jsonl").exists() else
                  (first.parent if first.is_file() else first) / "report")
    out.mkdir(parents=True, exist_ok=True)
    report = build(results, out, baseline)
    print(f"report: {report.resolve()} (figures in {(out / 'figures').resolve()})")
    return 0


def newest_run(results_dir: Path) -> Path:
    """The newest sweep output directly under results_dir: ``<date>_<time>/`` or a
    ``multirun_<date>_<time>/`` folder of shards (baselines and gate runs are not candidates)."""
    runs = [d for d in results_dir.iterdir() if d.is_dir() and (
        d.name[:1].isdigit() or d.name.startswith("multirun_"))] if results_dir.is_dir() else []
    runs = [d for d in runs if any(d.rglob("rows.jsonl"))]
    if not runs:
        raise StoreError(f"no run directories in {results_dir} (run a sweep, or name RUN)")
    return max(runs, key=lambda d: d.name.removeprefix("multirun_"))

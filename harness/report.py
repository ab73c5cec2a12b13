"""``python -m harness report RUN [RUN ...]``: report.md and its figures, derived from rows.

The report answers: which variant is fastest at my shapes, where does each run out of memory,
from which N does linear or sparse attention pay off, and is every variant correct. It is
written into the (first) run directory or ``--out``: ``report.md`` plus ``figures/*.png`` and
``*.svg``. Whatever is missing (failed, unavailable or skipped cases, a single N, an absent
baseline) is said in the report instead of stopping it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.report_data import (
    Footnotes,
    Setting,
    cell,
    group,
    peak_mib,
    scaling_table,
)
from harness.report_figures import (
    colours,
    efficiency_figure,
    error_figure,
    memory_figure,
    save,
    speedup_figure,
    time_figure,
)
from harness.report_text import (
    fingerprint_lines,
    legend_names,
    md_table,
    missing_lines,
    scaling_lines,
    variant_lines,
)
from harness.results import ResultSet, load
from harness.rows import Row
from harness.store import StoreError

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
            number = None if r is None else (r.median_ms if value == "time" else peak_mib(r))
            line.append("" if r is None else cell(r, number, notes))
        body.append([name, *line])
    head = ["variant" + (", B" if several_b else ""), *(f"N={n}" for n in ns)]
    return md_table(head, body)


def _figures(setting: Setting, rows: list[Row], ctx: dict, fig_dir: Path) -> list[str]:
    names, colour, baseline = ctx["names"], ctx["colour"], ctx["baseline"]
    made = [("time", time_figure(setting, rows, names, colour)),
            ("memory", memory_figure(setting, rows, names, colour)),
            ("efficiency", efficiency_figure(setting, rows, names, colour))]
    lines = []
    if baseline in {r.label for r in rows}:
        made.insert(2, ("speedup", speedup_figure(setting, rows, baseline)))
    else:
        lines.append(f"No speedup heatmap: the baseline {baseline!r} has no rows here "
                     "(--baseline picks another).")
    for kind, fig in made:
        png = save(fig, fig_dir, f"{kind}_{setting.slug()}")[0]
        lines += [f"![{kind}: {setting.title()}](figures/{png.name})", ""]
    return lines


def section(setting: Setting, rows: list[Row], notes: Footnotes, ctx: dict,
            fig_dir: Path) -> list[str]:
    """One setting: time and memory tables, then its figures."""
    return [f"## {setting.title()}", "", "Median time per call (ms):", "",
            *pivot(rows, "time", notes), "",
            "Peak memory above the inputs (MiB) for this mode:", "",
            *pivot(rows, "memory", notes), "", *_figures(setting, rows, ctx, fig_dir)]


def build(results: ResultSet, out: Path, baseline: str) -> Path:
    """Write report.md and the figures into ``out``; return the report's path."""
    rows = list(results.rows)
    groups, notes = group(rows), Footnotes()
    fig_dir = out / "figures"
    ctx = {"names": legend_names(rows), "colour": colours([r.label for r in rows]),
           "baseline": baseline}
    exact = [b for b in dict.fromkeys([baseline, "sdpa"]) if any(r.label == b for r in rows)]
    lines = [f"# attnbench report: {results.name}", "", *fingerprint_lines(results), "",
             *missing_lines(rows, baseline), "", *variant_lines(rows), "",
             *scaling_lines(scaling_table(groups, exact), exact), ""]
    save(error_figure(rows, ctx["colour"]), fig_dir, "error")
    lines += ["## Numerical error against the oracle", "", "![error](figures/error.png)", ""]
    for setting, mine in groups.items():
        lines += section(setting, mine, notes, ctx, fig_dir)
    if notes.texts:
        lines += ["", *(f"[^{n}]: {text}" for text, n in notes.texts.items())]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def run_report(argv: list[str]) -> int:
    """Parse, load, build; print where the report is."""
    p = argparse.ArgumentParser(prog="python -m harness report",
                                description="Write report.md and figures (PNG, SVG) for runs.")
    p.add_argument("runs", type=Path, nargs="*",
                   help="run directories or shard folders (default: the newest under results/)")
    p.add_argument("--out", type=Path, help="output directory (default: the first run's)")
    p.add_argument("--baseline", default="naive",
                   help="variant label the speedup heatmap divides by (default naive)")
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="where to look for the newest run when none is given")
    args = p.parse_args(argv)
    try:
        runs = args.runs or [newest_run(args.results_dir)]
        results = load(runs, allow_no_manifest=True)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    first = runs[0]
    out = args.out or (first if (first / "rows.jsonl").exists() else
                       (first.parent if first.is_file() else first) / "report")
    out.mkdir(parents=True, exist_ok=True)
    report = build(results, out, args.baseline)
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

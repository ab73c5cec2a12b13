"""The command line, every subcommand defined here: ``python -m harness COMMAND ...``.

``check``, ``measure`` and ``sweep`` take Hydra overrides (``key=value``; ``sweep -m`` for a
multirun), composed and validated by harness/compose.py before any work. The others take
``--options``, parsed here. Each subcommand imports its library module only when it runs.
Exit codes: 0 success, 1 a judged regression (compare, ab) or a disagreement (check), 2 a
usage, configuration or write error (one line; nothing was measured), 3 inconclusive
(compare, ab), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

USAGE_ERROR = 2
HYDRA_HELP = "Hydra overrides such as dtypes=[fp32]; fields and their defaults below"


class Usage(ValueError):
    """A command line that cannot run; the message says which part and what is allowed."""


def cmd_check(overrides: list[str]) -> int:
    """Run the agreement matrix; exit 1 on any disagreement."""
    from harness.check import report, run_matrix
    from harness.compose import check_keys, compose_conf
    from harness.config import CheckConf, check_settings

    check_keys(overrides, CheckConf)
    return report(run_matrix(check_settings(compose_conf("check", overrides))))


def cmd_measure(overrides: list[str]) -> int:
    """Measure a small grid of cases in supervised workers and print the rows."""
    from harness.compose import check_keys, compose_conf
    from harness.config import MeasureConf, grid_settings
    from harness.grid import measure_grid, print_table

    check_keys(overrides, MeasureConf)
    print_table(measure_grid(grid_settings(compose_conf("measure", overrides))))
    return 0


def cmd_support(overrides: list[str]) -> int:
    """Print the support matrix of a sweep's variants, device and dtypes."""
    from harness.compose import check_keys, compose_conf
    from harness.config import SweepConf, sweep_settings
    from harness.report_text import support_lines
    from harness.support import as_records, support_matrix

    check_keys(overrides, SweepConf, groups=("sweep",))
    grid = sweep_settings(compose_conf("config", overrides)).grid
    cells = support_matrix(grid.specs, (grid.device,), grid.dtypes)
    print("\n".join(support_lines(as_records(cells))))
    return 0


def cmd_sweep(overrides: list[str]) -> int:
    """Validate every job and where it writes, then hand over to Hydra (-m, launchers)."""
    from harness.compose import check_keys, hydra_sweep, validate_sweep
    from harness.config import SweepConf

    multirun = "-m" in overrides or "--multirun" in overrides
    given = [o for o in overrides if o not in ("-m", "--multirun")]
    check_keys(given, SweepConf, groups=("sweep",))
    validated = validate_sweep(given, multirun, lambda conf, s: _places(conf, s, multirun))
    hydra_sweep(overrides, validated, _run_sweep)
    return 0


def _places(conf: Any, settings: Any, multirun: bool) -> None:
    """Refuse a job that would mix, lose or misplace rows (exit 2)."""
    from harness.rundir import check_places
    from harness.store import StoreError

    try:
        check_places(conf, settings.grid.device, multirun)
    except StoreError as exc:
        raise Usage(str(exc)) from exc


def _run_sweep(settings: Any, cfg: Any) -> None:
    """One sweep job inside Hydra: run it into Hydra's output directory."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from harness.store import StoreError
    from harness.sweep import run_sweep

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_sweep(settings, out_dir, OmegaConf.to_container(cfg, resolve=True))
    except (StoreError, OSError) as exc:  # a locked, reused or unwritable run directory
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


def cmd_merge(args: argparse.Namespace) -> int:
    """Combine run directories (a multirun's shards, or replicates) into one."""
    from harness.store import StoreError, merge_runs

    try:
        written, dropped = merge_runs(args.sources, args.target, args.pick)
    except StoreError as exc:
        raise Usage(str(exc)) from exc
    print(f"{written} rows merged into {args.target} ({dropped} rows of keys already "
          f"present dropped)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """The regression gate between two result sets."""
    from harness.compare_run import run_compare

    return run_compare(args)


def cmd_ab(args: argparse.Namespace) -> int:
    """Two revisions measured interleaved on this host, then compared."""
    from harness.ab import run_ab

    return run_ab(args, args.overrides)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Versions, devices and which kernels run here."""
    from harness.doctor import report

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    print(report(args.device))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's rows as pytest-benchmark JSON."""
    from harness.compare_run import run_export

    return run_export(args.run, args.out)


def cmd_report(args: argparse.Namespace) -> int:
    """report.md and figures for runs."""
    from harness.report import report_runs

    return report_runs(args.runs, args.out, args.baseline, args.results_dir)


def cmd_gpu_wheels(args: argparse.Namespace) -> int:
    """Download and check the wheels the GPU machine lacks."""
    from harness.gpu_wheels import report_wheels

    return report_wheels(args.dest, args.check_only)


def cmd_gpu_check(args: argparse.Namespace) -> int:
    """Every GPU check in one run, packed into --out."""
    from harness.gpucheck import run_check

    return run_check(args.out, args.budget_s, args.device, args.sweep_overrides)


def _gpu_wheels_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", type=Path, default=Path(".gpu-wheels"),
                   help="folder for the wheels (default .gpu-wheels, git-ignored)")
    p.add_argument("--check-only", action="store_true", help="check the folder, download nothing")


def _gpu_check_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="empty folder for the results")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="seconds for the whole run (default 480)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu tries it out here")
    p.add_argument("sweep_overrides", nargs="*", help="extra overrides for the sweep")


def _merge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", type=Path, help="run directory to create or extend")
    p.add_argument("sources", type=Path, nargs="+", help="run directories or shard folders")
    p.add_argument("--pick", choices=("first", "median"), default="first",
                   help="for a key in several sources: the first row, or the row with the "
                        "median time (replicates of one grid: a robust baseline)")


def _doctor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="device to probe (default: cuda when available, else cpu)")


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory or folder of shards")
    p.add_argument("--out", type=Path, help="output file (default RUN/pytest_benchmark.json)")


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="*",
                   help="run directories or shard folders (default: the newest under results/)")
    p.add_argument("--out", type=Path, help="output directory (default: the first run's)")
    p.add_argument("--baseline", default="naive",
                   help="variant label the speedup heatmap divides by (default naive)")
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="where to look for the newest run when none is given")


def _compare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", type=Path, help="run directory, folder of shards, or "
                   "pytest-benchmark JSON file")
    p.add_argument("new", type=Path, help="the same kinds of path, for the new results")
    for side in ("base", "new"):
        p.add_argument(f"--{side}-extra", type=Path, action="append", default=[],
                       metavar="PATH", help=f"more {side} paths (shards), repeatable")
    _gate_options(p)
    p.add_argument("--normalise", metavar="REF", default=None,
                   help="divide each time by a reference from the same run: a variant label "
                        "at the same shape (e.g. sdpa) or 'roof' (the measured GEMM roof)")
    p.add_argument("--across-machines", action="store_true",
                   help="compare even when the device model differs (use --normalise)")
    p.add_argument("--across-versions", action="store_true",
                   help="compare even when Python, torch or xformers versions differ")
    p.add_argument("--confirm", type=Path, metavar="PATH",
                   help="a second new run: a regression counts only if it shows there too")
    p.add_argument("--allow-missing", action="store_true",
                   help="pass even when a side is incomplete, interrupted or lost a torn line "
                        "(otherwise exit 3)")
    p.add_argument("--allow-no-manifest", action="store_true",
                   help="read run directories that have no manifest.json (otherwise exit 2)")
    _output_options(p)


def _ab_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base revision: a commit, tag or branch")
    p.add_argument("head", nargs="?", default="",
                   help="head revision (default: the working tree as it is, uncommitted "
                        "changes included)")
    p.add_argument("--out", type=Path, help="directory for both sides' runs, the logs and "
                   "the comparison (default results/ab/<date>_<time>; must not exist)")
    for name in ("base", "head"):
        p.add_argument(f"--{name}-env", action="append", default=[], metavar="KEY=VALUE",
                       help=f"an environment variable for the {name} side only "
                            "(e.g. an allocator setting), repeatable")
    p.add_argument("--confirm", action="store_true",
                   help="re-run the flagged variants; a regression counts only if it shows "
                        "again")
    _gate_options(p)
    _output_options(p)


def _gate_options(p: argparse.ArgumentParser) -> None:
    """The gate's thresholds, shared by compare and ab (defaults: harness.compare.Gate)."""
    from harness.compare import Gate

    g = Gate()
    for flag, typ, default, text in (
        ("--factor", float, g.factor, "ratio of medians that counts as a change"),
        ("--alpha", float, g.alpha, "false-discovery rate over the grid"),
        ("--min-samples", int, g.min_samples, "blocks needed a side to decide"),
        ("--memory-tolerance", float, g.memory_tolerance,
         "relative peak-memory growth that counts"),
        ("--memory-floor-mib", float, g.memory_floor_mib, "... and absolute growth in MiB"),
        ("--error-factor", float, g.error_factor,
         "oracle error grown by more than this is 'less accurate'"),
        ("--error-share", float, g.error_share,
         "... if it also exceeds this share of its allowed error"),
    ):
        p.add_argument(flag, type=typ, default=default, help=f"{text} (default {default})")


def _output_options(p: argparse.ArgumentParser) -> None:
    """Where a comparison is written, shared by compare and ab."""
    p.add_argument("--markdown", type=Path, metavar="FILE", help="write GitHub markdown here")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every verdict as JSON here")
    p.add_argument("--all", action="store_true", help="also list the cases that are 'same'")


Options = Callable[[argparse.ArgumentParser], None]
#: name -> (what it does, the schema its overrides fill | its options, the function)
HYDRA_COMMANDS: dict[str, tuple[str, str, Callable[[list[str]], int]]] = {
    "check": ("numerical agreement of every variant with the float64 oracle", "CheckConf",
              cmd_check),
    "measure": ("measure a grid of cases and print the rows", "MeasureConf", cmd_measure),
    "sweep": ("the main job: a Hydra-configured sweep that keeps every row", "SweepConf",
              cmd_sweep),
    "support": ("the support matrix of a sweep's variants on its device and dtypes (yes, or "
                "no and why), from the variants' declarations", "SweepConf", cmd_support),
}
COMMANDS: dict[str, tuple[str, Options, Callable[[argparse.Namespace], int]]] = {
    "merge": ("combine run directories (shards, or replicates) into one", _merge_options,
              cmd_merge),
    "compare": ("regression gate between two result sets: exit 0 pass, 1 regression, 2 usage "
                "error or not comparable, 3 inconclusive", _compare_options, cmd_compare),
    "ab": ("two revisions measured interleaved on this host, then compared (compare's exit "
           "codes); sweep overrides follow '--'", _ab_options, cmd_ab),
    "doctor": ("versions, devices, and which xformers ops and SDPA backends run here",
               _doctor_options, cmd_doctor),
    "export": ("write a run's rows as pytest-benchmark JSON", _export_options, cmd_export),
    "report": ("report.md with tables and figures (PNG, SVG) for runs", _report_options,
               cmd_report),
    "gpu-wheels": ("download the wheels the GPU machine lacks into .gpu-wheels/ and check them",
                   _gpu_wheels_options, cmd_gpu_wheels),
    "gpu-check": ("on a GPU machine: doctor, the CUDA tests, a budgeted sweep and its report, "
                  "packed into --out (docs/gpu.md)", _gpu_check_options, cmd_gpu_check),
}


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser: one subcommand per entry of HYDRA_COMMANDS and COMMANDS, with the
    options of ``command`` only when one is named (no other command's imports run: gpu-check
    starts where Hydra and xformers are not installed yet)."""
    top = argparse.ArgumentParser(
        prog="python -m harness", description="attnbench: benchmark and check attention "
        "implementations.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (text, schema, _) in HYDRA_COMMANDS.items():
        mine = command in (None, name)
        p = sub.add_parser(name, help=text, description=text,
                           epilog=_fields(schema) if mine else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("overrides", nargs="*", help=HYDRA_HELP)
    for name, (text, options, func) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if command in (None, name):
            options(p)
        p.set_defaults(func=func)
    return top


def _fields(schema: str) -> str:
    """The epilog of a Hydra command's --help: its fields and defaults."""
    from harness import config
    from harness.compose import help_text

    return "fields (key=default):\n" + help_text(getattr(config, schema))


def one_line(exc: BaseException) -> str:
    """An error in one line: the path and the problem for OS errors."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Dispatch a subcommand. Exit 2 for configuration errors (before any work is done), for
    write errors and for any internal error, each in one line; only a judged regression
    (compare, ab) or a disagreement (check) exits 1."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        return 130  # the sweep said where its rows are; no traceback for a Ctrl-C
    except OSError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as exc:  # a bug: never exit 1, which means "regression"
        print(f"internal error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        if os.environ.get("ATTNBENCH_TRACEBACK"):
            raise
        print("  (ATTNBENCH_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return USAGE_ERROR


def _dispatch(argv: list[str]) -> int:
    """Run the subcommand; configuration errors become exit 2 with their message."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.config import ConfigError

    name = argv[0] if argv else ""
    try:
        if name in HYDRA_COMMANDS and not {"-h", "--help"} & set(argv[1:]):
            return HYDRA_COMMANDS[name][2](argv[1:])  # Hydra reads its overrides untouched
        own, overrides = split_argv(argv)
        args = parser(name or None).parse_args(own)  # argparse prints usage, exits 2 itself
        args.overrides = overrides
        if overrides and args.command != "ab":
            raise Usage(f"{args.command}: '--' and what follows is for ab only")
        return args.func(args)
    except (ConfigError, Usage) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except (HydraException, OmegaConfBaseException) as exc:
        cause = f"\n  caused by: {exc.__cause__}" if exc.__cause__ else ""
        print(f"error: invalid configuration ({' '.join(argv[1:])}): {exc}{cause}",
              file=sys.stderr)
        return USAGE_ERROR


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """The command's own arguments, and the sweep overrides after ``--`` (ab)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []

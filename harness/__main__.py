"""Command line: ``python -m harness SUBCOMMAND [hydra overrides ...]``.

This is the only place that touches Hydra/OmegaConf objects: config is composed here,
converted once to typed schema objects and validated into frozen settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.config import (
    ConfigError,
    check_settings,
    grid_settings,
    register_schemas,
    sweep_settings,
)
from harness.resources import conf_dir
from harness.store import StoreError

CONF_DIR = conf_dir()
USAGE_ERROR = 2


def _run_dir(resume: str, named: str, default: str) -> str:
    from harness.rundir import run_dir

    return run_dir(resume, named, default)


OmegaConf.register_new_resolver("attnbench_run_dir", _run_dir, replace=True)


def check_keys(overrides: list[str], schema: type, groups: tuple[str, ...] = ()) -> None:
    """Every override names a field of the schema (or a config group, or hydra's own),
    however it is spelled (``key=``, ``+key=``, ``++key=``, ``~key``)."""
    import dataclasses

    allowed = {f.name for f in dataclasses.fields(schema)} | set(groups)
    for text in overrides:
        key = text.lstrip("+~").partition("=")[0].split(".")[0].split("/")[0].strip()
        if text.startswith("-") or key == "hydra":
            continue
        if key not in allowed:
            raise ConfigError(f"{text}: unknown key {key!r}; allowed: {sorted(allowed)}")


def _compose(config_name: str, overrides: list[str]) -> object:
    """Compose conf/<config_name>.yaml with overrides into its schema object."""
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    return OmegaConf.to_object(cfg)


def cmd_check(overrides: list[str]) -> int:
    """Run the agreement matrix; exit 1 on any disagreement."""
    from harness.check import report, run_matrix
    from harness.config import CheckConf

    check_keys(overrides, CheckConf)
    settings = check_settings(_compose("check", overrides))
    return report(run_matrix(settings))


def cmd_measure(overrides: list[str]) -> int:
    """Measure a small grid of cases in this process and print the rows."""
    from harness.config import MeasureConf
    from harness.grid import cases, print_table
    from harness.worker import Supervisor

    check_keys(overrides, MeasureConf)
    settings = grid_settings(_compose("measure", overrides))
    rows = []
    with Supervisor(timeout_s=settings.timeout_s) as sup:  # a crash or hang is one row
        for case in cases(settings):
            rows.append(sup.run(case, settings.measure))
            print(f"{case.spec.label} {case.dtype} {case.mode} causal={case.causal} "
                  f"B={case.b} N={case.nq}: {rows[-1].status}", file=sys.stderr, flush=True)
    print_table(rows)
    return 0


def _expand(overrides: list[str]) -> list[list[str]]:
    """Every job's overrides of a (multi)run, so each can be validated before any work."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    return [[o for o in job if not o.startswith("hydra")] for job in jobs]


def cmd_sweep(overrides: list[str]) -> int:
    """Validate every job, then hand over to Hydra (multirun and launchers included)."""
    from harness.config import SweepConf

    multirun = "-m" in overrides or "--multirun" in overrides
    given = [o for o in overrides if o not in ("-m", "--multirun")]
    check_keys(given, SweepConf, groups=("sweep",))
    for job in _expand(given) if multirun else [given]:
        conf = _compose("config", [o for o in job if not o.startswith("hydra")])
        settings = sweep_settings(conf)
        _check_places(conf, settings.grid.device, multirun)
    _hydra_sweep(overrides)
    return 0


def _check_places(conf: Any, device: str, multirun: bool) -> None:
    """Where the job would write: refuse what would mix, lose or misplace rows (exit 2)."""
    from harness.fingerprint import fingerprint
    from harness.rundir import check_new_run_dir, check_results_dir, check_resume

    if multirun and (conf.resume or conf.run_dir):
        raise ConfigError("resume / run_dir name one run directory; with -m every job gets "
                          "its own under results_dir")
    try:
        if conf.resume:
            check_resume(Path(conf.resume), conf, fingerprint(device).hard)
        elif conf.run_dir:
            check_new_run_dir(Path(conf.run_dir))
        else:
            check_results_dir(Path(conf.results_dir))
    except StoreError as exc:
        raise ConfigError(str(exc)) from exc


def _hydra_sweep(overrides: list[str]) -> None:
    """Run the sweep under @hydra.main so that -m, launchers and the snapshot work."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from harness.sweep import run_sweep

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def task(cfg: DictConfig) -> None:
        settings = sweep_settings(OmegaConf.to_object(cfg))
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            run_sweep(settings, out_dir, OmegaConf.to_container(cfg, resolve=True))
        except (StoreError, OSError) as exc:  # a locked, reused or unwritable run directory
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            raise SystemExit(USAGE_ERROR) from None

    sys.argv = ["python -m harness sweep", *overrides]
    task()


def cmd_merge(argv: list[str]) -> int:
    """Combine run directories (a multirun's shards, or replicates) into one."""
    from harness.store import StoreError, merge_runs

    p = argparse.ArgumentParser(prog="python -m harness merge",
                                description=COMMANDS["merge"][1])
    p.add_argument("target", type=Path, help="run directory to create or extend")
    p.add_argument("sources", type=Path, nargs="+", help="run directories or shard folders")
    p.add_argument("--pick", choices=("first", "median"), default="first",
                   help="for a key in several sources: the first row, or the row with the "
                        "median time (replicates of one grid: a robust baseline)")
    args = p.parse_args(argv)
    try:
        written, dropped = merge_runs(args.sources, args.target, args.pick)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    print(f"{written} rows merged into {args.target} ({dropped} rows of keys already "
          f"present dropped)")
    return 0


def cmd_compare(argv: list[str]) -> int:
    """The regression gate: python -m harness compare BASE NEW [options]."""
    from harness.compare_cli import run_compare

    return run_compare(argv)


def cmd_ab(argv: list[str]) -> int:
    """A/B run of two revisions: python -m harness ab BASE [HEAD] [options] [-- overrides]."""
    from harness.ab import run_ab

    return run_ab(argv)


def cmd_doctor(argv: list[str]) -> int:
    """What this machine can run: python -m harness doctor [--device cpu|cuda]."""
    from harness.doctor import report

    p = argparse.ArgumentParser(prog="python -m harness doctor",
                                description=COMMANDS["doctor"][1])
    p.add_argument("--device", default="cuda" if _cuda() else "cpu",
                   help="device to probe (default: cuda when available, else cpu)")
    args = p.parse_args(argv)
    print(report(args.device))
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_export(argv: list[str]) -> int:
    """Write a run's rows as pytest-benchmark JSON: python -m harness export RUN [--out FILE]."""
    from harness.compare_cli import run_export

    return run_export(argv)


def cmd_report(argv: list[str]) -> int:
    """report.md and figures for runs: python -m harness report [RUN ...] [--out DIR]."""
    from harness.report import run_report

    return run_report(argv)


COMMANDS = {
    "check": (cmd_check, "numerical agreement of every variant with the float64 oracle"),
    "measure": (cmd_measure, "measure a grid of cases in this process and print the rows"),
    "sweep": (cmd_sweep, "the main job: a Hydra-configured sweep that keeps every row"),
    "merge": (cmd_merge, "combine run directories (shards, or replicates) into one"),
    "compare": (cmd_compare, "regression gate between two result sets, with exit codes"),
    "ab": (cmd_ab, "two revisions measured interleaved on this host, then compared"),
    "doctor": (cmd_doctor, "versions, devices, and which xformers ops and SDPA backends run here"),
    "export": (cmd_export, "write a run's rows as pytest-benchmark JSON"),
    "report": (cmd_report, "report.md with tables and figures (PNG, SVG) for runs"),
}
# commands that parse their own --options
OWN_OPTIONS = ("merge", "compare", "ab", "doctor", "export", "report")


def parser() -> argparse.ArgumentParser:
    """The top-level argument parser with one subcommand per entry of COMMANDS."""
    top = argparse.ArgumentParser(
        prog="python -m harness",
        description="attnbench: benchmark and check attention implementations.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        if name in OWN_OPTIONS:  # its own parser prints its --help
            p = sub.add_parser(name, help=help_text, add_help=False)
            p.add_argument("overrides", nargs=argparse.REMAINDER)
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("overrides", nargs="*",
                       help="Hydra overrides such as dtypes=[fp32] (sweep: -m for multirun)")
    return top


def _one_line(exc: BaseException) -> str:
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
        return 130
    except OSError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as exc:  # a bug: never exit 1, which means "regression"
        print(f"internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        if os.environ.get("ATTNBENCH_TRACEBACK"):
            raise
        print("  (ATTNBENCH_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return USAGE_ERROR


def _dispatch(argv: list[str]) -> int:
    """Run the subcommand; configuration errors become exit 2 with their message."""
    if argv and argv[0] in OWN_OPTIONS:  # their own parsers see their arguments untouched
        return COMMANDS[argv[0]][0](argv[1:])
    args, extra = parser().parse_known_args(argv)  # extra: -m and the like, for Hydra
    args.overrides = [*args.overrides, *extra]
    func = COMMANDS[args.command][0]
    try:
        return func(args.overrides)
    except KeyboardInterrupt:
        return 130  # the sweep said where its rows are; no traceback for a Ctrl-C
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except (HydraException, OmegaConfBaseException) as exc:
        cause = f"\n  caused by: {exc.__cause__}" if exc.__cause__ else ""
        given = " ".join(args.overrides)
        print(f"error: invalid configuration ({given}): {exc}{cause}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m harness SUBCOMMAND [hydra overrides ...]``.

This is the only place that touches Hydra/OmegaConf objects: config is composed here,
converted once to typed schema objects and validated into frozen settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.config import ConfigError, check_settings, grid_settings, register_schemas

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
USAGE_ERROR = 2


def _compose(config_name: str, overrides: list[str]) -> object:
    """Compose conf/<config_name>.yaml with overrides into its schema object."""
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    return OmegaConf.to_object(cfg)


def cmd_check(overrides: list[str]) -> int:
    """Run the agreement matrix; exit 1 on any disagreement."""
    from harness.check import report, run_matrix

    settings = check_settings(_compose("check", overrides))
    return report(run_matrix(settings))


def cmd_measure(overrides: list[str]) -> int:
    """Measure a small grid of cases in this process and print the rows."""
    from harness.grid import cases, print_table
    from harness.measure import measure

    settings = grid_settings(_compose("measure", overrides))
    rows = []
    for case in cases(settings):
        rows.append(measure(case, settings.measure))
        print(f"{case.spec.label} {case.dtype} {case.mode} causal={case.causal} B={case.b} "
              f"N={case.nq}: {rows[-1].status}", file=sys.stderr, flush=True)
    print_table(rows)
    return 0


COMMANDS = {
    "check": (cmd_check, "numerical agreement of every variant with the float64 oracle"),
    "measure": (cmd_measure, "measure a grid of cases in this process and print the rows"),
}


def parser() -> argparse.ArgumentParser:
    """The top-level argument parser with one subcommand per entry of COMMANDS."""
    top = argparse.ArgumentParser(
        prog="python -m harness",
        description="attnbench: benchmark and check attention implementations.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("overrides", nargs="*", help="Hydra overrides such as dtypes=[fp32]")
    return top


def main(argv: list[str] | None = None) -> int:
    """Dispatch a subcommand; configuration errors exit 2 before any work is done."""
    args = parser().parse_args(argv)
    func = COMMANDS[args.command][0]
    try:
        return func(args.overrides)
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

"""Hydra, in one place: composing ``conf/`` with overrides into the typed schemas, expanding a
multirun into its jobs, and handing a validated sweep to ``@hydra.main`` (which brings
``-m``, the launchers such as submitit, and the config snapshot in ``.hydra/``).

Only public Hydra API is used (``hydra.compose``, ``hydra.main``, the override parser that
sweeper plugins use). Every job is composed and validated once, here, before any work is
done; the task that runs a job reuses those settings (a job launched in another process, as
submitit does, validates its own config there).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError, SweepSettings, register_schemas, sweep_settings
from harness.resources import conf_dir


def _run_dir(resume: str, named: str, default: str) -> str:
    from harness.rundir import run_dir

    return run_dir(resume, named, default)


OmegaConf.register_new_resolver("attnbench_run_dir", _run_dir, replace=True)


def check_keys(overrides: list[str], schema: type, groups: tuple[str, ...] = ()) -> None:
    """Every override names a field of the schema (or a config group, or hydra's own),
    however it is spelled (``key=``, ``+key=``, ``++key=``, ``~key``)."""
    allowed = {f.name for f in dataclasses.fields(schema)} | set(groups)
    for text in overrides:
        key = text.lstrip("+~").partition("=")[0].split(".")[0].split("/")[0].strip()
        if text.startswith("-") or key == "hydra":
            continue
        if key not in allowed:
            raise ConfigError(f"{text}: unknown key {key!r}; allowed: {sorted(allowed)}")


def compose_conf(config_name: str, overrides: list[str]) -> Any:
    """Compose conf/<config_name>.yaml with overrides into its schema object (validated by
    the schema's ``__post_init__``)."""
    from hydra import compose, initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=own(overrides))
    return OmegaConf.to_object(cfg)


def own(overrides: list[str]) -> list[str]:
    """The overrides that are ours (not hydra.*, launcher or sweeper choices)."""
    return [o for o in overrides if not o.lstrip("+~").startswith("hydra")]


def expand(overrides: list[str]) -> list[list[str]]:
    """Every job of a multirun, as its overrides, in the order Hydra's basic sweeper runs
    them (the cartesian product of each key's comma-separated choices)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for o in OverridesParser.create().parse_overrides(own(overrides)):
        key = o.get_key_element()
        if o.is_sweep_override():
            choices.append([f"{key}={value}" for value in o.sweep_string_iterator()])
        else:
            choices.append([f"{key}={o.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*choices)]


def validate_sweep(overrides: list[str], multirun: bool,
                   check: Callable[[Any, SweepSettings], None]) -> dict[tuple[str, ...],
                                                                         SweepSettings]:
    """Compose and validate every job once; ``check`` vets each (where it writes)."""
    jobs = expand(overrides) if multirun else [own(overrides)]
    validated = {}
    for job in jobs:
        conf = compose_conf("config", job)
        settings = sweep_settings(conf)
        check(conf, settings)
        validated[tuple(job)] = settings
    return validated


def hydra_sweep(overrides: list[str], validated: dict[tuple[str, ...], SweepSettings],
                task: Callable[[SweepSettings, DictConfig], None]) -> None:
    """Run the sweep under ``@hydra.main`` so that -m, launchers and the snapshot work."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
    def job(cfg: DictConfig) -> None:
        settings = validated.get(tuple(own(list(HydraConfig.get().overrides.task))))
        if settings is None:  # launched in another process: validate here
            settings = sweep_settings(OmegaConf.to_object(cfg))
        task(settings, cfg)

    register_schemas()
    argv = sys.argv
    sys.argv = ["python -m harness sweep", *overrides]
    try:
        job()
    finally:
        sys.argv = argv


def help_text(schema: type) -> str:
    """The fields of a schema with their defaults, for ``--help`` (read from the dataclass)."""
    lines = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        lines.append(f"  {f.name}={OmegaConf.to_yaml({'v': default}).strip()[3:]}")
    return "\n".join(lines)

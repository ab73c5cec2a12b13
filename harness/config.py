"""Typed configuration: Hydra schemas (registered in the ConfigStore) and the frozen,
validated settings that everything below the CLI receives.

``harness/__main__.py`` composes Hydra config, turns it into a schema object once with
``OmegaConf.to_object``, and calls a ``*_settings`` function here; nothing below that
boundary sees a DictConfig. Errors name the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import torch

import variants as registry
from harness.cases import MODES
from harness.measure import MeasureSettings
from harness.specs import SpecError, VariantSpec, dedupe, default_specs, parse_spec, spec_name
from variants.contract import DEVICES, DTYPES, ContractError

CHECK_DTYPES = ("fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """Bad user configuration; the message names the field and what is allowed."""


@dataclass
class CheckConf:
    """Hydra schema of ``python -m harness check`` (conf/check.yaml)."""

    variants: list[str] = field(default_factory=list)
    extra_variants: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=lambda: list(CHECK_DTYPES))
    device: str = "cpu"
    causal: list[bool] = field(default_factory=lambda: [False, True])
    backward: bool = True
    seed: int = 0
    timeout_s: float = 600.0  # per (variant, dtype, causal) cell, in a supervised worker


@dataclass
class MeasureConf:
    """Hydra schema of ``python -m harness measure`` (conf/measure.yaml)."""

    variants: list[str] = field(default_factory=list)
    extra_variants: list[str] = field(default_factory=list)
    device: str = "cpu"
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    modes: list[str] = field(default_factory=lambda: ["fwd"])
    causal: list[bool] = field(default_factory=lambda: [False])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    heads: int = 8
    head_dim: int = 64
    seq_lens: list[int] = field(default_factory=lambda: [1024])
    min_run_time: float = 0.5
    min_samples: int = 1
    threads: int = 0
    check: bool = True
    memory: bool = True
    seed: int = 0
    timeout_s: float = 600.0  # per case (oracle, timing and memory pass together)


@dataclass(frozen=True)
class GridSettings:
    """Validated grid of cases plus how to measure them."""

    specs: tuple[VariantSpec, ...]
    device: str
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]
    causal: tuple[bool, ...]
    batch_sizes: tuple[int, ...]
    heads: int
    head_dim: int
    seq_lens: tuple[int, ...]
    measure: MeasureSettings
    timeout_s: float = 600.0


@dataclass
class SweepConf(MeasureConf):
    """Hydra schema of ``python -m harness sweep`` (conf/config.yaml and conf/sweep/*.yaml)."""

    preset: str = "default"  # set by the chosen conf/sweep/<preset>.yaml, for the manifest
    results_dir: str = "results"
    resume: str = ""  # a run directory to complete: only its missing cases run
    run_dir: str = ""  # a new run directory to create (default: results_dir/<date>_<time>)
    extend: bool = False  # resume: allow other grid axes (recorded in the manifest)
    force: bool = False  # run cases whose predicted memory exceeds the free memory
    memory_margin: float = 0.8  # predicted peak must fit in this fraction of free memory
    paced: bool = False  # harness ab: wait for a line on stdin before each case


@dataclass(frozen=True)
class SweepSettings:
    """Validated sweep: the grid plus supervision and skipping rules."""

    grid: GridSettings
    preset: str
    timeout_s: float
    force: bool
    memory_margin: float
    paced: bool = False
    resume: bool = False  # completing an existing run directory (else it must be new)


@dataclass(frozen=True)
class CheckSettings:
    """Validated settings of the agreement matrix."""

    specs: tuple[VariantSpec, ...]
    dtypes: tuple[str, ...]
    device: str
    causal: tuple[bool, ...]
    backward: bool
    seed: int
    timeout_s: float = 600.0


def schema_of(config_cls: type) -> type:
    """A mutable mirror of a frozen variant Config, field for field, for Hydra to compose.

    OmegaConf makes frozen dataclasses read-only, so YAML and overrides could not set them;
    the mirror has the same names, types and defaults, and ``to_config`` turns a composed
    mirror back into the frozen Config (running its validation).
    """
    hints = get_type_hints(config_cls)
    fields = [
        (f.name, hints[f.name], dataclasses.field(default=getattr(config_cls(), f.name)))
        for f in dataclasses.fields(config_cls)
    ]
    return dataclasses.make_dataclass(f"{config_cls.__qualname__}Schema", fields)


def to_config(config_cls: type, composed: Any) -> Any:
    """Build the frozen Config from a composed schema object; errors name the field."""
    try:
        return config_cls(**dataclasses.asdict(composed))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{config_cls.__module__}.Config: {exc}") from exc


def register_schemas() -> None:
    """Register the Hydra schemas: one per subcommand and one per variant's Config."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="check_schema", node=CheckConf)
    cs.store(name="measure_schema", node=MeasureConf)
    cs.store(name="sweep_schema", node=SweepConf)
    for name in registry.REGISTRY:
        schema = schema_of(registry.get(name).config_cls)
        cs.store(group="variant", name=f"{name}_schema", node=schema)


def resolve_device(device: str) -> str:
    """Map ``auto`` to the best available device and refuse unavailable ones."""
    allowed = ("auto", *DEVICES)
    if device not in allowed:
        raise ConfigError(f"device: unknown device {device!r}; allowed: {list(allowed)}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch.cuda.is_available() is False")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: 'mps' requested but torch.backends.mps.is_available() is False")
    return device


def check_dtypes(names: Sequence[str], allowed: Sequence[str] = CHECK_DTYPES) -> tuple[str, ...]:
    """Validate dtype names against the allowed ones."""
    if not names:
        raise ConfigError(f"dtypes: empty list; allowed: {list(allowed)}")
    for name in names:
        if name not in allowed or name not in DTYPES:
            raise ConfigError(f"dtypes: unknown dtype {name!r}; allowed: {list(allowed)}")
    return tuple(names)


def variant_specs(names: Sequence[str], extra_modules: Sequence[str]) -> tuple[VariantSpec, ...]:
    """Load the registry plus external modules and parse the requested specs (all if empty)."""
    try:
        if not names:
            return tuple(default_specs(registry.load_all(extra_modules)))
        wanted = {spec_name(text) for text in names} - set(registry.REGISTRY)
        builtin = [spec_name(t) for t in names if spec_name(t) in registry.REGISTRY]
        loaded = registry.load_all(extra_modules, names=dict.fromkeys(builtin))
        unknown = wanted - set(loaded)
        if unknown:
            allowed = sorted(set(registry.REGISTRY) | set(loaded))
            raise ConfigError(f"variants: unknown variant {sorted(unknown)}; allowed: {allowed}")
        return tuple(dedupe(parse_spec(text, loaded) for text in names))
    except (SpecError, ContractError) as exc:
        raise ConfigError(str(exc)) from exc


def positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    """Validate a non-empty list of positive ints."""
    if not values:
        raise ConfigError(f"{name}: empty list; give at least one positive int")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: {value!r} is not allowed; values must be positive ints")
    return tuple(values)


def choices(name: str, values: Sequence[Any], allowed: Sequence[Any]) -> tuple[Any, ...]:
    """Validate a non-empty list against allowed values."""
    if not values:
        raise ConfigError(f"{name}: empty list; allowed: {list(allowed)}")
    for value in values:
        if value not in allowed:
            raise ConfigError(f"{name}: unknown value {value!r}; allowed: {list(allowed)}")
    return tuple(dict.fromkeys(values))


def grid_settings(conf: MeasureConf) -> GridSettings:
    """Validate a composed MeasureConf into frozen settings, before any work is done."""
    if conf.min_run_time <= 0:
        raise ConfigError(f"min_run_time: must be > 0 seconds, got {conf.min_run_time!r}")
    if conf.min_samples < 1:
        raise ConfigError(f"min_samples: must be an int >= 1, got {conf.min_samples!r}")
    if conf.threads < 0:
        raise ConfigError(f"threads: must be >= 0 (0 = torch's default), got {conf.threads!r}")
    if not conf.timeout_s > 0:
        raise ConfigError(f"timeout_s: must be > 0 seconds, got {conf.timeout_s!r}")
    return GridSettings(
        specs=variant_specs(conf.variants, conf.extra_variants),
        device=resolve_device(conf.device),
        dtypes=check_dtypes(conf.dtypes, allowed=("fp32", "bf16", "fp16", "fp64")),
        modes=choices("modes", conf.modes, MODES),
        causal=choices("causal", conf.causal, (False, True)),
        batch_sizes=positive_ints("batch_sizes", conf.batch_sizes),
        heads=positive_ints("heads", [conf.heads])[0],
        head_dim=positive_ints("head_dim", [conf.head_dim])[0],
        seq_lens=positive_ints("seq_lens", conf.seq_lens),
        measure=MeasureSettings(min_run_time=conf.min_run_time, min_samples=conf.min_samples,
                                threads=conf.threads or None,
                                check=conf.check, memory=conf.memory, seed=conf.seed),
        timeout_s=conf.timeout_s,
    )


def sweep_settings(conf: SweepConf) -> SweepSettings:
    """Validate a composed SweepConf, before any work is done or anything is written."""
    if not 0 < conf.memory_margin <= 1:
        raise ConfigError(f"memory_margin: must be in (0, 1], got {conf.memory_margin!r}")
    return SweepSettings(grid=grid_settings(conf), preset=conf.preset, timeout_s=conf.timeout_s,
                         force=conf.force, memory_margin=conf.memory_margin, paced=conf.paced,
                         resume=bool(conf.resume))


def check_settings(conf: CheckConf) -> CheckSettings:
    """Validate a composed CheckConf into frozen settings, before any work is done."""
    if not conf.causal:
        raise ConfigError("causal: empty list; allowed: [false, true]")
    if not conf.timeout_s > 0:
        raise ConfigError(f"timeout_s: must be > 0 seconds, got {conf.timeout_s!r}")
    return CheckSettings(
        specs=variant_specs(conf.variants, conf.extra_variants),
        dtypes=check_dtypes(conf.dtypes),
        device=resolve_device(conf.device),
        causal=tuple(dict.fromkeys(conf.causal)),
        backward=conf.backward,
        seed=conf.seed,
        timeout_s=conf.timeout_s,
    )

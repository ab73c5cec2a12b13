"""Typed configuration, each default written once.

The ``*Conf`` dataclasses are the Hydra schemas (registered in the ConfigStore): their field
defaults are the project's defaults, and YAML files under ``conf/`` only override them.
``OmegaConf.to_object`` turns a composed config into one of them once, and its
``__post_init__`` validates every plain value, naming the field and what is allowed. The
``*_settings`` functions then resolve what needs the machine or the registry (variant specs,
the device) into frozen ``*Settings`` that everything below the CLI receives; nothing below
that boundary sees a DictConfig.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import variants as registry
from harness.allocator import ALLOCATORS, allocator_env
from harness.ragged import FORMS as RAGGED_FORMS
from harness.ragged import lengths as ragged_lengths
from harness.specs import SpecError, VariantSpec, dedupe, default_specs, parse_spec, spec_name
from harness.vocab import MODES
from variants.contract import DEVICES, DTYPES, ContractError

CHECK_DTYPES = ("fp32", "bf16", "fp16")
GRID_DTYPES = (*CHECK_DTYPES, "fp64")
TIMEOUT_S = 600.0  # per case (sweep, measure) or per matrix cell (check), in a worker


class ConfigError(ValueError):
    """Bad user configuration; the message names the field and what is allowed."""


@dataclass(frozen=True)
class MeasureSettings:
    """How hard to measure one case: timing budget, threads, and what else to collect."""

    min_run_time: float = 0.5  # seconds of timed blocks per case (blocked_autorange)
    min_samples: int = 1  # blocks at least (compare needs 8 a side to decide)
    threads: int = 0  # 0: torch's default
    check: bool = True  # run the float64 oracle for each case
    check_max_scores: int = 2**22  # B*H*Nq*Nk above which the oracle runs at a smaller shape
    memory: bool = True  # measure peak memory (a separate pass)
    roof: bool = True  # measure the GEMM roof the efficiency divides by
    l2_flush: bool = False  # CUDA: overwrite 256 MiB between timed repetitions (cold L2)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.min_run_time > 0:
            raise ConfigError(f"min_run_time: must be > 0 seconds, got {self.min_run_time!r}")
        if self.min_samples < 1:
            raise ConfigError(f"min_samples: must be an int >= 1, got {self.min_samples!r}")
        if self.threads < 0:
            raise ConfigError(f"threads: must be >= 0 (0 = torch's default), got {self.threads!r}")


@dataclass
class MeasureConf:
    """Hydra schema of ``python -m harness measure`` (conf/measure.yaml): a grid of cases."""

    variants: list[str] = field(default_factory=list)  # specs; empty: every variant and preset
    exclude: list[str] = field(default_factory=list)  # with variants=[]: labels/patterns to drop
    extra_variants: list[str] = field(default_factory=list)  # dotted paths of your own variants
    device: str = "cpu"  # auto | cpu | cuda | mps
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    modes: list[str] = field(default_factory=lambda: ["fwd"])
    causal: list[bool] = field(default_factory=lambda: [False])
    compile: list[bool] = field(default_factory=lambda: [False])  # true: through torch.compile
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    heads: int = 8
    kv_heads: list[int] = field(default_factory=list)  # GQA/MQA: k/v heads dividing heads
    head_dim: int = 64
    head_dims: list[int] = field(default_factory=list)  # a D axis, e.g. [64,128,256]; empty:
    # [head_dim] (head_dim stays the one-D field every older command line and tree knows)
    v_head_dim: int = 0  # the value head dim when it differs from D (192/128: head_dim=192,
    # v_head_dim=128); 0: the same as D
    seq_lens: list[int] = field(default_factory=lambda: [1024])
    decode_tokens: list[int] = field(default_factory=lambda: [1])  # modes=[decode]: t a step
    decode_contexts: list[int] = field(default_factory=list)  # decode's N; empty: seq_lens
    ragged: list[str] = field(default_factory=list)  # ragged batches: uniform:F or L1/L2/...
    ragged_forms: list[str] = field(default_factory=lambda: list(RAGGED_FORMS))
    min_run_time: float = MeasureSettings.min_run_time
    min_samples: int = MeasureSettings.min_samples
    threads: int = MeasureSettings.threads
    check: bool = MeasureSettings.check
    memory: bool = MeasureSettings.memory
    l2_flush: bool = MeasureSettings.l2_flush
    seed: int = MeasureSettings.seed
    timeout_s: float = TIMEOUT_S  # per case (oracle, timing and memory pass together)
    allocator: str = "default"  # the worker's: default | tuned | jemalloc | tcmalloc

    def __post_init__(self) -> None:
        device_name(self.device)
        choices("allocator", [self.allocator], ALLOCATORS)
        check_dtypes(self.dtypes, GRID_DTYPES)
        choices("modes", self.modes, MODES)
        choices("causal", self.causal, (False, True))
        choices("compile", self.compile, (False, True))
        for name in ("batch_sizes", "seq_lens", "decode_tokens"):
            positive_ints(name, getattr(self, name))
        if self.decode_contexts:
            positive_ints("decode_contexts", self.decode_contexts)
        if self.kv_heads:
            kv_heads_axis(self.kv_heads, self.heads)
        if self.head_dims:
            positive_ints("head_dims", self.head_dims)
        if self.v_head_dim < 0:
            raise ConfigError(f"v_head_dim: must be a positive int (0: the same as head_dim), "
                              f"got {self.v_head_dim!r}")
        if self.ragged:
            ragged_axis(self.ragged, self.batch_sizes, self.seq_lens)
        choices("ragged_forms", self.ragged_forms, RAGGED_FORMS)
        for name in ("heads", "head_dim"):
            positive_ints(name, [getattr(self, name)])
        positive_timeout(self.timeout_s)
        self.measure_settings()

    def measure_settings(self) -> MeasureSettings:
        """The per-case measurement settings these fields ask for."""
        return MeasureSettings(min_run_time=self.min_run_time, min_samples=self.min_samples,
                               threads=self.threads, check=self.check, memory=self.memory,
                               l2_flush=self.l2_flush, seed=self.seed)


@dataclass
class SweepConf(MeasureConf):
    """Hydra schema of ``python -m harness sweep`` (conf/config.yaml and conf/sweep/*.yaml)."""

    preset: str = "default"  # set by the chosen conf/sweep/<preset>.yaml, for the manifest
    results_dir: str = "results"  # each sweep writes results_dir/<date>_<time>/
    resume: str = ""  # a run directory to complete: only its missing cases run
    run_dir: str = ""  # a new run directory to create (default: results_dir/<date>_<time>)
    extend: bool = False  # resume: allow other grid axes (recorded in the manifest)
    force: bool = False  # run cases whose predicted memory exceeds the free memory
    memory_margin: float = 0.8  # predicted peak must fit in this fraction of free memory
    paced: bool = False  # harness ab: wait for a line on stdin before each case
    budget_s: float = 0.0  # seconds for the sweep (0: none); cases left then are skipped rows
    longest: bool = False  # search each series' longest N within memory_budget_mib instead
    memory_budget_mib: float = 0.0  # longest: the budget (0: memory_margin x free at start)
    longest_max_n: int = 262144  # longest: never probe beyond this N
    longest_resolution: int = 256  # longest: bisect until the bracket is this narrow

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.memory_budget_mib >= 0:
            raise ConfigError(f"memory_budget_mib: must be >= 0 MiB (0 = memory_margin of the "
                              f"free memory), got {self.memory_budget_mib!r}")
        for name in ("longest_max_n", "longest_resolution"):
            positive_ints(name, [getattr(self, name)])
        if self.longest and any("/" in r for r in self.ragged):
            raise ConfigError("ragged: explicit lengths fix N; longest=true searches N "
                              "(allowed there: uniform:F)")
        if not 0 < self.memory_margin <= 1:
            raise ConfigError(f"memory_margin: must be in (0, 1], got {self.memory_margin!r}")
        if not self.budget_s >= 0:
            raise ConfigError(f"budget_s: must be >= 0 seconds (0 = no budget), "
                              f"got {self.budget_s!r}")


@dataclass
class CheckConf:
    """Hydra schema of ``python -m harness check`` (conf/check.yaml)."""

    variants: list[str] = field(default_factory=list)  # specs; empty: every variant and preset
    exclude: list[str] = field(default_factory=list)  # with variants=[]: labels/patterns to drop
    extra_variants: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=lambda: list(CHECK_DTYPES))
    device: str = "cpu"
    causal: list[bool] = field(default_factory=lambda: [False, True])
    backward: bool = True  # also compare dq, dk, dv where the variant supports backward
    seed: int = 0
    timeout_s: float = TIMEOUT_S  # per (variant, dtype, causal) cell, in a supervised worker

    def __post_init__(self) -> None:
        device_name(self.device)
        check_dtypes(self.dtypes)
        choices("causal", self.causal, (False, True))
        positive_timeout(self.timeout_s)


@dataclass(frozen=True)
class GridSettings:
    """Validated grid of cases plus how to measure them."""

    specs: tuple[VariantSpec, ...]
    device: str
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]
    causal: tuple[bool, ...]
    compile: tuple[bool, ...]  # eager (False) and/or through torch.compile (True)
    batch_sizes: tuple[int, ...]
    heads: int
    kv_heads: tuple[int, ...]  # k/v heads of each case: 0 stands for heads (no grouping)
    head_dims: tuple[int, ...]  # D of each case
    v_head_dim: int  # the value head dim; 0: D
    seq_lens: tuple[int, ...]
    decode_tokens: tuple[int, ...]  # decode cases: new tokens a step
    decode_contexts: tuple[int, ...]  # decode cases: the cached context N
    ragged: tuple[str, ...]  # "" (equal lengths) or how a ragged batch's lengths are drawn
    ragged_forms: tuple[str, ...]  # for ragged cases: padded and/or packed
    measure: MeasureSettings
    timeout_s: float
    worker_env: dict[str, str]  # the allocator's environment for the supervised workers


@dataclass(frozen=True)
class SweepSettings:
    """Validated sweep: the grid plus skipping rules and where it writes."""

    grid: GridSettings
    preset: str
    force: bool
    memory_margin: float
    paced: bool
    resume: bool  # completing an existing run directory (else it must be new)
    budget_s: float  # seconds for the sweep; once spent, the cases left are skipped (0: none)
    longest: bool  # search each series' longest N within memory_budget_mib
    memory_budget_mib: float  # 0: memory_margin x the free memory at the start
    longest_max_n: int
    longest_resolution: int


@dataclass(frozen=True)
class CheckSettings:
    """Validated settings of the agreement matrix."""

    specs: tuple[VariantSpec, ...]
    dtypes: tuple[str, ...]
    device: str
    causal: tuple[bool, ...]
    backward: bool
    seed: int
    timeout_s: float


def register_schemas() -> None:
    """Register the Hydra schemas, one per subcommand."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="check_schema", node=CheckConf)
    cs.store(name="measure_schema", node=MeasureConf)
    cs.store(name="sweep_schema", node=SweepConf)


def device_name(device: str) -> str:
    """Refuse device names that no machine has (availability is checked in resolve_device)."""
    allowed = ("auto", *DEVICES)
    if device not in allowed:
        raise ConfigError(f"device: unknown device {device!r}; allowed: {list(allowed)}")
    return device


def positive_timeout(timeout_s: float) -> float:
    """Validate a per-case timeout in seconds."""
    if not timeout_s > 0:
        raise ConfigError(f"timeout_s: must be > 0 seconds, got {timeout_s!r}")
    return timeout_s


def resolve_device(device: str) -> str:
    """Map ``auto`` to the best available device and refuse unavailable ones."""
    device_name(device)
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


def variant_specs(names: Sequence[str], extra_modules: Sequence[str],
                  exclude: Sequence[str] = ()) -> tuple[VariantSpec, ...]:
    """The named specs, or, when none are named, every variant and preset of the registry and
    the external modules except those whose label matches an ``exclude`` pattern."""
    try:
        if not names:
            specs = default_specs(registry.load_all(extra_modules))
        else:
            specs = _named_specs(names, extra_modules)
    except (SpecError, ContractError) as exc:
        raise ConfigError(str(exc)) from exc
    if names:  # exclude narrows the rule "every variant"; a variant named is never dropped
        return tuple(specs)
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(s.label, pattern) for s in specs):
            labels = [s.label for s in specs]
            raise ConfigError(f"exclude: {pattern!r} matches no variant; the variants are "
                              f"{labels} (patterns like sdpa@* are allowed)")
    kept = tuple(s for s in specs if not any(fnmatch.fnmatchcase(s.label, p) for p in exclude))
    if not kept:
        raise ConfigError(f"exclude: {list(exclude)} drops every variant")
    return kept


def _named_specs(names: Sequence[str], extra_modules: Sequence[str]) -> list[VariantSpec]:
    """Parse the named specs against the registry plus external modules."""
    wanted = {spec_name(text) for text in names} - set(registry.REGISTRY)
    builtin = [spec_name(t) for t in names if spec_name(t) in registry.REGISTRY]
    loaded = registry.load_all(extra_modules, names=dict.fromkeys(builtin))
    unknown = wanted - set(loaded)
    if unknown:
        allowed = sorted(set(registry.REGISTRY) | set(loaded))
        raise ConfigError(f"variants: unknown variant {sorted(unknown)}; allowed: {allowed}")
    return dedupe(parse_spec(text, loaded) for text in names)


def positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    """Validate a non-empty list of positive ints."""
    if not values:
        raise ConfigError(f"{name}: empty list; give at least one positive int")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: {value!r} is not allowed; values must be positive ints")
    return tuple(values)


def ragged_axis(specs: Sequence[str], batch_sizes: Sequence[int],
                seq_lens: Sequence[int]) -> tuple[str, ...]:
    """Validate the ragged axis against every B and N it will meet."""
    for spec in specs:
        for b in batch_sizes:
            for n in seq_lens:
                try:
                    ragged_lengths(spec, b, n, 0)
                except ValueError as exc:
                    raise ConfigError(f"ragged: {exc}") from None
    return tuple(specs)


def kv_heads_axis(values: Sequence[int], heads: int) -> tuple[int, ...]:
    """Validate the kv_heads axis: positive ints that divide ``heads``."""
    positive_ints("kv_heads", values)
    allowed = [n for n in range(1, heads + 1) if heads % n == 0]
    for value in values:
        if value not in allowed:
            raise ConfigError(f"kv_heads: {value!r} does not divide heads={heads}; allowed: "
                              f"{allowed} (heads itself: no grouping)")
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
    """Resolve a MeasureConf (validated again: it may have changed since it was built) into
    frozen settings: the variant specs and the device, before any work is done."""
    conf.__post_init__()
    device = resolve_device(conf.device)
    if conf.l2_flush and not device.startswith("cuda"):
        raise ConfigError(f"l2_flush: flushes a CUDA device's L2 between repetitions; device "
                          f"is {device!r} (allowed there: l2_flush=false)")
    return GridSettings(
        specs=variant_specs(conf.variants, conf.extra_variants, conf.exclude),
        device=device,
        dtypes=tuple(conf.dtypes),
        modes=tuple(dict.fromkeys(conf.modes)),
        causal=tuple(dict.fromkeys(conf.causal)),
        compile=tuple(dict.fromkeys(conf.compile)),
        batch_sizes=tuple(conf.batch_sizes),
        heads=conf.heads,
        kv_heads=tuple(dict.fromkeys(0 if n == conf.heads else n
                                     for n in conf.kv_heads or [conf.heads])),
        head_dims=tuple(dict.fromkeys(conf.head_dims or [conf.head_dim])),
        v_head_dim=conf.v_head_dim,
        seq_lens=tuple(conf.seq_lens),
        decode_tokens=tuple(dict.fromkeys(conf.decode_tokens)),
        decode_contexts=tuple(conf.decode_contexts or conf.seq_lens),
        ragged=tuple(dict.fromkeys(conf.ragged or [""])),
        ragged_forms=tuple(dict.fromkeys(conf.ragged_forms)),
        measure=conf.measure_settings(),
        timeout_s=conf.timeout_s,
        worker_env=_allocator_env(conf.allocator),
    )


def _allocator_env(name: str) -> dict[str, str]:
    """The worker environment of an allocator the system has (else a ConfigError)."""
    try:
        return allocator_env(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def sweep_settings(conf: SweepConf) -> SweepSettings:
    """Resolve a SweepConf into frozen settings, before any work is done or anything written."""
    return SweepSettings(grid=grid_settings(conf), preset=conf.preset, force=conf.force,
                         memory_margin=conf.memory_margin, paced=conf.paced,
                         resume=bool(conf.resume), budget_s=conf.budget_s,
                         longest=conf.longest, memory_budget_mib=conf.memory_budget_mib,
                         longest_max_n=conf.longest_max_n,
                         longest_resolution=conf.longest_resolution)


def check_settings(conf: CheckConf) -> CheckSettings:
    """Resolve a CheckConf into frozen settings, before any work is done."""
    conf.__post_init__()
    return CheckSettings(
        specs=variant_specs(conf.variants, conf.extra_variants, conf.exclude),
        dtypes=tuple(conf.dtypes),
        device=resolve_device(conf.device),
        causal=tuple(dict.fromkeys(conf.causal)),
        backward=conf.backward,
        seed=conf.seed,
        timeout_s=conf.timeout_s,
    )

"""The contract every attention variant follows, and the loader that checks it.

A variant is one module ``variants/<NAME>.py`` (found by name: variants/__init__.py) exposing:

- ``NAME: str`` -- the registry name (``naive``, ``sdpa``, ...).
- ``Config`` -- a frozen dataclass of the variant's own settings (tiles, window, backend ...),
  with defaults for every field, the one place they are written; specs on the command line
  (``NAME@PRESET:field=value``, harness/specs.py) set them.
- ``PRESETS: Mapping[str, Config]`` -- named configurations worth running side by side
  (``sdpa@flash``, ``sparse@bigbird``); may be empty.
- ``SUPPORTS: Supports`` -- devices, dtypes, causal and backward support.
- ``computes(cfg) -> Semantics`` -- what the variant claims to compute, so the oracle can
  build the float64 reference: exact softmax attention, softmax over a sparse pattern, or a
  normalised linear-attention form.
- ``unavailable_reason(device, dtype, *, causal, backward, cfg) -> str | None`` -- a sentence a
  person understands when the variant cannot run here (beyond ``SUPPORTS``), else None;
  ``unavailable_reason = always_available`` for variants with nothing to add.
- optional ``expected_peak_bytes(b, h, nq, nk, d, *, dtype, causal, backward, cfg, device)
  -> int``: the variant's analytic memory model (``variants/memory_models.py`` has the
  family formulas); without it, reports show no expectation beside the measured peak. A
  variant that declares ``Supports.gqa`` or ``Supports.value_dim`` takes ``hkv`` and ``dv``
  keywords too: they are passed only when not 0 (k, v with H heads; v with D).
- optional ``bytes_moved(...)``, the same arguments: bytes a forward (``backward``: a forward
  and a backward) reads and writes, for the roofline; None or absent: inputs and outputs
  once.
- ``attention(q, k, v, *, causal, scale, cfg) -> Tensor`` with q (B, H, Nq, D) and k, v
  (B, H, Nk, D), or (B, Hkv, Nk, D) when ``SUPPORTS.gqa`` (query head h reads kv head
  h // (H / Hkv)); output (B, H, Nq, D) in the input dtype. ``scale`` None means 1/sqrt(D).
  It may raise ``Unavailable`` for inputs it cannot handle; it never falls back silently.
- optional ``dispatched(shape, *, device, dtype, causal, backward, cfg) -> Mapping[str, str]``:
  for variants that hand the call to a library which picks a kernel (sdpa, xformers), what
  runs for these inputs, in words naming the kernel underneath: ``{"forward": ...,
  "backward": ...}``; every row records it, so that a row's name never claims a kernel other
  than the one that ran.
- optional ``REVISION: int`` (default 0) -- bump it when the variant starts to measure
  something else under the same name and config (a different algorithm, not a faster one):
  ``harness compare`` then calls old and new results "not comparable" instead of reading the
  change as a speed-up or a regression. Each row records ``Variant.definition(cfg)``.
- optional ``shape_refusal(shape, *, device, dtype, causal, backward, cfg) -> str | None``:
  why these particular shapes cannot run (a pinned kernel's limits), asked before a case runs
  so that the support matrix and the rows agree; without it, every shape is taken.
- optional decode form (``mode=decode``; ``variants/decoding.py`` has the caches):
  ``prefill(k, v, *, capacity, cfg) -> cache`` builds the cache from a prefix's k, v
  (B, H, L, D) with room for ``capacity`` positions (not timed); ``decode(q, k, v, cache, *,
  scale, cfg) -> (out, cache)`` attends t new queries (B, H, t, D) to the cache and the t new
  keys, causally, and returns the output and the cache after the step, leaving the given
  cache as it was (so a step can be timed again and again). A cache has ``nbytes()`` and
  ``state()`` (its logical tensors, which the oracle compares with the cache built from the
  longer prefix). ``decode_unavailable(cfg) -> str | None`` may refuse a config; a variant
  without ``decode`` is unavailable for decode, and its rows say so.

Causal masking is top-left aligned everywhere in this project: query i sees keys j <= i,
whatever Nq and Nk are. A query row that sees no key at all (possible only with sparse
patterns) yields zeros and zero gradients, as torch's CPU SDPA does.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

DTYPES: Mapping[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp64": torch.float64,
}
DTYPE_NAMES: Mapping[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
DEVICES: tuple[str, ...] = ("cpu", "cuda", "mps")

#: keep(nq, nk, causal, device) -> bool tensor (Nq, Nk): True where the pattern keeps an entry.
PatternFn = Callable[[int, int, bool, torch.device], torch.Tensor]
#: phi(x) -> positive features, same shape as x.
FeatureMap = Callable[[torch.Tensor], torch.Tensor]


ALL_DEVICES: frozenset[str] = frozenset(DEVICES)
ALL_DTYPES: frozenset[torch.dtype] = frozenset(DTYPES.values())


@dataclass(frozen=True)
class Shape:
    """An attention problem size: q (B, H, Nq, D), k/v (B, Hkv, Nk, D); ``hkv`` 0 means
    Hkv = H (every query head has its own keys), else H is a multiple of it (GQA, MQA)."""

    b: int
    h: int
    nq: int
    nk: int
    d: int
    hkv: int = 0
    dv: int = 0  # the value (and output) head dim; 0: d

    @property
    def kv_heads(self) -> int:
        """Heads of k and v: H, or Hkv for grouped queries."""
        return self.hkv or self.h

    @property
    def value_dim(self) -> int:
        """Head dim of v and of the output: d, or dv when it differs."""
        return self.dv or self.d

    def label(self) -> str:
        """Short human label such as B2 H3 Nq127 Nk257 D64 (Hkv1 when grouped; Dv when
        the value head dim differs)."""
        kv = f" Hkv{self.hkv}" if self.hkv else ""
        dv = f" Dv{self.dv}" if self.dv else ""
        return f"B{self.b} H{self.h}{kv} Nq{self.nq} Nk{self.nk} D{self.d}{dv}"


@dataclass(frozen=True)
class Supports:
    """What a variant can run: devices, dtypes, causal masking, backward, whether its
    ``attention`` is measured through ``torch.compile`` too (``compile=[true]``): True for
    variants written in plain PyTorch ops; False for a library's kernel (sdpa, xformers) or a
    variant that compiles itself; and ``gqa``: whether ``attention`` (and ``decode``) take
    k, v of Hkv heads for q of H = G Hkv heads, query head h reading kv head h // G."""

    devices: frozenset[str] = ALL_DEVICES
    dtypes: frozenset[torch.dtype] = ALL_DTYPES
    causal: bool = True
    backward: bool = True
    compile: bool = False
    gqa: bool = False  # k, v with fewer heads than q (Hq a multiple of Hkv: GQA, MQA)
    value_dim: bool = False  # v (and the output) with a head dim other than q's and k's


#: score(s, h, q_idx, kv_idx, heads) -> s: a FlexAttention score_mod given the head count
ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class ScoreMod:
    """A change to the scaled scores before the mask and the softmax (ALiBi, soft-capping),
    written as index functions (variants/patterns.py) so kernels and the oracle share it."""

    description: str
    fn: ScoreFn

    def dense(self, scores: torch.Tensor) -> torch.Tensor:
        """Apply to dense scores (B, H, Nq, Nk), the indices broadcast."""
        _, heads, nq, nk = scores.shape
        dev = scores.device
        h = torch.arange(heads, device=dev)[:, None, None]  # (H, 1, 1)
        q = torch.arange(nq, device=dev)[None, :, None]  # (1, Nq, 1)
        kv = torch.arange(nk, device=dev)[None, None, :]  # (1, 1, Nk)
        return self.fn(scores, h, q, kv, heads)  # (B, H, Nq, Nk)


@dataclass(frozen=True)
class SoftmaxAttention:
    """Exact softmax(score_mod(Q K^T * scale)) V."""

    kind: str = "softmax"
    score_mod: ScoreMod | None = None


@dataclass(frozen=True)
class SparseSoftmax:
    """Softmax over exactly the entries a pattern keeps (causal already folded in)."""

    keep: PatternFn
    description: str
    #: kept(nq, nk, causal) -> number of kept (query, key) pairs, without a dense mask.
    kept: Callable[[int, int, bool], int] | None = None
    kind: str = "sparse"
    score_mod: ScoreMod | None = None
    #: computed(nq, nk, causal) -> (query, key) pairs the kernel computes when that is not the
    #: kept ones (whole blocks of a block mask; every pair under a dense mask); FLOPs count them
    computed: Callable[[int, int, bool], int] | None = None
    #: how FLOPs count this semantics' pairs, said in every row
    flops_convention: str = "kept pairs"
    #: computes every Nq x Nk pair and masks afterwards (a dense mask): FLOPs count every pair,
    #: the row says so (harness.vocab.DENSE_MASK_FLOPS) and it is not sub-quadratic
    dense: bool = False


@dataclass(frozen=True)
class LinearAttention:
    """Row-normalised phi(Q) phi(K)^T V / (phi(Q) phi(K)^T 1 + eps), lower-triangular if causal."""

    feature_map: FeatureMap
    eps: float
    kind: str = "linear"


Semantics = SoftmaxAttention | SparseSoftmax | LinearAttention

_REQUIRED: Mapping[str, str] = {
    "NAME": "a str naming the variant",
    "Config": "a frozen dataclass of the variant's settings",
    "PRESETS": "a mapping of preset name to Config instance (may be empty)",
    "SUPPORTS": "a variants.contract.Supports",
    "computes": "a function computes(cfg) -> Semantics",
    "unavailable_reason": "a function unavailable_reason(device, dtype, *, causal, backward, cfg)",
    "attention": "a function attention(q, k, v, *, causal, scale, cfg)",
}


class ContractError(TypeError):
    """A module named as a variant does not follow the variant contract."""


class Unavailable(RuntimeError):
    """Raised by ``attention`` when these particular inputs cannot run (a shape a kernel
    rejects, say); the harness records the case as unavailable with this message."""


def always_available(
    device: str, dtype: torch.dtype, *, causal: bool, backward: bool, cfg: Any
) -> str | None:
    """The ``unavailable_reason`` of a variant that runs wherever its SUPPORTS says."""
    return None


def default_scale(head_dim: int, scale: float | None) -> float:
    """The softmax scale: the given one, or 1/sqrt(D)."""
    return 1.0 / math.sqrt(head_dim) if scale is None else scale


def _grouping(shape: Shape) -> dict[str, int]:
    """The ``hkv`` and ``dv`` keywords of a shape that has them, for a module's models: a
    module that supports neither need not take them."""
    return {name: value for name, value in (("hkv", shape.hkv), ("dv", shape.dv)) if value}


@dataclass(frozen=True)
class Variant:
    """A loaded, contract-checked variant module."""

    name: str
    module: ModuleType

    @property
    def config_cls(self) -> type:
        """The variant's config dataclass."""
        return self.module.Config

    @property
    def supports(self) -> Supports:
        """What the variant declares it supports."""
        return self.module.SUPPORTS

    @property
    def presets(self) -> Mapping[str, Any]:
        """Named configurations the variant offers."""
        return self.module.PRESETS

    def computes(self, cfg: Any) -> Semantics:
        """What the variant computes under ``cfg``."""
        return self.module.computes(cfg)

    def definition(self, cfg: Any) -> str:
        """What the variant measures under ``cfg``: its semantics and its REVISION, as text."""
        sem = self.computes(cfg)
        if isinstance(sem, SparseSoftmax):
            what = f"sparse softmax ({sem.description})"
        elif isinstance(sem, LinearAttention):
            doc = (sem.feature_map.__doc__ or "").strip().splitlines()
            phi = doc[0] if doc else getattr(sem.feature_map, "__qualname__", "phi")
            what = f"linear attention ({phi.rstrip('.')}; eps={sem.eps:g})"
        else:
            what = "softmax attention"
        mod = getattr(sem, "score_mod", None)
        if mod is not None:
            what += f" with {mod.description}"
        return f"{what}; revision {getattr(self.module, 'REVISION', 0)}"

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
        causal: bool, scale: float | None, cfg: Any,
    ) -> torch.Tensor:
        """Run the variant: q (B, H, Nq, D), k/v (B, H, Nk, D) -> (B, H, Nq, D)."""
        return self.module.attention(q, k, v, causal=causal, scale=scale, cfg=cfg)

    def expected_peak_bytes(
        self, shape: Shape, *,
        dtype: torch.dtype, causal: bool, backward: bool, cfg: Any, device: str,
    ) -> int | None:
        """The variant's analytic peak-memory model on ``device``, or None if it has none
        (the module's model gets ``hkv`` and ``dv`` only when they are not 0)."""
        model = getattr(self.module, "expected_peak_bytes", None)
        if model is None:
            return None
        s = shape
        return int(model(s.b, s.h, s.nq, s.nk, s.d, **_grouping(s), dtype=dtype,
                         causal=causal, backward=backward, cfg=cfg, device=device))

    def bytes_moved(
        self, shape: Shape, *,
        dtype: torch.dtype, causal: bool, backward: bool, cfg: Any, device: str,
    ) -> int | None:
        """Bytes a forward (backward: forward and backward) reads and writes under the
        variant's own traffic model, or None if it has none, here or for this config (the
        harness then counts inputs and outputs once: harness/roofline.py)."""
        model = getattr(self.module, "bytes_moved", None)
        if model is None:
            return None
        s = shape
        moved = model(s.b, s.h, s.nq, s.nk, s.d, **_grouping(s), dtype=dtype, causal=causal,
                      backward=backward, cfg=cfg, device=device)
        return None if moved is None else int(moved)

    def dispatched(
        self, shape: Shape, *, device: str, dtype: torch.dtype, causal: bool, backward: bool,
        cfg: Any,
    ) -> dict[str, str]:
        """The kernels a call with these inputs runs ({"forward": ..., "backward": ...}), for
        variants whose library picks one; {} for the others."""
        fn = getattr(self.module, "dispatched", None)
        if fn is None:
            return {}
        return dict(fn(shape, device=device, dtype=dtype, causal=causal, backward=backward,
                       cfg=cfg))

    def shape_refusal(
        self, shape: Shape, *, device: str, dtype: torch.dtype, causal: bool, backward: bool,
        cfg: Any,
    ) -> str | None:
        """Why these shapes cannot run (the module's ``shape_refusal``), or None."""
        fn = getattr(self.module, "shape_refusal", None)
        if fn is None:
            return None
        return fn(shape, device=device, dtype=dtype, causal=causal, backward=backward, cfg=cfg)

    def decode_reason(self, cfg: Any) -> str | None:
        """Why this variant has no decode step under ``cfg``, or None when it has one."""
        if not callable(getattr(self.module, "decode", None)):
            return f"{self.name} declares no decode form (no decode() in its module)"
        refuse = getattr(self.module, "decode_unavailable", None)
        return refuse(cfg) if refuse is not None else None

    def prefill(self, k: torch.Tensor, v: torch.Tensor, *, capacity: int, cfg: Any) -> Any:
        """The variant's decode cache of a prefix k, v (B, H, L, D), room for ``capacity``."""
        return self.module.prefill(k, v, capacity=capacity, cfg=cfg)

    def decode(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: Any, *,
        scale: float | None, cfg: Any,
    ) -> tuple[torch.Tensor, Any]:
        """One decode step: q, k, v (B, H, t, D) of t new tokens against ``cache`` ->
        (out (B, H, t, D), the cache after the step)."""
        return self.module.decode(q, k, v, cache, scale=scale, cfg=cfg)

    def unavailable_reason(
        self, device: str, dtype: torch.dtype, *, causal: bool, backward: bool, cfg: Any
    ) -> str | None:
        """Why this variant cannot run this combination, or None when it can."""
        sup = self.supports
        if device not in sup.devices:
            return f"{self.name} does not run on {device} (supports: {sorted(sup.devices)})"
        if dtype not in sup.dtypes:
            allowed = sorted(DTYPE_NAMES.get(d, str(d)) for d in sup.dtypes)
            return f"{self.name} does not support {DTYPE_NAMES.get(dtype, dtype)} ({allowed})"
        if causal and not sup.causal:
            return f"{self.name} has no causal mode"
        if backward and not sup.backward:
            return f"{self.name} declares backward unsupported"
        return self.module.unavailable_reason(
            device, dtype, causal=causal, backward=backward, cfg=cfg
        )


def check_module(module: ModuleType) -> Variant:
    """Check ``module`` against the contract and wrap it; raise ContractError naming gaps."""
    label = module.__name__
    missing = [f"{attr} ({what})" for attr, what in _REQUIRED.items() if not hasattr(module, attr)]
    if missing:
        raise ContractError(f"variant module {label!r} is missing: " + "; ".join(missing))
    problems = _shape_problems(module)
    if problems:
        raise ContractError(f"variant module {label!r} breaks the contract: " + "; ".join(problems))
    return Variant(name=module.NAME, module=module)


def _shape_problems(module: ModuleType) -> list[str]:
    """List the contract's type-level violations of an already-complete module."""
    problems = []
    if not isinstance(module.NAME, str) or not module.NAME.isidentifier():
        problems.append(f"NAME must be an identifier string, got {module.NAME!r}")
    cfg_cls = module.Config
    if not (isinstance(cfg_cls, type) and dataclasses.is_dataclass(cfg_cls)):
        problems.append("Config must be a dataclass")
    elif not cfg_cls.__dataclass_params__.frozen:
        problems.append("Config must be a frozen dataclass (@dataclass(frozen=True))")
    if not isinstance(module.SUPPORTS, Supports):
        problems.append("SUPPORTS must be a variants.contract.Supports")
    if not isinstance(module.PRESETS, Mapping):
        problems.append("PRESETS must be a mapping of name to Config")
    for attr in ("computes", "unavailable_reason", "attention"):
        if not callable(getattr(module, attr)):
            problems.append(f"{attr} must be callable")
    return problems


def load_module(path: str) -> Variant:
    """Import a variant module by dotted path and check it; errors name the module."""
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise ContractError(f"cannot import variant module {path!r}: {exc}") from exc
    except Exception as exc:  # a bug in the module itself, at import: name it, exit 2
        raise ContractError(f"variant module {path!r} raised {type(exc).__name__} at import: "
                            f"{exc}") from exc
    return check_module(module)

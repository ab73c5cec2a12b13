"""FlexAttention (``torch.nn.attention.flex_attention``) over the masks and score
modifications users ship, compiled by ``torch.compile`` (inductor), as users run it.

The pattern (``Config.pattern``, with the harness's ``causal`` folded in) becomes a
``BlockMask`` of ``block`` x ``block`` tiles, built by ``create_block_mask`` from the index
predicate of ``variants/patterns.py``; the score modification (ALiBi, soft-cap) is the same
module's index function. Both are built once per (pattern, shape, causal, device) and cached:
building them is setup, not part of a timed call. flex computes every pair of each non-empty
tile (masking inside the partial ones) and skips empty tiles, so FLOPs count exactly those
pairs (``computed_pairs``), as attention-gym discounts its TFLOP/s by the block sparsity.

``compiled`` (default): one ``torch.compile(flex_attention, dynamic=True)`` per process.
Dynamic shapes keep one graph across sequence lengths; the head dim, the dtype, a batch or
head count of 1, a single block and each pattern or score mod still get their own graph
(docs/flex.md). Past dynamo's recompile limit (raised here to RECOMPILE_LIMIT) the call
raises instead of running flex eagerly, which dynamo would otherwise do without a word. The
``eager`` preset (``compiled=False``) is flex's unfused path (it materialises the scores),
run by name: it is never a fallback for a compiled case.

torch 2.13 on CPU runs flex forward only, and compiled flex only in fp32, bf16 and fp16: the
reasons given are torch's own, caught from small calls once per process.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from variants import memory_models, patterns
from variants.contract import (
    Shape,
    SoftmaxAttention,
    SparseSoftmax,
    Supports,
    Unavailable,
    default_scale,
)
from variants.patterns import MaskSpec

NAME = "flex"
#: graphs dynamo keeps for flex_attention before refusing (its default, 8, is one check)
RECOMPILE_LIMIT = 256
#: settings of a compiled call (module, name, value): past the limit, raise (rather than run
#: flex eagerly, unsaid); floats (a soft-cap, the scale) as constants, since inductor's CPU
#: template cannot lower a dynamic float; no duck shapes: equal sizes (Nq = Nk, H = a block
#: count) share no symbol, so a ragged shape after a square one does not recompile
COMPILE_SETTINGS = (("torch._dynamo.config", "recompile_limit", RECOMPILE_LIMIT),
                    ("torch._dynamo.config", "fail_on_recompile_limit_hit", True),
                    ("torch._dynamo.config", "specialize_float", True),
                    ("torch.fx.experimental._config", "use_duck_shape", False))
#: dtypes inductor's CPU flex template lowers (others: unavailable, in torch's words)
CPU_COMPILED_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})
#: how torch says that eager flex is unfused (the eager preset means it: not repeated)
EAGER_WARNING = "flex_attention called without torch.compile"
#: how inductor says that its CPU lowering refuses a dtype
CPU_DTYPE_REFUSAL = "are supported in FlexAttention for CPU device"
#: score_mod(score, b, h, q_idx, kv_idx) -> score, flex's signature
FlexScore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                     torch.Tensor]


@dataclass(frozen=True)
class Config(MaskSpec):
    """MaskSpec's pattern and score mod (variants/patterns.py); compiled: flex through
    torch.compile (False: flex's eager path, the ``eager`` preset); block: the block mask's
    tile, flex's BLOCK_SIZE."""

    compiled: bool = True
    block: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.compiled, bool):
            raise ValueError(f"compiled must be a bool, got {self.compiled!r}")
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise ValueError(f"block must be a positive int, got {self.block!r}")


PRESETS: dict[str, Config] = {
    **{name: Config(pattern=name) for name in ("window", "document", "prefix_lm")},
    **{name: Config(score_mod=name) for name in ("alibi", "softcap")},
    "eager": Config(compiled=False),
}
#: CPU and CUDA (flex's home); every dtype, causal and backward where torch runs them
#: (unavailable_reason has torch's refusals); it compiles itself: no compile=true axis
SUPPORTS = Supports(devices=frozenset({"cpu", "cuda"}))


# ---------------------------------------------------------------- what it computes


@functools.lru_cache(maxsize=256)
def block_table(spec: MaskSpec, block: int, nq: int, nk: int, causal: bool) -> torch.Tensor:
    """(nqb, nkb) bool on the CPU: which block x block tiles hold a kept pair (the block
    mask's partial and full blocks), a band of block rows at a time; shared: do not modify."""
    nqb, nkb = -(-nq // block), -(-nk // block)
    fn = patterns.mask_fn(spec, causal, nq, nk)
    if fn is None:
        return torch.ones(nqb, nkb, dtype=torch.bool)
    band = block * max(1, (1 << 22) // (block * block * nkb))  # rows per evaluation
    kv = torch.arange(nk)[None, :]  # (1, Nk)
    table = torch.zeros(nqb, nkb, dtype=torch.bool)
    for start in range(0, nq, band):
        q = torch.arange(start, min(nq, start + band))[:, None]  # (r, 1)
        keep = torch.zeros(-(-q.shape[0] // block) * block, nkb * block, dtype=torch.bool)
        keep[: q.shape[0], :nk] = fn(None, None, q, kv)  # (r, Nk) into (r', nkb b)
        tiles = keep.view(-1, block, nkb, block).any(dim=3).any(dim=1)  # (r' / b, nkb)
        table[start // block: start // block + tiles.shape[0]] = tiles
    return table


def computed_pairs(spec: MaskSpec, block: int, nq: int, nk: int, causal: bool) -> int:
    """(q, kv) pairs in the block mask's non-empty tiles, clipped to Nq x Nk: what flex
    computes per (b, h)."""
    table = block_table(spec, block, nq, nk, causal)  # (nqb, nkb)
    rows = (nq - torch.arange(table.shape[0]) * block).clamp(max=block)  # (nqb,) tile heights
    cols = (nk - torch.arange(table.shape[1]) * block).clamp(max=block)  # (nkb,) tile widths
    return int((rows[:, None] * cols[None, :] * table).sum())


def computes(cfg: Config) -> SoftmaxAttention | SparseSoftmax:
    """Softmax over the pattern's kept pairs (causal folded in) after the score mod; FLOPs
    count the pairs of the block mask's non-empty tiles (no mask: softmax attention, whose
    rows count pairs as sdpa's do)."""
    b = cfg.block
    return patterns.semantics(
        cfg, computed=functools.partial(computed_pairs, patterns.mask_only(cfg), b),
        convention=f"computed {b}x{b} blocks of the block mask (every pair of a non-empty "
                   "block, clipped to Nq x Nk)")


# ---------------------------------------------------------------- where it runs


def _quiet(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Run eager flex without its once-per-process advice to compile (meant, by name)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=EAGER_WARNING)
        return fn()


@functools.cache
def cpu_backward_refusal() -> str | None:
    """torch's words for flex backward on CPU, from a tiny eager call; None if it runs."""
    x = torch.zeros(1, 1, 1, 8, requires_grad=True)  # (B, H, N, D)
    try:
        _quiet(lambda: flex_attention(x, x, x)).sum().backward()
    except NotImplementedError as exc:
        return f"flex_attention in torch {torch.__version__}: {exc}"
    return None


@functools.cache
def cpu_compiled_refusal(dtype: torch.dtype) -> str | None:
    """Inductor's words when its CPU flex cannot lower ``dtype``, from a tiny compiled call
    (a few seconds, once per process and dtype); None if it runs."""
    x = torch.zeros(1, 1, 8, 8, dtype=dtype)  # (B, H, N, D)
    try:
        _run_compiled(x, x, x, None, None, 1.0)
    except Exception as exc:  # inductor wraps its lowering's NotImplementedError
        lines = [line for line in str(exc).splitlines() if CPU_DTYPE_REFUSAL in line]
        if not lines:
            raise
        said = lines[0].split("NotImplementedError: ", 1)[-1].strip()
        return f"compiled flex_attention in torch {torch.__version__} (inductor): {said}"
    return None


def refusal(device: str, dtype: torch.dtype, *, backward: bool, compiled: bool) -> str | None:
    """Why torch's flex cannot run this here, in torch's words, or None."""
    if device != "cpu":
        return None
    if backward and (reason := cpu_backward_refusal()):
        return reason
    if compiled and dtype not in CPU_COMPILED_DTYPES:
        return cpu_compiled_refusal(dtype)
    return None


def unavailable_reason(
    device: str, dtype: torch.dtype, *, causal: bool, backward: bool, cfg: Config
) -> str | None:
    """prefix_lm is causal by itself; torch's CPU refusals (backward; compiled fp64)."""
    return patterns.causal_conflict(cfg, causal) or refusal(
        device, dtype, backward=backward, compiled=cfg.compiled)


def dispatched(shape: Shape, *, device: str, dtype: torch.dtype, causal: bool,
               backward: bool, cfg: Config) -> dict[str, str]:
    """What runs, as ``short: details`` (legends show the short part): compiled (inductor's
    C++ template on CPU, Triton on CUDA) or eager flex, and the block mask's computed tiles."""
    table = block_table(patterns.mask_only(cfg), cfg.block, shape.nq, shape.nk, causal)
    b = cfg.block
    if patterns.mask_fn(cfg, causal, shape.nq, shape.nk) is None:
        tiles = f"no block mask: all {table.numel()} blocks of {b}x{b}"
    else:
        tiles = f"block mask {b}x{b}, {int(table.sum())} non-empty blocks of {table.numel()}"
    if cfg.compiled:
        kernel = "its C++ flex template" if device == "cpu" else "its Triton flex kernels"
        what = f"flex compiled: flex_attention by inductor, {kernel}; {tiles}"
    else:
        what = f"flex eager: flex_attention unfused, materialised scores; {tiles}"
    return {"forward": what, **({"backward": what} if backward else {})}


def expected_peak_bytes(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
    hkv: int = 0, dv: int = 0,
) -> int:
    """Eager: flex's math path holds three float32 (float64) score matrices, the vmapped
    (B, H, Nq, Nk) bool mask and a float32 output (backward, CUDA only: a guess, unmeasured);
    compiled: streaming, plus on CPU the template's reordered K and V and per-thread tiles."""
    if not cfg.compiled:
        m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=True, hkv=hkv, dv=dv)
        fwd = 3 * m.scores * m.c + m.scores + m.q_rows * m.c
        return fwd + (2 * m.scores * m.c + (m.q_rows + m.kv_rows) * m.e) * backward
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=False, hkv=hkv, dv=dv)
    workspace = 0
    if device == "cpu":
        tq, tk = min(cfg.block, nq), min(cfg.block, nk)
        per_thread = (tq * tk + 2 * tq + tq * d) * 4 + (tq * tk + tk * d + tq * d) * m.e
        workspace = torch.get_num_threads() * per_thread + m.kv_rows * m.e
    return memory_models.streaming(m, backward=backward, workspace=workspace)


def bytes_moved(
    b: int, h: int, nq: int, nk: int, d: int, *,
    dtype: torch.dtype, causal: bool, backward: bool, cfg: Config, device: str = "cpu",
    hkv: int = 0, dv: int = 0,
) -> int | None:
    """Eager: every pass over its materialised float32 scores and the (B, H, Nq, Nk) mask;
    compiled: no model of its own (inputs and outputs once, the harness's count)."""
    if cfg.compiled:
        return None
    m = memory_models.dims(b, h, nq, nk, d, dtype, upcast_low_precision=True, hkv=hkv, dv=dv)
    return memory_models.materialised_traffic(m, masked=True, backward=backward)


# ---------------------------------------------------------------- computation


@functools.lru_cache(maxsize=64)
def block_mask(spec: MaskSpec, block: int, nq: int, nk: int, causal: bool,
               device: str) -> BlockMask | None:
    """flex's BlockMask of the pattern (broadcast over batch and heads), or None for none;
    built outside inference mode, so that calls with autograd may use it too."""
    with torch.inference_mode(False):
        fn = patterns.mask_fn(spec, causal, nq, nk, device)
        if fn is None:
            return None
        return create_block_mask(fn, None, None, nq, nk, device=device, BLOCK_SIZE=block)


@functools.lru_cache(maxsize=64)
def score_fn(cfg: MaskSpec, heads: int) -> FlexScore | None:
    """The score mod in flex's signature for ``heads`` heads, or None."""
    mod = patterns.score_mod(cfg)
    if mod is None:
        return None
    fn = mod.fn

    def score(s: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor,
              kv: torch.Tensor) -> torch.Tensor:
        return fn(s, h, q, kv, heads)
    return score


@functools.cache
def compiled_flex() -> Callable[..., torch.Tensor]:
    """flex_attention through torch.compile with dynamic shapes (one per process)."""
    return torch.compile(flex_attention, dynamic=True)


@contextlib.contextmanager
def compile_settings() -> Iterator[None]:
    """COMPILE_SETTINGS for the duration of a call, then the process's own again (about
    20 us a call; torch's ``config.patch`` takes twice that)."""
    # imported here, not at module top: dynamo's config takes about 1 s to import
    settings = [(importlib.import_module(path), name, value)
                for path, name, value in COMPILE_SETTINGS]
    saved = [(module, name, getattr(module, name)) for module, name, _ in settings]
    try:
        for module, name, value in settings:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _run_compiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score: FlexScore | None,
                  mask: BlockMask | None, scale: float) -> torch.Tensor:
    """Compiled flex; past RECOMPILE_LIMIT graphs dynamo raises rather than run it eagerly."""
    with compile_settings():
        return compiled_flex()(q, k, v, score_mod=score, block_mask=mask, scale=scale)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: float | None = None, cfg: Config = Config(),
) -> torch.Tensor:
    """flex_attention on q (B, H, Nq, D), k/v (B, H, Nk, D) -> (B, H, Nq, D)."""
    backward = any(x.requires_grad for x in (q, k, v))  # flex refuses these on CPU
    reason = patterns.causal_conflict(cfg, causal) or refusal(
        q.device.type, q.dtype, backward=backward, compiled=cfg.compiled)
    if reason:
        raise Unavailable(reason)
    (_, h, nq, d), nk = q.shape, k.shape[-2]
    mask = block_mask(patterns.mask_only(cfg), cfg.block, nq, nk, causal, str(q.device))
    score, sc = score_fn(cfg, h), default_scale(d, scale)
    if cfg.compiled:
        return _run_compiled(q, k, v, score, mask, sc)  # (B, H, Nq, D)
    return _quiet(lambda: flex_attention(q, k, v, score_mod=score, block_mask=mask, scale=sc))

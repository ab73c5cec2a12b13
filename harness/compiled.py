"""A compiled case (``compile=true``): the variant's attention through one ``torch.compile``,
its compile time cold and with warm caches (outside any timed region), and what actually ran
(inductor's code, or SDPA where its pattern matcher substituted it), from the profiler.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.cases import Case
from harness.config import MeasureSettings
from harness.oracle import make_inputs
from harness.timing import Attention, timed_callable
from variants.contract import DTYPES, Semantics, Unavailable, Variant

#: profiler op names by which SDPA shows when inductor substituted it for a compiled variant
SDPA_OPS = ("aten::_scaled_dot_product_", "aten::scaled_dot_product_attention")
INDUCTOR_CODE = "inductor-generated code"


@dataclass(frozen=True)
class CompiledVariant:
    """A variant whose attention runs through one ``torch.compile``d function: what a compiled
    case times, profiles and hands to the oracle (which calls ``computes`` and ``attention``)."""

    variant: Variant
    attention: Callable[..., torch.Tensor]

    def computes(self, cfg: Any) -> Semantics:
        """What the variant computes: compiling changes no semantics."""
        return self.variant.computes(cfg)


def compiled_variant(case: Case) -> CompiledVariant:
    """The case's variant with its attention compiled once, for this case only.

    ``fullgraph``: a graph break would run parts eagerly, unsaid, so it makes the case
    unavailable instead; ``dynamic=False``: every shape gets its own static graph, so the
    oracle's smaller shape does not turn the timed graph into a dynamic-shape one.
    """
    torch._dynamo.reset()  # the worker's earlier cases leave no graphs or guards behind
    fn = torch.compile(case.spec.variant.module.attention, fullgraph=True, dynamic=False)
    label = case.label

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                  scale: float | None, cfg: Any) -> torch.Tensor:
        try:
            return fn(q, k, v, causal=causal, scale=scale, cfg=cfg)
        except torch._dynamo.exc.Unsupported as exc:  # a graph break, recorded as unavailable
            first = str(exc).strip().splitlines()[0]
            raise Unavailable(f"torch.compile cannot capture {label} as one graph (a graph "
                              f"break): {first}") from exc
    return CompiledVariant(case.spec.variant, attention)


def compile_settings(case: Case) -> contextlib.AbstractContextManager[object]:
    """torch settings a compiled case is measured under: ``bwd`` times backward again and
    again over one graph (``retain_graph``), which AOTAutograd's donated buffers forbid."""
    if case.compile and case.mode == "bwd":
        return torch._functorch.config.patch(donated_buffer=False)
    return contextlib.nullcontext()


def _seconds(run: Callable[[], object], device: str) -> float:
    """Wall seconds of one call (the device synchronised after it)."""
    start = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _compile_seconds(run: Callable[[], object], device: str) -> float:
    """What a first call spends compiling: its time minus one steady-state call's."""
    first = _seconds(run, device)
    return first - _seconds(run, device)


def _double(x: torch.Tensor) -> torch.Tensor:
    """A trivial function for inductor's start."""
    return x * 2


@functools.cache
def start_inductor(device: str) -> None:
    """Compile a trivial function once per process and device: inductor's one-time start
    (imports, compiler probes, its C++ prelude) then lands in no case's ``compile_s``, which
    would otherwise depend on which compiled case a worker happened to run first."""
    torch.compile(_double, fullgraph=True)(torch.ones(8, device=device))


def _fx_cache() -> dict[str, int]:
    """Inductor's FX graph cache hits and misses so far in this process."""
    from torch._dynamo.utils import counters

    return {k: counters["inductor"][f"fxgraph_cache_{k}"] for k in ("hit", "miss")}


def sdpa_ops(run: Callable[[], object]) -> list[str]:
    """The SDPA ops (SDPA_OPS) that one call of ``run`` ran, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sorted({e.name for e in prof.events() if e.name.startswith(SDPA_OPS)})


def compiled_kernels(run: Callable[[], object], backward: bool) -> dict[str, str]:
    """What a compiled call ran ({"forward": ..., "backward": ...}): inductor's own code, or
    SDPA where inductor's pattern matcher replaced the computation with it."""
    ops = sdpa_ops(run)
    parts = {"forward": [o for o in ops if not o.endswith("_backward")]}
    if backward:
        parts["backward"] = [o for o in ops if o.endswith("_backward")]
    return {direction: (f"sdpa via inductor: inductor replaced the computation with sdpa "
                        f"({', '.join(found)})" if found else INDUCTOR_CODE)
            for direction, found in parts.items()}


def compile_timings(case: Case, s: MeasureSettings, fn: Attention) -> dict[str, Any]:
    """Compile the case's mode, cold and again with warm caches, outside any timed region,
    then profile one call: the row's compile extras and what ran (``kernel``).

    A backward mode compiles through a forward+backward call (forward and backward graphs;
    ``bwd`` times the same ones); the first call's time minus a steady call's is the compile.
    """
    q, k, v, dout = make_inputs(case.shape, dtype=DTYPES[case.dtype], device=case.device,
                                seed=s.seed)
    run = timed_callable(fn, q, k, v, dout, "fwd+bwd" if case.backward else "fwd")
    start_inductor(case.device)
    before = _fx_cache()
    cold = _compile_seconds(run, case.device)
    middle = _fx_cache()
    torch._dynamo.reset()  # dynamo forgets the graphs; inductor's caches stay warm
    warm = _compile_seconds(run, case.device)
    after = _fx_cache()
    return {
        "compile_s": cold, "compile_warm_s": warm,
        "compile_cache": {"cold": {k: middle[k] - before[k] for k in before},
                          "warm": {k: after[k] - middle[k] for k in before}},
        "kernel": compiled_kernels(run, case.backward),
    }



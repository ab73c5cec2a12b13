"""Wall-clock timing of one case with torch.utils.benchmark (device-synchronising timer).

Modes: ``fwd`` runs under ``torch.inference_mode``; ``bwd`` times ``torch.autograd.grad`` on a
graph built once outside the timed region (``retain_graph=True``: every call returns fresh
gradients, nothing accumulates into ``.grad``); ``fwd+bwd`` times both. Inputs are created by
the caller. On CPU, blocked_autorange (its block-size estimate warms up before measuring; the
thread count is explicit and recorded). On CUDA, ``cuda_time``: CUDA events around each call
after a warm-up, optionally overwriting 256 MiB between calls so that each starts with a cold
L2 (what cudnn-frontend's benchmarks flush), one synchronisation at the end.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.benchmark as tbench

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Timing:
    """Per-iteration seconds of each measured block, with summary statistics."""

    times_s: tuple[float, ...]  # one entry per block: block time / iterations per block
    median_s: float
    iqr_s: float
    number_per_run: int
    threads: int

    @property
    def samples(self) -> int:
        """Number of blocks measured."""
        return len(self.times_s)


def timed_callable(
    fn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor,
    mode: str,
) -> Callable[[], object]:
    """The zero-argument callable whose duration is the mode's cost (setup done here)."""
    if mode == "fwd":
        def forward() -> object:
            with torch.inference_mode():
                return fn(q, k, v)
        return forward
    leaves = tuple(t.detach().requires_grad_() for t in (q, k, v))
    if mode == "bwd":
        out = fn(*leaves)  # built once, outside the timed region

        def backward() -> object:
            return torch.autograd.grad(out, leaves, dout, retain_graph=True)
        return backward
    if mode == "fwd+bwd":
        def forward_backward() -> object:
            return torch.autograd.grad(fn(*leaves), leaves, dout)
        return forward_backward
    raise ValueError(f"mode must be one of fwd, bwd, fwd+bwd; got {mode!r}")


def time_callable(
    run: Callable[[], object], *, min_run_time: float, threads: int, warmup: int = 0,
    min_samples: int = 1, one_call_s: float | None = None,
) -> Timing:
    """blocked_autorange over ``run`` after ``warmup`` extra untimed calls.

    blocked_autorange itself warms up: it first runs the statement, untimed, with growing
    block sizes until one block costs at least min_run_time / 1000, so no extra call is needed
    (a slow case would pay a whole call for it). ``one_call_s``: how long an untimed call
    just took; when that is at least min_run_time the block size is 1 (what the estimate
    would find), and blocks of one call are timed until min_run_time and ``min_samples``,
    without the estimate's extra call. When it returns fewer than ``min_samples``
    blocks (a case slower than min_run_time / min_samples), more blocks of the same size are
    timed until there are ``min_samples``: a regression test needs several samples a side.
    """
    for _ in range(warmup):
        run()
    timer = tbench.Timer(stmt="run()", globals={"run": run}, num_threads=threads)
    if one_call_s is not None and one_call_s >= min_run_time:
        # one call already took min_run_time: blocked_autorange would spend a call estimating
        # a block size of 1, then time blocks of 1 call until min_run_time: time those directly
        blocks = [timer.timeit(1)]
        while len(blocks) < min_samples or sum(b.times[0] for b in blocks) < min_run_time:
            blocks.append(timer.timeit(1))
        m = tbench.Measurement.merge(blocks)[0]
        return Timing(tuple(m.times), m.median, m.iqr, 1, threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    if len(m.times) < min_samples:
        more = [timer.timeit(m.number_per_run) for _ in range(min_samples - len(m.times))]
        number = m.number_per_run
        m = tbench.Measurement.merge([m, *more])[0]  # per-iteration times of every block
        return Timing(tuple(m.times), m.median, m.iqr, number, threads)
    return Timing(tuple(m.times), m.median, m.iqr, m.number_per_run, threads)


L2_FLUSH_BYTES = 256 * 2**20  # larger than any GPU's L2 (H200: 60 MiB)
MAX_REPS = 10_000


def l2_flusher(device: str) -> Callable[[], object]:
    """A call that overwrites L2_FLUSH_BYTES on the device (a cold cache for the next call)."""
    buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    return buffer.zero_


def _quartiles(times: list[float]) -> float:
    """Interquartile range (0 for fewer than two values)."""
    if len(times) < 2:
        return 0.0
    q = statistics.quantiles(times, n=4, method="inclusive")
    return q[2] - q[0]


def cuda_time(
    run: Callable[[], object], *, min_run_time: float, min_samples: int = 1,
    flush: Callable[[], object] | None = None, event: Any = None, sync: Any = None,
) -> Timing:
    """Per-call seconds from CUDA events: warm-up calls (at least 3, about a tenth of the
    budget) estimate the call's cost, then enough calls to fill ``min_run_time`` (at least
    ``min_samples``), each between its own pair of events, ``flush()`` before each outside
    the events; one synchronisation reads them all. ``event``/``sync`` default to
    torch.cuda's (tests pass fakes)."""
    event = event or torch.cuda.Event
    sync = sync or torch.cuda.synchronize
    sync()
    start, calls = time.perf_counter(), 0
    while calls < 3 or (time.perf_counter() - start < 0.1 * min_run_time and calls < 100):
        run()
        sync()
        calls += 1
    per_call = max((time.perf_counter() - start) / calls, 1e-7)
    reps = min(MAX_REPS, max(min_samples, math.ceil(min_run_time / per_call)))
    pairs = [(event(enable_timing=True), event(enable_timing=True)) for _ in range(reps)]
    for begin, end in pairs:
        if flush is not None:
            flush()
        begin.record()
        run()
        end.record()
    sync()
    times = [begin.elapsed_time(end) / 1e3 for begin, end in pairs]  # ms -> s
    return Timing(tuple(times), statistics.median(times), _quartiles(times), 1, 0)

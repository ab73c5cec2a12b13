"""Peak memory of one call above the state at entry (inputs allocated before are excluded).

CUDA: reset the allocator's peak statistics, run, ``max_memory_allocated`` minus the bytes
allocated at entry. CPU: PyTorch 2.13 keeps no CPU allocator statistics, so we replay the
profiler's raw ``[memory]`` events (``kineto_results.events()``, not ``prof.events()``, which
folds allocations into op rows and reads 0): a running sum of signed byte counts in start
order, whose maximum is the peak. The profiler sees the calling thread only; the caller must
free old gradients before the window opens (frees of earlier tensors lower the sum).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

MIB = 2**20


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (kineto prints a line to it at every profiler start/stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _cpu_peak(run: Callable[[], object]) -> int:
    """Peak bytes from the profiler's raw allocation events."""
    with _quiet_native_stderr():
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        prof.start()
    try:
        result = run()
        del result
    finally:
        with _quiet_native_stderr():
            prof.stop()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def _cuda_peak(run: Callable[[], object], device: torch.device) -> int:
    """Peak bytes from the CUDA caching allocator's statistics."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del result
    return peak


def peak_bytes(run: Callable[[], object], device: str) -> int:
    """Peak bytes allocated while ``run()`` executes, above the state at entry."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return _cuda_peak(run, dev)
    if dev.type == "cpu":
        return _cpu_peak(run)
    raise NotImplementedError(f"peak memory on {device!r} is not implemented (cpu, cuda)")

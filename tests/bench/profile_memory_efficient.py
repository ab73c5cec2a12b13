"""The profile behind the missed memory_efficient targets (docs/benchmarks.md): for one call of
memory_efficient and of sdpa at N=4096 (fp32, H=8, D=64, fwd and fwd+bwd), the wall time and
the variant's own GEMM time, so that the GEMMs alone can be read against SDPA's whole call.

    MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        python -m tests.bench.profile_memory_efficient [B ...]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from variants import memory_efficient

GEMMS = ("aten::bmm", "aten::baddbmm_", "aten::addmm_", "aten::mm", "aten::addmm")


def profiled(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall ms of one warm call and the ms of its GEMM ops (self CPU time)."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = (time.perf_counter() - start) * 1e3
    gemm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in GEMMS) / 1e3
    return wall, gemm


def calls(b: int) -> dict[str, Callable[[], object]]:
    """One forward and one forward+backward of each, fresh gradients every call."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(b, 8, 4096, 64, generator=gen) for _ in range(4))
    leaves = tuple(x.clone().requires_grad_() for x in (q, k, v))

    def both(attend: Callable[..., torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(attend(*leaves), leaves, dout)

    def with_inference(attend: Callable[..., torch.Tensor]) -> Callable[[], object]:
        return lambda: _no_grad(attend, q, k, v)

    return {"memory_efficient fwd": with_inference(memory_efficient.attention),
            "sdpa fwd": with_inference(F.scaled_dot_product_attention),
            "memory_efficient fwd+bwd": both(memory_efficient.attention),
            "sdpa fwd+bwd": both(F.scaled_dot_product_attention)}


def _no_grad(f: Callable[..., torch.Tensor], *xs: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return f(*xs)


def main(batches: list[int]) -> None:
    """Print wall, GEMM ms and GEMMs against SDPA's wall, per B and mode."""
    for b in batches:
        got = {name: profiled(fn) for name, fn in calls(b).items()}
        for mode in ("fwd", "fwd+bwd"):
            wall, gemm = got[f"memory_efficient {mode}"]
            sdpa = got[f"sdpa {mode}"][0]
            print(f"B={b} {mode}: memory_efficient {wall:.0f} ms (GEMMs {gemm:.0f} ms), sdpa "
                  f"{sdpa:.0f} ms: ratio {wall / sdpa:.3f}, GEMMs alone {gemm / sdpa:.3f}")


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [1, 4])

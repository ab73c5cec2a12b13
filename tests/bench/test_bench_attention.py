"""pytest-benchmark benchmarks behind the issue's speed targets (CPU, fp32, forward).

B=1, H=8, D=64, torch's default thread count, forward under ``torch.inference_mode``.
The default test run executes each once as a smoke test (``--benchmark-disable``);
``make bench`` times them for real and ``tests/bench/targets.py`` checks the ratios.
"""

from __future__ import annotations

import os

import pytest
import torch

import variants

B, H, D = 1, 8, 64
CASES = [
    ("sdpa", "", 4096),
    ("memory_efficient", "", 4096),
    ("linear", "", 4096),
    ("linear", "", 16384),
    ("sparse", "window", 4096),
    ("sparse", "window", 16384),
    ("sdpa", "", 16384),
]


def case_id(name: str, preset: str, n: int) -> str:
    """Benchmark name suffix, e.g. sparse@window-16384."""
    return f"{name}@{preset}-{n}" if preset else f"{name}-{n}"


@pytest.mark.parametrize(("name", "preset", "n"), CASES, ids=[case_id(*c) for c in CASES])
def test_forward(benchmark, name: str, preset: str, n: int) -> None:
    """Time one forward pass; inputs are built outside the timed function."""
    variant = variants.get(name)
    cfg = variant.presets[preset] if preset else variant.config_cls()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, D, generator=gen) for _ in range(3))
    allocator = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    benchmark.extra_info.update(variant=name, preset=preset, n=n, threads=torch.get_num_threads(),
                                allocator_env=allocator)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return variant.attention(q, k, v, causal=False, scale=None, cfg=cfg)

    out = benchmark(forward)
    assert out.shape == (B, H, n, D) and torch.isfinite(out).all()

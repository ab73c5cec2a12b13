"""pytest-benchmark benchmarks behind the issue's speed targets (CPU, fp32).

H=8, D=64, torch's default thread count. ``test_forward``: B=1, forward under
``torch.inference_mode``. ``test_linear_forward_backward``: linear attention's fwd+bwd
(``torch.autograd.grad`` over q, k, v with a given dout) at B=4 and B=1, for its scaling in N.
``test_sparse_forward_backward``: the same fwd+bwd for sdpa, ``sparse@window`` and
``sparse@bigbird`` at B=1 N=4096 and 16384 and B=4 N=4096, for the sparse speed-ups.
``test_memory_efficient_forward_backward`` and ``test_forward_b4``: memory_efficient's fwd+bwd
(B=1, B=4) and fwd at B=4 (with sdpa), for its 1.10x-of-sdpa targets at N=4096.
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


FWD_BWD_CASES = [(4, 4096), (4, 8192), (1, 4096), (1, 16384)]  # (B, N)


def fwd_bwd_id(b: int, n: int) -> str:
    """Benchmark name suffix of a linear fwd+bwd case, e.g. linear-fwd+bwd-B4-8192."""
    return f"linear-fwd+bwd-B{b}-{n}"


@pytest.mark.parametrize(("b", "n"), FWD_BWD_CASES, ids=[fwd_bwd_id(*c) for c in FWD_BWD_CASES])
def test_linear_forward_backward(benchmark, b: int, n: int) -> None:
    """Time linear attention's forward and backward; inputs and dout built outside."""
    time_forward_backward(benchmark, "linear", "", b, n)


SPARSE_FWD_BWD = [(name, preset, b, n) for b, n in ((1, 4096), (4, 4096), (1, 16384))
                  for name, preset in (("sdpa", ""), ("sparse", "window"), ("sparse", "bigbird"))]


def sparse_fwd_bwd_id(name: str, preset: str, b: int, n: int) -> str:
    """Benchmark name suffix of a sparse target's fwd+bwd case, e.g. sdpa-fwd+bwd-B1-4096."""
    return f"{name}@{preset}-fwd+bwd-B{b}-{n}" if preset else f"{name}-fwd+bwd-B{b}-{n}"


@pytest.mark.parametrize(("name", "preset", "b", "n"), SPARSE_FWD_BWD,
                         ids=[sparse_fwd_bwd_id(*c) for c in SPARSE_FWD_BWD])
def test_sparse_forward_backward(benchmark, name: str, preset: str, b: int, n: int) -> None:
    """Time fwd+bwd of sdpa and the sparse presets (the sparse targets); inputs built outside."""
    time_forward_backward(benchmark, name, preset, b, n)


def time_forward_backward(benchmark, name: str, preset: str, b: int, n: int) -> None:
    """Time ``torch.autograd.grad`` of a variant spec over q, k, v with a given dout; inputs
    and dout are built outside the timed function."""
    variant = variants.get(name)
    cfg = variant.presets[preset] if preset else variant.config_cls()
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(b, H, n, D, generator=gen) for _ in range(4))
    leaves = tuple(t.requires_grad_() for t in (q, k, v))
    allocator = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    benchmark.extra_info.update(variant=name, preset=preset, mode="fwd+bwd", b=b, n=n,
                                threads=torch.get_num_threads(), allocator_env=allocator)

    def forward_backward() -> tuple[torch.Tensor, ...]:
        out = variant.attention(*leaves, causal=False, scale=None, cfg=cfg)
        return torch.autograd.grad(out, leaves, dout)

    grads = benchmark(forward_backward)
    assert all(g.shape == (b, H, n, D) and torch.isfinite(g).all() for g in grads)


ME_FWD_BWD = [("memory_efficient", "", b, 4096) for b in (1, 4)]


@pytest.mark.parametrize(("name", "preset", "b", "n"), ME_FWD_BWD,
                         ids=[sparse_fwd_bwd_id(*c) for c in ME_FWD_BWD])
def test_memory_efficient_forward_backward(benchmark, name: str, preset: str, b: int,
                                           n: int) -> None:
    """memory_efficient's fwd+bwd, timed as the sdpa fwd+bwd cases above it is compared to."""
    time_forward_backward(benchmark, name, preset, b, n)


FWD_B4 = [("sdpa", 4096), ("memory_efficient", 4096)]


@pytest.mark.parametrize(("name", "n"), FWD_B4, ids=[f"{name}-fwd-B4-{n}" for name, n in FWD_B4])
def test_forward_b4(benchmark, name: str, n: int) -> None:
    """Time one forward pass at B=4 under ``torch.inference_mode``; inputs built outside."""
    variant = variants.get(name)
    cfg = variant.config_cls()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, H, n, D, generator=gen) for _ in range(3))
    allocator = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    benchmark.extra_info.update(variant=name, mode="fwd", b=4, n=n,
                                threads=torch.get_num_threads(), allocator_env=allocator)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return variant.attention(q, k, v, causal=False, scale=None, cfg=cfg)

    out = benchmark(forward)
    assert out.shape == (4, H, n, D) and torch.isfinite(out).all()

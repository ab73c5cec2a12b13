"""FLOP models per semantics, and the device's measured roof (GEMM and copy bandwidth).

Softmax attention: 4 * B * H * D * (kept query-key pairs) forward (Q K^T and P V, 2 FLOPs per
multiply-add): Nq * Nk pairs, about half when causal. Sparse: the same over the pattern's kept
pairs. Linear: 2 * B * H * (Nq + Nk) * D^2 forward (phi(K)^T V and phi(Q) (phi(K)^T V)).
Backward is 2.5x forward for softmax forms (FlashAttention's convention) and 2x for linear.
Softmax exponentials and the linear normaliser are not counted, as is usual.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.timing import Timing, cuda_time, time_callable
from harness.vocab import DECODE, DENSE_MASK_FLOPS
from variants.contract import DTYPES, LinearAttention, Semantics, SoftmaxAttention, SparseSoftmax

BACKWARD_FACTOR = {"softmax": 2.5, "sparse": 2.5, "linear": 2.0}


def causal_pairs(nq: int, nk: int) -> int:
    """Pairs (i, j) with j <= i, top-left aligned: sum over i of min(i + 1, Nk)."""
    full = min(nq, nk)  # rows 0..full-1 see i + 1 keys
    return full * (full + 1) // 2 + max(0, nq - nk) * nk


def forward_flops(semantics: Semantics, b: int, h: int, nq: int, nk: int, d: int,
                  causal: bool, dv: int | None = None) -> int:
    """FLOPs of one forward pass under the semantics' model; ``dv``: the value head dim when
    it differs from d (Q K^T costs 2 d, P V 2 dv a pair)."""
    dv = dv or d
    if isinstance(semantics, LinearAttention):
        return 2 * b * h * (nq + nk) * d * dv
    if isinstance(semantics, SparseSoftmax) and semantics.dense:
        return 2 * b * h * (d + dv) * nq * nk
    if isinstance(semantics, SparseSoftmax):
        count = semantics.computed or semantics.kept
        if count is None:
            raise ValueError(f"sparse pattern {semantics.description!r} declares no kept() count")
        return 2 * b * h * (d + dv) * count(nq, nk, causal)
    if isinstance(semantics, SoftmaxAttention):
        pairs = causal_pairs(nq, nk) if causal else nq * nk
        return 2 * b * h * (d + dv) * pairs
    raise TypeError(f"unknown semantics {semantics!r}")


def flops_convention(semantics: Semantics, causal: bool) -> str:
    """Which pairs a row's FLOPs count, in words (every row records it)."""
    if isinstance(semantics, LinearAttention):
        return "linear form: 2 (Nq + Nk) D^2 per head"
    if isinstance(semantics, SparseSoftmax):
        return DENSE_MASK_FLOPS if semantics.dense else semantics.flops_convention
    return "causal pairs j <= i" if causal else "all Nq x Nk pairs"


def mode_flops(semantics: Semantics, mode: str, b: int, h: int, nq: int, nk: int, d: int,
               causal: bool, new_tokens: int = 0, dv: int | None = None) -> int:
    """FLOPs of the mode: fwd, bwd (factor x fwd), fwd+bwd, or a decode step: the last
    ``new_tokens`` rows of causal attention over nk + new_tokens tokens (for linear attention
    the state's update and reads, 4 t D^2 per head)."""
    if mode == DECODE:
        longer, n = nk + new_tokens, nk
        return (forward_flops(semantics, b, h, longer, longer, d, True, dv)
                - forward_flops(semantics, b, h, n, n, d, True, dv))
    fwd = forward_flops(semantics, b, h, nq, nk, d, causal, dv)
    bwd = round(BACKWARD_FACTOR[semantics.kind] * fwd)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


@dataclass(frozen=True)
class Roof:
    """The device's measured ceilings for one dtype, in the same run as the cases."""

    device: str
    dtype: str
    gemm_size: int
    gemm_gflops: float
    copy_gib_s: float


ROOF_MAX_AGE_S = 300.0  # a worker re-measures its roof when the last one is older
_ROOFS: dict[tuple[str, str, int | None], tuple[float, Roof]] = {}


def current_roof(device: str, dtype: str, threads: int | None = None) -> tuple[Roof, float]:
    """The process's roof for (device, dtype), re-measured when older than ROOF_MAX_AGE_S
    (so a long run tracks the host); returns it and its age in seconds."""
    key = (device, dtype, threads)
    now = time.monotonic()
    if key not in _ROOFS or now - _ROOFS[key][0] > ROOF_MAX_AGE_S:
        _ROOFS[key] = (time.monotonic(), measure_roof.__wrapped__(device, dtype,
                                                                  threads=threads))
    taken, roof = _ROOFS[key]
    return roof, now - taken


@functools.cache
def measure_roof(device: str, dtype: str, gemm_size: int = 2048, min_run_time: float = 1.0,
                 threads: int | None = None) -> Roof:
    """Time an (n, n) x (n, n) GEMM in the dtype and a 256 MiB copy (cached per process;
    ``measure_roof.__wrapped__`` measures afresh). On CUDA: n >= 8192, CUDA events.

    A roof is a ceiling, and on a shared machine noise only ever slows a block down, so the
    fastest block (not the median) gives the rate.
    """
    threads = threads or torch.get_num_threads()
    cuda = device.startswith("cuda")
    gemm_size = max(gemm_size, 8192) if cuda else gemm_size  # 2048 cannot fill a GPU

    def timed(fn: Callable[[], object]) -> Timing:  # on the device's own clock
        if cuda:
            return cuda_time(fn, min_run_time=min_run_time, min_samples=5)
        return time_callable(fn, min_run_time=min_run_time, threads=threads)

    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(gemm_size, gemm_size, generator=gen).to(device, DTYPES[dtype])
            for _ in range(2))
    gemm = timed(lambda: a @ b)
    src = torch.empty(2**26, dtype=torch.float32, device=device)  # 256 MiB
    dst = torch.empty_like(src)
    copy = timed(lambda: dst.copy_(src))
    moved = 2 * src.numel() * src.element_size()  # read + write
    return Roof(device, dtype, gemm_size, 2 * gemm_size**3 / min(gemm.times_s) / 1e9,
                moved / min(copy.times_s) / 2**30)

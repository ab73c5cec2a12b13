"""Linear attention's custom autograd Functions: gradients against float64 references (block
and chunk edges included), what backward saves, and memory per fwd+bwd call above glibc's
mmap threshold, as profiler bytes and page faults (never wall-clock)."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest
import torch

import variants
from harness.memory import MIB, peak_bytes
from harness.oracle import check_agreement, reference
from harness.timing import timed_callable
from variants import linear
from variants.contract import Shape

SHAPES = [(7, 11), (11, 7), (9, 9), (1, 5)]  # (Nq, Nk): ragged blocks and chunks
PAGE = resource.getpagesize()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: counts do not depend on it, and on a busy host a second thread
    makes each of the many small block ops wait for it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row blocks of 64 values: tiny inputs span several blocks, the last one ragged."""
    monkeypatch.setattr(linear, "ROW_BLOCK_ELEMENTS", 64)


def _inputs(nq: int, nk: int, d: int = 4, dtype: torch.dtype = torch.float64) -> tuple:
    """Seeded q (1, 2, Nq, D), k and v (1, 2, Nk, D), all requiring grad."""
    gen = torch.Generator().manual_seed(nq * 100 + nk)
    shapes = [(1, 2, nq, d), (1, 2, nk, d), (1, 2, nk, d)]
    return tuple(torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("nq", "nk"), SHAPES[:2])
def test_gradcheck_float64(causal: bool, nq: int, nk: int) -> None:
    """Backward matches finite differences of the forward (several blocks, chunks of 3)."""
    cfg = linear.Config(chunk=3)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return linear.attention(q, k, v, causal=causal, cfg=cfg)

    assert torch.autograd.gradcheck(fn, _inputs(nq, nk))


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("nq", "nk"), SHAPES)
def test_gradients_equal_autograd_through_the_reference(causal: bool, nq: int, nk: int) -> None:
    """Out, dq, dk, dv equal autograd through the oracle's float64 quadratic form."""
    q, k, v = _inputs(nq, nk)
    dout = torch.randn(1, 2, nq, 4, dtype=torch.float64)
    cfg = linear.Config(chunk=3)
    sem = linear.computes(cfg)
    want = reference(q, k, v, causal=causal, scale=None, semantics=sem)
    got = linear.attention(q, k, v, causal=causal, cfg=cfg)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(torch.autograd.grad(got, (q, k, v), dout),
                    torch.autograd.grad(want, (q, k, v), dout), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("blocks", [64, linear.ROW_BLOCK_ELEMENTS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [Shape(2, 3, 33, 33, 16), Shape(1, 2, 40, 70, 8),
                                   Shape(2, 2, 70, 40, 8)])
def test_oracle_agrees(
    monkeypatch: pytest.MonkeyPatch, blocks: int, dtype: torch.dtype, causal: bool, shape: Shape
) -> None:
    """The oracle passes out, dq, dk, dv in fp32 and bf16, with one or many row blocks."""
    monkeypatch.setattr(linear, "ROW_BLOCK_ELEMENTS", blocks)
    variant = variants.get("linear")
    for cfg in (variant.config_cls(), variant.config_cls(chunk=4)):
        a = check_agreement(variant, cfg, shape, device="cpu", dtype=dtype, causal=causal,
                            backward=True)
        assert a.ok, a.worst()


@pytest.mark.parametrize("causal", [False, True])
def test_backward_saves_inputs_and_final_state_only(causal: bool) -> None:
    """The autograd node keeps q, k, v and the (D, Dv) state and z: no N-sized temporary."""
    q, k, v = _inputs(40, 33, d=8, dtype=torch.float32)
    out = linear.attention(q, k, v, causal=causal)
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [
        (1, 2, 40, 8), (1, 2, 33, 8), (1, 2, 33, 8), (1, 2, 8, 8), (1, 2, 8)
    ]
    assert all(s is t for s, t in zip(saved, (q, k, v), strict=False))


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("causal", [False, True])
def test_inference_matches_autograd_and_keeps_dtype(causal: bool) -> None:
    """Forward under inference_mode equals the autograd path; bf16 in, bf16 out and grads."""
    q, k, v = (t.detach().bfloat16() for t in _inputs(21, 13, d=8))
    cfg = linear.Config(chunk=4)
    with torch.inference_mode():
        fast = linear.attention(q, k, v, causal=causal, cfg=cfg)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = linear.attention(q, k, v, causal=causal, cfg=cfg)
    assert fast.dtype == out.dtype == torch.bfloat16 and torch.equal(fast, out.detach())
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3


@pytest.mark.usefixtures("small_blocks")
def test_eps_zero_with_a_ragged_causal_block_stays_finite() -> None:
    """Padded query rows of the last causal block never divide 0 by 0 (eps may be 0)."""
    q, k, v = _inputs(7, 7)
    out = linear.attention(q, k, v, causal=True, cfg=linear.Config(eps=0.0, chunk=4))
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


def test_memory_model_grows_only_by_output_and_gradients() -> None:
    """Doubling N adds exactly the output and dq, dk, dv: every temporary is block-sized."""
    for causal in (False, True):
        def model(n: int, causal: bool = causal) -> int:
            return linear.expected_peak_bytes(4, 8, n, n, 64, dtype=torch.float32,
                                              causal=causal, backward=True, cfg=linear.Config())
        assert model(8192) - model(4096) == 4 * (4 * 8 * 4096 * 64 * 4)


def _fwd_bwd(b: int, h: int, n: int, d: int, causal: bool) -> tuple:
    """The harness's fwd+bwd callable (torch.autograd.grad with a given dout), run once, and
    the memory model's bytes for it."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(b, h, n, d, generator=gen) for _ in range(4))
    cfg = linear.Config()
    run = timed_callable(lambda x, y, z: linear.attention(x, y, z, causal=causal, cfg=cfg),
                         q, k, v, dout, "fwd+bwd")
    run()
    return run, linear.expected_peak_bytes(b, h, n, n, d, dtype=torch.float32, causal=causal,
                                           backward=True, cfg=cfg)


def _faults(run: object) -> int:
    """Minor page faults of one call."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_fwd_bwd_above_the_mmap_threshold_allocates_output_and_gradients_only() -> None:
    """B=4, H=8, N=4096, D=64 fp32: each (B, H, N, D) tensor is 32 MiB, glibc's largest mmap
    threshold, so each is a fresh mapping whose pages fault on every call. Only out, dq, dk
    and dv may be: the profiler's peak sits on the model, and page faults stay far below the
    ~400,000 a call (12x those four) of the autograd path this replaced. (Faults above the
    four's 32,768 come from glibc trimming and regrowing its heap between blocks: noise.)"""
    run, model = _fwd_bwd(4, 8, 4096, 64, causal=False)
    peak = peak_bytes(run, "cpu")
    assert model <= peak <= 1.1 * model, (peak / MIB, model / MIB)
    unavoidable = 4 * 4 * 8 * 4096 * 64 * 4 // PAGE  # out, dq, dk, dv
    assert min(_faults(run), _faults(run)) <= 2 * unavoidable


def test_causal_fwd_bwd_peak_is_the_model() -> None:
    """Causal fwd+bwd holds out, dq, dk, dv and one block's temporaries, no N-sized ones."""
    run, model = _fwd_bwd(1, 8, 4096, 64, causal=True)
    peak = peak_bytes(run, "cpu")
    assert model <= peak <= 1.1 * model, (peak / MIB, model / MIB)

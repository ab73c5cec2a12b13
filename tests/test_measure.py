"""The measurement engine: memory truths pinned on CPU fp32, timing stability, FLOP models,
recorded failures, the fingerprint, and the row schema."""

from __future__ import annotations

import math
import time

import pytest
import torch

import variants
from harness.cases import Case
from harness.fingerprint import fingerprint
from harness.flops import causal_pairs, forward_flops, mode_flops
from harness.measure import MeasureSettings, check_shape, is_oom, measure
from harness.memory import MIB, peak_bytes
from harness.rows import SCHEMA_VERSION, Row
from harness.specs import VariantSpec, parse_spec
from harness.timing import time_callable, timed_callable
from tests.broken_variants import make_variant
from variants.contract import SoftmaxAttention, Unavailable

B, H, D = 1, 8, 64
FAST = MeasureSettings(min_run_time=0.05, check=False, memory=False, roof=False)


def spec(text: str) -> VariantSpec:
    """Parse a spec against the registry."""
    name = text.partition("@")[0].partition(":")[0]
    return parse_spec(text, variants.load_all(names=[name]))


def case(text: str, n: int, mode: str = "fwd", causal: bool = False, **kw) -> Case:
    """A CPU fp32 case at B=1, H=8, D=64 unless overridden."""
    dims = {"b": B, "h": H, "nq": n, "nk": n, "d": D, **kw}
    return Case(spec(text), "cpu", "fp32", mode, causal, **dims)


def peak_mib(text: str, n: int, mode: str) -> float:
    """Measured peak MiB of one phase (the engine's own memory pass)."""
    c = case(text, n, mode)
    q, k, v, dout = (torch.randn(B, H, n, D) for _ in range(4))
    run = timed_callable(lambda a, b_, c_: c.spec.variant.attention(
        a, b_, c_, causal=False, scale=None, cfg=c.spec.cfg), q, k, v, dout, mode)
    run()
    return peak_bytes(run, "cpu") / MIB


@pytest.mark.parametrize("n", [1024, 2048])
def test_naive_forward_peak_is_two_score_matrices(n: int) -> None:
    """naive forward peaks within 5% of 2 * B * H * N^2 * 4 bytes."""
    expected = 2 * B * H * n * n * 4 / MIB
    assert peak_mib("naive", n, "fwd") == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("n", [1024, 2048])
def test_sdpa_forward_is_below_a_tenth_of_naive(n: int) -> None:
    """sdpa's fused CPU kernel needs under 1/10 of naive's forward memory."""
    assert peak_mib("sdpa", n, "fwd") < 2 * B * H * n * n * 4 / MIB / 10


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_memory_efficient_grows_linearly(mode: str) -> None:
    """memory_efficient grows at most 2.2x when N doubles from 2048 to 4096."""
    small, large = (peak_mib("memory_efficient", n, mode) for n in (2048, 4096))
    assert large <= 2.2 * small


@pytest.mark.slow
def test_memory_efficient_at_8192_is_an_eighth_of_naive() -> None:
    """At N=8192, memory_efficient forward uses at most 1/8 of naive's measured forward."""
    assert peak_mib("memory_efficient", 8192, "fwd") <= peak_mib("naive", 8192, "fwd") / 8


def test_memory_efficient_at_8192_is_an_eighth_of_naive_model() -> None:
    """Fast form of the slow test: naive's forward is pinned to 2 N^2 floats above."""
    assert peak_mib("memory_efficient", 8192, "fwd") <= 2 * B * H * 8192**2 * 4 / MIB / 8


def test_same_case_twice_gives_close_medians() -> None:
    """Two measurements of one case in one process agree within 10% (fastest blocks), in at
    least one of three pairs.

    Medians are hostage to this host's bursts (one CI run read 88 against 64 ms for the same
    case); the fastest block of each measurement is what a systematic difference between a
    first and a second measurement would move."""
    settings = MeasureSettings(min_run_time=1.0, check=False, memory=False, roof=False)
    ratios = []
    for _ in range(3):  # a systematic difference shows in every pair; a burst of another
        first = measure(case("sdpa", 2048), settings)  # process's load (120 against 74 ms
        second = measure(case("sdpa", 2048), settings)  # once, under a compile) in one
        assert first.status == second.status == "ok"
        ratios.append(min(second.times_ms) / min(first.times_ms))
        if abs(ratios[-1] - 1) <= 0.10:
            return
    pytest.fail(f"every pair of measurements differed by more than 10%: ratios {ratios}")


def test_measure_overhead_is_bounded() -> None:
    """measure() costs at most 1.5 s plus 3x its timing budget beyond the timed blocks."""
    settings = MeasureSettings(min_run_time=0.2, memory=True, roof=False)
    measure(case("sdpa", 256), settings)  # first profiler start in the process is slow
    row = measure(case("sdpa", 256), settings)
    timed_s = sum(row.times_ms) * row.number_per_run / 1e3
    assert row.wall_s - timed_s <= 1.5 + 3 * settings.min_run_time, row.wall_s


def test_row_carries_every_number() -> None:
    """A full measurement fills time, throughput, roof, memory and the oracle's verdict."""
    row = measure(case("memory_efficient", 256, "fwd+bwd", causal=True),
                  MeasureSettings(min_run_time=0.05))
    assert row.status == "ok" and row.check_ok is True
    assert row.samples == len(row.times_ms) >= 1 and row.median_ms > 0 and row.iqr_ms >= 0
    assert row.threads == torch.get_num_threads()
    assert row.flops == mode_flops(SoftmaxAttention(), "fwd+bwd", B, H, 256, 256, D, True)
    assert row.gflops == pytest.approx(row.flops / (row.median_ms * 1e-3) / 1e9)
    assert row.roof_gflops > 0 and row.efficiency == pytest.approx(row.gflops / row.roof_gflops)
    assert row.peak_fwd_mib > 0 and row.peak_fwd_bwd_mib > row.peak_fwd_mib
    assert row.expected_fwd_mib > 0 and row.expected_fwd_bwd_mib > 0
    assert row.check_shape == "B1 H8 Nq256 Nk256 D64"


def test_large_case_is_checked_at_a_smaller_shape() -> None:
    """Where the float64 reference would be too big, the row names the smaller shape."""
    big = case("sdpa", 4096)
    small = check_shape(big, 2**22)
    assert small.b * small.h * small.nq * small.nk <= 2**22 and small.d == D
    row = measure(big, MeasureSettings(min_run_time=0.05, memory=False, roof=False))
    assert row.check_shape == small.label() != big.shape.label()


def _failing(exc: BaseException) -> VariantSpec:
    def attention(q, k, v, *, causal, scale, cfg):
        raise exc
    variant = make_variant("failing", attention)
    return VariantSpec("failing", variant, variant.config_cls())


@pytest.mark.parametrize(
    ("exc", "status", "text"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "oom", "CUDA"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"), "oom", "CPU"),
        (Unavailable("kernel rejects D=80"), "unavailable", "D=80"),
        (ValueError("a plain bug"), "error", "a plain bug"),
    ],
)
def test_failures_become_rows(exc: BaseException, status: str, text: str) -> None:
    """OOM, unavailable and plain exceptions become rows with status and reason."""
    c = Case(_failing(exc), "cpu", "fp32", "fwd", False, 1, 1, 8, 8, 8)
    row = measure(c, MeasureSettings(min_run_time=0.01))
    assert row.status == status and text in row.reason
    if status == "error":
        assert "ValueError" in row.reason and "raise exc" in row.reason


def test_is_oom_does_not_swallow_other_runtime_errors() -> None:
    """Only allocator failures count as OOM."""
    assert not is_oom(RuntimeError("shape mismatch"))


def test_unavailable_reason_that_raises_is_a_row() -> None:
    """A variant whose availability probe itself raises still yields a row (review finding)."""
    from tests.broken_variants import make_variant, wrong_scale

    variant = make_variant("probe", wrong_scale)
    variant.module.unavailable_reason = lambda *a, **k: {}["missing driver"]
    c = Case(VariantSpec("probe", variant, variant.config_cls()), "cpu", "fp32", "fwd", False,
             1, 1, 8, 8, 8)
    row = measure(c, FAST)
    assert row.status == "error" and "KeyError" in row.reason


def test_unavailable_variant_is_a_row() -> None:
    """A variant that cannot run here is a row with its reason, and nothing else runs."""
    row = measure(case("xformers", 64), FAST)
    assert row.status == "unavailable" and "device=cpu (supported: {'cuda'})" in row.reason
    assert row.median_ms is None


def test_mismatch_is_timed_and_flagged() -> None:
    """A variant the oracle rejects is still timed, with status mismatch."""
    from tests.broken_variants import wrong_scale

    variant = make_variant("wrong", wrong_scale)
    c = Case(VariantSpec("wrong", variant, variant.config_cls()), "cpu", "fp32", "fwd", False,
             1, 2, 32, 32, 16)
    row = measure(c, MeasureSettings(min_run_time=0.01, memory=False, roof=False))
    assert row.status == "mismatch" and row.check_ok is False and row.median_ms > 0


def test_flop_models() -> None:
    """4 B H Nq Nk D forward; causal counts kept pairs; backward 2.5x; linear O(N D^2)."""
    soft = SoftmaxAttention()
    assert forward_flops(soft, 2, 3, 5, 7, 8, False) == 4 * 2 * 3 * 5 * 7 * 8
    assert causal_pairs(4, 4) == 10 and causal_pairs(2, 5) == 3 and causal_pairs(5, 2) == 9
    full, causal = (forward_flops(soft, 1, 1, 1024, 1024, 64, c) for c in (False, True))
    assert causal / full == pytest.approx(0.5, abs=0.001)
    assert mode_flops(soft, "bwd", 1, 1, 4, 4, 4, False) == 2.5 * forward_flops(
        soft, 1, 1, 4, 4, 4, False)
    linear = variants.get("linear").computes(variants.get("linear").config_cls())
    assert forward_flops(linear, 1, 2, 100, 50, 16, True) == 2 * 2 * 150 * 16 * 16


def test_fingerprint_marks_hard_keys() -> None:
    """Device model and library versions are hard keys; threads and commit are context."""
    fp = fingerprint("cpu", {"x": 1})
    assert {"device_model", "torch", "xformers", "python"} <= set(fp.hard)
    assert fp.hard["torch"] == torch.__version__
    assert {"threads", "git_commit", "git_dirty", "env", "config_hash", "cpu_flags",
            "float32_matmul_precision"} <= set(fp.soft)
    assert fingerprint("cpu", {"x": 2}).soft["config_hash"] != fp.soft["config_hash"]


def test_row_round_trips_and_refuses_other_schema() -> None:
    """Rows serialise to plain data and back; another schema version is refused."""
    row = measure(case("naive", 32), FAST)
    data = row.to_dict()
    assert Row.from_dict(data) == row and data["schema"] == SCHEMA_VERSION
    with pytest.raises(ValueError, match="schema"):
        Row.from_dict({**data, "schema": SCHEMA_VERSION + 1})


def test_inputs_are_not_counted_in_peaks() -> None:
    """Allocating inputs before the window leaves the measured peak unchanged."""
    q = torch.randn(1, 8, 512, 64)
    big = torch.randn(2**22)  # 16 MiB allocated before the window: not counted
    peak = peak_bytes(lambda: q * 2, "cpu")
    assert peak == pytest.approx(q.numel() * 4, abs=4096)  # the output, plus bookkeeping
    assert math.isfinite(big.sum().item())


def test_timed_backward_gets_fresh_gradients() -> None:
    """bwd mode returns new gradients each call; nothing accumulates into .grad."""
    q, k, v, dout = (torch.randn(1, 2, 16, 8) for _ in range(4))
    run = timed_callable(lambda a, b_, c_: (a * b_ * c_), q, k, v, dout, "bwd")
    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # equal, not accumulated


def test_min_samples_adds_blocks_to_a_slow_case() -> None:
    """A case slower than min_run_time still gets min_samples blocks, each one call long."""
    def slow() -> None:
        time.sleep(0.02)
    t = time_callable(slow, min_run_time=0.01, threads=1, min_samples=7)
    assert t.samples == 7 and all(0.019 < x < 0.2 for x in t.times_s), t.times_s
    assert t.median_s == pytest.approx(sorted(t.times_s)[3], rel=0.5)

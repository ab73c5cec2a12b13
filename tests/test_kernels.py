"""Rows say which kernel ran: sdpa's and xformers' dispatch is recorded, checked against the
profiler where a CPU can run it; xformers' own-kernel presets say why they cannot run here;
CUDA timing (events, L2 flush) and the CUDA memory model, as far as a CPU can test them."""

from __future__ import annotations

import re
from typing import ClassVar

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import variants
from harness.cases import Case
from harness.compose import compose_conf
from harness.config import ConfigError, MeasureSettings, grid_settings
from harness.measure import measure
from harness.report_text import legend_names, variant_lines
from harness.specs import VariantSpec
from harness.timing import cuda_time
from variants.contract import Shape, Unavailable

#: the aten op under each SDPA backend on CPU
CPU_OPS = {"flash": "aten::_scaled_dot_product_flash_attention_for_cpu",
           "math": "aten::_scaled_dot_product_attention_math"}
SHAPE = Shape(1, 2, 64, 64, 32)


def _ran(cfg: object, dtype: torch.dtype, causal: bool) -> set[str]:
    """The aten attention ops a call of sdpa with ``cfg`` ran, from the profiler."""
    sdpa = variants.get("sdpa")
    q = torch.randn(SHAPE.b, SHAPE.h, SHAPE.nq, SHAPE.d, dtype=dtype)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sdpa.attention(q, q, q, causal=causal, scale=None, cfg=cfg)
    return {e.name for e in prof.events() if e.name in CPU_OPS.values()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("spec", ["sdpa", "sdpa@math", "sdpa@flash"])
def test_sdpa_records_the_backend_the_profiler_sees(spec: str, dtype: torch.dtype) -> None:
    """What dispatched() names for auto and pinned backends is the aten op that ran."""
    sdpa = variants.get("sdpa")
    preset = spec.partition("@")[2]
    cfg = sdpa.presets[preset] if preset else sdpa.config_cls()
    said = sdpa.dispatched(SHAPE, device="cpu", dtype=dtype, causal=True, backward=False,
                           cfg=cfg)
    backend = re.match(r"sdpa (\w+):", said["forward"]).group(1)
    assert _ran(cfg, dtype, causal=True) == {CPU_OPS[backend]}
    assert "backward" not in said


def test_a_measured_row_carries_its_kernel_and_timer() -> None:
    """extra.kernel (forward and backward) and extra.timer are in every measured sdpa row."""
    sdpa = variants.get("sdpa")
    case = Case(VariantSpec("sdpa", sdpa, sdpa.config_cls()), "cpu", "fp32", "fwd+bwd", True,
                1, 2, 64, 64, 32)
    row = measure(case, MeasureSettings(min_run_time=0.01, memory=False, roof=False))
    assert row.status == "ok", row.reason
    assert row.extra["kernel"]["forward"].startswith("sdpa flash: ")
    assert row.extra["kernel"]["backward"] == row.extra["kernel"]["forward"]
    assert row.extra["timer"] == "torch.utils.benchmark blocked_autorange"
    names = legend_names([row])
    assert names["sdpa"] == "sdpa (ran sdpa flash)"
    assert "forward: sdpa flash: PyTorch's flash kernel" in "\n".join(variant_lines([row]))


def test_xformers_names_the_kernel_under_each_op() -> None:
    """cutlass and fa2 '-pt' ops are PyTorch's kernels; split-K and FA3 are xformers' own."""
    xf = variants.get("xformers").module
    assert "sdpa@efficient" in xf.underneath("cutlassF-pt")
    assert "sdpa@flash" in xf.underneath("fa2B@2.5.7-pt")
    assert "own" in xf.underneath("fa2F@2.5.7")  # built into xformers, not PyTorch's
    assert xf.underneath("triton_splitKF") == "triton_splitKF: xformers' own Triton split-K kernel"
    assert xf.underneath("fa3F@0.0.0").startswith("fa3F@0.0.0: FlashAttention-3")


@pytest.mark.parametrize("op", ["cutlass", "flash", "splitk", "fa3"])
def test_xformers_pinned_ops_are_what_dispatched_names(op: str) -> None:
    """A pinned op is reported as pinned, whatever the device; split-K has no backward op."""
    xf = variants.get("xformers")
    cfg = xf.presets[op]
    said = xf.dispatched(SHAPE, device="cpu", dtype=torch.bfloat16, causal=False,
                         backward=False, cfg=cfg)
    fw, _ = xf.module.op_pair(cfg)
    assert said == {"forward": xf.module.underneath(fw.NAME)}
    if op == "splitk":
        with pytest.raises(Unavailable, match="no backward"):
            xf.dispatched(SHAPE, device="cpu", dtype=torch.bfloat16, causal=False,
                          backward=True, cfg=cfg)


def test_xformers_auto_dispatch_on_cpu_is_unavailable_not_a_guess() -> None:
    """xformers' dispatcher finds no op for CPU inputs: Unavailable, in its words."""
    xf = variants.get("xformers")
    with pytest.raises(Unavailable, match="xformers dispatches no op"):
        xf.dispatched(SHAPE, device="cpu", dtype=torch.float32, causal=False, backward=False,
                      cfg=xf.config_cls())


@pytest.mark.parametrize(("op", "backward", "reason"), [
    ("splitk", True, r"forward op only \(triton_splitKF\)"),
    ("splitk", False, "triton_splitKF: device=cpu"),
    ("fa3", False, r"fa3F@\S+: device=cpu"),
])
def test_xformers_own_kernel_presets_say_why_not_here(op: str, backward: bool,
                                                      reason: str) -> None:
    """xformers@splitk and xformers@fa3 are unavailable on CPU with xformers' own reasons."""
    xf = variants.get("xformers")
    why = xf.unavailable_reason("cpu", torch.bfloat16, causal=False, backward=backward,
                                cfg=xf.presets[op])
    assert why is not None and re.search(reason, why), why


class FakeEvent:
    """A CUDA event stand-in reading a fake clock that the fake calls advance."""

    clock: ClassVar[list[float]] = [0.0]
    log: ClassVar[list[str]] = []

    def __init__(self, enable_timing: bool) -> None:
        assert enable_timing
        self.at = 0.0

    def record(self) -> None:
        self.at = FakeEvent.clock[0]
        FakeEvent.log.append("record")

    def elapsed_time(self, end: FakeEvent) -> float:
        return end.at - self.at  # ms


def test_cuda_time_warms_up_flushes_outside_the_events_and_reads_them_once() -> None:
    """Warm-up calls are untimed; each timed call sits between its own events with the flush
    before it; enough calls for min_samples; one synchronisation reads them."""
    FakeEvent.clock, FakeEvent.log = [0.0], []

    def run() -> None:
        FakeEvent.clock[0] += 2.0  # every call takes 2 ms of "GPU time"
        FakeEvent.log.append("run")

    def flush() -> None:
        FakeEvent.clock[0] += 50.0  # a flush costs time, which must not be counted
        FakeEvent.log.append("flush")

    syncs: list[int] = []
    t = cuda_time(run, min_run_time=1e-9, min_samples=5, flush=flush, event=FakeEvent,
                  sync=lambda: syncs.append(1))
    assert t.samples == 5 and t.times_s == (0.002,) * 5 and t.median_s == 0.002
    assert t.number_per_run == 1 and t.iqr_s == 0.0
    timed = FakeEvent.log[FakeEvent.log.index("flush"):]
    assert timed == ["flush", "record", "run", "record"] * 5
    assert FakeEvent.log[:3] == ["run", "run", "run"]  # warm-up, before any event
    assert len(syncs) == 1 + 3 + 1  # before, after each warm-up call, once at the end


def test_l2_flush_is_refused_off_cuda() -> None:
    """l2_flush=true on a CPU grid is a configuration error naming the field."""
    with pytest.raises(ConfigError, match="l2_flush: flushes a CUDA device's L2"):
        grid_settings(compose_conf("measure", ["l2_flush=true"]))


@pytest.mark.parametrize("backend", ["flash", "efficient", "cudnn"])
def test_sdpa_cuda_memory_model_has_no_cpu_workspace(backend: str) -> None:
    """On CUDA the fused kernels' model is the streaming one with no per-thread CPU tiles
    and no fp32 upcast; math materialises the scores on either device."""
    sdpa = variants.get("sdpa")
    kw = {"dtype": torch.bfloat16, "causal": False, "backward": True}
    fused = sdpa.presets[backend]
    cpu = sdpa.expected_peak_bytes(Shape(1, 8, 4096, 4096, 64), cfg=fused, device="cpu", **kw)
    cuda = sdpa.expected_peak_bytes(Shape(1, 8, 4096, 4096, 64), cfg=fused, device="cuda", **kw)
    assert cuda < cpu
    math_cfg, shape = sdpa.presets["math"], Shape(1, 8, 4096, 4096, 64)
    assert sdpa.expected_peak_bytes(shape, cfg=math_cfg, device="cuda", **kw) \
        == sdpa.expected_peak_bytes(shape, cfg=math_cfg, device="cpu", **kw)


def test_nvidia_smi_line_becomes_driver_and_clocks() -> None:
    """The fingerprint's GPU clocks and driver parse from nvidia-smi's CSV (H200-like line)."""
    from harness.fingerprint import parse_smi

    got = parse_smi("570.86.15, 1980, 1980, 3201, 3201, 700.00, Enabled\n")
    assert got == {"gpu_driver": "570.86.15", "gpu_clock_sm_mhz": 1980.0,
                   "gpu_clock_sm_max_mhz": 1980.0, "gpu_clock_mem_mhz": 3201.0,
                   "gpu_clock_mem_max_mhz": 3201.0, "gpu_power_limit_w": 700.0,
                   "gpu_persistence_mode": "Enabled"}
    assert parse_smi("535.1, [N/A], 1980, 3201, 3201, [N/A], Disabled")["gpu_clock_sm_mhz"] \
        is None
    assert parse_smi("") == {}

"""Page faults are explained, not hidden: every row records minor page faults per call and
the allocator its worker ran under; allocator=tuned is an option, the default what users get."""

from __future__ import annotations

import ctypes.util
from dataclasses import replace

import pytest

import variants
from harness.allocator import TUNED, allocator_env, in_effect
from harness.cases import Case
from harness.compose import compose_conf
from harness.config import ConfigError, MeasureSettings, grid_settings
from harness.report_text import fault_lines
from harness.specs import VariantSpec
from harness.worker import Supervisor

#: naive fwd at B=1, H=8, N=2048 allocates (8, 2048, 2048) fp32 scores: 128 MiB a call
BIG = (1, 8, 2048, 2048, 64)
QUICK = MeasureSettings(min_run_time=0.05, check=False, memory=False, roof=False)


def _naive(dims: tuple[int, ...] = BIG) -> Case:
    naive = variants.get("naive")
    return Case(VariantSpec("naive", naive, naive.config_cls()), "cpu", "fp32", "fwd", False,
                *dims)


def test_allocator_environments() -> None:
    """default changes nothing, tuned raises glibc's thresholds, others preload a library."""
    assert allocator_env("default") == {} and allocator_env("tuned") == TUNED
    for name in ("jemalloc", "tcmalloc"):
        if ctypes.util.find_library(name):
            assert name in allocator_env(name)["LD_PRELOAD"]
        else:
            with pytest.raises(ValueError, match=f"allocator: {name} is not installed here"):
                allocator_env(name)
    assert in_effect({}) == "glibc defaults"
    assert in_effect(TUNED).startswith("glibc, MALLOC_MMAP_THRESHOLD_=2147483647")


def test_bad_allocator_is_a_config_error_naming_the_field() -> None:
    """An unknown allocator, or one this system lacks, fails before any work (exit 2)."""
    with pytest.raises(ConfigError, match=r"allocator: unknown value 'bogus'"):
        compose_conf("measure", ["allocator=bogus"])
    missing = [n for n in ("jemalloc", "tcmalloc") if not ctypes.util.find_library(n)]
    if missing:
        with pytest.raises(ConfigError, match=f"allocator: {missing[0]} is not installed"):
            grid_settings(compose_conf("measure", [f"allocator={missing[0]}"]))


def test_faults_per_call_show_the_mmap_cliff_and_tuned_removes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """128 MiB of scores a call: glibc's defaults map (and fault) them afresh every call; the
    tuned thresholds reuse freed memory. Each row says which allocator it ran under.

    The tuned heap may still grow after the untimed first call (the next calls of this case
    fault one or two more matrices when small allocations split the freed region; seen in CI
    with two counted calls: 16,419 a call, and with six: 10,926), so at least fifteen calls
    are counted (a slow case is timed in blocks of one call, min_samples of them): a one-off
    growth of two matrices is then under a seventh of a matrix a call, a per-call mapping a
    whole one."""
    for key in TUNED:
        monkeypatch.delenv(key, raising=False)
    rows = {}
    for name in ("default", "tuned"):
        with Supervisor(timeout_s=120, env=allocator_env(name)) as sup:
            rows[name] = sup.run(_naive(), replace(QUICK, min_samples=15))
    assert rows["default"].status == rows["tuned"].status == "ok"
    assert rows["default"].extra["allocator"] == "glibc defaults"
    assert rows["tuned"].extra["allocator"].startswith("glibc, MALLOC_MMAP_THRESHOLD_=")
    fresh = 128 * 2**20 // 4096  # pages of one score matrix
    assert rows["default"].minor_faults_per_call > fresh
    assert rows["tuned"].minor_faults_per_call < fresh / 5


def test_report_lists_rows_whose_calls_map_fresh_pages() -> None:
    """A row above the threshold is listed with its MiB of fresh pages; others are not."""
    from harness.measure import base_row

    row = replace(base_row(_naive()), median_ms=40.0, minor_faults_per_call=32768.0)
    calm = replace(row, label="sdpa", minor_faults_per_call=3.0)
    text = "\n".join(fault_lines([row, calm]))
    assert "## Page faults" in text and "| naive |" in text and "| 128 |" in text
    assert "| sdpa |" not in text
    assert fault_lines([calm]) == []

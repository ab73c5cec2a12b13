"""Supervised workers: crashes, hangs, OOM and bugs become rows; other rows survive."""

from __future__ import annotations

import pytest

import variants
from harness.cases import Case
from harness.measure import MeasureSettings
from harness.specs import VariantSpec
from harness.worker import Supervisor, from_request, to_request
from variants.contract import load_module

QUICK = MeasureSettings(min_run_time=0.02, memory=False, roof=False)


def case(module: str, n: int = 16) -> Case:
    """A tiny CPU case of the variant at ``module`` (built-in or external)."""
    variant = load_module(module)
    return Case(VariantSpec(variant.name, variant, variant.config_cls()), "cpu", "fp32", "fwd",
                False, 1, 2, n, n, 16)


def test_request_round_trip() -> None:
    """A case survives the trip to another process as plain data."""
    original = Case(VariantSpec("sdpa@math", variants.get("sdpa"),
                                variants.get("sdpa").presets["math"]),
                    "cpu", "bf16", "fwd+bwd", True, 2, 3, 5, 7, 16)
    rebuilt = from_request(to_request(original, QUICK))
    assert rebuilt.key() == original.key() and rebuilt.spec.label == "sdpa@math"


def test_bad_variants_cost_one_row_each() -> None:
    """segfault -> crashed, hang -> timeout, OOM -> oom, bug -> error; good rows all kept."""
    modules = ["variants.naive", "tests.bad_variants.segfaulting", "variants.sdpa",
               "tests.bad_variants.hanging", "tests.bad_variants.exhausting",
               "tests.bad_variants.buggy", "variants.naive"]
    with Supervisor(timeout_s=20) as sup:
        rows = [sup.run(case(m), QUICK) for m in modules]
        workers = sup.started
    assert [r.status for r in rows] == ["ok", "crashed", "ok", "timeout", "oom", "error", "ok"]
    assert "SIGSEGV" in rows[1].reason
    assert "timeout of 20 s" in rows[3].reason
    assert "out of memory" in rows[4].reason
    assert "KeyError" in rows[5].reason and "a plain bug" in rows[5].reason
    assert all(r.median_ms > 0 for r in (rows[0], rows[2], rows[6]))
    assert workers == 3  # one at start, one after the crash, one after the hang


@pytest.mark.parametrize("module", ["variants.naive"])
def test_worker_is_reused(module: str) -> None:
    """Consecutive good cases share one worker process."""
    with Supervisor(timeout_s=60) as sup:
        for n in (8, 16, 32):
            assert sup.run(case(module, n), QUICK).status == "ok"
        assert sup.started == 1

"""The speed-target checker reads pytest-benchmark JSON and judges ratios correctly."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench import targets


def _write(tmp_path: Path, meds: dict[str, float]) -> Path:
    benchmarks = [{"name": f"test_forward[{case}]", "stats": {"median": sec}}
                  for case, sec in meds.items()]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return path


GOOD = {"sdpa-4096": 0.10, "memory_efficient-4096": 0.105,
        "sdpa-fwd-B4-4096": 0.4, "memory_efficient-fwd-B4-4096": 0.42,
        "memory_efficient-fwd+bwd-B1-4096": 0.85, "memory_efficient-fwd+bwd-B4-4096": 3.4,
        "linear-4096": 0.01,
        "linear-16384": 0.045, "sparse@window-4096": 0.02, "sparse@window-16384": 0.08,
        "sdpa-16384": 1.6, "linear-fwd+bwd-B4-4096": 0.2, "linear-fwd+bwd-B4-8192": 0.4,
        "linear-fwd+bwd-B1-4096": 0.04, "linear-fwd+bwd-B1-16384": 0.17,
        **{f"sdpa-fwd+bwd-B{b}-{n}": 0.8 * b * (n // 4096) ** 2
           for b, n in ((1, 4096), (4, 4096), (1, 16384))},
        **{f"sparse@{p}-fwd+bwd-B{b}-{n}": 0.2 * b * (n // 4096)
           for p in ("window", "bigbird") for b, n in ((1, 4096), (4, 4096), (1, 16384))}}


def test_targets_pass_and_fail(tmp_path: Path) -> None:
    """Ratios within limits pass (exit 0); one slow variant fails its target (exit 1)."""
    assert targets.main([str(_write(tmp_path, GOOD))]) == 0
    slow = {**GOOD, "memory_efficient-4096": 0.12}
    rows = targets.evaluate(targets.medians(_write(tmp_path, slow)))
    failed = [t.numerator for t, _, ok in rows if not ok]
    assert failed == ["memory_efficient-4096"]
    assert targets.main([str(_write(tmp_path, slow))]) == 1


def test_a_target_whose_cases_did_not_run_fails(tmp_path: Path) -> None:
    """A renamed or missing case cannot hide a target: main() exits 1 and names it."""
    partial = {k: v for k, v in GOOD.items() if not k.startswith("linear-fwd+bwd-B1")}
    assert [t.numerator for t in targets.missing(partial)] == ["linear-fwd+bwd-B1-16384"]
    assert targets.main([str(_write(tmp_path, partial))]) == 1

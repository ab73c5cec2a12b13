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


GOOD = {"sdpa-4096": 0.10, "memory_efficient-4096": 0.19, "linear-4096": 0.01,
        "linear-16384": 0.045, "sparse@window-4096": 0.02, "sparse@window-16384": 0.08,
        "sdpa-16384": 1.6}


def test_targets_pass_and_fail(tmp_path: Path) -> None:
    """Ratios within limits pass (exit 0); one slow variant fails its target (exit 1)."""
    assert targets.main([str(_write(tmp_path, GOOD))]) == 0
    slow = {**GOOD, "memory_efficient-4096": 0.21}
    rows = targets.evaluate(targets.medians(_write(tmp_path, slow)))
    failed = [t.numerator for t, _, ok in rows if not ok]
    assert failed == ["memory_efficient-4096"]
    assert targets.main([str(_write(tmp_path, slow))]) == 1

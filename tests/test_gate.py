""".ci/gate end to end (slow): an A/B run of HEAD against the working tree, with +20% memory
injected into the head side's test-only variant, fails and flags that variant alone (the
injected slowdown is tests/test_ab.py's; the calibration is tests/bench/gate_proof.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_gate_catches_injected_memory_and_nothing_else(harness_env, tmp_path: Path) -> None:
    """exit 1; every case of 'injected' memory-worse; no other variant flagged; summary kept."""
    env = {**harness_env, "PY": sys.executable, "ATTNBENCH_GATE_BASE": "HEAD",
           "ATTNBENCH_GATE_DIR": str(tmp_path / "gate"),
           "ATTNBENCH_GATE_EXTRA": "extra_variants=[tests.injected_variants] "
                                   "variants=[naive,injected,sdpa]",
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    done = subprocess.run(["bash", ".ci/gate", "--head-env=ATTNBENCH_INJECT_MEMORY=0.2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gate: FAILED (exit 1)" in done.stdout
    doc = json.loads((tmp_path / "gate" / "compare.json").read_text())
    mine = [v for v in doc["verdicts"] if v["variant"] == "injected"]
    assert mine and all(v["memory_state"] == "worse" for v in mine)
    flagged = {v["variant"] for v in doc["verdicts"]
               if v["state"] in ("worse", "now failing") or v["memory_state"] == "worse"}
    assert flagged == {"injected"}, done.stdout
    assert "attnbench compare: regression" in (tmp_path / "summary.md").read_text()

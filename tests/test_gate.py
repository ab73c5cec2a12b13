"""The gate end to end on real sweeps: an injected 1.5x slowdown and +20% memory are caught,
and nothing else is flagged (slow: four small sweeps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_harness

GRID = ["sweep=smoke", "extra_variants=[tests.injected_variants]",
        "variants=[naive,injected,sdpa,memory_efficient]"]


def sweep(tmp: Path, name: str, env: dict[str, str]) -> Path:
    """One small smoke sweep into tmp/name; returns its run directory."""
    done = run_harness(["sweep", *GRID, f"results_dir={tmp / name}"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    (rows,) = (tmp / name).glob("*/rows.jsonl")
    return rows.parent


def flagged(doc: dict) -> dict[str, int]:
    """variant -> cases flagged as regressions in a compare JSON."""
    out: dict[str, int] = {}
    for v in doc["verdicts"]:
        if v["state"] in ("worse", "now failing") or v["memory_state"] == "worse":
            out[v["variant"]] = out.get(v["variant"], 0) + 1
    return out


@pytest.mark.slow
def test_injected_slowdown_and_memory_are_caught(harness_env, tmp_path: Path) -> None:
    """1.5x slower: injected worse on >= 90% of its cases (confirmed); +20% memory: flagged."""
    base = sweep(tmp_path, "base", harness_env)
    slow_env = {**harness_env, "ATTNBENCH_INJECT_SLOWDOWN": "1.5"}
    slow = [sweep(tmp_path, f"slow{i}", slow_env) for i in range(2)]
    fat = sweep(tmp_path, "fat", {**harness_env, "ATTNBENCH_INJECT_MEMORY": "0.2"})
    gate = ["--normalise", "sdpa", "--factor", "1.25"]
    done = run_harness(["compare", str(base), str(slow[0]), "--confirm", str(slow[1]), *gate,
                        "--json", str(tmp_path / "slow.json")], harness_env)
    doc = json.loads((tmp_path / "slow.json").read_text())
    mine = [v for v in doc["verdicts"] if v["variant"] == "injected"]
    worse = sum(v["state"] == "worse" for v in mine)
    assert done.returncode == 1 and worse >= 0.9 * len(mine), done.stdout
    assert set(flagged(doc)) == {"injected"}, done.stdout
    done = run_harness(["compare", str(base), str(fat), *gate, "--json",
                        str(tmp_path / "fat.json")], harness_env)
    doc = json.loads((tmp_path / "fat.json").read_text())
    assert done.returncode == 1 and set(flagged(doc)) == {"injected"}, done.stdout
    assert all(v["memory_state"] == "worse" for v in doc["verdicts"]
               if v["variant"] == "injected")

"""``python -m harness ab``: revisions, the paced sweep protocol, re-measure commands, and
(slow) a real A/B run that catches an injected slowdown and passes an A/A pair."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness.ab import CASE_FIELDS, Side, case_overrides, repro_commands
from harness.cli import split_argv
from harness.compare import Comparison, Gate, Verdict
from harness.config import sweep_settings
from harness.grid import cases
from tests.conftest import ROOT, run_harness
from tests.test_sweep import TINY, composed

HEAD = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                      check=True).stdout.strip()


def test_split_argv_keeps_sweep_overrides_after_the_separator() -> None:
    """Options before '--' are ab's; everything after goes to both sweeps unchanged."""
    own, overrides = split_argv(["HEAD", "--confirm", "--", "sweep=gate", "--x"])
    assert own == ["HEAD", "--confirm"] and overrides == ["sweep=gate", "--x"]


def test_unknown_revision_is_a_usage_error(harness_env, tmp_path: Path) -> None:
    """A ref that names no commit: exit 2 naming it, before anything is run or written."""
    done = run_harness(["ab", "no-such-ref-anywhere", "--out", str(tmp_path / "ab")],
                       harness_env)
    assert done.returncode == 2, done.stderr
    assert "revision 'no-such-ref-anywhere': not a commit" in done.stderr
    assert not (tmp_path / "ab").exists()


def test_existing_out_and_bad_options_are_refused(harness_env, tmp_path: Path) -> None:
    """--out must be new; --factor <= 1 and a malformed --head-env are named; all exit 2."""
    for args, words in ((["--out", str(tmp_path)], "already exists"),
                        (["--factor", "0.9"], "--factor"),
                        (["--head-env", "NOVALUE"], "--head-env: expected KEY=VALUE")):
        done = run_harness(["ab", "HEAD", *args], harness_env)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)


def test_repro_command_selects_exactly_the_flagged_case() -> None:
    """The re-measure command's overrides compose to one case, the flagged one."""
    user = ["sweep=gate", "seq_lens=[256,512]", "extra_variants=[tests.injected_variants]"]
    grid = sweep_settings(composed("config", user)).grid
    case = next(c for c in cases(grid) if c.spec.label == "sparse@bigbird" and c.causal)
    verdict = Verdict(case.key(), "desc", "sparse@bigbird", "worse", ratio=1.5)
    sides = [Side("base", "main", "a" * 40, ROOT), Side("head", "", None, ROOT,
                                                        (("ATTNBENCH_INJECT_SLOWDOWN", "1.5"),))]
    comparison = Comparison((verdict, Verdict("k", "d", "naive", "same")), Gate())
    (command,) = repro_commands(comparison, sides, user).values()
    words = shlex.split(command)
    assert words[:5] == ["python", "-m", "harness", "ab", "a" * 40]
    assert "--head-env=ATTNBENCH_INJECT_SLOWDOWN=1.5" in words
    overrides = words[words.index("--") + 1:]
    assert "seq_lens=[256,512]" not in overrides  # the user's value for a case field is replaced
    (only,) = cases(sweep_settings(composed("config", overrides)).grid)
    assert only.key() == case.key() and only.spec.label == "sparse@bigbird"
    # decode's and GQA's axes are set only for such cases (an older base tree has none);
    # head_dim pins D, so a user's head_dims axis is dropped from the replay
    decode_axes = {"decode_tokens", "decode_contexts", "kv_heads", "head_dims", "v_head_dim",
                   "ragged", "ragged_forms"}
    assert {o.partition("=")[0] for o in case_overrides(verdict)} == set(CASE_FIELDS) - decode_axes


def test_paced_sweep_runs_one_case_per_line_and_stops_at_eof(harness_env, tmp_path) -> None:
    """ready N DIR, one row per 'go', and EOF interrupts the run with its rows kept."""
    cmd = [sys.executable, "-m", "harness", "sweep", "sweep=smoke", *TINY,
           f"results_dir={tmp_path}", "paced=true"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=harness_env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready = next(line for line in proc.stdout if line.startswith("@attnbench-pace")).split()
    assert ready[:2] == ["@attnbench-pace", "ready"] and int(ready[2]) == 36
    run_dir = Path(ready[3])
    for _ in range(2):
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "@attnbench-pace done"
    proc.stdin.close()
    assert proc.wait(timeout=120) == 130
    rows = (run_dir / "rows.jsonl").read_text().splitlines()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(rows) == 2 and manifest["status"] == "interrupted"
    assert manifest["fingerprint"]["soft"]["roof_gflops"] > 0
    assert manifest["fingerprint"]["soft"]["copy_gib_s"] > 0


@pytest.mark.slow
def test_ab_catches_an_injected_slowdown_and_passes_a_a(harness_env, tmp_path: Path) -> None:
    """HEAD against the working tree: the head side slowed 1.5x is caught, nothing else is;
    without the injection the same pair passes. Each side keeps its own run directory."""
    grid = ["--", "sweep=gate", "extra_variants=[tests.injected_variants]",
            "variants=[naive,injected,sdpa,linear]"]
    slow = run_harness(["ab", "HEAD", "--out", str(tmp_path / "slow"), "--confirm",
                        "--factor", "1.25", "--head-env", "ATTNBENCH_INJECT_SLOWDOWN=1.5",
                        *grid], harness_env)
    doc = json.loads((tmp_path / "slow" / "compare.json").read_text())
    worse = {v["variant"] for v in doc["verdicts"] if v["state"] == "worse"}
    assert slow.returncode == 1 and worse == {"injected"}, slow.stdout + slow.stderr
    assert "re-measure injected cpu fp32" in slow.stdout
    assert f"python -m harness ab {HEAD} --head-env=ATTNBENCH_INJECT_SLOWDOWN=1.5" in slow.stdout
    for side in ("base", "head"):
        (manifest,) = (tmp_path / "slow" / side).glob("*/manifest.json")
        assert json.loads(manifest.read_text())["status"] == "complete"
    same = run_harness(["ab", "HEAD", "--out", str(tmp_path / "aa"), "--confirm",
                        "--factor", "1.25", *grid], harness_env)
    assert same.returncode in (0, 3), same.stdout + same.stderr
    assert "compare: pass" in same.stdout or "inconclusive" in same.stdout

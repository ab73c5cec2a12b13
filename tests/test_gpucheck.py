"""make gpu-wheels and make gpu-check, on a CPU: the wheel set check, the sweep's budget
guard, the step budget, packing into what may come back, and the Makefile's commands."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from harness import cli, gpucheck
from harness.config import ConfigError, SweepConf
from harness.gpu_pack import Artifact, Limits, check_out, clean_log, pack, tail
from harness.gpu_wheels import (
    check_wheels,
    compatible,
    parse_wheel,
    platform_ok,
    python_ok,
    required_versions,
)
from harness.gpucheck import Budget, Plan, Step, finish, sweep_budget_s
from harness.rows import Row
from harness.store import RunStore, read_rows
from harness.vocab import Status
from tests.conftest import ROOT, run_harness

REQUIRED = {"hydra-core": "1.3.8", "omegaconf": "2.3.1", "antlr4-python3-runtime": "4.9.3",
            "PyYAML": "6.0.4", "xformers": "0.0.35"}
COMPLETE = ["hydra_core-1.3.8-py3-none-any.whl", "omegaconf-2.3.1-py3-none-any.whl",
            "antlr4_python3_runtime-4.9.3-py3-none-any.whl",
            "pyyaml-6.0.4-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
            "xformers-0.0.35-py39-none-manylinux_2_28_x86_64.whl"]


def _folder(tmp_path: Path, names: list[str]) -> Path:
    for name in names:
        (tmp_path / name).write_bytes(b"x" * 100)
    return tmp_path


# --- the wheel set -------------------------------------------------------------------------

def test_complete_wheel_set_has_no_problem(tmp_path: Path) -> None:
    """One wheel per required distribution, each installable on CPython 3.12 x86_64."""
    found = check_wheels(_folder(tmp_path, COMPLETE), REQUIRED)
    assert found.problems == () and found.total == 500 and len(found.sizes) == 5


@pytest.mark.parametrize(("change", "problem"), [
    (lambda n: n[1:], r"hydra-core: 0 wheels, exactly one required"),
    (lambda n: [*n, "hydra_core-1.3.7-py3-none-any.whl"],
     r"1\.3\.7-py3-none-any.whl: version 1\.3\.7, required 1\.3\.8.*hydra-core: 2 wheels"),
    (lambda n: [*n[:3], "pyyaml-6.0.4-cp311-cp311-manylinux_2_17_x86_64.whl", n[4]],
     r"cp311.*do not install on CPython 3\.12"),
    (lambda n: [*n[:4], "xformers-0.0.35-py39-none-manylinux_2_34_x86_64.whl"],
     r"manylinux_2_34_x86_64.whl: its tags do not install"),
    (lambda n: [*n[:4], "xformers-0.0.35-py39-none-musllinux_1_2_x86_64.whl"],
     r"musllinux.*do not install"),
    (lambda n: [*n, "hydra_submitit_launcher-1.2.0-py3-none-any.whl"],
     r"hydra-submitit-launcher is not required"),
    (lambda n: [*n, "notawheel.whl"], r"notawheel.whl: not a wheel file name"),
])
def test_wheel_set_problems_are_named(tmp_path: Path, change, problem: str) -> None:
    """Missing, duplicate, wrong-version, incompatible and unexpected wheels each show."""
    found = check_wheels(_folder(tmp_path, change(COMPLETE)), REQUIRED)
    assert re.search(problem, "\n".join(found.problems), re.S), found.problems


def test_wheel_set_over_the_size_limit(tmp_path: Path) -> None:
    """The total must stay under what travels with the tree."""
    found = check_wheels(_folder(tmp_path, COMPLETE), REQUIRED, limit=400)
    assert any("total" in p and "over" in p for p in found.problems)


@pytest.mark.parametrize(("tag", "abi", "ok"), [
    ("py3", "none", True), ("py39", "none", True), ("py312", "none", True),
    ("py313", "none", False), ("py2", "none", False), ("cp312", "cp312", True),
    ("cp312", "none", True), ("cp311", "cp311", False), ("cp38", "abi3", True),
    ("cp313", "abi3", False), ("py3", "abi3", False),
])
def test_python_tags(tag: str, abi: str, ok: bool) -> None:
    """The python and ABI tags pip on CPython 3.12 accepts."""
    assert python_ok(tag, abi) is ok


@pytest.mark.parametrize(("tag", "ok"), [
    ("any", True), ("manylinux1_x86_64", True), ("manylinux2014_x86_64", True),
    ("manylinux_2_28_x86_64", True), ("manylinux_2_34_x86_64", False),
    ("linux_x86_64", False), ("manylinux_2_28_aarch64", False), ("macosx_11_0_x86_64", False),
])
def test_platform_tags(tag: str, ok: bool) -> None:
    """manylinux x86_64 up to glibc 2.28, or pure."""
    assert platform_ok(tag) is ok


def test_compressed_tag_sets() -> None:
    """A wheel matches if any of its compressed tags does."""
    w = parse_wheel("pyyaml-6.0.4-cp312-cp312-manylinux2014_x86_64.manylinux_2_34_x86_64.whl")
    assert w.dist == "pyyaml" and w.version == "6.0.4" and compatible(w)


def test_required_versions_come_from_the_pins_and_the_venv() -> None:
    """hydra-core and xformers as pinned in pyproject.toml; the others as installed here."""
    import importlib.metadata

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    required = required_versions()
    for name in ("hydra-core", "xformers"):
        assert f"{name}=={required[name]}" in deps
    for name in ("omegaconf", "antlr4-python3-runtime", "PyYAML"):
        assert required[name] == importlib.metadata.version(name)
    assert "hydra-submitit-launcher" not in required and "torch" not in required


def test_unpack_wheels_merges_data_folders(tmp_path: Path) -> None:
    """Without venv or pip, a wheel is unzipped; its .data purelib lands in site."""
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/__init__.py", "X = 1\n")
        z.writestr("demo-1.0.data/purelib/extra.py", "Y = 2\n")
    site = gpucheck.unpack_wheels([wheel], tmp_path / "site")
    assert (site / "demo" / "__init__.py").exists() and (site / "extra.py").exists()
    assert not list(site.glob("*.data"))


def test_gpucheck_imports_without_hydra_torch_or_pandas() -> None:
    """The GPU image has no Hydra yet when gpucheck starts: it and its subcommand's parser
    need only the stdlib."""
    code = ("import sys\nfor m in ('hydra', 'omegaconf', 'torch', 'pandas', 'xformers', "
            "'yaml', 'scipy'):\n    sys.modules[m] = None\nimport harness.gpucheck\n"
            "from harness.cli import parser\n"
            "assert parser('gpu-check').parse_args(['gpu-check', '--out', 'x']).budget_s == 480")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


# --- the sweep's budget --------------------------------------------------------------------

def test_budget_s_must_not_be_negative() -> None:
    """budget_s < 0 is refused naming the field (0 means no budget)."""
    with pytest.raises(ConfigError, match=r"budget_s: must be >= 0"):
        SweepConf(budget_s=-1.0)
    assert SweepConf().budget_s == 0.0


def test_a_spent_budget_skips_the_rest_with_a_reason(harness_env, tmp_path: Path) -> None:
    """budget_s=0.001: the first case runs, each other case is a skipped row saying why."""
    out = tmp_path / "run"
    result = run_harness(["sweep", "sweep=smoke", "variants=[naive,sdpa]", "seq_lens=[16,32]",
                          "modes=[fwd]", "causal=[false]", "memory=false", "min_run_time=0.01",
                          "min_samples=1", "heads=2", "head_dim=16", "budget_s=0.001",
                          f"run_dir={out}"], harness_env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_rows(out)
    assert [(r.label, r.nq) for r in rows] == [("naive", 16), ("sdpa", 16), ("naive", 32),
                                               ("sdpa", 32)]  # smallest N first
    assert rows[0].status == Status.OK
    for row in rows[1:]:
        assert row.status == Status.SKIPPED
        assert row.reason == ("budget: the sweep's budget_s=0.001 s was spent after 1 of 4 "
                              "cases (not attempted)")
    assert "budget: 3 of 4 cases skipped" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows"] == 4
    assert manifest["budget"] == {"budget_s": 0.001, "skipped": 3, "spent_after_cases": 1}


# --- the run's budget and packing ----------------------------------------------------------

def test_sweep_budget_leaves_room_for_the_report() -> None:
    """The sweep's budget_s and hard limit out of what is left; never below the minimum."""
    budget_s, limit = sweep_budget_s(400.0)
    assert limit == 400.0 - gpucheck.REPORT_RESERVE_S
    assert budget_s == limit - gpucheck.SWEEP_SLACK_S
    assert sweep_budget_s(-50.0)[0] == gpucheck.SWEEP_MIN_S


def test_budget_timeouts_and_verdict() -> None:
    """Step limits keep time for later steps; the verdict names failed steps and the time."""
    budget = Budget(200.0, started=time.monotonic() - 30)
    assert budget.timeout(120, 100) == pytest.approx(70, abs=1)
    assert budget.timeout(60, 100) == 60
    assert budget.timeout(120, 500) == gpucheck.STEP_MIN_S
    steps = [Step("doctor", 0, 1.0, None), Step("sweep", None, 2.0, None, "stopped")]
    assert re.fullmatch(r"FAILED: sweep; took 3\d s, within its 200 s budget",
                        gpucheck.verdict(steps, budget))
    late = Budget(10.0, started=time.monotonic() - 30)
    assert "over its 10 s budget by 2" in gpucheck.verdict(steps[:1], late)


def test_run_step_stops_the_whole_group_at_its_limit(tmp_path: Path) -> None:
    """A step past its limit is stopped with its children, and says so."""
    log = tmp_path / "log"
    start = time.monotonic()
    step = gpucheck.run_step("hang", ["sh", "-c", "echo started; sleep 60 & sleep 60"], log,
                             timeout_s=1.0, cwd=tmp_path)
    assert time.monotonic() - start < 15
    assert step.rc is None and not step.ok and "time limit" in step.note
    assert "started" in log.read_text() and "[hang: stopped" in log.read_text()


def test_tail_keeps_the_end_and_says_what_was_cut() -> None:
    """A log over the limit keeps its last lines, with a first line saying how much went."""
    data = b"".join(b"line %05d\n" % i for i in range(5000))
    cut = tail(data, 1000)
    assert len(cut) <= 1000 and cut.endswith(b"line 04999\n")
    first, second = cut.split(b"\n")[:2]
    assert first.startswith(b"[gpu-check: the first") and second.startswith(b"line ")
    assert tail(b"short", 1000) == b"short"


def test_clean_log_keeps_the_last_progress_bar_rewrite() -> None:
    """Carriage-return rewrites collapse to what a terminal would show."""
    assert clean_log(b"a\r 10%\r 50%\r100%\r\nnext\n") == b"100%\nnext\n"


def _row(nq: int, status: str, reason: str = "", median: float | None = None) -> Row:
    return Row(key=f"k{nq}{status}", variant="naive", label="naive", config={}, device="cuda",
               dtype="bf16", mode="fwd", causal=False, b=1, h=16, nq=nq, nk=nq, d=128,
               status=status, reason=reason, median_ms=median)


def _fake_run(tmp_path: Path) -> Plan:
    """A work folder as a gpu-check leaves it: logs (one huge), a run, figures."""
    work, run = tmp_path / "work", tmp_path / "work" / "run"
    (run / "figures" / "setting").mkdir(parents=True)
    store = RunStore.open(run)
    store.append(_row(1024, "ok", median=1.5))
    store.append(_row(4096, "skipped", "budget: the sweep's budget_s=9 s was spent after 1"))
    store.append(_row(16384, "oom"))
    (run / "manifest.json").write_text(json.dumps({
        "status": "complete", "rows": 3, "cases_total": 3,
        "budget": {"budget_s": 9.0, "skipped": 1, "spent_after_cases": 1}}))
    (run / "report.md").write_text("# report\n" + "x" * 5000)  # over the limit: gzipped
    rng = random.Random(0)
    for i in range(30):  # many figures, incompressible: the archive is too big
        (run / "figures" / "setting" / f"f{i}.png").write_bytes(rng.randbytes(200))
        (run / "figures" / "setting" / f"f{i}.svg").write_text("<svg/>")
    (work / "doctor.txt").write_text("torch 2.11.0\ncuda: H200\n")
    (work / "pytest-cuda.txt").write_text("3 passed\n")
    (work / "sweep.log").write_bytes(b"".join(b"progress %06d\r" % i + b"row %06d\n" % i
                                              for i in range(20000)))
    return Plan("python3", {}, work, run, "cuda", ())


def test_packing_fits_the_limits_and_says_what_it_changed(tmp_path: Path) -> None:
    """At most 8 files, each within the limit, flat; summary.md names what was cut,
    gzipped or dropped, and counts budget skips apart."""
    plan, out, limits = _fake_run(tmp_path), tmp_path / "out", Limits(max_bytes=4000)
    out.mkdir()
    steps = [Step("env", 0, 1.0, None), Step("sweep", 0, 5.0, None, "budget_s=9")]
    rc = finish(steps, Budget(480.0), plan, out, limits)
    assert rc == 0 and check_out(out, limits) == []
    files = sorted(p.name for p in out.iterdir())
    assert files == ["doctor.txt", "manifest.json", "pytest-cuda.txt", "report.md.gz",
                     "rows.jsonl", "summary.md", "sweep.log"]
    assert (out / "sweep.log").read_bytes().endswith(b"row 019999\n")
    assert b"\r" not in (out / "sweep.log").read_bytes()
    text = (out / "summary.md").read_text()
    assert "sweep.log: cut from the head" in text and "report.md: " in text
    assert "figures.tar.gz: dropped" in text and "all 2 steps passed" in text
    assert "1 ok, 1 skipped (budget), 1 oom" in text
    assert "status complete, 3 rows of 3 cases; its budget_s=9 s skipped 1 cases" in text
    assert "| naive | bf16 | fwd | full | 1 | 1.5 | BUDGET | OOM |" in text


def test_packing_drops_the_lowest_priority_past_the_file_count(tmp_path: Path) -> None:
    """More artifacts than files allowed: the last ones go, and one slot stays for the
    summary; figures, when they fit, come back as one archive of PNGs only."""
    plan, out = _fake_run(tmp_path), tmp_path / "out"
    out.mkdir()
    assert finish([Step("env", 0, 1.0, None)], Budget(480.0), plan, out, Limits()) == 0
    with tarfile.open(out / "figures.tar.gz") as tar:
        names = tar.getnames()
    assert len(names) == 30 and all(n.endswith(".png") for n in names)
    sources = [Artifact(f"a{i}.txt", plan.work / "doctor.txt", "log") for i in range(10)]
    out2 = tmp_path / "out2"
    out2.mkdir()
    notes = pack(sources, out2, Limits(max_files=4))
    assert len(list(out2.iterdir())) == 3
    assert sum("only 4 files come back" in n for n in notes) == 7


def test_missing_outputs_and_failed_steps_exit_non_zero(tmp_path: Path) -> None:
    """A step that failed and outputs never written are reported, and the exit is 1."""
    work = tmp_path / "work"
    work.mkdir()
    plan, out = Plan("python3", {}, work, work / "run", "cuda", ()), tmp_path / "out"
    out.mkdir()
    rc = finish([Step("sweep", 2, 1.0, None)], Budget(480.0), plan, out, Limits())
    text = (out / "summary.md").read_text()
    assert rc == 1 and "FAILED: sweep" in text and "rows.jsonl: not written" in text
    assert "no rows: the sweep wrote nothing" in text and "no readable manifest" in text


def test_pytest_missing_is_said(tmp_path: Path, monkeypatch) -> None:
    """Without pytest on the image the step fails, saying why, and nothing runs."""
    monkeypatch.setattr(gpucheck.importlib.util, "find_spec", lambda name: None)
    plan = Plan("python3", {}, tmp_path, tmp_path / "run", "cuda", ())
    step = gpucheck.step_pytest(plan, Budget(480.0))
    assert not step.ok and "pytest is not installed" in step.note
    assert "did not run" in (tmp_path / "pytest-cuda.txt").read_text()


def test_out_must_be_empty(tmp_path: Path, capsys) -> None:
    """gpu-check refuses an --out that already holds files (they would count)."""
    (tmp_path / "old.txt").write_text("x")
    assert cli.main(["gpu-check", "--out", str(tmp_path)]) == 2
    assert "must be an empty or new folder" in capsys.readouterr().err


# --- the Makefile --------------------------------------------------------------------------

def _make_n(*args: str) -> str:
    env = {k: v for k, v in os.environ.items()  # as from a shell, even under `make test`
           if k not in ("OUT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT,
                            capture_output=True, text=True,
                            env=env, check=True)
    return result.stdout


def test_make_gpu_check_runs_gpucheck_under_the_images_python() -> None:
    """gpu-check: python3 (not .venv) runs the whole check into $OUT within 480 s, and never
    installs from the network even when .venv is out of date."""
    text = _make_n("-W", "pyproject.toml", "gpu-check", "OUT=/tmp/evidence")
    assert text.strip() == 'python3 -m harness gpu-check --out "/tmp/evidence" --budget-s 480'


def test_make_gpu_wheels_runs_gpucheck_wheels_in_the_venv() -> None:
    """gpu-wheels: the project's venv runs the download and the check."""
    assert _make_n("gpu-wheels").strip().splitlines()[-1] == (
        ".venv/bin/python -m harness gpu-wheels")


def test_gpu_wheels_folder_is_ignored() -> None:
    """.gpu-wheels/ never gets committed (it is carried to the GPU machine instead)."""
    result = subprocess.run(["git", "check-ignore", "-q", ".gpu-wheels/x.whl"], cwd=ROOT,
                            check=False)
    assert result.returncode == 0

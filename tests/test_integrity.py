"""Numbers that cannot lie (issue 12): each item is reproduced by its command, with the exit
code and the files asserted. Run directories and resume (1-5), compare (6-8), inputs and
outputs (9-14), the agreement check's blind spots (15-17), noise the harness sees (18)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from harness.check import CheckRow, probes, summary, tile_lengths
from harness.results import noise_warnings
from harness.store import RunStore, read_rows, scan_rows
from tests.conftest import ROOT, run_harness
from tests.test_compare import noisy
from tests.test_compare import row as make_row
from tests.test_compare_cli import write_run

FAST = ["sweep=smoke", "variants=[naive]", "seq_lens=[16,32]", "modes=[fwd]",
        "causal=[false]", "min_run_time=0.01", "min_samples=1", "memory=false", "heads=2",
        "head_dim=16"]
BAD = "extra_variants=[tests.bad_variants.{}]"


def sweep(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """python -m harness sweep FAST ARGS."""
    return run_harness(["sweep", *FAST, *args], env)


def one_run(parent: Path) -> Path:
    """The single run directory below ``parent``."""
    (manifest,) = parent.glob("*/manifest.json")
    return manifest.parent


# 1. Run directories are exclusive; a directory being written is locked.
def test_two_sweeps_in_the_same_second_get_two_run_directories(harness_env, tmp_path) -> None:
    """Started together with one results_dir: both exit 0, each run whole in its own dir."""
    cmd = [sys.executable, "-m", "harness", "sweep", *FAST, f"results_dir={tmp_path}"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=harness_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    runs = sorted(p.parent for p in tmp_path.glob("*/manifest.json"))
    assert len(runs) == 2
    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        keys = [r.key for r in read_rows(run)]
        assert manifest["rows"] == manifest["cases_total"] == len(set(keys)) == len(keys) == 2


def test_a_second_writer_is_refused_naming_the_holder(harness_env, tmp_path) -> None:
    """resume= of a directory another sweep is writing: exit 2 naming its pid."""
    out = tmp_path / "run"
    # 5 cases of 1.5 s: the first writer is still writing when the second has started, even
    # on a loaded host (at 0.5 s a case it once finished first there)
    slow = [*FAST, "seq_lens=[16,32,64,128,256]", "min_run_time=1.5", f"run_dir={out}"]
    first = subprocess.Popen([sys.executable, "-m", "harness", "sweep", *slow], cwd=ROOT,
                             env=harness_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "rows.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = sweep(harness_env, "seq_lens=[16,32,64,128,256]", "min_run_time=1.5",
                   f"resume={out}")
    first.wait(timeout=300)
    assert second.returncode == 2 and f"being written by pid {first.pid}" in second.stderr
    assert first.returncode == 0
    keys = [r.key for r in read_rows(out)]
    assert len(keys) == len(set(keys)) == 5


def test_run_dir_names_a_new_run_only(harness_env, tmp_path) -> None:
    """run_dir= of a directory holding files: exit 2 before any work."""
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    done = sweep(harness_env, f"run_dir={tmp_path / 'x'}")
    assert done.returncode == 2 and "not an empty directory" in done.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["notes.txt"]


# 2. resume= refuses another machine, other settings, another grid (unless extend=true).
def test_resume_refuses_other_machine_and_settings(harness_env, tmp_path) -> None:
    """Other device model, min_samples or seq_lens: exit 2 naming the key; extend=true adds
    cases and records it; the manifest's config is never silently rewritten."""
    out = tmp_path / "run"
    assert sweep(harness_env, f"run_dir={out}").returncode == 0
    manifest_path = out / "manifest.json"
    before = manifest_path.read_text()
    done = sweep(harness_env, f"resume={out}", "min_samples=3")
    assert done.returncode == 2 and "min_samples: 1 there, 3 now" in done.stderr
    done = sweep(harness_env, f"resume={out}", "seq_lens=[16,32,64]")
    assert done.returncode == 2 and "extend=true" in done.stderr and "seq_lens" in done.stderr
    assert manifest_path.read_text() == before
    manifest = json.loads(before)
    manifest["fingerprint"]["hard"]["device_model"] = "Other CPU"
    manifest_path.write_text(json.dumps(manifest))
    done = sweep(harness_env, f"resume={out}")
    assert done.returncode == 2 and "device_model: 'Other CPU' there" in done.stderr
    manifest_path.write_text(before)
    done = sweep(harness_env, f"resume={out}", "seq_lens=[16,32,64]", "extend=true")
    assert done.returncode == 0, done.stderr
    after = json.loads(manifest_path.read_text())
    assert after["extensions"][0]["changed"]["seq_lens"] == {"was": [16, 32], "now": [16, 32, 64]}
    assert len(read_rows(out)) == 3


# 3. resume= only of an existing run directory.
def test_resume_of_nothing_or_of_a_folder_of_runs_is_refused(harness_env, tmp_path) -> None:
    """A path that does not exist, or a folder holding runs: exit 2, nothing written."""
    done = sweep(harness_env, f"resume={tmp_path / 'absent'}")
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert not (tmp_path / "absent").exists()
    assert sweep(harness_env, f"results_dir={tmp_path / 'runs'}").returncode == 0
    done = sweep(harness_env, f"resume={tmp_path / 'runs'}")
    assert done.returncode == 2 and "a folder of runs" in done.stderr
    assert not (tmp_path / "runs" / "rows.jsonl").exists()


# 4. Only a line that does not parse is torn, and dropping one is reported.
def test_a_complete_last_row_without_newline_is_kept(tmp_path: Path, capsys) -> None:
    """Kept by readers and completed (never truncated) by a writer reopening the store."""
    rows = [make_row(f"k{i}", noisy(10, seed=i)) for i in range(2)]
    run = write_run(tmp_path / "r", rows)
    text = (run / "rows.jsonl").read_text()
    (run / "rows.jsonl").write_text(text.rstrip("\n"))
    assert len(read_rows(run)) == 2 and scan_rows(run).torn == ""
    RunStore.open(run)
    assert (run / "rows.jsonl").read_text() == text
    assert capsys.readouterr().err == ""


def test_a_torn_last_line_is_dropped_and_reported(harness_env, tmp_path, capsys) -> None:
    """Reopening drops it with a warning; compare of a torn side exits 3 naming it."""
    base = write_run(tmp_path / "b", [make_row("k", noisy(10))])
    new = write_run(tmp_path / "n", [make_row("k", noisy(10, seed=1))])
    with (new / "rows.jsonl").open("a") as f:
        f.write('{"key": "half a ro')
    done = run_harness(["compare", str(base), str(new)], harness_env)
    assert done.returncode == 3 and "torn last line" in done.stdout, done.stdout
    RunStore.open(new)
    assert "dropped a torn last line" in capsys.readouterr().err
    assert len(read_rows(new)) == 1


# 5. merge never replaces a run's manifest.
def test_merge_into_an_existing_run_is_refused(harness_env, tmp_path) -> None:
    """merge TARGET SOURCE with a run at TARGET: exit 2, its manifest untouched."""
    target = write_run(tmp_path / "t", [make_row("a", noisy(10))])
    source = write_run(tmp_path / "s", [make_row("b", noisy(10))])
    before = (target / "manifest.json").read_text()
    done = run_harness(["merge", str(target), str(source)], harness_env)
    assert done.returncode == 2 and "not empty" in done.stderr
    assert (target / "manifest.json").read_text() == before


# 6-7. compare never passes what it could not judge.
def test_compare_with_an_interrupted_side_is_not_a_pass(harness_env, tmp_path) -> None:
    """An interrupted new side (9 of 24 cases): exit 3 with the reason; --allow-missing: 0."""
    base = write_run(tmp_path / "b", [make_row("k", noisy(10))])
    new = write_run(tmp_path / "n", [make_row("k", noisy(10, seed=1))])
    manifest = json.loads((new / "manifest.json").read_text())
    manifest.update(status="interrupted", cases_total=24)
    (new / "manifest.json").write_text(json.dumps(manifest))
    done = run_harness(["compare", str(base), str(new)], harness_env)
    assert done.returncode == 3 and "interrupted" in done.stdout and "1 of 24" in done.stdout
    done = run_harness(["compare", str(base), str(new), "--allow-missing"], harness_env)
    assert done.returncode == 0, done.stdout


def test_compare_without_a_manifest_is_refused(harness_env, tmp_path) -> None:
    """No manifest.json: exit 2 'manifest missing'; --allow-no-manifest reads it."""
    base = write_run(tmp_path / "b", [make_row("k", noisy(10))])
    new = write_run(tmp_path / "n", [make_row("k", noisy(10, seed=1))])
    (new / "manifest.json").unlink()
    done = run_harness(["compare", str(base), str(new)], harness_env)
    assert done.returncode == 2 and "manifest missing" in done.stderr
    done = run_harness(["compare", str(base), str(new), "--allow-no-manifest"], harness_env)
    assert done.returncode == 0, done.stdout


# 8. Write errors and internal errors exit 2 in one line; only a regression exits 1.
def test_write_errors_exit_2_naming_the_path(harness_env, tmp_path) -> None:
    """compare --json under a file, report --out under a file, results_dir a file: exit 2."""
    base = write_run(tmp_path / "b", [make_row("k", noisy(10))])
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = run_harness(["compare", str(base), str(base), "--json", str(blocker / "c.json")],
                       harness_env)
    assert done.returncode == 2 and str(blocker) in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = run_harness(["report", str(ROOT / "tests/fixtures/report_run"), "--out",
                        str(blocker / "r")], harness_env)
    assert done.returncode == 2 and str(blocker) in done.stderr, done.stderr
    done = sweep(harness_env, f"results_dir={blocker}")
    assert done.returncode == 2 and "is a file" in done.stderr


# 9. Names built from data never leave the output directory.
def test_report_sanitises_names_from_rows(harness_env, tmp_path) -> None:
    """device='cpu/../../../X' in a row: every figure lands inside --out."""
    source = ROOT / "tests/fixtures/report_run"
    rows = [replace(r, device="cpu/../../../X") for r in read_rows(source)]
    run = write_run(tmp_path / "run", rows)
    done = run_harness(["report", str(run), "--out", str(tmp_path / "out")], harness_env)
    assert done.returncode == 0, done.stderr
    written = {p for p in tmp_path.rglob("*") if p.suffix in (".png", ".svg")}
    assert written and all((tmp_path / "out" / "figures") in p.parents for p in written)
    assert not any(".." in p.name or "/" in p.name for p in written)


# 10. A variant module that raises at import names itself.
def test_variant_raising_at_import_is_exit_2(harness_env) -> None:
    """check with such a module: exit 2 naming the module and the exception."""
    done = run_harness(["check", BAD.format("raising_at_import"),
                        "variants=[naive]", "dtypes=[fp32]"], harness_env)
    assert done.returncode == 2
    assert "tests.bad_variants.raising_at_import" in done.stderr
    assert "RuntimeError" in done.stderr and "Traceback" not in done.stderr


# 11. check and measure run variants in a supervised worker.
def test_a_crashing_variant_is_one_row_in_check_and_measure(harness_env) -> None:
    """A segfault: check prints the table with the others' results and exits 1; measure
    prints its row as crashed."""
    extra = "extra_variants=[tests.bad_variants.segfaulting]"
    done = run_harness(["check", extra, "variants=[segfaulting,naive]", "dtypes=[fp32]",
                        "causal=[false]", "timeout_s=60"], harness_env)
    assert done.returncode == 1, done.stderr
    assert "CRASHED segfaulting" in done.stdout and "SIGSEGV" in done.stdout
    assert "naive" in done.stdout and "agree" in done.stdout
    done = run_harness(["measure", extra, "variants=[segfaulting,naive]", "seq_lens=[16]",
                        "min_run_time=0.01", "timeout_s=60"], harness_env)
    assert done.returncode == 0 and "crashed" in done.stdout and "ok" in done.stdout


# 12. Output shape and dtype are validated on every call.
def test_wrong_output_shape_is_an_error_even_unchecked(harness_env, tmp_path) -> None:
    """check=false: the row is 'error' naming the shape, never 'ok'."""
    out = tmp_path / "run"
    done = sweep(harness_env, BAD.format("wrong_shape"), "variants=[wrong_shape]",
                 "check=false", f"run_dir={out}")
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert {r.status for r in rows} == {"error"}
    assert "returned (1, 2, 16, 8)" in rows[0].reason and "expected (1, 2, 16, 16)" in \
        rows[0].reason


# 13. Strict JSON everywhere, old files still read.
def test_nan_is_written_as_null_and_read_back(tmp_path: Path) -> None:
    """rows.jsonl and pytest_benchmark.json parse under a strict parser; NaN comes back."""
    from harness.interop import to_pytest_benchmark

    nan_row = make_row("k", noisy(10), check_max_abs=float("nan"), status="mismatch")
    run = write_run(tmp_path / "r", [nan_row])

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    for line in (run / "rows.jsonl").read_text().splitlines():
        assert strict(line)["check_max_abs"] is None
    doc = json.dumps(to_pytest_benchmark([nan_row], {}), allow_nan=False)
    strict(doc)
    back = read_rows(run)[0]
    assert back.check_max_abs != back.check_max_abs  # NaN again
    legacy = write_run(tmp_path / "old", [])
    (legacy / "rows.jsonl").write_text(json.dumps(nan_row.to_dict()) + "\n")  # bare NaN
    assert read_rows(legacy)[0].check_max_abs != read_rows(legacy)[0].check_max_abs


# 14. Unknown keys are errors however they are spelled.
@pytest.mark.parametrize("override", ["+foo=1", "++foo=1", "foo=1", "~foo"])
def test_unknown_keys_are_errors(harness_env, override: str, tmp_path) -> None:
    """Hydra's own suggestion for a typo ('+foo=1') is refused too: exit 2 naming foo."""
    done = sweep(harness_env, override, f"results_dir={tmp_path}")
    assert done.returncode == 2 and "'foo'" in done.stderr and "allowed" in done.stderr
    assert not any(tmp_path.iterdir())


# 15-17. The agreement check.
def test_a_variant_ignoring_scale_fails_check(harness_env) -> None:
    """Explicit scales far from 1/sqrt(D) catch a variant that ignores them."""
    done = run_harness(["check", BAD.format("scale_ignoring"), "variants=[scale_ignoring]",
                        "dtypes=[fp32]", "causal=[false]", "backward=false"], harness_env)
    assert done.returncode == 1 and "scale=0.3" in done.stdout, done.stdout


def test_check_crosses_every_declared_boundary_whatever_its_name() -> None:
    """A Config int named 'span' and a sparse pattern's reach are both probed, square and
    with Nq != Nk both ways."""
    from dataclasses import dataclass

    from variants import get

    @dataclass(frozen=True)
    class Span:
        span: int = 300

    naive = get("naive")
    assert tile_lengths(naive, Span()) == [301, 601]
    shapes = {(p.shape.nq, p.shape.nk) for p in probes(naive, Span())}
    assert {(301, 301), (601, 601), (301, 601), (601, 301)} <= shapes
    import types

    import torch

    from variants.contract import SparseSoftmax

    def band(nq: int, nk: int, causal: bool, device: torch.device) -> torch.Tensor:
        i, j = torch.arange(nq)[:, None], torch.arange(nk)[None, :]
        return (i - j >= 0) & (i - j <= 100)  # (Nq, Nk): a band no Config field names

    @dataclass(frozen=True)
    class Nothing:
        pass

    hidden = types.SimpleNamespace(computes=lambda cfg: SparseSoftmax(band, "band of 100"))
    assert tile_lengths(hidden, Nothing()) == [101, 201]


def test_check_summary_shows_nan() -> None:
    """A NaN error is shown as NaN and the verdict is MISMATCH (pandas' max would skip it)."""
    rows = [CheckRow("v", "fp32", False, "a", "ok", "out", 1e-6, 1e-6, 1e-5),
            CheckRow("v", "fp32", False, "b", "mismatch", "out", float("nan"), float("nan"),
                     1e-5)]
    table = summary(rows)
    assert pd.isna(table["max_abs"][0]) and table["verdict"][0] == "MISMATCH (1)"


# 18. Noise the harness must see.
def test_roof_drift_and_efficiency_above_100_percent_are_flagged(harness_env, tmp_path) -> None:
    """A run's manifest keeps its start and end roofs; drift > 15% and rows above 100% are
    warned about, and compare says so."""
    out = tmp_path / "run"
    assert sweep(harness_env, f"run_dir={out}").returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "math" in manifest["doctor"]["sdpa_backends_can_run"]  # issue 14's doctor summary
    roofs = manifest["roofs"]
    assert [r["when"] for r in roofs] == ["start", "end"] and all(r["gflops"] > 0 for r in roofs)
    assert all("load1" in r.extra for r in read_rows(out))
    manifest = {"roofs": [{"dtype": "fp32", "gflops": 400.0}, {"dtype": "fp32", "gflops": 200.0}]}
    flagged = make_row("k", noisy(10), extra={"flag": "efficiency 166% of a roof ..."})
    warnings = noise_warnings("run", manifest, [flagged])
    assert "drifted between 200 and 400 GFLOP/s" in warnings[0]
    assert "1 rows above 100% efficiency" in warnings[1]
    base = write_run(tmp_path / "b", [make_row("k", noisy(10))])
    new = write_run(tmp_path / "n", [flagged])
    done = run_harness(["compare", str(base), str(new)], harness_env)
    assert "above 100% efficiency" in done.stdout


def test_efficiency_above_roof_is_flagged_in_the_row() -> None:
    """measure's roof step flags efficiency > 100% in the row itself."""
    from harness.measure import _roof

    row = make_row("k", noisy(10))
    case = type("C", (), {"device": "cpu", "dtype": "fp32"})()
    fields = _roof(case, replace(row, gflops=1e9), threads=1)
    assert fields["efficiency"] > 1 and "efficiency" in fields["extra"]["flag"]


def test_fresh_run_directory_names_are_exclusive(tmp_path: Path) -> None:
    """The same base twice (two sweeps in one second): two directories, never one."""
    from harness.rundir import fresh_dir

    base = str(tmp_path / "results" / "2026-12-03_05-00-00")
    first, second = fresh_dir.__wrapped__(base), fresh_dir.__wrapped__(base)
    assert first == base and second == f"{base}_2"
    assert Path(first).is_dir() and Path(second).is_dir()

"""``python -m harness compare`` and ``export``: every exit code, inputs, outputs, interop."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness.__main__ import main
from harness.interop import to_pytest_benchmark
from harness.rows import Row
from harness.store import RunStore
from tests.test_compare import HARD, noisy, row

FP = {"hard": HARD, "soft": {"cpu_model": "Test CPU", "git_commit": "abc"}}


def write_run(path: Path, rows: list[Row], hard: dict | None = None) -> Path:
    """A run directory with these rows and a manifest carrying a fingerprint."""
    store = RunStore.open(path)
    for r in rows:
        store.append(r)
    store.write_manifest({"fingerprint": {**FP, "hard": hard or HARD}, "rows": len(rows)})
    return path


def grid(scale: float = 1.0, seed: int = 0, slow: str = "", peak: float = 10.0) -> list[Row]:
    """sdpa and naive at two N; ``slow`` names a variant made 1.5x slower."""
    rows = []
    for n in (8, 16):
        for name, ms in (("sdpa", 1.0), ("naive", 2.0)):
            f = scale * (1.5 if name == slow else 1.0)
            rows.append(row(f"{name}-{n}", noisy(ms * n * f, seed=seed + n + len(name)),
                            label=name, n=n, peak=peak, roof_gflops=100 / scale))
    return rows


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """main(['compare', ...]) in-process: (exit code, stdout, stderr)."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_exit_0_pass_with_markdown_and_json(tmp_path: Path, capsys) -> None:
    """Same code: exit 0; markdown and JSON are written and agree with the verdicts."""
    a, b = write_run(tmp_path / "a", grid(seed=0)), write_run(tmp_path / "b", grid(seed=7))
    code, out, _ = run(["compare", str(a), str(b), "--markdown", str(tmp_path / "s.md"),
                        "--json", str(tmp_path / "v.json")], capsys)
    assert code == 0 and out.startswith("compare: pass (exit 0): 4 same")
    doc = json.loads((tmp_path / "v.json").read_text())
    assert doc["exit_code"] == 0 and len(doc["verdicts"]) == 4
    assert {v["state"] for v in doc["verdicts"]} == {"same"}
    md = (tmp_path / "s.md").read_text()
    assert md.startswith("### attnbench compare: pass") and "| naive |" in md


def test_exit_1_regression_sorted_by_ratio(tmp_path: Path, capsys) -> None:
    """naive 1.5x slower: exit 1; the markdown lists naive's cases first, marked worse."""
    a = write_run(tmp_path / "a", grid(seed=0))
    b = write_run(tmp_path / "b", grid(seed=7, slow="naive"))
    code, out, _ = run(["compare", str(a), str(b), "--markdown", str(tmp_path / "s.md")], capsys)
    assert code == 1 and "2 worse, 2 same" in out
    table = [ln for ln in (tmp_path / "s.md").read_text().splitlines() if "`" in ln]
    assert all("worse" in ln and "naive" in ln for ln in table[:2])
    ratios = [float(ln.split("|")[2]) for ln in table]
    assert ratios[:2] == sorted(ratios[:2], reverse=True) and min(ratios[:2]) > 1.4


def test_exit_1_memory(tmp_path: Path, capsys) -> None:
    """20% more memory everywhere, times the same: exit 1, and every case is listed with the
    memory column saying worse (not hidden among the 'same')."""
    a = write_run(tmp_path / "a", grid(seed=0))
    b = write_run(tmp_path / "b", grid(seed=7, peak=12.0))
    code, out, _ = run(["compare", str(a), str(b), "--markdown", str(tmp_path / "m.md")], capsys)
    assert code == 1 and out.count("1.200 worse") == 4 and "4 same, 4 memory worse" in out
    md = (tmp_path / "m.md").read_text().split("<details>")[0]
    assert md.count("1.200 worse") == 4


def test_exit_2_not_comparable_then_normalised(tmp_path: Path, capsys) -> None:
    """Another machine: exit 2 naming the key; --across-machines --normalise sdpa: exit 0."""
    a = write_run(tmp_path / "a", grid(seed=0))
    b = write_run(tmp_path / "b", grid(scale=1.7, seed=7), {**HARD, "device_model": "Slow"})
    code, out, _ = run(["compare", str(a), str(b)], capsys)
    assert code == 2 and "device_model: 'Test CPU' vs 'Slow'" in out and "--across-machines" in out
    code, out, _ = run(["compare", str(a), str(b), "--across-machines"], capsys)
    assert code == 1  # raw times from a slower machine read as regressions
    for ref in ("sdpa", "roof"):
        code, out, _ = run(["compare", str(a), str(b), "--across-machines", "--normalise", ref],
                           capsys)
        assert code == 0, out


@pytest.mark.parametrize("problem", ["missing", "empty", "corrupt", "schema", "manifest",
                                     "not-json", "bad-factor", "bad-reference",
                                     "unreachable-alpha"])
def test_exit_2_bad_input_names_the_file(tmp_path: Path, capsys, problem: str) -> None:
    """Every unusable input exits 2 with a message naming the file (or option) and problem."""
    good = write_run(tmp_path / "good", grid())
    bad = tmp_path / "bad"
    args = ["compare", str(good), str(bad)]
    expect = str(bad)
    if problem == "empty":
        write_run(bad, [])
        expect = "no rows"
    elif problem == "corrupt":
        write_run(bad, grid())
        with (bad / "rows.jsonl").open("a") as f:
            f.write("{not json\n")
        expect = f"{bad / 'rows.jsonl'}:5: not valid JSON"
    elif problem == "schema":
        write_run(bad, grid())
        lines = (bad / "rows.jsonl").read_text().replace('"schema": 1', '"schema": 99')
        (bad / "rows.jsonl").write_text(lines)
        expect = "row schema 99 is not supported"
    elif problem == "manifest":
        write_run(bad, grid())
        (bad / "manifest.json").write_text(json.dumps({"schema": 0}))
        expect = f"{bad / 'manifest.json'}: results of schema 0"
    elif problem == "not-json":
        bad = tmp_path / "bad.json"
        bad.write_text("[1, 2]")
        args, expect = ["compare", str(good), str(bad)], "not a pytest-benchmark JSON file"
    elif problem == "bad-factor":
        args, expect = ["compare", str(good), str(good), "--factor", "0.9"], "--factor: must be > 1"
    elif problem == "unreachable-alpha":
        args = ["compare", str(good), str(good), "--min-samples", "6"]
        expect = "--min-samples 6 cannot reach --alpha 0.002"
    elif problem == "bad-reference":
        args, expect = ["compare", str(good), str(good), "--normalise", "flash"], "--normalise:"
    code, _, err = run(args, capsys)
    assert code == 2 and expect in err, err


def test_exit_2_usage_from_argparse(capsys) -> None:
    """A missing positional is argparse's usage error: exit 2."""
    with pytest.raises(SystemExit) as exc:
        main(["compare", "only-one"])
    assert exc.value.code == 2 and "usage: python -m harness compare" in capsys.readouterr().err


def test_exit_3_inconclusive(tmp_path: Path, capsys) -> None:
    """Two samples a side: inconclusive, exit 3, never a silent pass."""
    few = [row("a", [1.0, 1.1])]
    code, out, _ = run(["compare", str(write_run(tmp_path / "a", few)),
                        str(write_run(tmp_path / "b", few))], capsys)
    assert code == 3 and "inconclusive" in out


def test_shards_make_one_side(tmp_path: Path, capsys) -> None:
    """A folder of shards, or shards listed with --new-extra, is one result set."""
    rows = grid(seed=3)
    write_run(tmp_path / "multi" / "0", rows[:2])
    write_run(tmp_path / "multi" / "1", rows[2:])
    base = write_run(tmp_path / "base", grid(seed=0))
    code, out, _ = run(["compare", str(base), str(tmp_path / "multi")], capsys)
    assert code == 0 and "4 same" in out
    code, out, _ = run(["compare", str(base), str(tmp_path / "multi" / "0"), "--new-extra",
                        str(tmp_path / "multi" / "1")], capsys)
    assert code == 0 and "4 same" in out


def test_shards_of_one_side_on_different_machines_are_refused(tmp_path: Path, capsys) -> None:
    """Shards disagreeing on a hard key cannot form one set: exit 2 naming the key."""
    rows = grid()
    write_run(tmp_path / "multi" / "0", rows[:2])
    write_run(tmp_path / "multi" / "1", rows[2:], {**HARD, "torch": "2.12.0"})
    code, _, err = run(["compare", str(tmp_path / "multi"), str(tmp_path / "multi")], capsys)
    assert code == 2 and "disagree on torch" in err


def test_export_round_trip_and_pytest_benchmark_reads_it(tmp_path: Path, capsys) -> None:
    """export writes pytest-benchmark JSON that compare reads back to the same verdicts and
    that pytest-benchmark's own compare command accepts."""
    a = write_run(tmp_path / "a", grid(seed=0))
    b = write_run(tmp_path / "b", grid(seed=7, slow="naive"))
    for d in (a, b):
        assert main(["export", str(d)]) == 0
    capsys.readouterr()
    direct = run(["compare", str(a), str(b), "--json", str(tmp_path / "d.json")], capsys)[0]
    via = run(["compare", str(a / "pytest_benchmark.json"), str(b / "pytest_benchmark.json"),
               "--json", str(tmp_path / "v.json")], capsys)[0]
    assert direct == via == 1
    strip = [{k: v for k, v in d.items() if k != "key"} for d in json.loads(
        (tmp_path / "d.json").read_text())["verdicts"]]
    assert strip == [{k: v for k, v in d.items() if k != "key"} for d in json.loads(
        (tmp_path / "v.json").read_text())["verdicts"]]
    tool = shutil.which("pytest-benchmark", path=str(Path(sys.executable).parent))
    assert tool, "pytest-benchmark's CLI is installed with the stack"
    done = subprocess.run([tool, "compare", str(a / "pytest_benchmark.json"),
                           str(b / "pytest_benchmark.json")], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and "naive[fp32-fwd-full-B1-H1-N16-D8]" in done.stdout, done


def test_export_keeps_failed_rows(tmp_path: Path, capsys) -> None:
    """A case that fails in NEW stays 'now failing' through the pytest-benchmark JSON."""
    a = write_run(tmp_path / "a", grid(seed=0))
    broken = [replace(r, status="oom", times_ms=(), median_ms=None, reason="out of memory")
              if r.key == "naive-16" else r for r in grid(seed=7)]
    b = write_run(tmp_path / "b", broken)
    assert main(["export", str(b)]) == 0
    code, out, _ = run(["compare", str(a), str(b / "pytest_benchmark.json")], capsys)
    assert code == 1 and "now failing" in out and "ok -> oom" in out
    tool = shutil.which("pytest-benchmark", path=str(Path(sys.executable).parent))
    done = subprocess.run([tool, "compare", str(b / "pytest_benchmark.json")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr  # the extra key does not disturb it


def test_foreign_pytest_benchmark_json(tmp_path: Path, capsys) -> None:
    """A file pytest wrote: with raw data it is judged; without, inconclusive (exit 3)."""
    doc = to_pytest_benchmark(grid(seed=0), FP)
    for bench in doc["benchmarks"]:
        del bench["extra_info"]["attnbench_row"]  # as pytest itself would write it
    doc["machine_info"].pop("attnbench_fingerprint")
    (tmp_path / "a.json").write_text(json.dumps(doc))
    code, out, _ = run(["compare", str(tmp_path / "a.json"), str(tmp_path / "a.json")], capsys)
    assert code == 0 and "4 same" in out
    for bench in doc["benchmarks"]:
        del bench["stats"]["data"]
    (tmp_path / "b.json").write_text(json.dumps(doc))
    code, out, _ = run(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")], capsys)
    assert code == 3 and "--benchmark-save-data" in out


def test_confirm_run_filters_a_transient(tmp_path: Path, capsys) -> None:
    """A slowdown that the --confirm run does not show: exit 0, and the table says why."""
    a = write_run(tmp_path / "a", grid(seed=0))
    b = write_run(tmp_path / "b", grid(seed=7, slow="naive"))
    c = write_run(tmp_path / "c", grid(seed=9))
    assert run(["compare", str(a), str(b)], capsys)[0] == 1
    code, out, _ = run(["compare", str(a), str(b), "--confirm", str(c)], capsys)
    assert code == 0 and "not reproduced in" in out and "regressions had to reproduce" in out
    code, out, _ = run(["compare", str(a), str(b), "--confirm", str(b)], capsys)
    assert code == 1


def test_roof_warning_reaches_terminal_markdown_and_json(tmp_path: Path, capsys) -> None:
    """compare of runs from hosts whose measured roofs differ says so in every output."""
    base = write_run(tmp_path / "b", [row("a", noisy(10), roof_gflops=430.0)])
    new = write_run(tmp_path / "n", [row("a", noisy(10, seed=1), roof_gflops=181.0)])
    code = main(["compare", str(base), str(new), "--markdown", str(tmp_path / "c.md"),
                 "--json", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert code == 0 and "warning: measured GEMM roofs differ" in out
    assert "measured GEMM roofs differ" in (tmp_path / "c.md").read_text()
    assert json.loads((tmp_path / "c.json").read_text())["warnings"]

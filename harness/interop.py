"""pytest-benchmark JSON in both directions, so other tools can read our rows and we theirs.

Export: one pytest-benchmark entry per measured row. Its ``stats`` (seconds, computed by
pytest-benchmark's own ``Stats``) come from the row's per-block times, ``stats.data`` holds
those times, and ``extra_info`` carries the whole row; rows without times (failed,
unavailable, skipped) go under a top-level key the other tools ignore. So
``pytest-benchmark compare`` and github-action-benchmark read it and ``harness compare``
reads it back losslessly.

Import: a file written by ``pytest --benchmark-json`` becomes rows keyed by the test's
``fullname``. Without ``--benchmark-save-data`` the file has no raw samples, so such rows can
only be ``inconclusive`` in a comparison. The fingerprint is ours when we wrote the file, or
the few hard keys ``machine_info`` allows (CPU model, Python version) when pytest did.
"""

from __future__ import annotations

import datetime as dt
import platform
from typing import Any

from pytest_benchmark.stats import Stats

from harness.rows import SCHEMA_VERSION, Row, finite
from harness.vocab import MEASURED, Status, describe

FORMAT = "pytest-benchmark"
VERSION = "5.3.1"  # the pytest-benchmark JSON layout we write (pinned in pyproject.toml)
EXPORTED = MEASURED  # rows with times; others have nothing for these tools to plot
UNMEASURED = "attnbench_unmeasured"


def is_pytest_benchmark(data: Any) -> bool:
    """True for a decoded pytest-benchmark JSON document."""
    return isinstance(data, dict) and isinstance(data.get("benchmarks"), list) \
        and "machine_info" in data


def case_name(row: Row) -> str:
    """The benchmark name of a row, e.g. ``sdpa[fp32-fwd-causal-B1-H4-N128-D64]``."""
    return describe(row, "id")


def _entry(row: Row) -> dict[str, Any]:
    stats = Stats()
    for ms in row.times_ms:
        stats.update(ms / 1e3)
    data = row.to_json()
    del data["times_ms"]  # they are stats.data
    name = case_name(row)
    return {
        "group": f"{row.device} {row.dtype} {row.mode} {'causal' if row.causal else 'full'}",
        "name": name, "fullname": f"attnbench::{name}", "params": None, "param": None,
        "extra_info": {"attnbench_row": data},
        "options": {"timer": "torch.utils.benchmark (blocked_autorange)", "warmup": True,
                    "min_rounds": row.samples, "disable_gc": False, "max_time": None,
                    "min_time": None, "precision": None, "confidence": None},
        "stats": {**stats.as_dict(), "iterations": max(row.number_per_run, 1),
                  "data": [ms / 1e3 for ms in row.times_ms]},
    }


def to_pytest_benchmark(rows: list[Row], fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A pytest-benchmark JSON document of the measured rows (with their block times); strict
    JSON once dumped with ``allow_nan=False`` (non-finite values are null)."""
    soft, hard = fingerprint.get("soft", {}), fingerprint.get("hard", {})
    machine = {
        "node": platform.node(), "processor": platform.processor(),
        "machine": platform.machine(), "python_version": hard.get("python"),
        "python_implementation": platform.python_implementation(),
        "system": platform.system(), "release": platform.release(),
        "cpu": {"brand_raw": soft.get("cpu_model"), "count": soft.get("cpu_count")},
        "attnbench_fingerprint": fingerprint,
    }
    commit = {"id": soft.get("git_commit"), "dirty": soft.get("git_dirty"), "project": "attnbench"}
    return finite({
        "machine_info": machine, "commit_info": commit,
        "benchmarks": [_entry(r) for r in rows if r.status in EXPORTED and r.times_ms],
        # rows with no times (failed, unavailable, skipped): pytest-benchmark ignores this key,
        # harness compare reads it, so a case now failing does not read as merely gone
        UNMEASURED: [r.to_json() for r in rows if not (r.status in EXPORTED and r.times_ms)],
        "datetime": dt.datetime.now(dt.UTC).isoformat(), "version": VERSION,
    })


def _foreign_row(bench: dict[str, Any]) -> Row:
    """A row for a benchmark that pytest itself measured (times only, in ms)."""
    stats = bench["stats"]
    data = stats.get("data") or []
    name = bench["name"]
    return Row(
        key=bench.get("fullname") or name, variant=name.split("[")[0], label=name,
        config=bench.get("params") or {}, device="", dtype="", mode="", causal=False,
        b=0, h=0, nq=0, nk=0, d=0, status=Status.OK, schema=SCHEMA_VERSION,
        times_ms=tuple(x * 1e3 for x in data), median_ms=stats["median"] * 1e3,
        iqr_ms=stats.get("iqr", 0.0) * 1e3, samples=len(data),
        number_per_run=stats.get("iterations", 1),
        extra={"source": FORMAT, "rounds": stats.get("rounds"),
               "note": "" if data else "no raw samples (run with --benchmark-save-data)"},
    )


def _row(bench: dict[str, Any]) -> Row:
    ours = (bench.get("extra_info") or {}).get("attnbench_row")
    if ours is None:
        return _foreign_row(bench)
    data = bench["stats"].get("data") or []
    return Row.from_dict({**ours, "times_ms": [x * 1e3 for x in data]})


def rows_from_pytest_benchmark(doc: dict[str, Any]) -> tuple[list[Row], dict[str, Any]]:
    """Rows and a fingerprint ({"hard": ..., "soft": ...}) from a pytest-benchmark document.

    Raises KeyError or ValueError on entries that are not pytest-benchmark's (callers name
    the file).
    """
    machine = doc["machine_info"]
    fingerprint = machine.get("attnbench_fingerprint")
    if fingerprint is None:
        cpu = machine.get("cpu") or {}
        fingerprint = {
            "hard": {"device_model": cpu.get("brand_raw"), "python": machine.get("python_version")},
            "soft": {"node": machine.get("node"), "source": FORMAT,
                     "git_commit": (doc.get("commit_info") or {}).get("id")},
        }
    unmeasured = [Row.from_dict(d) for d in doc.get(UNMEASURED, [])]
    return [_row(b) for b in doc["benchmarks"]] + unmeasured, fingerprint

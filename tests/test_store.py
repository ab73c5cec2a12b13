"""The run directory: durable appends, crash repair, resume keys and schema refusal."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.rows import SCHEMA_VERSION, Row
from harness.store import RunStore, StoreError, iter_status_counts, read_rows


def row(n: int, status: str = "ok") -> Row:
    """A small synthetic row with a distinct key."""
    return Row(key=f"case-{n}", variant="naive", label="naive", config={}, device="cpu",
               dtype="fp32", mode="fwd", causal=False, b=1, h=1, nq=n, nk=n, d=8, status=status,
               times_ms=(1.0, 1.5), median_ms=1.25)


def test_append_and_read_back(tmp_path: Path) -> None:
    """Rows come back equal, in order, and their keys are the done set."""
    store = RunStore.open(tmp_path / "run")
    for n in range(3):
        store.append(row(n))
    assert read_rows(tmp_path / "run") == [row(0), row(1), row(2)]
    assert store.done_keys() == {"case-0", "case-1", "case-2"}


def test_cut_short_last_line_is_dropped_on_reopen(tmp_path: Path) -> None:
    """A kill mid-write leaves a partial line; reopening drops it and appends cleanly."""
    store = RunStore.open(tmp_path)
    store.append(row(1))
    with store.rows_path.open("a") as f:
        f.write(json.dumps(row(2).to_dict())[:40])  # no newline: the write was cut short
    assert read_rows(tmp_path) == [row(1)]
    store = RunStore.open(tmp_path)
    store.append(row(3))
    assert read_rows(tmp_path) == [row(1), row(3)]


def test_corrupt_line_names_file_and_line(tmp_path: Path) -> None:
    """A damaged finished line is an error naming the file and line number."""
    store = RunStore.open(tmp_path)
    store.append(row(1))
    with store.rows_path.open("a") as f:
        f.write("{not json}\n")
    with pytest.raises(StoreError, match=r"rows\.jsonl:2: not valid JSON"):
        RunStore.open(tmp_path)


def test_other_schema_is_refused(tmp_path: Path) -> None:
    """Rows or a manifest of another schema version are refused with a clear message."""
    store = RunStore.open(tmp_path / "a")
    store.write_manifest({"name": "x"})
    assert store.read_manifest()["schema"] == SCHEMA_VERSION
    store.manifest_path.write_text(json.dumps({"schema": SCHEMA_VERSION + 1}))
    with pytest.raises(StoreError, match="schema"):
        RunStore.open(tmp_path / "a")
    other = RunStore.open(tmp_path / "b")
    with other.rows_path.open("a") as f:
        f.write(json.dumps({**row(1).to_dict(), "schema": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(StoreError, match=r"rows\.jsonl:1: row schema"):
        RunStore.open(tmp_path / "b")


def test_missing_rows_file_is_named(tmp_path: Path) -> None:
    """Reading a directory that is not a run names the missing file."""
    with pytest.raises(StoreError, match=r"rows\.jsonl: no such file"):
        read_rows(tmp_path)


def test_status_counts() -> None:
    """Counts per status in first-seen order."""
    rows = [row(1), row(2, "oom"), row(3), row(4, "error")]
    assert list(iter_status_counts(rows)) == [("ok", 2), ("oom", 1), ("error", 1)]


def test_merge_pick_median_keeps_the_middle_replicate(tmp_path: Path) -> None:
    """Three replicates of a key: --pick median keeps the one with the median time."""
    from harness.store import merge_runs

    for i, ms in enumerate((3.0, 1.0, 2.0)):
        store = RunStore.open(tmp_path / f"r{i}")
        store.append(replace(row(1), median_ms=ms))
        store.append(replace(row(10 + i), median_ms=ms))
    written, dropped = merge_runs([tmp_path / f"r{i}" for i in range(3)], tmp_path / "m",
                                  pick="median")
    merged = {r.key: r.median_ms for r in read_rows(tmp_path / "m")}
    assert merged == {"case-1": 2.0, "case-10": 3.0, "case-11": 1.0, "case-12": 2.0}
    assert (written, dropped) == (4, 2)

"""A run directory: rows as JSON lines (the source of truth) plus a run manifest.

``rows.jsonl`` gets one line per finished case, flushed and fsynced at once, so killing the
driver loses at most the case in flight. A line cut short by a kill is the only damage a crash
can do; opening the store again drops it (it was never a finished row). ``manifest.json`` is
replaced atomically (write to a temporary file, then ``os.replace``). A directory written with
another schema version is refused with a message naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.rows import SCHEMA_VERSION, Row

ROWS = "rows.jsonl"
MANIFEST = "manifest.json"


class StoreError(ValueError):
    """A results directory that cannot be used: wrong schema, corrupt or missing files."""


def _repair_tail(path: Path) -> None:
    """Drop a final line without its newline (a write cut short by a kill)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def _parse(path: Path, number: int, line: str) -> Row:
    """One JSON line as a Row; errors name the file and line."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
    try:
        return Row.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{path}:{number}: {exc}") from exc


def read_rows(directory: Path) -> list[Row]:
    """Every finished row of a run directory (a cut-short last line is ignored)."""
    path = Path(directory) / ROWS
    if not path.exists():
        raise StoreError(f"{path}: no such file (is {directory} a run directory?)")
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if line.endswith("\n") and line.strip():
                rows.append(_parse(path, number, line))
    return rows


class RunStore:
    """Append-only rows and an atomically replaced manifest in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.rows_path = self.directory / ROWS
        self.manifest_path = self.directory / MANIFEST

    def validate(self) -> None:
        """Refuse an existing directory of another schema version or with corrupt rows."""
        manifest = self.read_manifest()
        if manifest is not None and manifest.get("schema") != SCHEMA_VERSION:
            raise StoreError(
                f"{self.manifest_path}: results of schema {manifest.get('schema')!r}, this "
                f"attnbench writes schema {SCHEMA_VERSION}; use a new results directory"
            )
        if self.rows_path.exists():
            read_rows(self.directory)

    @classmethod
    def open(cls, directory: Path) -> RunStore:
        """Create or reopen a run directory; refuse another schema version."""
        store = cls(directory)
        store.directory.mkdir(parents=True, exist_ok=True)
        _repair_tail(store.rows_path)
        store.validate()  # every existing row and the manifest, before any work
        return store

    def rows(self) -> list[Row]:
        """All finished rows so far."""
        return read_rows(self.directory) if self.rows_path.exists() else []

    def done_keys(self) -> set[str]:
        """Keys of the cases already recorded (to resume without repeating them)."""
        return {row.key for row in self.rows()}

    def append(self, row: Row) -> None:
        """Append one row and make it durable before returning."""
        line = json.dumps(row.to_dict(), sort_keys=True, allow_nan=True) + "\n"
        with self.rows_path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None before the first write."""
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.manifest_path}: not valid JSON ({exc.msg})") from exc

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the manifest atomically (schema version added)."""
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**manifest, "schema": SCHEMA_VERSION}, indent=2,
                                  sort_keys=True, default=str))
        os.replace(tmp, self.manifest_path)


def iter_status_counts(rows: list[Row]) -> Iterator[tuple[str, int]]:
    """(status, count) pairs in first-seen order."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    yield from counts.items()


def measured_machine(rows: list[Row]) -> dict[str, float]:
    """Soft fingerprint keys measured in the run: median GEMM roof (GFLOP/s) and copy GiB/s."""
    out = {}
    for key in ("roof_gflops", "copy_gib_s"):
        values = sorted(getattr(r, key) for r in rows if getattr(r, key))
        if values:
            out[key] = values[(len(values) - 1) // 2]
    return out


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories at or below the given paths (a multirun's shards are subfolders)."""
    found = []
    for path in map(Path, paths):
        if (path / ROWS).exists():
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.rglob(ROWS)))
    if not found:
        raise StoreError(f"no {ROWS} at or below {[str(p) for p in paths]}")
    return found


def _median_row(rows: list[Row]) -> Row:
    """The row whose median time is the median of the rows' (a robust pick of replicates)."""
    timed = sorted((r for r in rows if r.median_ms is not None), key=lambda r: r.median_ms)
    return timed[(len(timed) - 1) // 2] if timed else rows[0]


def merge_runs(sources: list[Path], target: Path, pick: str = "first") -> tuple[int, int]:
    """Combine shards into one run directory.

    Rows with a key already present (in the target or an earlier source) are dropped with
    ``pick="first"``; with ``pick="median"`` (replicates of one grid: a robust baseline) each
    key keeps the row whose median time is the median of its replicates. Returns (rows
    written, rows dropped). The manifest lists the sources and their manifests, so each
    shard's fingerprint is kept.
    """
    if pick not in ("first", "median"):
        raise StoreError(f"pick: {pick!r} is not allowed; allowed: ['first', 'median']")
    runs = find_runs(sources)  # before anything is created
    store = RunStore.open(target)
    seen = store.done_keys()
    grouped: dict[str, list[Row]] = {}
    manifests = {}
    for run in runs:
        manifests[str(run)] = RunStore(run).read_manifest()
        for row in read_rows(run):
            if row.key not in seen:
                grouped.setdefault(row.key, []).append(row)
    chosen = [_median_row(g) if pick == "median" else g[0] for g in grouped.values()]
    for row in chosen:
        store.append(row)
    total = sum(len(g) for g in grouped.values())
    store.write_manifest({"merged_from": manifests, "pick": pick, "rows": len(seen) + len(chosen),
                          "counts": dict(iter_status_counts(store.rows()))})
    return len(chosen), total - len(chosen)

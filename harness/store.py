"""A run directory: rows as JSON lines (the source of truth) plus a run manifest.

``rows.jsonl`` gets one line per finished case, flushed and fsynced at once, so killing the
driver loses at most the case in flight. A line cut short by a kill is the only damage a crash
can do: only a last line that does not parse is torn; it is dropped, and that is always
reported (a complete last row that merely lacks its newline is kept). Rows are strict JSON:
a non-finite number is written as null, its value kept in ``extra["nonfinite"]``.
``manifest.json`` is replaced atomically (write to a temporary file, then ``os.replace``). A
directory written with another schema version is refused with a message naming the file. A
writer holds an exclusive lock (``.lock``, flock) for as long as it writes; a second writer
is refused naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from harness.rows import SCHEMA_VERSION, Row, finite

ROWS = "rows.jsonl"
MANIFEST = "manifest.json"
LOCK = ".lock"


class StoreError(ValueError):
    """A results directory that cannot be used: wrong schema, corrupt or missing files."""


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


def _repair_tail(path: Path, warn: TextIO | None = None) -> str:
    """Finish a last line that lacks its newline: complete it if it parses, else drop it
    (a write cut short by a kill) and say so. Returns what was dropped, or ""."""
    if not path.exists() or path.stat().st_size == 0:
        return ""
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return ""
        start = data.rfind(b"\n") + 1
        if _parses(data[start:]):
            f.write(b"\n")  # a complete row whose newline was never written
            return ""
        f.truncate(start)
    dropped = (f"{path}: dropped a torn last line ({len(data) - start} bytes, not valid JSON: "
               "a write cut short by a kill)")
    print(f"warning: {dropped}", file=warn or sys.stderr)
    return dropped


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


@dataclass(frozen=True)
class RowsRead:
    """The rows of a rows.jsonl, and the torn last line dropped, if any ("")."""

    rows: list[Row]
    torn: str = ""


def scan_rows(directory: Path) -> RowsRead:
    """Every row of a run directory; only a last line that does not parse is torn."""
    path = Path(directory) / ROWS
    if not path.exists():
        raise StoreError(f"{path}: no such file (is {directory} a run directory?)")
    lines = path.read_text(errors="replace").split("\n")
    unfinished = len(lines) - 1 if lines[-1] else -1  # a last line without its newline
    rows, torn = [], ""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if number - 1 == unfinished and not _parses(line.encode()):
            torn = f"{path}:{number}: a torn last line ({len(line)} bytes) was dropped"
            continue
        rows.append(_parse(path, number, line))
    return RowsRead(rows, torn)


def read_rows(directory: Path) -> list[Row]:
    """Every row of a run directory (a torn last line is left out: scan_rows says so)."""
    return scan_rows(directory).rows


class RunStore:
    """Append-only rows and an atomically replaced manifest in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.rows_path = self.directory / ROWS
        self.manifest_path = self.directory / MANIFEST
        self.dropped = ""  # a torn last line dropped when the store was opened

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
        try:
            store.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{store.directory}: cannot create the run directory "
                             f"({exc.strerror})") from exc
        store.dropped = _repair_tail(store.rows_path)
        store.validate()  # every existing row and the manifest, before any work
        return store

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunStore]:
        """Hold the directory's writer lock; a second writer gets StoreError naming us."""
        path = self.directory / LOCK
        with path.open("a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise StoreError(f"{self.directory}: being written by {holder}; wait for it "
                                 "or use another directory") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            try:
                yield self
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)

    def rows(self) -> list[Row]:
        """All finished rows so far."""
        return read_rows(self.directory) if self.rows_path.exists() else []

    def done_keys(self) -> set[str]:
        """Keys of the cases already recorded (to resume without repeating them)."""
        return {row.key for row in self.rows()}

    def append(self, row: Row) -> None:
        """Append one row and make it durable before returning."""
        line = json.dumps(row.to_json(), sort_keys=True, allow_nan=False) + "\n"
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
        tmp.write_text(json.dumps(finite({**manifest, "schema": SCHEMA_VERSION}), indent=2,
                                  sort_keys=True, default=str, allow_nan=False))
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
    if target.exists() and any(target.iterdir()):
        raise StoreError(f"{target}: not empty; merge writes a new run directory (its "
                         "manifest lists every source's), so give a path that does not exist")
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

"""Result sets: the rows one side of a comparison (or a report) reads, and their fingerprints.

A set is given as paths: run directories, directories holding a multirun's shards (every
``rows.jsonl`` at or below), or pytest-benchmark JSON files. Every problem is a
``StoreError`` naming the file: missing, empty, corrupt, another schema version, shards of
one set that disagree on a hard fingerprint key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.interop import is_pytest_benchmark, rows_from_pytest_benchmark
from harness.rows import SCHEMA_VERSION, Row
from harness.store import StoreError, find_runs, read_rows


@dataclass(frozen=True)
class ResultSet:
    """Rows of one side with the hard and soft fingerprint keys of the runs behind them."""

    name: str
    rows: tuple[Row, ...]
    sources: tuple[str, ...]
    hard: dict[str, Any] = field(default_factory=dict)
    soft: dict[str, Any] = field(default_factory=dict)
    duplicates: int = 0  # rows whose key an earlier shard already had (the first is kept)
    manifests: tuple[dict[str, Any], ...] = ()  # each run's manifest (preset, times, config)


def _fingerprints(manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Fingerprints in a manifest: its own, or each merged shard's."""
    if not manifest:
        return []
    if "fingerprint" in manifest:
        return [manifest["fingerprint"]]
    merged = manifest.get("merged_from") or {}
    return [fp for sub in merged.values() for fp in _fingerprints(sub)]


def _read_manifest(run: Path) -> dict[str, Any] | None:
    path = run / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not valid JSON ({exc.msg})") from exc
    if manifest.get("schema") != SCHEMA_VERSION:
        raise StoreError(f"{path}: results of schema {manifest.get('schema')!r}, this "
                         f"attnbench reads schema {SCHEMA_VERSION}")
    return manifest


def _read_json_file(path: Path) -> tuple[list[Row], list[dict[str, Any]]]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: not a readable JSON file ({exc})") from exc
    if not is_pytest_benchmark(doc):
        raise StoreError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list "
                         "and 'machine_info'); give a run directory or such a file")
    try:
        rows, fingerprint = rows_from_pytest_benchmark(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{path}: malformed pytest-benchmark entry ({exc!r})") from exc
    return rows, [fingerprint]


def _merge_hard(fingerprints: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The hard keys all runs of a set share; disagreeing shards are an error."""
    hard: dict[str, Any] = {}
    for fp in fingerprints:
        for key, value in (fp.get("hard") or {}).items():
            if key in hard and hard[key] != value:
                raise StoreError(f"{name}: its runs disagree on {key} ({hard[key]!r} vs "
                                 f"{value!r}); compare them separately")
            hard[key] = value
    return hard


def _read_one(path: Path) -> tuple[list[Row], list[dict[str, Any]], list[str], list[dict]]:
    """Rows, fingerprints, source names and manifests behind one path."""
    if path.is_file():
        rows, fps = _read_json_file(path)
        return rows, fps, [str(path)], []
    if not path.exists():
        raise StoreError(f"{path}: no such file or directory")
    rows, fps, sources, manifests = [], [], [], []
    for run in find_runs([path]):
        rows.extend(read_rows(run))
        manifest = _read_manifest(run)
        fps.extend(_fingerprints(manifest))
        sources.append(str(run))
        manifests.extend([manifest] if manifest else [])
    return rows, fps, sources, manifests


def load(paths: list[Path], name: str | None = None) -> ResultSet:
    """Read one result set from run directories, shard folders or pytest-benchmark files."""
    name = name or " + ".join(map(str, paths))
    rows: dict[str, Row] = {}
    fingerprints: list[dict[str, Any]] = []
    sources: list[str] = []
    manifests: list[dict[str, Any]] = []
    duplicates = 0
    for path in map(Path, paths):
        found, fps, srcs, mans = _read_one(path)
        manifests.extend(mans)
        if not found:
            raise StoreError(f"{path}: no rows (an empty run: nothing to compare)")
        for row in found:
            duplicates += row.key in rows
            rows.setdefault(row.key, row)
        fingerprints.extend(fps)
        sources.extend(srcs)
    soft = fingerprints[0].get("soft", {}) if fingerprints else {}
    return ResultSet(name, tuple(rows.values()), tuple(sources),
                     _merge_hard(fingerprints, name), soft, duplicates, tuple(manifests))

"""Result sets: the rows one side of a comparison (or a report) reads, and their fingerprints.

A set is given as paths: run directories, directories holding a multirun's shards (every
``rows.jsonl`` at or below), or pytest-benchmark JSON files. Every problem is a
``StoreError`` naming the file: missing, empty, corrupt, another schema version, shards of
one set that disagree on a hard fingerprint key, a run directory without its manifest (unless
allowed). What can be read but is not whole (a torn last line dropped, a run that is still
running, was interrupted or has fewer rows than cases) is listed in ``problems``: compare
must not pass what it could not judge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.interop import is_pytest_benchmark, rows_from_pytest_benchmark
from harness.rows import SCHEMA_VERSION, Row
from harness.store import StoreError, find_runs, scan_rows


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
    problems: tuple[str, ...] = ()  # why the set may be missing cases (torn, interrupted)
    noise: tuple[str, ...] = ()  # measured on a host whose speed drifted (roof, efficiency)


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


DRIFT = 0.15  # roofs of one run further apart than this: the host's speed changed


def noise_warnings(run: str, manifest: dict[str, Any] | None, rows: list[Row]) -> list[str]:
    """Warnings for a run measured while the host's speed drifted: its roofs (start, end,
    and each worker's, per dtype) spread by more than DRIFT, or rows above 100% efficiency."""
    out = []
    roofs: dict[str, list[float]] = {}
    for r in (manifest or {}).get("roofs", []):
        roofs.setdefault(r["dtype"], []).append(r["gflops"])
    for row in rows:
        if row.roof_gflops:
            roofs.setdefault(row.dtype, []).append(row.roof_gflops)
    for dtype, values in sorted(roofs.items()):
        low, high = min(values), max(values)
        if high > low * (1 + DRIFT):
            out.append(f"{run}: the {dtype} GEMM roof drifted between {low:.0f} and "
                       f"{high:.0f} GFLOP/s during the run (the host's speed changed: its "
                       "times and efficiencies mix two hosts' worth of speed)")
    flagged = [r for r in rows if r.extra.get("flag")]
    if flagged:
        out.append(f"{run}: {len(flagged)} rows above 100% efficiency (e.g. "
                   f"{flagged[0].label} N={flagged[0].nq}: {flagged[0].extra['flag']})")
    return out


def completeness(run: Path, manifest: dict[str, Any], rows: int) -> str:
    """Why a run's rows may not be all its cases, or "" (a merged run has no status)."""
    status, total = manifest.get("status"), manifest.get("cases_total")
    if status is not None and status != "complete":
        return f"{run}: the run is {status} (manifest status {status!r}): {rows} of {total} cases"
    if isinstance(total, int) and rows < total:
        return f"{run}: {rows} rows for {total} cases"
    return ""


def _read_run(run: Path, allow_no_manifest: bool) -> tuple[list[Row], dict | None, list[str]]:
    """One run directory's rows, manifest and problems."""
    scan = scan_rows(run)
    manifest = _read_manifest(run)
    if manifest is None and not allow_no_manifest:
        raise StoreError(f"{run}: manifest missing ({run / 'manifest.json'}): nothing says "
                         "which machine, software or settings made these rows "
                         "(--allow-no-manifest reads them anyway)")
    problems = [scan.torn] if scan.torn else []
    if manifest is not None:
        problems.append(completeness(run, manifest, len(scan.rows)))
    return scan.rows, manifest, [p for p in problems if p]


def _noise(path: Path, rows: list[Row], manifests: list[dict[str, Any]]) -> list[str]:
    """Noise warnings of the runs behind a path."""
    if not manifests:
        return noise_warnings(str(path), None, rows)
    return [w for m in manifests for w in noise_warnings(str(path), m, rows)]


def _read_one(path: Path, allow_no_manifest: bool) -> tuple[list, list, list, list, list]:
    """Rows, fingerprints, source names, manifests and problems behind one path."""
    if path.is_file():
        rows, fps = _read_json_file(path)
        return rows, fps, [str(path)], [], []
    if not path.exists():
        raise StoreError(f"{path}: no such file or directory")
    rows, fps, sources, manifests, problems = [], [], [], [], []
    for run in find_runs([path]):
        found, manifest, trouble = _read_run(run, allow_no_manifest)
        rows.extend(found)
        fps.extend(_fingerprints(manifest))
        sources.append(str(run))
        manifests.extend([manifest] if manifest else [])
        problems.extend(trouble)
    return rows, fps, sources, manifests, problems


def load(paths: list[Path], name: str | None = None,
         allow_no_manifest: bool = False) -> ResultSet:
    """Read one result set from run directories, shard folders or pytest-benchmark files."""
    name = name or " + ".join(map(str, paths))
    rows: dict[str, Row] = {}
    fingerprints: list[dict[str, Any]] = []
    sources: list[str] = []
    manifests: list[dict[str, Any]] = []
    problems: list[str] = []
    noise: list[str] = []
    duplicates = 0
    for path in map(Path, paths):
        found, fps, srcs, mans, trouble = _read_one(path, allow_no_manifest)
        manifests.extend(mans)
        problems.extend(trouble)
        noise.extend(_noise(path, found, mans))
        if not found:
            raise StoreError(f"{path}: no rows (an empty run: nothing to compare)")
        for row in found:
            duplicates += row.key in rows
            rows.setdefault(row.key, row)
        fingerprints.extend(fps)
        sources.extend(srcs)
    soft = fingerprints[0].get("soft", {}) if fingerprints else {}
    return ResultSet(name, tuple(rows.values()), tuple(sources),
                     _merge_hard(fingerprints, name), soft, duplicates, tuple(manifests),
                     tuple(problems), tuple(dict.fromkeys(noise)))

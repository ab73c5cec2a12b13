"""Packing what a GPU check brings back into ``--out`` within the limits of the machine that
lends the GPU: at most 8 files, 16 MiB each, 2 folders deep (docs/gpu.md). Logs keep their
tail, data files are gzipped if too big, archives are dropped first; each change is said.
"""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MIB = 2**20


@dataclass(frozen=True)
class Limits:
    """What may come back from the GPU machine: files, bytes per file, folder depth."""

    max_files: int = 8
    max_bytes: int = 16 * MIB
    max_depth: int = 2


@dataclass(frozen=True)
class Artifact:
    """One file to bring back, by priority: ``log`` keeps its tail when too big, ``data`` is
    gzipped (else dropped), ``archive`` is dropped."""

    name: str
    source: Path | None
    kind: str = "data"


def clean_log(data: bytes) -> bytes:
    """A captured log as a terminal would show it: of each line's carriage-return rewrites
    (progress bars) only the last is kept."""
    lines = data.split(b"\n")
    return b"\n".join(line.rstrip(b"\r").rsplit(b"\r", 1)[-1] for line in lines)


def tail(data: bytes, limit: int) -> bytes:
    """``data`` cut from the head to at most ``limit`` bytes (at a line start where one is
    near), saying so in its first line."""
    if len(data) <= limit:
        return data
    width = len(str(len(data)))  # the note has one length whatever number it holds
    note_len = len(f"[gpu-check: the first {0:>{width}} bytes were cut; the tail is kept]\n")
    if limit <= note_len:
        return data[len(data) - limit:]
    start = len(data) - (limit - note_len)
    newline = data.find(b"\n", start, start + 4096)
    start = newline + 1 if newline != -1 else start
    note = f"[gpu-check: the first {start:>{width}} bytes were cut; the tail is kept]\n"
    return note.encode() + data[start:]


def _place(a: Artifact, out: Path, limits: Limits) -> str:
    """Write one artifact into ``out``; return what was changed or dropped ('' if none)."""
    data = a.source.read_bytes()
    if a.kind == "log":
        data = clean_log(data)
        cut = tail(data, limits.max_bytes)
        (out / a.name).write_bytes(cut)
        return (f"{a.name}: cut from the head to its last {len(cut)} bytes of {len(data)}"
                if len(cut) < len(data) else "")
    if len(data) <= limits.max_bytes:
        (out / a.name).write_bytes(data)
        return ""
    packed = gzip.compress(data) if a.kind == "data" else b""
    if packed and len(packed) <= limits.max_bytes:
        (out / f"{a.name}.gz").write_bytes(packed)
        return f"{a.name}: {len(data) / MIB:.1f} MiB, brought back gzipped as {a.name}.gz"
    return f"{a.name}: dropped, {len(data) / MIB:.1f} MiB is over {limits.max_bytes / MIB:g} MiB"


def pack(artifacts: Sequence[Artifact], out: Path, limits: Limits = Limits()) -> list[str]:
    """Write the artifacts flat into ``out``, highest priority first, leaving one of the
    ``max_files`` for summary.md; return a note for each one cut, gzipped, dropped or
    missing."""
    notes: list[str] = []
    slots = limits.max_files - 1
    for a in artifacts:
        if a.source is None or not a.source.is_file():
            notes.append(f"{a.name}: not written (its step did not produce it)")
            continue
        if slots <= 0:
            notes.append(f"{a.name}: dropped, only {limits.max_files} files come back")
            continue
        note = _place(a, out, limits)
        if not note.startswith(f"{a.name}: dropped"):
            slots -= 1
        if note:
            notes.append(note)
    return notes


def check_out(out: Path, limits: Limits = Limits()) -> list[str]:
    """What in ``out`` breaks the limits (empty: it all comes back)."""
    files = [p for p in out.rglob("*") if not p.is_dir()]
    problems = [f"{len(files)} files: more than {limits.max_files}"] * (
        len(files) > limits.max_files)
    for p in files:
        rel = p.relative_to(out)
        if not p.is_file() or p.is_symlink():
            problems.append(f"{rel}: not a plain file")
        elif p.stat().st_size > limits.max_bytes:
            problems.append(f"{rel}: {p.stat().st_size} bytes, over {limits.max_bytes}")
        if len(rel.parts) - 1 > limits.max_depth:
            problems.append(f"{rel}: more than {limits.max_depth} folders deep")
    return problems


def tar_figures(figures: Path, dest: Path) -> Path | None:
    """The report's PNGs as one tar.gz (None if there are none)."""
    pngs = sorted(figures.rglob("*.png")) if figures.is_dir() else []
    if not pngs:
        return None
    with tarfile.open(dest, "w:gz") as tar:
        for png in pngs:
            tar.add(png, arcname=str(Path("figures") / png.relative_to(figures)))
    return dest

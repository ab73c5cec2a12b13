"""Which directory a sweep writes: an existing run to resume, a named new one, or a fresh
``results_dir/<date>_<time>`` that no other process can share.

Hydra asks for the run directory (``hydra.run.dir``) through the ``attnbench_run_dir``
resolver. A fresh name is created here with an exclusive ``mkdir``: two sweeps started in the
same second get ``..._05-00-00`` and ``..._05-00-00_2``. The answer is remembered for the
process, since Hydra resolves the setting more than once. ``check_resume`` and
``check_new_run_dir`` validate before any work.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from harness.store import MANIFEST, ROWS, RunStore, StoreError, find_runs

#: resume may differ from the run's own config in these (what is attempted, where written)
FREE_KEYS = frozenset({"resume", "run_dir", "results_dir", "paced", "extend", "force",
                       "memory_margin", "timeout_s", "budget_s"})
#: ... and in these with extend=true (the grid's axes: new cases, none measured differently)
GRID_KEYS = frozenset({"preset", "variants", "exclude", "extra_variants", "dtypes", "modes",
                       "causal", "compile", "batch_sizes", "seq_lens", "heads", "head_dim",
                       "head_dims", "kv_heads", "decode_tokens", "decode_contexts",
                       "v_head_dim", "ragged", "ragged_forms"})


@functools.cache
def fresh_dir(base: str) -> str:
    """``base`` created now by this process, or ``base_2``, ``base_3``, ... if it exists."""
    for n in range(1, 1000):
        path = Path(base if n == 1 else f"{base}_{n}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return str(path)
    raise StoreError(f"{base}: 999 run directories of that name already exist")


def run_dir(resume: str, named: str, default: str) -> str:
    """The ``attnbench_run_dir`` resolver: resume, else the named run_dir, else fresh."""
    return resume or named or fresh_dir(default)


def check_results_dir(path: Path) -> None:
    """A results_dir must be a directory we can create and write in."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise StoreError(f"results_dir: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise StoreError(f"results_dir: {existing} is not writable")


def check_new_run_dir(path: Path) -> None:
    """run_dir= names a new run: absent, or an empty directory."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StoreError(f"run_dir: {path} exists and is not an empty directory; run_dir "
                         "names a new run (resume= completes an existing one)")
    check_results_dir(path.parent)


def check_resume(path: Path, conf: Any, hard: dict[str, Any]) -> None:
    """resume= must name a run directory made on this machine with the same settings."""
    if not path.is_dir():
        raise StoreError(f"resume: {path} does not exist; resume= completes an existing run "
                         "directory (run_dir= names a new one)")
    if not (path / MANIFEST).exists() and not (path / ROWS).exists():
        try:
            runs = [str(r) for r in find_runs([path])]
        except StoreError:
            runs = []
        what = f"a folder of runs ({', '.join(runs[:3])}); resume one of them" if runs else \
            "not a run directory (no manifest.json, no rows.jsonl)"
        raise StoreError(f"resume: {path} is {what}")
    store = RunStore(path)
    store.validate()
    manifest = store.read_manifest() or {}
    old = (manifest.get("fingerprint") or {}).get("hard") or {}
    machine = [f"{k}: {old[k]!r} there, {hard.get(k)!r} here" for k in sorted(old)
               if old[k] != hard.get(k)]
    if machine:
        raise StoreError(f"resume: {path} was measured elsewhere ({'; '.join(machine)}); "
                         "rows of two machines or library versions would be mixed: start "
                         "a new run")
    _check_settings(path, manifest.get("config") or {}, dataclasses.asdict(conf),
                    conf.extend)


def _check_settings(path: Path, old: dict[str, Any], new: dict[str, Any], extend: bool) -> None:
    """Refuse other measurement settings; other grid axes only with extend=true."""
    changed = {k for k in old.keys() & new.keys() - FREE_KEYS if old[k] != new[k]}
    words = "; ".join(f"{k}: {old[k]!r} there, {new[k]!r} now" for k in sorted(changed))
    if changed - GRID_KEYS:
        raise StoreError(f"resume: {path} was measured with other settings ({words}); rows "
                         "measured differently would be mixed: resume with its settings or "
                         "start a new run")
    if changed and not extend:
        raise StoreError(f"resume: {path} has another grid ({words}); extend=true adds "
                         "these cases to it (recorded in its manifest)")


def check_places(conf: Any, device: str, multirun: bool) -> None:
    """Where a sweep job would write: refuse what would mix, lose or misplace rows
    (StoreError naming the place), before any work."""
    from harness.fingerprint import fingerprint

    if multirun and (conf.resume or conf.run_dir):
        raise StoreError("resume / run_dir name one run directory; with -m every job gets "
                         "its own under results_dir")
    if conf.resume:
        check_resume(Path(conf.resume), conf, fingerprint(device).hard)
    elif conf.run_dir:
        check_new_run_dir(Path(conf.run_dir))
    else:
        check_results_dir(Path(conf.results_dir))

"""All GPU evidence in one run on a GPU machine without network (``make gpu-check``, docs/gpu.md).

Under the image's ``python3``: install the wheels of ``.gpu-wheels/`` (harness/gpu_wheels.py)
into a venv over the image's packages, then doctor, the CUDA tests, the ``gpu-check`` sweep
under a time budget and its report, and pack everything into at most 8 files under ``--out``
(harness/gpu_pack.py).

This module imports only the standard library, the store and the bottom layer: it runs where
Hydra, OmegaConf and xformers are not installed yet, and drives the rest as subprocesses.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.gpu_pack import Artifact, Limits, check_out, clean_log, pack, tar_figures
from harness.gpu_wheels import PYTHON, WHEELS_DIR, WHEELS_LIST, check_wheels, read_required
from harness.store import MANIFEST, ROWS, read_rows
from harness.vocab import BUDGET_PREFIX, MEASURED, Status

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


# --- steps ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """What became of one step: its exit code (None: not run, or stopped), time and log."""

    name: str
    rc: int | None
    seconds: float
    log: Path | None
    note: str = ""

    @property
    def ok(self) -> bool:
        """The step ran and exited 0."""
        return self.rc == 0


def run_step(name: str, argv: Sequence[str], log: Path, timeout_s: float,
             env: dict[str, str] | None = None, cwd: Path = ROOT) -> Step:
    """Run ``argv`` in its own process group, stdout and stderr appended to ``log``; past
    ``timeout_s`` the whole group is stopped (``_stop_group``) and rc is None."""
    start = time.monotonic()
    with log.open("ab") as f:
        f.write(f"$ {' '.join(argv)}\n".encode())
        f.flush()
        try:
            proc = subprocess.Popen(list(argv), stdout=f, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=env, start_new_session=True)
        except OSError as exc:
            return Step(name, None, 0.0, log, f"could not start: {exc}")
        try:
            rc, note = proc.wait(timeout=max(timeout_s, 1.0)), ""
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            rc, note = None, f"stopped at its time limit of {timeout_s:.0f} s"
        f.write(f"[{name}: {note or f'exit {rc}'}]\n".encode())
    return Step(name, rc, time.monotonic() - start, log, note)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the process group ``proc`` leads: SIGINT (a sweep then keeps its rows and marks
    its manifest interrupted), SIGTERM 15 s later, SIGKILL 5 s after that."""
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass(frozen=True)
class Budget:
    """The whole run's seconds: how many are left, and each step's share of them."""

    total_s: float
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds left of the total (negative once over)."""
        return self.total_s - self.elapsed()

    def timeout(self, cap_s: float, keep_s: float) -> float:
        """A step's limit: at most ``cap_s``, leaving ``keep_s`` for what comes after (but
        never under STEP_MIN_S: a step too short to start tells nothing)."""
        return max(STEP_MIN_S, min(cap_s, self.left() - keep_s))


#: the least time limit of any step
STEP_MIN_S = 30.0
#: seconds kept for the report and the packing after the sweep
REPORT_RESERVE_S = 90.0
#: the sweep's budget_s leaves this much of its share to the case in flight when the budget is
#: spent, the end roof and the sweep's outputs; past its share the sweep is stopped
SWEEP_SLACK_S = 60.0
#: the least a sweep is given even when earlier steps took longer than planned
SWEEP_MIN_S = 30.0
#: what doctor and pytest leave for the steps after them
KEEP_FOR_SWEEP_S = SWEEP_MIN_S + SWEEP_SLACK_S + REPORT_RESERVE_S
KEEP_FOR_PYTEST_S = KEEP_FOR_SWEEP_S + 60.0


def sweep_budget_s(left_s: float) -> tuple[float, float]:
    """(budget_s for the sweep, its hard time limit) out of the seconds left."""
    limit = max(SWEEP_MIN_S + SWEEP_SLACK_S, left_s - REPORT_RESERVE_S)
    return max(SWEEP_MIN_S, limit - SWEEP_SLACK_S), limit


def verdict(steps: Sequence[Step], budget: Budget) -> str:
    """One line: which steps failed, and the time taken against the budget."""
    failed = [s.name for s in steps if not s.ok]
    took = budget.elapsed()
    within = (f"within its {budget.total_s:.0f} s budget" if took <= budget.total_s else
              f"over its {budget.total_s:.0f} s budget by {took - budget.total_s:.0f} s")
    head = f"FAILED: {', '.join(failed)}" if failed else f"all {len(steps)} steps passed"
    return f"{head}; took {took:.0f} s, {within}"


# --- the environment on the GPU machine ----------------------------------------------------

def step_env(root: Path, site: Path | None = None) -> dict[str, str]:
    """The environment of every step: the checkout (and unpacked wheels) on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(root), *([str(site)] if site else []), env.get("PYTHONPATH", "")]
    env.update(PYTHONPATH=os.pathsep.join(filter(None, paths)), PYTHONUNBUFFERED="1",
               HYDRA_FULL_ERROR="1", MPLBACKEND="Agg", TQDM_MININTERVAL="10")
    return env


def unpack_wheels(wheels: Sequence[Path], site: Path) -> Path:
    """Install wheels without pip: unzip each into ``site`` (a ``.data`` folder's purelib
    and platlib merged in); for an interpreter that has no venv or pip."""
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    for data in site.glob("*.data"):
        for lib in ("purelib", "platlib"):
            if (data / lib).is_dir():
                shutil.copytree(data / lib, site, dirs_exist_ok=True)
        shutil.rmtree(data)
    return site


def prepare(python: str, root: Path, work: Path, log: Path) -> tuple[str, dict[str, str], Step]:
    """(interpreter, environment, step) for the steps: a venv over the image's packages with
    the wheels installed by pip offline; without venv or pip, the wheels unpacked instead."""
    start, folder = time.monotonic(), root / WHEELS_DIR
    wheels, required = sorted(folder.glob("*.whl")), read_required(folder)
    problems = list(check_wheels(folder, required).problems) if required else [
        f"no {WHEELS_DIR}/{WHEELS_LIST}: run `make gpu-wheels` where there is network"]
    notes = [f"wheel set: {p}" for p in problems]
    if sys.version_info[:2] != PYTHON:
        notes.append(f"this is Python {sys.version.split()[0]}; the wheels are for "
                     f"{PYTHON[0]}.{PYTHON[1]}")
    nested = sys.prefix != sys.base_prefix  # a venv over a venv would not see its packages
    if wheels and not nested and _venv(python, work / "venv", wheels, log):
        py, env = str(work / "venv" / "bin" / "python"), step_env(root)
        notes.append(f"venv {work / 'venv'} over {python}'s packages, {len(wheels)} wheels")
    else:
        why = "it is a venv itself" if nested else "venv or pip failed (see below)"
        notes.append(f"{python}: {why}; {len(wheels)} wheels unpacked onto PYTHONPATH instead")
        py, env = python, step_env(root, unpack_wheels(wheels, work / "site"))
    with log.open("a") as f:
        f.write("".join(f"{n}\n" for n in notes))
    rc = 0 if not problems else 1
    return py, env, Step("env", rc, time.monotonic() - start, log, "; ".join(notes))


def _venv(python: str, venv: Path, wheels: Sequence[Path], log: Path) -> bool:
    """Create a venv over ``python``'s packages and pip-install the wheels offline into it."""
    made = run_step("env", [python, "-m", "venv", "--system-site-packages", str(venv)], log,
                    60)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-deps",
           "--disable-pip-version-check", "--no-warn-script-location", *map(str, wheels)]
    return made.ok and run_step("env", pip, log, 120).ok


# --- the steps on the GPU machine ----------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Where one run works and what it runs: the interpreter, environment and folders."""

    python: str
    env: dict[str, str]
    work: Path
    run: Path  # the sweep's run directory
    device: str
    overrides: tuple[str, ...]  # extra sweep overrides


def step_doctor(p: Plan, budget: Budget) -> Step:
    """``python -m harness doctor --device DEVICE`` into doctor.txt."""
    return run_step("doctor", [p.python, "-m", "harness", "doctor", "--device", p.device],
                    p.work / "doctor.txt", budget.timeout(120, KEEP_FOR_PYTEST_S), p.env)


def step_pytest(p: Plan, budget: Budget) -> Step:
    """``pytest -m cuda tests/test_cuda.py`` into pytest-cuda.txt (pytest and
    pytest-benchmark looked for first: the image is assumed to have them)."""
    log = p.work / "pytest-cuda.txt"
    if importlib.util.find_spec("pytest") is None:
        log.write_text("pytest is not installed on this image: the CUDA tests did not run\n")
        return Step("pytest", None, 0.0, log, "pytest is not installed on this image")
    argv = [p.python, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q",
            "-p", "no:cacheprovider"]
    note = ""
    if importlib.util.find_spec("pytest_benchmark") is None:
        argv += ["-o", "addopts=--strict-markers -ra"]  # pyproject's adds --benchmark-disable
        note = "pytest-benchmark is not installed: ran without pyproject's addopts"
    step = run_step("pytest", argv, log, budget.timeout(180, KEEP_FOR_SWEEP_S), p.env)
    return Step(step.name, step.rc, step.seconds, log, "; ".join(filter(None, [note, step.note])))


def step_sweep(p: Plan, budget: Budget) -> Step:
    """The gpu-check preset, with budget_s set to what is left of the run, into sweep.log."""
    budget_s, limit = sweep_budget_s(budget.left())
    argv = [p.python, "-m", "harness", "sweep", "sweep=gpu-check", f"run_dir={p.run}",
            f"budget_s={budget_s:.0f}", *([f"device={p.device}"] if p.device != "cuda" else []),
            *p.overrides]
    step = run_step("sweep", argv, p.work / "sweep.log", limit, p.env)
    return Step(step.name, step.rc, step.seconds, step.log,
                "; ".join(filter(None, [f"budget_s={budget_s:.0f}", step.note])))


def step_report(p: Plan, budget: Budget) -> Step:
    """``python -m harness report RUN`` (report.md and figures), its output into sweep.log."""
    log = p.work / "sweep.log"
    if not (p.run / ROWS).exists():
        return Step("report", None, 0.0, log, "not run: the sweep wrote no rows")
    return run_step("report", [p.python, "-m", "harness", "report", str(p.run)], log,
                    budget.timeout(120, 20), p.env)


def artifacts(p: Plan) -> list[Artifact]:
    """What comes back besides summary.md, in priority order (figures last: dropped first)."""
    figures = tar_figures(p.run / "figures", p.work / "figures.tar.gz")
    return [Artifact("doctor.txt", p.work / "doctor.txt", "log"),
            Artifact("pytest-cuda.txt", p.work / "pytest-cuda.txt", "log"),
            Artifact("sweep.log", p.work / "sweep.log", "log"),
            Artifact(ROWS, p.run / ROWS), Artifact(MANIFEST, p.run / MANIFEST),
            Artifact("report.md", p.run / "report.md"),
            Artifact("figures.tar.gz", figures, "archive")]


# --- the summary ---------------------------------------------------------------------------

def sweep_table(run: Path) -> str:
    """Markdown: the statuses counted (budget skips apart), then median ms by N per setting
    (a status in capitals where there is no time)."""
    if not (run / ROWS).exists():
        return "no rows: the sweep wrote nothing\n"
    rows = read_rows(run)
    counts: dict[str, int] = {}
    cells: dict[tuple, dict[int, str]] = {}
    for r in rows:
        budget = r.status == Status.SKIPPED and (r.reason or "").startswith(BUDGET_PREFIX)
        status = "skipped (budget)" if budget else r.status
        counts[status] = counts.get(status, 0) + 1
        key = (r.label, r.dtype, r.mode, "causal" if r.causal else "full", r.b)
        ok = r.status in MEASURED and r.median_ms is not None
        text = f"{r.median_ms:.3g}" if ok else ("BUDGET" if budget else r.status.upper())
        cells.setdefault(key, {})[r.nq] = text + ("!" if r.status == Status.MISMATCH else "")
    ns = sorted({n for c in cells.values() for n in c})
    lines = [f"{len(rows)} rows: " + ", ".join(f"{n} {s}" for s, n in counts.items()), "",
             "| variant | dtype | mode | mask | B | " + " | ".join(f"N={n}" for n in ns) + " |",
             "|---" * (5 + len(ns)) + "|"]
    for key, by_n in cells.items():
        lines.append("| " + " | ".join(map(str, key)) + " | "
                     + " | ".join(by_n.get(n, "") for n in ns) + " |")
    return "\n".join(lines) + "\n\n(median ms; ! = the oracle disagreed)\n"


def sweep_status(run: Path) -> str:
    """One line from the run's manifest: its status and how many of its cases have rows."""
    try:
        m = json.loads((run / MANIFEST).read_text())
    except (OSError, ValueError):
        return "the sweep wrote no readable manifest.json"
    budget = m.get("budget") or {}
    spent = (f"; its budget_s={budget['budget_s']:g} s skipped {budget['skipped']} cases"
             if budget.get("skipped") else "")
    return (f"manifest: status {m.get('status')}, {m.get('rows')} rows of "
            f"{m.get('cases_total')} cases{spent}")


def text_tail(path: Path | None, lines: int) -> str:
    """The last ``lines`` lines of a log, cleaned of progress-bar rewrites."""
    if path is None or not path.is_file():
        return "(no output)"
    text = clean_log(path.read_bytes()).decode(errors="replace")
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def summary(steps: Sequence[Step], budget: Budget, p: Plan, notes: Sequence[str]) -> str:
    """summary.md: the verdict, each step, what was cut or dropped, the doctor, the tail of
    pytest, the env log's tail and the sweep table."""
    table = "\n".join(f"| {s.name} | {'ok' if s.ok else 'FAILED'} | "
                      f"{'-' if s.rc is None else s.rc} | {s.seconds:.0f} | {s.note} |"
                      for s in steps)
    return "\n".join([
        "# gpu-check", "", f"**{verdict(steps, budget)}**", "",
        "| step | result | exit | seconds | note |", "|---|---|---|---|---|", table, "",
        "## What came back", "", *(f"- {n}" for n in notes or ["everything, unchanged"]), "",
        "## Setup (venv and wheels)", "", "```text", text_tail(p.work / "env.log", 30), "```",
        "", "## Doctor", "", "```text", text_tail(p.work / "doctor.txt", 200), "```", "",
        "## pytest -m cuda (last 40 lines)", "", "```text",
        text_tail(p.work / "pytest-cuda.txt", 40), "```", "",
        "## Sweep (gpu-check preset)", "", sweep_status(p.run), "", sweep_table(p.run)])


# --- the run -------------------------------------------------------------------------------

def run_all(p: Plan, budget: Budget, setup: Step) -> list[Step]:
    """Every step in turn, each run whatever became of the one before; say each as it ends."""
    steps = [setup]
    for step in (step_doctor, step_pytest, step_sweep, step_report):
        steps.append(step(p, budget))
        s = steps[-1]
        print(f"[{budget.elapsed():4.0f} s] {s.name}: {'ok' if s.ok else 'FAILED'} "
              f"({s.seconds:.0f} s) {s.note}", flush=True)
    return steps


def finish(steps: list[Step], budget: Budget, p: Plan, out: Path, limits: Limits) -> int:
    """Pack into ``out``, write summary.md (cut to the limit), check it all comes back."""
    notes = pack(artifacts(p), out, limits)
    text = summary(steps, budget, p, notes).encode()
    if len(text) > limits.max_bytes:
        note = b"\n\n[gpu-check: summary cut to fit]\n"
        text = text[:limits.max_bytes - len(note)] + note
    (out / "summary.md").write_bytes(text)
    problems = check_out(out, limits)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"{verdict(steps, budget)}\nresults: {out.resolve()} (summary.md first); "
          f"work files: {p.work}")
    return 1 if problems or not all(s.ok for s in steps) else 0


def run_check(out: Path, budget_s: float, device: str, overrides: Sequence[str]) -> int:
    """The whole GPU check, into ``out``; exit 1 if any step failed, 2 on bad usage."""
    budget = Budget(budget_s)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: --out {out}: must be an empty or new folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="attnbench-gpu-check-"))
    python, env, setup = prepare(sys.executable, ROOT, work, work / "env.log")
    print(f"[{budget.elapsed():4.0f} s] env: {python} {setup.note}", flush=True)
    plan = Plan(python, env, work, work / "run", device, tuple(overrides))
    return finish(run_all(plan, budget, setup), budget, plan, out, Limits())

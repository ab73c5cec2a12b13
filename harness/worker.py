"""Supervised measurement: cases run in a long-lived worker process, one at a time.

The worker (spawned, so CUDA state never leaks from the driver) loads variants by module path,
measures each case it receives and sends the row back. The supervisor waits at most
``timeout_s`` per case: a worker that dies (segfault, killed by the OS for memory) yields a
``crashed`` row naming the signal or exit code, one that hangs is killed and yields a
``timeout`` row; either way a fresh worker takes the next case. A worker is reused between
cases, not spawned per case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from harness.cases import Case
from harness.measure import MeasureSettings, base_row, measure
from harness.rows import Row
from harness.specs import VariantSpec
from harness.vocab import Status
from variants.contract import load_module


@dataclass(frozen=True)
class Request:
    """A picklable case: the variant by module path and its config as plain data."""

    module: str
    label: str
    config: dict[str, Any]
    fields: dict[str, Any]  # device, dtype, mode, causal, b, h, nq, nk, d, compile
    settings: MeasureSettings


def to_request(case: Case, settings: MeasureSettings) -> Request:
    """Describe a case so that another process can rebuild it."""
    fields = {f.name: getattr(case, f.name) for f in dataclasses.fields(case) if f.name != "spec"}
    return Request(case.spec.variant.module.__name__, case.spec.label, case.config_dict(),
                   fields, settings)


def from_request(request: Request) -> Case:
    """Rebuild the case in the worker (imports the variant module)."""
    variant = load_module(request.module)
    spec = VariantSpec(request.label, variant, variant.config_cls(**request.config))
    return Case(spec, **request.fields)


@dataclass(frozen=True)
class CheckRequest:
    """One (variant spec, dtype, causal) of the agreement matrix, by module path."""

    module: str
    label: str
    config: dict[str, Any]
    dtype: str
    causal: bool
    device: str
    backward: bool
    seed: int


def _check(request: CheckRequest) -> list[dict[str, Any]]:
    """Run one cell of the agreement matrix in the worker; returns its rows as dicts."""
    from harness.check import run_cell

    variant = load_module(request.module)
    spec = VariantSpec(request.label, variant, variant.config_cls(**request.config))
    rows = run_cell(spec, request.dtype, request.causal, device=request.device,
                    backward=request.backward, seed=request.seed)
    return [dataclasses.asdict(r) for r in rows]


def _serve(conn: Connection) -> None:
    """Worker loop: receive requests, send results back, stop on None or Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group
        while True:
            request = conn.recv()
            if request is None:
                return
            if isinstance(request, CheckRequest):
                conn.send(_check(request))
                continue
            row = measure(from_request(request), request.settings)
            conn.send(row.to_dict())


def _death(exitcode: int | None) -> str:
    """A person-readable cause of a worker's death."""
    if exitcode is None:
        return "the worker closed its pipe without exiting"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (often the OS's out-of-memory killer)" if name == "SIGKILL" else ""
        return f"the worker was killed by {name}{hint}"
    return f"the worker exited with code {exitcode}"


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ with ``env`` set, restored afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Supervisor:
    """Runs cases in a reusable worker process with a per-case timeout."""

    def __init__(self, timeout_s: float, env: Mapping[str, str] | None = None) -> None:
        self.timeout_s = timeout_s
        self.env = dict(env or {})  # set in the worker's environment (an allocator, say)
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self.started = 0  # workers started so far (for tests and the manifest)

    def _ensure_worker(self) -> Connection:
        if self._proc is None or not self._proc.is_alive():
            parent, child = self._ctx.Pipe()
            self._proc = self._ctx.Process(target=_serve, args=(child,), daemon=True)
            with _environment(self.env):  # a spawned child copies os.environ at start
                self._proc.start()
            child.close()
            self._conn, self.started = parent, self.started + 1
        return self._conn

    def _discard_worker(self, kill: bool) -> int | None:
        """Stop (or kill) the current worker and return its exit code."""
        proc, self._proc = self._proc, None
        if kill and proc.is_alive():
            proc.kill()
        proc.join(timeout=10)
        if proc.is_alive():  # it did not stop when asked (e.g. mid-case at Ctrl-C)
            proc.kill()
            proc.join()
        self._conn.close()
        return proc.exitcode

    def call(self, request: Any) -> tuple[str, Any]:
        """Send one request to the worker: (Status.OK, its result), or (Status.TIMEOUT or
        Status.CRASHED, the reason) when it hung past the timeout or died."""
        conn = self._ensure_worker()
        conn.send(request)
        if not conn.poll(self.timeout_s):
            self._discard_worker(kill=True)
            return Status.TIMEOUT, f"no result within the per-case timeout of {self.timeout_s:g} s"
        try:
            return Status.OK, conn.recv()
        except (EOFError, ConnectionResetError):
            return Status.CRASHED, _death(self._discard_worker(kill=False))

    def run(self, case: Case, settings: MeasureSettings) -> Row:
        """Measure one case in the worker; crashes and hangs become rows."""
        status, result = self.call(to_request(case, settings))
        if status == Status.OK:
            return Row.from_dict(result)
        return replace(base_row(case), status=status, reason=result)

    def close(self) -> None:
        """Ask the worker to stop, then reap it."""
        if self._proc is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(None)
            self._discard_worker(kill=False)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""``python -m harness ab BASE [HEAD] [options] [-- SWEEP OVERRIDES]``: an A/B run.

Two revisions measured in one job on one host, the way asv's ``continuous`` and tritonbench's
side-a/side-b runs do it: each revision (a commit, tag or branch, materialised as a detached
git worktree under ``.ab-trees/``; HEAD omitted = the working tree as it is) runs the same
sweep from its own tree, under this interpreter and its libraries. Both sweeps are started
paced (``paced=true``: a sweep waits for a line on stdin before each case) and driven case by
case in ABBA order (A B, B A, A B, ...), so a drift in the host's speed hits both sides alike
and only one side computes at a time. Each side keeps its own run directory (rows and
manifest); the comparison uses compare's statistics on raw times and writes the same table,
markdown and JSON, plus, for every flagged case, a command that re-measures just that case on
both revisions. ``--confirm`` re-runs the flagged variants and keeps a regression only if it
shows again. Exit codes are compare's; a variant on one side only is reported (new/gone) and a
changed variant definition is reported, not fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from harness.compare import Comparison, Verdict, compare, confirm
from harness.compare_run import UsageError, emit, gate_of
from harness.compare_tables import flagged
from harness.results import load
from harness.store import StoreError, find_runs
from harness.vocab import PACE_PREFIX as PACE

REPO = Path(__file__).resolve().parent.parent
TREES = REPO / ".ab-trees"  # git-ignored: detached worktrees of the revisions measured
USAGE_ERROR = 2
#: sweep fields that pin one case; a re-measure command sets them all
CASE_FIELDS = ("variants", "device", "dtypes", "modes", "causal", "batch_sizes", "seq_lens",
               "heads", "head_dim", "decode_tokens", "decode_contexts", "kv_heads", "head_dims",
               "v_head_dim", "ragged", "ragged_forms")


class AbError(RuntimeError):
    """An A/B run that cannot go on: a bad revision, or a side that failed; names which."""


@dataclass(frozen=True)
class Side:
    """One revision to measure: where its tree is and what environment its sweep gets."""

    name: str  # "base" or "head"
    ref: str  # as the user gave it ("" = the working tree)
    commit: str | None  # the resolved commit, None for the working tree
    tree: Path
    env: tuple[tuple[str, str], ...] = ()


def git(*args: str) -> str:
    """Run git in the repository; failures raise AbError with git's own words."""
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AbError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def resolve(ref: str) -> str:
    """The commit a ref names; a ref that names none is an error naming it."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except AbError:
        raise AbError(f"revision {ref!r}: not a commit, tag or branch of this repository (a "
                      "shallow clone may lack it: git fetch --unshallow)") from None


def materialise(commit: str) -> Path:
    """A detached worktree of ``commit`` under .ab-trees/ (reused when already there)."""
    tree = TREES / commit[:12]
    if (tree / ".git").exists():
        try:
            if git("-C", str(tree), "rev-parse", "HEAD") == commit:
                return tree
        except AbError:
            pass
        git("worktree", "remove", "--force", str(tree))
    git("worktree", "prune")
    git("worktree", "add", "--detach", "--force", str(tree), commit)
    return tree


def make_side(name: str, ref: str, env: tuple[tuple[str, str], ...]) -> Side:
    """Resolve and materialise one side; an empty ref is the working tree."""
    if not ref:
        return Side(name, "", None, REPO, env)
    commit = resolve(ref)
    return Side(name, ref, commit, materialise(commit), env)


class Paced:
    """One side's paced sweep: started at once, then told to run one case at a time."""

    def __init__(self, side: Side, overrides: list[str], out: Path) -> None:
        self.side, self.count = side, 0
        self.log_path = out / f"{side.name}.log"
        self.log = self.log_path.open("a")
        cmd = [sys.executable, "-m", "harness", "sweep", *overrides,
               f"results_dir={out / side.name}", "paced=true"]
        env = {**os.environ, **dict(side.env), "PYTHONPATH": str(side.tree)}
        self.proc = subprocess.Popen(cmd, cwd=side.tree, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)

    def _expect(self, word: str) -> str:
        """Read the sweep's stdout up to its next pace line, which must start with ``word``."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PACE):
                message = line[len(PACE):].strip()
                if message.startswith(word):
                    return message
            self.log.write(line)
        self.log.flush()
        raise AbError(self.failure(f"stopped before '{word}'"))

    def ready(self) -> int:
        """Wait until the sweep has validated its config; return how many cases it will run."""
        self.count = int(self._expect("ready").split()[1])
        return self.count

    def step(self) -> None:
        """Let the sweep run its next case and wait until that case's row is written."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self._expect("done")

    def finish(self) -> Path:
        """Close stdin, let the sweep write its manifest and summary; return its run dir."""
        out, _ = self.proc.communicate()
        self.log.write(out)
        self.log.close()
        if self.proc.returncode != 0:
            raise AbError(self.failure(f"exited with code {self.proc.returncode}"))
        (run,) = find_runs([self.log_path.parent / self.side.name])
        return run

    def failure(self, what: str) -> str:
        """Why this side failed, with the end of its log."""
        self.log.flush()
        tail = self.log_path.read_text().strip().splitlines()[-8:]
        which = self.side.commit or "the working tree"
        hint = ("; a revision older than harness ab has no paced sweep (paced=...): choose a "
                "newer base") if any("paced" in line for line in tail) else ""
        return (f"{self.side.name} ({which}): the sweep {what}{hint}; its log "
                f"{self.log_path}:\n  " + "\n  ".join(tail))

    def stop(self) -> None:
        """On an error or Ctrl-C: close stdin (the sweep keeps its rows) and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if not self.log.closed:
            self.log.close()


def interleave(sides: list[Side], overrides: list[str], out: Path) -> dict[str, Path]:
    """Run both sides' sweeps case by case in ABBA order; return each side's run directory."""
    out.mkdir(parents=True, exist_ok=True)
    runners = [Paced(side, overrides, out) for side in sides]
    try:
        counts = [r.ready() for r in runners]
        for i in range(max(counts)):
            for r in runners if i % 2 == 0 else runners[::-1]:
                if i < r.count:
                    r.step()
        return {r.side.name: r.finish() for r in runners}
    finally:
        for r in runners:
            r.stop()


def judge(runs: dict[str, Path], gate_args: argparse.Namespace, name: str = "") -> tuple:
    """Compare the head run with the base run on raw times (same host, same job)."""
    base = load([runs["base"]], name=f"base {name}".strip())
    head = load([runs["head"]], name=f"head {name}".strip())
    result = replace(compare(base, head, gate_of(gate_args)), revisions=True)
    return result, base, head


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def case_overrides(v: Verdict) -> list[str]:
    """The sweep overrides that select exactly this verdict's case."""
    k = json.loads(v.key)
    return [f'variants=["{v.variant}"]', f"device={k['device']}", f"dtypes=[{k['dtype']}]",
            f"modes=[{k['mode']}]", f"causal=[{str(k['causal']).lower()}]",
            f"batch_sizes=[{k['b']}]", f"seq_lens=[{k['nq']}]", f"heads={k['h']}",
            f"head_dim={k['d']}",
            *([f"decode_tokens=[{k['new_tokens']}]", f"decode_contexts=[{k['nq']}]"]
              if k.get("new_tokens") else []),
            *([f"kv_heads=[{k['kv_heads']}]"] if k.get("kv_heads") else []),
            *([f"v_head_dim={k['dv']}"] if k.get("dv") else []),
            *([f"ragged=[{k['ragged']}]", f"ragged_forms=[{k['ragged_form']}]"]
              if k.get("ragged") else [])]


def ab_command(sides: list[Side], overrides: list[str]) -> list[str]:
    """The ab command line for these sides and sweep overrides (commits, not moving refs)."""
    cmd = ["python", "-m", "harness", "ab"]
    cmd += [s.commit for s in sides if s.commit]
    if sides[1].commit is None and sides[0].commit is None:
        raise ValueError("at least the base side is a revision")
    for side in sides:
        cmd += [f"--{side.name}-env={k}={v}" for k, v in side.env]
    return [*cmd, "--", *overrides]


def repro_commands(result: Comparison, sides: list[Side], overrides: list[str]) -> dict:
    """For each flagged case, the one-line command that re-measures just it on both sides."""
    kept = [o for o in overrides if _key(o) not in CASE_FIELDS]
    return {v.key: shlex.join(ab_command(sides, [*kept, *case_overrides(v)]))
            for v in result.verdicts if flagged(v) and v.state not in ("new", "gone")}


def flagged_variants(result: Comparison) -> list[str]:
    """Labels of the variants with a time, status or memory regression, in order."""
    return list(dict.fromkeys(v.variant for v in result.verdicts
                              if v.state in ("worse", "now failing") or v.memory_state == "worse"))


def _env(items: list[str], option: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option}: expected KEY=VALUE, got {item!r}")
        pairs.append((key, value))
    return tuple(pairs)


def _measure(args: argparse.Namespace, sides: list[Side], overrides: list[str],
             out: Path) -> tuple:
    """Both sides interleaved, judged, and confirmed on the flagged variants when asked."""
    result, base, head = judge(interleave(sides, overrides, out), args)
    again = flagged_variants(result) if args.confirm else []
    if again:
        print(f"ab: flagged {again}; re-running them to confirm", file=sys.stderr)
        labels = ",".join(f'"{label}"' for label in again)
        narrowed = [*(o for o in overrides if _key(o) != "variants"), f"variants=[{labels}]"]
        second, _, _ = judge(interleave(sides, narrowed, out / "confirm"), args, "(confirm)")
        result = confirm(result, second, str(out / "confirm"))
    return result, base, head


def run_ab(args: argparse.Namespace, overrides: list[str]) -> int:
    """Materialise both revisions, run them interleaved, compare; the exit code. ``args``
    holds ab's options (harness/cli.py), ``overrides`` the sweep's."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = (args.out or Path("results") / "ab" / stamp).resolve()
    try:
        gate_of(args)  # thresholds first: nothing is materialised for a bad option
        if out.exists():
            raise UsageError(f"--out: {out} already exists; give a new directory")
        sides = [make_side("base", args.base, _env(args.base_env, "--base-env")),
                 make_side("head", args.head, _env(args.head_env, "--head-env"))]
        for side in sides:
            print(f"ab: {side.name} = {side.commit or 'the working tree'} ({side.tree})",
                  file=sys.stderr)
        result, base, head = _measure(args, sides, overrides, out)
    except (UsageError, AbError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"\ninterrupted: each side's rows so far are kept under {out}", file=sys.stderr)
        return 130
    args.markdown = args.markdown or out / "compare.md"
    args.json = args.json or out / "compare.json"
    code = emit(args, result, base, head, repro_commands(result, sides, overrides))
    print(f"ab: runs, logs and the comparison in {out}")
    return code

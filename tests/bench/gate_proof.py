"""The regression gate's proofs on this machine: A/A pairs, an injected slowdown, injected
memory, and a (simulated) other machine. ``make gate-proof`` runs it; figures go to stdout.

    python -m tests.bench.gate_proof --runs 10 --out /tmp/gate-proof [--factor 1.3]

Every sweep is the ``smoke`` preset plus the test-only ``injected`` variant
(tests/injected_variants.py); a folder that already holds a finished run is reused. Clean
runs are paired (0-1, 2-3, ...) for A/A; all pairs of clean runs give the distribution of A/A
ratios the CI factor is calibrated on. The "other machine" is this machine with one thread and
its manifest's ``device_model`` renamed, since only one machine class is at hand: it shows how
the gate refuses, and what normalisation makes of a machine that is slower in a non-uniform
way.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from harness.compare import Comparison, Gate, compare, confirm
from harness.results import load

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ["sweep=smoke", "extra_variants=[tests.injected_variants]"]


def sweep(out: Path, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> Path:
    """Run one smoke sweep into out/ (unless one finished there) and return its run directory."""
    done = [p.parent for p in out.glob("*/manifest.json") if '"complete"' in p.read_text()]
    if done:
        return done[0]
    cmd = [sys.executable, "-m", "harness", "sweep", *SWEEP, f"results_dir={out}", *extra]
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, check=True,
                   capture_output=True, text=True)
    (run,) = [p.parent for p in out.glob("*/rows.jsonl")]
    return run


def flagged(c: Comparison) -> dict[str, int]:
    """Variant -> number of its cases flagged as a regression (time, failure or memory)."""
    out: dict[str, int] = {}
    for v in c.verdicts:
        if v.state in ("worse", "now failing") or v.memory_state == "worse":
            out[v.variant] = out.get(v.variant, 0) + 1
    return out


def share(c: Comparison, variant: str, memory: bool = False) -> str:
    """'k/n': cases of the variant that are worse (in time, or in memory)."""
    mine = [v for v in c.verdicts if v.variant == variant]
    hits = [v for v in mine if (v.memory_state if memory else v.state) == "worse"]
    return f"{len(hits)}/{len(mine)}"


def quantiles(runs: list[Path], reference: str | None) -> str:
    """Upper quantiles of |log ratio| over every pair of clean runs, as ratios."""
    sets = [load([r]) for r in runs]
    logs = sorted(abs(math.log(v.ratio)) for a, b in itertools.combinations(sets, 2)
                  for v in compare(a, b, Gate(), reference).verdicts if v.ratio)
    pick = {q: math.exp(logs[min(len(logs) - 1, int(q * len(logs)))]) for q in (.5, .9, .99)}
    return (f"{len(logs)} ratios: p50 {pick[.5]:.3f}, p90 {pick[.9]:.3f}, p99 {pick[.99]:.3f}, "
            f"max {math.exp(logs[-1]):.3f}")


def gated(base: Path, new: Path, again: Path | None, gate: Gate, ref: str | None,
          **kw: bool) -> Comparison:
    """compare() as the CLI does it, confirmed by a second new run when one is given."""
    first = compare(load([base]), load([new]), gate, ref, **kw)
    if again is None:
        return first
    return confirm(first, compare(load([base]), load([again]), gate, ref, **kw), str(again))


def report(clean: list[Path], runs: dict[str, list[Path]], gate: Gate, ref: str) -> None:
    """Print every proof's figures."""
    for r in (None, ref):
        print(f"A/A |ratio| over all pairs of clean runs, normalised by {r}: {quantiles(clean, r)}")
    n = len(clean)
    settings = (("default gate 1.10, raw", Gate(), None, False),
                (f"CI gate {gate.factor}, by {ref}, one run", gate, ref, False),
                (f"CI gate {gate.factor}, by {ref}, confirmed", gate, ref, True))
    for label, g, r, confirmed in settings:
        for i in range(0, n - 1, 2):
            c = gated(clean[i], clean[i + 1], clean[(i + 2) % n] if confirmed else None, g, r)
            print(f"A/A pair {i}-{i + 1} ({label}): {c.counts()} flagged={flagged(c)}")
    base = clean[0]
    for label, (first, second) in runs.items():
        for r, again in ((None, None), (ref, None), (ref, second)):
            c = gated(base, first, again, gate, r)
            what = share(c, "injected", memory=label == "+20% memory")
            print(f"{label} (by {r}, {'confirmed' if again else 'one run'}): injected "
                  f"{'memory ' if label == '+20% memory' else ''}worse {what}; "
                  f"flagged={flagged(c)}")


def other_machine(base: Path, other: Path, gate: Gate, ref: str) -> None:
    """The simulated other machine: refused, then compared on purpose."""
    c = gated(base, other, None, gate, ref)
    print(f"other machine, no flag: exit {c.exit_code()} {c.counts()} ({c.blocked})")
    for r in (None, ref, "roof"):
        c = gated(base, other, None, gate, r, across_machines=True)
        print(f"other machine, --across-machines, by {r}: exit {c.exit_code()} {c.counts()} "
              f"flagged={flagged(c)}")


def main() -> None:
    """Run the sweeps, then print every proof's figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="clean runs (pairs for A/A)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--factor", type=float, default=1.25, help="the CI gate's factor")
    p.add_argument("--reference", default="sdpa")
    args = p.parse_args()
    clean = [sweep(args.out / f"clean{i}") for i in range(args.runs)]
    slow = {"ATTNBENCH_INJECT_SLOWDOWN": "1.5"}
    fat = {"ATTNBENCH_INJECT_MEMORY": "0.2"}
    runs = {"1.5x slowdown": [sweep(args.out / f"slow{i}", slow) for i in range(2)],
            "+20% memory": [sweep(args.out / f"memory{i}", fat) for i in range(2)]}
    other = sweep(args.out / "other", extra=("threads=1",))
    manifest = json.loads((other / "manifest.json").read_text())
    if "simulated" not in manifest["fingerprint"]["hard"]["device_model"]:
        manifest["fingerprint"]["hard"]["device_model"] += " (simulated other machine, 1 thread)"
    (other / "manifest.json").write_text(json.dumps(manifest))
    gate = Gate(factor=args.factor)
    report(clean, runs, gate, args.reference)
    other_machine(clean[0], other, gate, args.reference)


if __name__ == "__main__":
    main()

"""What ``python -m harness compare`` and ``export`` do once their options are parsed
(harness/cli.py): validation, loading both sides, judging, and the output files.

Exit codes of compare: 0 pass, 1 regression (a case ``worse``, ``now failing`` or using more
memory), 2 usage error, unreadable input or not comparable, 3 inconclusive (too few samples,
or no reference to normalise by). A regression outranks "not comparable", which outranks
"inconclusive".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.compare import ROOF, Comparison, Gate, compare, confirm, smallest_p
from harness.compare_tables import markdown, terminal, to_json
from harness.interop import to_pytest_benchmark
from harness.results import ResultSet, load
from harness.store import StoreError

USAGE_ERROR = 2


class UsageError(ValueError):
    """A bad option value; the message names the option and what is allowed."""


def gate_of(args: argparse.Namespace) -> Gate:
    """Validated gate thresholds from the options."""
    if not args.factor > 1:
        raise UsageError(f"--factor: must be > 1 (e.g. 1.10), got {args.factor}")
    if not 0 < args.alpha < 1:
        raise UsageError(f"--alpha: must be in (0, 1), got {args.alpha}")
    if args.min_samples < 2:
        raise UsageError(f"--min-samples: must be >= 2, got {args.min_samples}")
    floor = smallest_p(args.min_samples, args.min_samples)
    if floor >= args.alpha:
        raise UsageError(f"--min-samples {args.min_samples} cannot reach --alpha {args.alpha:g}: "
                         f"even fully separated samples give p = {floor:.2g}; give more "
                         "samples or a larger alpha")
    if args.memory_tolerance < 0 or args.memory_floor_mib < 0:
        raise UsageError("--memory-tolerance and --memory-floor-mib: must be >= 0")
    if not args.error_factor > 1 or not 0 <= args.error_share <= 1:
        raise UsageError(f"--error-factor must be > 1 and --error-share in [0, 1]; got "
                         f"{args.error_factor} and {args.error_share}")
    return Gate(args.factor, args.alpha, args.min_samples, args.memory_tolerance,
                args.memory_floor_mib, args.error_factor, args.error_share)


def check_reference(reference: str | None, sets: list[ResultSet]) -> None:
    """A variant reference must label rows on both sides."""
    if reference is None or reference == ROOF:
        return
    for s in sets:
        labels = sorted({r.label for r in s.rows})
        if reference not in labels:
            raise UsageError(f"--normalise: no rows labelled {reference!r} in {s.name}; "
                             f"allowed: 'roof' or one of {labels}")


def _write(path: Path | None, text: str) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def emit(args: argparse.Namespace, result: Comparison, base: ResultSet, new: ResultSet,
         repro: dict[str, str] | None = None) -> int:
    """Print the comparison, write its markdown and JSON; return its exit code."""
    if result.blocked:
        print("\n".join(terminal(result, base, new).splitlines()[:5]))
        print("not comparable: results from differently fingerprinted machines or software. "
              "--across-machines (with --normalise sdpa or roof) or --across-versions "
              "compares them on purpose.")
    else:
        print(terminal(result, base, new, show_same=args.all, repro=repro))
    _write(args.markdown, markdown(result, base, new, repro))
    _write(args.json, json.dumps(to_json(result, base, new, repro), indent=1, allow_nan=False,
                                 default=str) + "\n")  # to_json has no NaN or infinity
    return result.exit_code()


def run_compare(args: argparse.Namespace) -> int:
    """Load both sides, compare, print and write; return the exit code."""
    try:
        gate = gate_of(args)
        lax = args.allow_no_manifest
        base = load([args.base, *args.base_extra], name=str(args.base), allow_no_manifest=lax)
        new = load([args.new, *args.new_extra], name=str(args.new), allow_no_manifest=lax)
        again = load([args.confirm], allow_no_manifest=lax) if args.confirm else None
        check_reference(args.normalise, [base, new, *([again] if again else [])])
    except (UsageError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return emit(args, _compare(args, gate, base, new, again), base, new)


def _compare(args: argparse.Namespace, gate: Gate, base: ResultSet, new: ResultSet,
             again: ResultSet | None) -> Comparison:
    """compare(), then confirm() against the second run when one was given."""
    def against(side: ResultSet) -> Comparison:
        return compare(base, side, gate, args.normalise, args.across_machines,
                       args.across_versions, args.allow_missing)
    result = against(new)
    return confirm(result, against(again), again.name) if again is not None else result


def run_export(run: Path, out: Path | None) -> int:
    """Write the rows of a result set as pytest-benchmark JSON."""
    try:
        results = load([run], allow_no_manifest=True)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    out = out or run / "pytest_benchmark.json"
    doc = to_pytest_benchmark(list(results.rows), {"hard": results.hard, "soft": results.soft})
    _write(out, json.dumps(doc, indent=1, default=str, allow_nan=False) + "\n")
    print(f"{len(doc['benchmarks'])} benchmarks written to {out}")
    return 0

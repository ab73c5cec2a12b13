"""``python -m harness compare`` and ``export``: argument parsing, validation and output files.

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
DEFAULT = Gate()


def compare_parser() -> argparse.ArgumentParser:
    """Options of the compare subcommand."""
    p = argparse.ArgumentParser(
        prog="python -m harness compare",
        description="Compare two result sets case by case; exit 0 pass, 1 regression, "
                    "2 usage error or not comparable, 3 inconclusive.")
    p.add_argument("base", type=Path, help="run directory, folder of shards, or "
                   "pytest-benchmark JSON file")
    p.add_argument("new", type=Path, help="the same kinds of path, for the new results")
    p.add_argument("--base-extra", type=Path, action="append", default=[], metavar="PATH",
                   help="more base paths (shards), repeatable")
    p.add_argument("--new-extra", type=Path, action="append", default=[], metavar="PATH",
                   help="more new paths (shards), repeatable")
    add_gate_options(p)
    p.add_argument("--normalise", metavar="REF", default=None,
                   help="divide each time by a reference from the same run: a variant label "
                        "at the same shape (e.g. sdpa) or 'roof' (the measured GEMM roof)")
    p.add_argument("--across-machines", action="store_true",
                   help="compare even when the device model differs (use --normalise)")
    p.add_argument("--across-versions", action="store_true",
                   help="compare even when Python, torch or xformers versions differ")
    p.add_argument("--confirm", type=Path, metavar="PATH",
                   help="a second new run: a regression counts only if it shows there too")
    p.add_argument("--allow-missing", action="store_true",
                   help="pass even when a side is incomplete, interrupted or lost a torn line "
                        "(otherwise exit 3)")
    p.add_argument("--allow-no-manifest", action="store_true",
                   help="read run directories that have no manifest.json (otherwise exit 2)")
    add_output_options(p)
    return p


def add_gate_options(p: argparse.ArgumentParser) -> None:
    """The gate's thresholds, shared by compare and ab."""
    p.add_argument("--factor", type=float, default=DEFAULT.factor,
                   help=f"ratio of medians that counts as a change (default {DEFAULT.factor})")
    p.add_argument("--alpha", type=float, default=DEFAULT.alpha,
                   help=f"false-discovery rate over the grid (default {DEFAULT.alpha})")
    p.add_argument("--min-samples", type=int, default=DEFAULT.min_samples,
                   help=f"blocks needed a side to decide (default {DEFAULT.min_samples})")
    p.add_argument("--memory-tolerance", type=float, default=DEFAULT.memory_tolerance,
                   help=f"relative peak-memory growth that counts (default "
                        f"{DEFAULT.memory_tolerance})")
    p.add_argument("--memory-floor-mib", type=float, default=DEFAULT.memory_floor_mib,
                   help=f"... and absolute growth in MiB (default {DEFAULT.memory_floor_mib})")
    p.add_argument("--error-factor", type=float, default=DEFAULT.error_factor,
                   help=f"oracle error grown by more than this is 'less accurate' (default "
                        f"{DEFAULT.error_factor})")
    p.add_argument("--error-share", type=float, default=DEFAULT.error_share,
                   help=f"... if it also exceeds this share of its allowed error (default "
                        f"{DEFAULT.error_share})")


def add_output_options(p: argparse.ArgumentParser) -> None:
    """Where the comparison is written, shared by compare and ab."""
    p.add_argument("--markdown", type=Path, metavar="FILE", help="write GitHub markdown here")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every verdict as JSON here")
    p.add_argument("--all", action="store_true", help="also list the cases that are 'same'")


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


def run_compare(argv: list[str]) -> int:
    """Parse, load both sides, compare, print and write; return the exit code."""
    args = compare_parser().parse_args(argv)  # argparse exits 2 on bad usage itself
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


def run_export(argv: list[str]) -> int:
    """Write the rows of a result set as pytest-benchmark JSON."""
    p = argparse.ArgumentParser(prog="python -m harness export",
                                description="Write a run's rows as pytest-benchmark JSON.")
    p.add_argument("run", type=Path, help="run directory or folder of shards")
    p.add_argument("--out", type=Path, help="output file (default RUN/pytest_benchmark.json)")
    args = p.parse_args(argv)
    try:
        results = load([args.run], allow_no_manifest=True)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    out = args.out or args.run / "pytest_benchmark.json"
    doc = to_pytest_benchmark(list(results.rows), {"hard": results.hard, "soft": results.soft})
    _write(out, json.dumps(doc, indent=1, default=str, allow_nan=False) + "\n")
    print(f"{len(doc['benchmarks'])} benchmarks written to {out}")
    return 0

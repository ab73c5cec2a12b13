"""What compare prints and writes: a terminal table, GitHub markdown, and JSON of every verdict.

All three derive from one ``Comparison``. Cases sort by urgency of state, then by ratio
(largest first). Times are medians in ms as measured; the ratio is new / base (normalised
when a reference was given); memory is the ratio of peak MiB.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from harness.compare import LESS_ACCURATE, STATES, Comparison, Verdict, geometric_means
from harness.results import ResultSet
from harness.rows import finite

VERDICT = {0: "pass", 1: "regression", 2: "not comparable", 3: "inconclusive"}
MARK = {"worse": "🔴 worse", "now failing": "🔴 now failing", "not comparable": "⚪ not comparable",
        "inconclusive": "🟡 inconclusive", "~": "~", "better": "🟢 better", "fixed": "🟢 fixed",
        "new": "new", "gone": "gone", "same": "same"}


def ordered(verdicts: tuple[Verdict, ...]) -> list[Verdict]:
    """Most urgent state first; within a state, largest ratio first."""
    def key(v: Verdict) -> tuple[int, float]:
        ratio = v.ratio if v.ratio is not None else (v.memory_ratio or 0.0)
        return STATES.index(v.state), -ratio
    return sorted(verdicts, key=key)


def shown(v: Verdict) -> bool:
    """Listed by default: a state other than same, a memory change or less accuracy."""
    return v.state != "same" or bool(v.memory_state) or bool(v.accuracy_state)


def flagged(v: Verdict) -> bool:
    """A case a developer must look at: a regression in time, status, memory or accuracy."""
    return v.state in ("worse", "now failing") or v.memory_state == "worse" or bool(
        v.accuracy_state)


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _memory(v: Verdict) -> str:
    if v.memory_ratio is None:
        return ""
    return f"{v.memory_ratio:.3f}" + {"worse": " worse", "better": " better"}.get(
        v.memory_state, "")


def _error(v: Verdict) -> str:
    if v.error_ratio is None:
        return ""
    return f"{v.error_ratio:.3g}" + (f" {LESS_ACCURATE}" if v.accuracy_state else "")


def _setting(c: Comparison) -> str:
    g = c.gate
    norm = (f"times normalised by {c.reference!r} measured in the same run"
            if c.reference else "raw times")
    return (f"gate: ratio beyond {g.factor:g} and Mann-Whitney U significant at BH FDR "
            f"{g.alpha:g}, >= {g.min_samples} samples a side; memory beyond "
            f"+{g.memory_tolerance:.0%} (and {g.memory_floor_mib:g} MiB); oracle error "
            f"beyond {g.error_factor:g}x and {g.error_share:.0%} of its allowance is "
            f"'{LESS_ACCURATE}'; {norm}")


def _side(s: ResultSet) -> str:
    hard = ", ".join(f"{k}={v}" for k, v in s.hard.items() if v is not None)
    return f"{s.name} ({len(s.rows)} rows; {hard or 'no fingerprint'})"


def header(c: Comparison, base: ResultSet, new: ResultSet) -> list[str]:
    """Verdict, the two sides, the gate, and any fingerprint differences."""
    code = c.exit_code()
    counts = ", ".join(f"{n} {s}" for s, n in {**c.counts(), **c.memory_counts()}.items())
    if not c.matched():
        counts += " (no case in common: nothing was compared)"
    lines = [f"compare: {VERDICT[code]} (exit {code}): {counts}",
             f"base: {_side(base)}", f"new:  {_side(new)}", _setting(c)]
    if c.differences:
        on_purpose = "compared on purpose (across " + " and ".join(c.allowed) + ")"
        what = "not compared" if c.blocked else on_purpose
        lines.append(f"hard fingerprint keys differ, {what}: " + "; ".join(c.differences))
    if c.confirmed_by:
        lines.append(f"regressions had to reproduce in {c.confirmed_by}")
    lines += [f"warning: {w}" for w in c.warnings]
    accepted = " (accepted: --allow-missing)" if c.allow_missing else (
        " (not a pass: --allow-missing accepts it)")
    return lines + [f"incomplete input{accepted}: {m}" for m in c.missing]


def repro_lines(c: Comparison, repro: Mapping[str, str] | None) -> list[str]:
    """One command per flagged case that re-measures just that case on both sides."""
    if not repro:
        return []
    return [f"re-measure {v.case}: {repro[v.key]}" for v in ordered(c.verdicts)
            if flagged(v) and v.key in repro]


def terminal(c: Comparison, base: ResultSet, new: ResultSet, show_same: bool = False,
             repro: Mapping[str, str] | None = None) -> str:
    """A fixed-width table of the cases that are not 'same' (all with show_same)."""
    rows = [v for v in ordered(c.verdicts) if show_same or shown(v)]
    table = [("state", "ratio", "q", "base ms", "new ms", "memory", "error", "case", "reason")]
    table += [(v.state, _num(v.ratio, ".3f"), _num(v.q_value, ".2g"), _num(v.base_ms),
               _num(v.new_ms), _memory(v), _error(v), v.case, v.reason) for v in rows]
    widths = [max(len(r[i]) for r in table) for i in range(8)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + "  " + r[8]
             for r in table]
    hidden = len(c.verdicts) - len(rows)
    tail = [f"({hidden} cases 'same' in time, memory and accuracy not shown; --all shows "
            "them)"] if hidden else []
    return "\n".join([*header(c, base, new), "", *(lines if rows else []), *tail,
                      *repro_lines(c, repro)])


def _md_row(v: Verdict) -> str:
    cells = [MARK[v.state], _num(v.ratio, ".3f"), _num(v.base_ms), _num(v.new_ms),
             _num(v.q_value, ".2g"), _memory(v), _error(v), f"`{v.case}`",
             v.reason.replace("|", "\\|")]
    return "| " + " | ".join(cells) + " |"


def markdown(c: Comparison, base: ResultSet, new: ResultSet,
             repro: Mapping[str, str] | None = None) -> str:
    """GitHub-flavoured markdown for a pull-request summary, cases sorted by ratio."""
    head = header(c, base, new)
    out = [f"### attnbench compare: {VERDICT[c.exit_code()]}", "", *(f"- {x}" for x in head[1:]),
           "", "| state | cases |", "|---|---:|"]
    out += [f"| {MARK.get(s, s)} | {n} |" for s, n in {**c.counts(), **c.memory_counts()}.items()]
    means = geometric_means(c.verdicts)
    if means:
        out += ["", "Geometric mean of new/base per variant (judged cases):", "",
                "| variant | geo-mean ratio | cases |", "|---|---:|---:|"]
        out += [f"| {name} | {g:.3f} | {n} |" for name, (g, n) in means.items()]
    cols = ("| state | ratio | base ms | new ms | q | memory | error | case | reason |\n"
            "|---|---:|---:|---:|---:|---:|---:|---|---|")
    first = ("now failing", "not comparable")  # no ratio, but they lead the table
    by_ratio = sorted(ordered(c.verdicts),
                      key=lambda v: (v.state not in first, -(v.ratio or v.memory_ratio or 0.0)))
    changed = [v for v in by_ratio if shown(v)]
    same = [v for v in by_ratio if not shown(v)]
    if changed:
        out += ["", cols, *map(_md_row, changed)]
    if same:
        out += ["", f"<details><summary>{len(same)} cases the same</summary>", "", cols,
                *map(_md_row, same), "", "</details>"]
    commands = repro_lines(c, repro)
    if commands:
        out += ["", "Re-measure a flagged case on both sides:", "", "```", *commands, "```"]
    return "\n".join(out) + "\n"


def to_json(c: Comparison, base: ResultSet, new: ResultSet,
            repro: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every verdict and the comparison's setting, JSON-ready."""
    def side(s: ResultSet) -> dict[str, Any]:
        return {"name": s.name, "sources": list(s.sources), "rows": len(s.rows),
                "hard": s.hard, "duplicates_dropped": s.duplicates}
    return finite({
        "exit_code": c.exit_code(), "verdict": VERDICT[c.exit_code()], "counts": c.counts(),
        "memory_counts": c.memory_counts(), "matched": c.matched(),
        "judged": sum(v.ratio is not None for v in c.verdicts),
        "gate": dataclasses.asdict(c.gate), "reference": c.reference,
        "allowed_differences": list(c.allowed), "differences": list(c.differences),
        "blocked": c.blocked, "confirmed_by": c.confirmed_by, "warnings": list(c.warnings),
        "missing": list(c.missing), "allow_missing": c.allow_missing,
        "base": side(base), "new": side(new),
        "geometric_means": {k: {"ratio": g, "cases": n}
                            for k, (g, n) in geometric_means(c.verdicts).items()},
        "verdicts": [{**dataclasses.asdict(v), "repro": (repro or {}).get(v.key)}
                     for v in ordered(c.verdicts)],
    })

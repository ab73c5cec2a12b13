"""The report's "How long can I go?" table, from the rows of a sweep run with longest=true
(harness/longest.py): per series, the longest N measured to fit the run's memory budget."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from harness.footprint import MIB, fits, held_bytes
from harness.report_text import md_table
from harness.rows import Row


def longest_table(rows: Iterable[Row], budget_mib: float) -> list[list[str]]:
    """Report rows: per series, the longest N measured to fit, its held MiB, the shortest
    that did not and why."""
    series: dict[tuple, list[Row]] = {}
    for r in rows:
        key = (r.label, r.dtype, r.mode, r.new_tokens, r.causal, r.b, r.h, r.kv_heads, r.d,
               r.ragged, r.ragged_form)
        series.setdefault(key, []).append(r)
    body = []
    for key, rs in sorted(series.items()):
        ok = [r for r in rs if fits(r, budget_mib * MIB)]
        best = max(ok, key=lambda r: r.nq, default=None)
        over = [r for r in rs if not fits(r, budget_mib * MIB) and (best is None or
                                                                   r.nq > best.nq)]
        worst = min(over, key=lambda r: r.nq, default=None)
        why = "" if worst is None else (
            f"{worst.nq} ({worst.status}" + (f", {held_bytes(worst) / MIB:.0f} MiB"
                                              if held_bytes(worst) else "") + ")")
        body.append([key[0], key[1], key[2], "causal" if key[4] else "full", str(key[5]),
                     "-" if best is None else str(best.nq),
                     "-" if best is None else f"{held_bytes(best) / MIB:.0f}", why or "-"])
    return body


def longest_lines(rows: Sequence[Row], manifests: Sequence[dict]) -> list[str]:
    """The section, when a run searched for the longest N (its manifest has the budget)."""
    budgets = [m["longest"]["budget_mib"] for m in manifests if m.get("longest")]
    if not budgets:
        return []
    body = longest_table(rows, min(budgets))
    return ["## How long can I go?", "",
            f"The longest N each variant ran within a memory budget of {min(budgets):.0f} MiB "
            "(peak above the inputs plus the inputs, or the cache for decode), found by "
            "doubling from the memory model's guess and bisecting; every N here is a measured "
            "row, never a prediction. `-`: not even the shortest probe fit.", "",
            *md_table(["variant", "dtype", "mode", "mask", "B", "longest N", "held MiB",
                       "first N that did not fit"], body), ""]

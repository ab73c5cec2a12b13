"""The numbers a report shows, derived from rows: groups, table cells, scaling fits, crossovers.

A *setting* is what one table and one set of figures share: device, dtype, mode, causal, H and
D. Within it, rows vary by variant (its label), batch size and sequence length. Only rows that
were measured (``vocab.MEASURED``: ok, mismatch) carry numbers; every other status is shown,
with its reason as a footnote, instead of a number. Statuses, MEASURED and the words for a
setting are ``harness.vocab``'s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from harness.rows import Row
from harness.vocab import BACKWARD_MODES, DENSE_MASK_FLOPS, MEASURED, Status, describe

#: how a table cell or heatmap shows a status that has no number
CELL_STATUS: dict[Status, str] = {
    Status.OOM: "OOM", Status.UNAVAILABLE: "n/a", Status.SKIPPED: "skipped",
    Status.ERROR: "ERROR", Status.CRASHED: "CRASHED", Status.TIMEOUT: "TIMEOUT",
}
SUBQUADRATIC = ("sparse softmax", "linear attention")  # definitions that scale below N^2


@dataclass(frozen=True, order=True)
class Setting:
    """What one table and one set of figures share."""

    device: str
    dtype: str
    mode: str
    causal: bool
    h: int
    d: int
    new_tokens: int = 0  # decode: tokens a step (a setting of its own per t)
    kv_heads: int = 0  # grouped queries: k/v heads (a setting of its own per Hkv)
    ragged: str = ""  # ragged batches: the lengths' spec, and the form (padded, packed)
    ragged_form: str = ""
    dv: int = 0  # the value head dim when not d

    def title(self) -> str:
        """``cpu fp32 fwd causal H=8 D=64``: the project's words for a setting."""
        return describe(self, "setting")  # reads only device, dtype, mode, causal, h and d

    def slug(self) -> str:
        """A file-name fragment: ``cpu_fp32_fwd-bwd_causal_H8_D64``; whatever the rows say,
        only letters, digits, '.', '_' and '-' (a crafted device cannot name a path)."""
        mask = "causal" if self.causal else "full"
        mode = self.mode.replace("+", "-") + (f"-t{self.new_tokens}" if self.new_tokens else "")
        kv = f"-kv{self.kv_heads}" if self.kv_heads else ""
        if self.ragged:
            mask += f"-ragged-{self.ragged}-{self.ragged_form}"
        dv = f"-Dv{self.dv}" if self.dv else ""
        return safe_name(f"{self.device}_{self.dtype}_{mode}_{mask}_H{self.h}{kv}_D{self.d}{dv}")


def safe_name(text: str) -> str:
    """A file name made from data: runs of other characters become '-', no leading dot."""
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", text))
    return name.lstrip(".-") or "unnamed"


def setting_of(row: Row) -> Setting:
    """The setting a row belongs to."""
    return Setting(row.device, row.dtype, row.mode, row.causal, row.h, row.d, row.new_tokens,
                   row.kv_heads, row.ragged, row.ragged_form, row.dv)


def group(rows: Iterable[Row]) -> dict[Setting, list[Row]]:
    """Rows by setting, settings sorted."""
    out: dict[Setting, list[Row]] = {}
    for row in rows:
        out.setdefault(setting_of(row), []).append(row)
    return dict(sorted(out.items()))


def peak_mib(row: Row) -> float | None:
    """The peak of the row's own mode: forward+backward for modes with a backward, the
    forward (or decode step) peak otherwise."""
    return row.peak_fwd_bwd_mib if row.mode in BACKWARD_MODES else row.peak_fwd_mib


def expected_mib(row: Row) -> float | None:
    """The memory model's peak for the row's mode."""
    return row.expected_fwd_bwd_mib if row.mode in BACKWARD_MODES else row.expected_fwd_mib


def quartiles(row: Row) -> tuple[float, float] | None:
    """(q1, q3) of the per-block times in ms, or None without times."""
    if not row.times_ms:
        return None
    q1, q3 = np.percentile(row.times_ms, [25, 75])
    return float(q1), float(q3)


@dataclass
class Footnotes:
    """Numbered footnotes, one per distinct text."""

    texts: dict[str, int] = field(default_factory=dict)

    def mark(self, text: str) -> str:
        """``[^n]`` for the text, numbering it on first use."""
        text = " ".join(text.split())[:300]
        n = self.texts.setdefault(text, len(self.texts) + 1)
        return f"[^{n}]"


def cell(row: Row, value: float | None, notes: Footnotes) -> str:
    """A table cell: the number, or the status with a footnote giving the reason."""
    if row.status in MEASURED:
        text = "-" if value is None else f"{value:.3g}"
        if row.status == Status.MISMATCH:
            why = (f"{row.label}: oracle mismatch, max |error| {row.check_max_abs:.3g} > "
                   f"allowed {row.check_allowed:.3g} ({row.check_tensor})")
            text += " mismatch" + notes.mark(why)
        return text
    shown = CELL_STATUS.get(row.status, row.status)
    if row.status == Status.OOM:
        return shown
    return shown + notes.mark(f"{row.label}: {row.reason or row.status}")


def scaling_slope(ns: list[int], ms: list[float]) -> float | None:
    """Least-squares slope of log time against log N, or None with fewer than two N."""
    if len(set(ns)) < 2:
        return None
    slope, _ = np.polyfit(np.log(ns), np.log(ms), 1)
    return float(slope)


def crossover(ns: list[int], ratio: list[float]) -> str:
    """Where ``ratio`` (variant time / baseline time, by ascending N) drops below 1 for good.

    The N is interpolated on log-log axes between the last N where the variant is slower and
    the first from which it stays faster.
    """
    if len(ns) < 2:
        return "needs >= 2 N"
    tail = len(ns)
    while tail > 0 and ratio[tail - 1] < 1:
        tail -= 1
    if tail == len(ns):
        return "none in range"
    if tail == 0:
        return f"faster at every N (from {ns[0]})"
    (n0, r0), (n1, r1) = (ns[tail - 1], ratio[tail - 1]), (ns[tail], ratio[tail])
    frac = math.log(r0) / (math.log(r0) - math.log(r1))  # where log ratio crosses 0
    return f"{math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0))):.0f}"


def is_subquadratic(row: Row) -> bool:
    """Whether the row's variant claims a sub-quadratic form (sparse pattern or linear)."""
    definition = str(row.extra.get("definition", ""))
    dense = row.extra.get("flops_convention") == DENSE_MASK_FLOPS  # a mask over every pair
    return (definition.startswith(SUBQUADRATIC) and not dense) or row.variant in (
        "linear", "sparse")


def series(rows: Iterable[Row]) -> dict[tuple[str, int], list[Row]]:
    """(label, B) -> measured rows with a median, by ascending N."""
    out: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        if r.status in MEASURED and r.median_ms:
            out.setdefault((r.label, r.b), []).append(r)
    return {k: sorted(v, key=lambda r: r.nq) for k, v in sorted(out.items())}


@dataclass(frozen=True)
class Scaling:
    """One variant's fitted exponent and crossovers in one setting and batch size."""

    setting: Setting
    label: str
    b: int
    ns: tuple[int, ...]
    slope: float | None  # over every measured N
    tail_slope: float | None  # over the three largest N (overheads fade at large N)
    crossovers: dict[str, str]  # exact baseline label -> crossover N or why there is none


def _crossovers(rows: list[Row], by: dict[tuple[str, int], list[Row]],
                baselines: list[str]) -> dict[str, str]:
    out = {}
    for base in baselines:
        ref = {r.nq: r.median_ms for r in by.get((base, rows[0].b), [])}
        common = [r for r in rows if r.nq in ref]
        out[base] = (crossover([r.nq for r in common], [r.median_ms / ref[r.nq] for r in common])
                     if common else f"no measured {base}")
    return out


def scaling_table(groups: dict[Setting, list[Row]], baselines: list[str]) -> list[Scaling]:
    """Exponents for every series; crossovers against each baseline for sub-quadratic ones."""
    table = []
    for setting, rows in groups.items():
        by = series(rows)
        for (label, b), rs in by.items():
            ns, ms = [r.nq for r in rs], [r.median_ms for r in rs]
            tail = scaling_slope(ns[-3:], ms[-3:]) if len(ns) > 3 else None
            bases = [x for x in baselines if x != label]
            cross = _crossovers(rs, by, bases) if is_subquadratic(rs[0]) else {}
            table.append(Scaling(setting, label, b, tuple(ns), scaling_slope(ns, ms), tail, cross))
    return table

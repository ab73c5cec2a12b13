"""The report's text blocks: fingerprint, what is missing, variants and their configs, scaling
exponents and crossovers, and the markdown table helper they share."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from harness.report_data import Scaling
from harness.results import ResultSet
from harness.rows import Row
from harness.vocab import MEASURED, Status


def md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """GitHub markdown table lines; the first column left-aligned, the others right."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    rule = "|---|" + "---:|" * (len(head) - 1)
    return [line(head), rule, *(line(r) for r in body)]


def _config_text(config: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def _legend_config(row: Row) -> dict:
    """The fields a legend names: the row's ``config_diff``, or (older rows) its whole config."""
    # the diff from the variant's defaults is recorded in the row (measure.base_row): report
    # code reads rows only and never imports the variants
    diff = row.extra.get("config_diff")
    return row.config if diff is None else diff


def kernels_of(rows: Sequence[Row], label: str) -> dict[str, list[str]]:
    """direction -> the distinct kernels the label's rows record (``extra.kernel``)."""
    out: dict[str, list[str]] = {}
    for r in rows:
        if r.label == label:
            for direction, kernel in (r.extra.get("kernel") or {}).items():
                out.setdefault(direction, [])
                if kernel not in out[direction]:
                    out[direction].append(kernel)
    return out


def legend_names(rows: Sequence[Row]) -> dict[str, str]:
    """label -> legend text: the label, its legend config, and the forward op that ran
    where a library picked it (``sdpa flash``, ``cutlassF-pt``)."""
    names = {}
    for r in rows:
        if r.label not in names:
            shown = _config_text(_legend_config(r))
            short = (k.split(":")[0] for k in kernels_of(rows, r.label).get("forward", []))
            ran = "/".join(dict.fromkeys(short))  # one name per op, whatever its details
            parts = ", ".join(x for x in (shown, f"ran {ran}" if ran else "") if x)
            names[r.label] = f"{r.label} ({parts})" if parts else r.label
    return names


def variant_lines(rows: Sequence[Row]) -> list[str]:
    """A table of every variant label, its full config, what it computes, where a library
    picked the kernel what ran, and which pairs its FLOPs count."""
    seen: dict[str, Row] = {}
    for r in rows:
        seen.setdefault(r.label, r)
    body = []
    for label, r in sorted(seen.items()):
        ran = "; ".join(f"{direction}: {' / '.join(ks)}"
                        for direction, ks in kernels_of(rows, label).items())
        body.append([label, _config_text(r.config) or "(none)",
                     str(r.extra.get("definition", "")), ran,
                     str(r.extra.get("flops_convention", "(not recorded)"))])
    table = md_table(["variant", "config", "computes", "kernel a library picked (ran)",
                      "FLOPs count"], body)
    table[1] = "|---|---|---|---|---|"
    return ["## Variants", "", *table]


def fingerprint_lines(results: ResultSet) -> list[str]:
    """The run's fingerprint and provenance in a few lines."""
    hard, soft = results.hard, results.soft
    man = results.manifests[0] if results.manifests else {}
    lines = [
        f"- **Machine**: {hard.get('device', '?')} / {hard.get('device_model', '?')}; "
        f"{soft.get('cpu_count', '?')} CPUs, {soft.get('threads', '?')} threads; "
        f"flags {', '.join(soft.get('cpu_flags', [])) or '?'}"
        + (f"; GPU {soft['gpu_name']}" if soft.get("gpu_name") else ""),
        f"- **Software**: Python {hard.get('python', '?')}, torch {hard.get('torch', '?')}, "
        f"xformers {hard.get('xformers', '?')}; attnbench {soft.get('attnbench', '?')} at "
        f"{str(soft.get('git_commit') or '?')[:12]}{' (dirty)' if soft.get('git_dirty') else ''}",
        f"- **Run**: preset {man.get('preset', '?')}, started {man.get('started', '?')}, "
        f"finished {man.get('finished', '?')} ({man.get('status', '?')}); "
        f"{len(results.rows)} rows from {len(results.sources)} run directory(ies)",
    ]
    env = soft.get("env") or {}
    if env:
        lines.append("- **Environment**: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    doctor = man.get("doctor") or {}
    if doctor:
        build = doctor.get("xformers_build") or {}
        sdpa = {k: len(v) for k, v in (doctor.get("sdpa_backends_can_run") or {}).items()}
        ops = sorted(k for k, v in (doctor.get("xformers_ops_can_run") or {}).items() if v)
        lines.append(
            f"- **Kernels here** (`harness doctor`): SDPA backends by dtype/D cells they run "
            f"{sdpa}; xformers ops that run: {', '.join(ops) or 'none'}; xformers built for "
            f"torch {build.get('built_for_torch')}, extension "
            f"{'loaded' if build.get('extension_loaded') else 'not loaded'}")
    lines += [f"- **Warning, noisy host**: {w}" for w in results.noise]
    lines += [f"- **Warning, incomplete**: {p}" for p in results.problems]
    return lines


def missing_lines(rows: Sequence[Row], baseline: str) -> list[str]:
    """What the run does not show, and why: statuses, reasons, single N, absent baseline."""
    counts = Counter(r.status for r in rows)
    lines = ["## What is measured and what is missing", "",
             "Rows by status: " + ", ".join(f"{n} {s}" for s, n in counts.most_common()) + "."]
    reasons = Counter((r.label, r.status, r.reason.strip().splitlines()[0][:200] if r.reason
                       else "") for r in rows if r.status not in MEASURED)
    for (label, status, reason), n in sorted(reasons.items()):
        lines.append(f"- {label}: {status} in {n} case(s){': ' + reason if reason else ''}")
    mismatched = sorted({r.label for r in rows if r.status == Status.MISMATCH})
    if mismatched:
        lines.append(f"- **Oracle mismatch** (timed, but wrong): {', '.join(mismatched)}")
    ns = sorted({r.nq for r in rows if r.status in MEASURED})
    if len(ns) < 2:
        lines.append(f"- Only {len(ns)} measured N ({ns}): no scaling exponents or crossovers.")
    if not any(r.label == baseline for r in rows):
        lines.append(f"- The speedup baseline {baseline!r} is not in this run: no heatmaps "
                     "(--baseline picks another).")
    if not any(r.check_max_abs is not None for r in rows):
        lines.append("- No oracle checks in these rows (check=false): the error figure is empty.")
    return lines


def _slope(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def scaling_lines(table: Sequence[Scaling], exact: Sequence[str]) -> list[str]:
    """The fitted exponents and crossover N, one line per variant, setting and batch size."""
    head = ["setting", "B", "variant", "N range", "exponent (all N)", "exponent (top 3 N)",
            *(f"faster than {e} from N" for e in exact)]
    body = [[s.setting.title(), str(s.b), s.label, f"{s.ns[0]}-{s.ns[-1]} ({len(s.ns)})",
             _slope(s.slope), _slope(s.tail_slope), *(s.crossovers.get(e, "") for e in exact)]
            for s in table]
    table_lines = md_table(head, body)
    table_lines[1] = "|---|---:|---|---|" + "---:|" * (len(head) - 4)
    return ["## Scaling exponents and crossovers", "",
            "Slope of log(median time) against log(N), by least squares: about 2 for exact "
            "attention, about 1 for linear and windowed forms once fixed overheads fade (the "
            "top-3 column). Crossover: the N from which a sub-quadratic variant stays faster "
            "than the exact one, interpolated on log-log axes between measured N.", "",
            *table_lines]


#: minor page faults per call above which a row's time includes mapping fresh memory
#: (1024 faults: 4 MiB of 4 KiB pages a call)
FAULTS_SHOWN = 1024


def fault_lines(rows: Sequence[Row]) -> list[str]:
    """Rows whose calls map fresh pages: the page faults that explain a jump in time."""
    heavy = sorted((r for r in rows if (r.minor_faults_per_call or 0) > FAULTS_SHOWN),
                   key=lambda r: (r.label, r.dtype, r.mode, r.causal, r.b, r.nq))
    if not heavy:
        return []
    body = [[r.label, f"{r.dtype} {r.mode} {'causal' if r.causal else 'full'}", str(r.b),
             str(r.nq), f"{r.minor_faults_per_call:.0f}",
             f"{r.minor_faults_per_call * 4096 / 2**20:.0f}", f"{r.median_ms:.3g}"]
            for r in heavy]
    table = md_table(["variant", "case", "B", "N", "minor faults per call",
                      "MiB of fresh pages per call", "median ms"], body)
    return ["## Page faults", "",
            f"Rows whose every call maps more than {FAULTS_SHOWN} fresh pages (4 KiB each): "
            "glibc returns freed blocks of 32 MiB and more to the OS, so a call that allocates "
            "them page-faults again each time; a time that jumps between two N usually jumps "
            "here too. (`allocator=tuned` keeps freed memory for reuse; the default is what a "
            "user's program gets.)", "", *table]


def support_lines(records: Sequence[dict]) -> list[str]:
    """The support matrix (manifest ``support``): per device and dtype, a variant per line, a
    scenario per column, ``yes`` or ``no (n)`` with reason n listed under the table."""
    if not records:
        return []
    scenarios = list(dict.fromkeys(r["scenario"] for r in records))
    lines = ["## Support matrix", "",
             "What each variant runs, from its declarations (SUPPORTS, unavailable_reason, the "
             "compile rule), decided as a sweep decides a case's `unavailable` status.", ""]
    for device, dtype in dict.fromkeys((r["device"], r["dtype"]) for r in records):
        mine = [r for r in records if (r["device"], r["dtype"]) == (device, dtype)]
        reasons = list(dict.fromkeys(r["reason"] for r in mine if r["reason"]))
        cells = {(r["label"], r["scenario"]): r["reason"] for r in mine}
        body = [[label, *("yes" if not cells[label, s] else
                          f"no ({reasons.index(cells[label, s]) + 1})" for s in scenarios)]
                for label in dict.fromkeys(r["label"] for r in mine)]
        lines += [f"**{device} {dtype}**", "", *md_table(["variant", *scenarios], body), ""]
        lines += [f"{i}. {' '.join(text.split())}" for i, text in enumerate(reasons, 1)]
        lines += [""] if reasons else []
    return lines


def is_exact(row: Row) -> bool:
    """Whether the row's variant computes exact softmax attention (its recorded definition)."""
    return str(row.extra.get("definition", "")).startswith("softmax attention")


def _pick(rows: Sequence[Row]) -> str:
    """The fastest measured row as ``label ms (max err)``, or a dash."""
    timed = [r for r in rows if r.status in MEASURED and r.median_ms]
    if not timed:
        return "-"
    r = min(timed, key=lambda r: r.median_ms)
    err = r.err_vs_softmax if r.err_vs_softmax is not None else r.check_max_abs
    what = "vs softmax" if r.err_vs_softmax is not None else "vs oracle"
    text = f"{r.median_ms:.3g} ms" + ("" if err is None else f", err {err:.2g} {what}")
    return f"{r.label} ({text})"


def which_lines(rows: Sequence[Row]) -> list[str]:
    """Per B and N of one setting: the fastest exact variant and the fastest of all, with the
    error each carries (against the oracle; approximate ones against exact softmax)."""
    cells = sorted({(r.b, r.nq) for r in rows})
    if not cells:
        return []
    body = [[str(b), str(n), _pick([r for r in rows if (r.b, r.nq) == (b, n) and is_exact(r)]),
             _pick([r for r in rows if (r.b, r.nq) == (b, n)])] for b, n in cells]
    return ["Which one: the fastest exact variant and the fastest overall at each B and N "
            "(error: max |difference| from the float64 oracle; for approximate variants from "
            "exact softmax attention):", "",
            *md_table(["B", "N", "fastest exact", "fastest overall"], body), ""]

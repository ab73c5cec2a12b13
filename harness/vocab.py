"""The project's words, each defined once, at the bottom of the import graph: the row
statuses and their groupings, the measurement modes, and a case's identity (which fields
make a case, its stable key, and how it reads in words).

Sweep, check, compare, interop and report all import these; nothing here imports them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal


class Status(StrEnum):
    """What became of one case. Rows store the plain string (``Status.OK == "ok"``)."""

    OK = "ok"  # measured, and the oracle agreed (or was not asked)
    MISMATCH = "mismatch"  # measured, but the oracle disagreed: timed, and wrong
    UNAVAILABLE = "unavailable"  # the variant cannot run this here (its reason says why)
    OOM = "oom"  # ran out of memory
    TIMEOUT = "timeout"  # the supervised worker gave no result within timeout_s
    CRASHED = "crashed"  # the worker process died (a segfault, a kill)
    ERROR = "error"  # the variant raised something else (a bug; the traceback tail is kept)
    SKIPPED = "skipped"  # not attempted: OOM frontier or predicted OOM


#: statuses whose rows carry times (a mismatch is timed too, and flagged)
MEASURED: frozenset[str] = frozenset({Status.OK, Status.MISMATCH})
#: statuses that mean the case failed: compare calls a move into them "now failing",
#: and check fails its matrix on them
FAILING: frozenset[str] = frozenset(
    {Status.MISMATCH, Status.OOM, Status.TIMEOUT, Status.CRASHED, Status.ERROR}
)

#: the prefix of the lines a paced sweep (``paced=true``) writes for its driver, harness ab
PACE_PREFIX = "@attnbench-pace "

#: how the reason of a row skipped because the sweep's budget_s was spent begins
BUDGET_PREFIX = "budget: "

#: a row's FLOP convention when its kernel computes every pair and masks afterwards (a dense
#: mask): its FLOPs count every pair, and the report does not treat it as sub-quadratic
DENSE_MASK_FLOPS = "all pairs (dense mask)"

#: a row's bytes convention when its variant has no traffic model of its own: the least any
#: implementation moves (harness/roofline.py): its GiB/s and roofline efficiency are lower bounds
IO_ONLY_BYTES = "inputs read once, outputs written once (no model of the variant's own)"

#: a decode row's bytes convention: what any step must move at least
DECODE_BYTES = ("the cached positions the step reads (all, unless a sparse pattern skips some) "
                "read once; the step's q, k, v read, its k, v cached and its output written "
                "once")

#: bytes per element of each dtype name a row can carry: the report layer reads sizes here,
#: torch-free (variants.contract.DTYPES maps the same names to torch dtypes; tests/test_vocab.py
#: holds the two together)
ELEMENT_BYTES: Mapping[str, int] = {"fp64": 8, "fp32": 4, "bf16": 2, "fp16": 2}

#: what is timed: the forward call, the backward call alone, both, or one decode step (t new
#: tokens against a cache of the N before them; variants/decoding.py)
MODES: tuple[str, ...] = ("fwd", "bwd", "fwd+bwd", "decode")
#: the modes whose timed call includes a backward pass
BACKWARD_MODES: frozenset[str] = frozenset({"bwd", "fwd+bwd"})
#: the mode that times a decode step: nq = nk = N is the cached context, ``new_tokens`` (>= 1)
#: the queries of the step, causal over context and new tokens
DECODE = "decode"

#: the fields that identify a case across runs (those of row schema 1); ``label`` (the spec
#: as written) is not among them: ``sdpa`` and ``sdpa:backend=auto`` are one case
IDENTITY: tuple[str, ...] = (
    "variant", "config", "device", "dtype", "mode", "causal", "b", "h", "nq", "nk", "d",
)
#: identity fields added after schema 1, with their defaults. The rule: such a field joins
#: the key only when it is not at its default, so every case measured before the field
#: existed (all at the default) keeps its key, and old run directories and baselines match
LATER_IDENTITY: Mapping[str, Any] = {
    "compile": False,  # run through torch.compile (harness/measure.py)
    "new_tokens": 0,  # decode: new tokens per step (>= 1); 0 for every other mode
    "kv_heads": 0,  # grouped queries: heads of k and v (H a multiple of it); 0: as many as q
    "ragged": "",  # ragged batch: how the B lengths are drawn (harness/ragged.py); "": equal
    "ragged_form": "",  # ragged batch: padded (one masked call) or packed (per sequence)
    "dv": 0,  # the value head dim when it differs from d (0: d)
}

#: what a compiled case's label ends with (``naive+compile``): tables, legends and compare,
#: which go by label, keep eager and compiled apart
COMPILE_SUFFIX = "+compile"


def case_key(case: Any) -> str:
    """A case's stable identity as compact JSON, sorted: the IDENTITY fields, then each
    LATER_IDENTITY field that is not at its default."""
    parts = {name: getattr(case, name) for name in IDENTITY}
    later = {name: getattr(case, name) for name in LATER_IDENTITY}
    parts.update({k: v for k, v in later.items() if v != LATER_IDENTITY[k]})
    return json.dumps(parts, sort_keys=True, separators=(",", ":"))


def compiled_label(label: str, compiled: bool) -> str:
    """The label a case is shown under: the spec as written, ``+compile`` when compiled."""
    return label + COMPILE_SUFFIX if compiled else label


Style = Literal["text", "id", "setting"]


def describe(case: Any, style: Style = "text") -> str:
    """A case (a Case, a Row: anything with the IDENTITY fields and a label) in words, one
    way for the whole project.

    ``text``: ``sdpa cpu fp32 fwd causal B=1 H=4 N=128 D=64`` (sweep, compare, ab);
    ``id``: ``sdpa[fp32-fwd-causal-B1-H4-N128-D64]`` (a pytest-benchmark name: stable across
    releases, since benchmark histories are keyed by it);
    ``setting``: ``cpu fp32 fwd causal H=8 D=64`` (what one report table shares: no variant,
    B or N).
    """
    mask = "causal" if case.causal else "full"
    if getattr(case, "ragged", ""):
        mask += f" ragged={case.ragged} {case.ragged_form}"
    mode, kv = mode_words(case), getattr(case, "kv_heads", 0)
    heads = f"H={case.h}" + (f" Hkv={kv}" if kv else "")
    dims = f"D={case.d}" + (f" Dv={case.dv}" if getattr(case, "dv", 0) else "")
    if style == "setting":
        return f"{case.device} {case.dtype} {mode} {mask} {heads} {dims}"
    if style == "id":
        n = f"N{case.nq}" if case.nq == case.nk else f"N{case.nq}x{case.nk}"
        shown = f"{mode.replace(' ', '')}-{mask.replace(' ', '-')}"
        return (f"{case.label}[{case.dtype}-{shown}-B{case.b}-"
                f"{heads.replace('=', '').replace(' ', '-')}-{n}-"
                f"{dims.replace('=', '').replace(' ', '-')}]")
    if not case.mode:  # a foreign pytest-benchmark entry: it has a name and nothing else
        return case.label
    n = f"N={case.nq}" if case.nq == case.nk else f"Nq={case.nq} Nk={case.nk}"
    return (f"{case.label} {case.device} {case.dtype} {mode} {mask} B={case.b} "
            f"{heads} {n} {dims}")


def mode_words(case: Any) -> str:
    """The mode as shown: ``fwd``, ``fwd+bwd``, or ``decode t=4`` (t new tokens a step)."""
    tokens = getattr(case, "new_tokens", 0)
    return f"{case.mode} t={tokens}" if case.mode == DECODE else case.mode

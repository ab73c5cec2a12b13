"""The support matrix: which variant runs which scenario on which device and dtype, and why
not, generated from the variants' declarations (``SUPPORTS``, ``unavailable_reason``, the
compile rule) through the same function that decides a case's ``unavailable`` status
(``measure.unavailable_reason``), so the matrix cannot disagree with what a sweep records.

Scenarios so far: ``forward`` (prefill, no mask), ``causal``, ``backward`` (fwd+bwd),
``compile`` (``compile=true``), ``decode`` (a step against a cache, ``mode=decode``), and
``gqa`` / ``gqa decode`` (k, v with fewer heads than q, ``kv_heads``), and ``ragged padded``
/ ``ragged packed`` (a batch of unequal lengths, harness/ragged.py).
The sweep writes the matrix of its grid into the manifest; ``python -m harness support``
prints it for any preset; the report shows the run's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.cases import Case
from harness.measure import unavailable_reason
from harness.specs import VariantSpec
from harness.vocab import DECODE

#: scenario -> (mode, causal, compile, grouped, ragged form) of the case that stands for it
SCENARIOS: dict[str, tuple[str, bool, bool, bool, str]] = {
    "forward": ("fwd", False, False, False, ""),
    "causal": ("fwd", True, False, False, ""),
    "backward": ("fwd+bwd", False, False, False, ""),
    "compile": ("fwd", False, True, False, ""),
    "decode": ("decode", True, False, False, ""),
    "gqa": ("fwd", False, False, True, ""),
    "gqa decode": ("decode", True, False, True, ""),
    "ragged padded": ("fwd", False, False, False, "padded"),
    "ragged packed": ("fwd", False, False, False, "packed"),
}


@dataclass(frozen=True)
class Support:
    """One cell: a variant spec in a scenario on a device and dtype; reason "" if it runs."""

    label: str
    device: str
    dtype: str
    scenario: str
    reason: str


def probe(spec: VariantSpec, device: str, dtype: str, scenario: str) -> Case:
    """The (tiny) case that stands for a scenario: its availability is the cell's."""
    mode, causal, compiled, grouped, form = SCENARIOS[scenario]
    return Case(spec, device, dtype, mode, causal, 2, 2, 16, 16, 16, compile=compiled,
                new_tokens=int(mode == DECODE), kv_heads=int(grouped),
                ragged="uniform:0.5" if form else "", ragged_form=form)


def support_matrix(specs: Iterable[VariantSpec], devices: Iterable[str],
                   dtypes: Iterable[str]) -> list[Support]:
    """Every (spec, device, dtype, scenario) cell, in that order."""
    return [Support(spec.label, device, dtype, scenario,
                    unavailable_reason(probe(spec, device, dtype, scenario)) or "")
            for spec in specs for device in devices for dtype in dtypes
            for scenario in SCENARIOS]


def as_records(cells: Iterable[Support]) -> list[dict[str, Any]]:
    """Plain data for the manifest (what the report reads)."""
    return [dataclasses.asdict(c) for c in cells]

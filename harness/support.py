"""The support matrix: which variant runs which scenario on which device and dtype, and why
not, generated from the variants' declarations (``SUPPORTS``, ``unavailable_reason``, the
compile rule) through the same function that decides a case's ``unavailable`` status
(``measure.unavailable_reason``), so the matrix cannot disagree with what a sweep records.

Scenarios so far: ``forward`` (prefill, no mask), ``causal``, ``backward`` (fwd+bwd),
``compile`` (``compile=true``) and ``decode`` (a step against a cache, ``mode=decode``).
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

#: scenario -> (mode, causal, compile) of the case that stands for it
SCENARIOS: dict[str, tuple[str, bool, bool]] = {
    "forward": ("fwd", False, False),
    "causal": ("fwd", True, False),
    "backward": ("fwd+bwd", False, False),
    "compile": ("fwd", False, True),
    "decode": ("decode", True, False),
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
    mode, causal, compiled = SCENARIOS[scenario]
    return Case(spec, device, dtype, mode, causal, 1, 1, 16, 16, 16, compile=compiled,
                new_tokens=int(mode == DECODE))


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

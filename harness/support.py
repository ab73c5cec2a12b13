"""The support matrix: which variant runs which scenario on which device and dtype, and why
not, generated from the variants' declarations (``SUPPORTS``, ``unavailable_reason``, the
compile rule) through the same function that decides a case's ``unavailable`` status
(``measure.unavailable_reason``), so the matrix cannot disagree with what a sweep records.

Scenarios so far: ``forward`` (prefill, no mask), ``causal``, ``backward`` (fwd+bwd),
``compile`` (``compile=true``), ``decode`` (a step against a cache, ``mode=decode``), and
``gqa`` / ``gqa decode`` (k, v with fewer heads than q, ``kv_heads``), and ``ragged padded``
/ ``ragged packed`` (a batch of unequal lengths, harness/ragged.py), and ``Dv != D``
(``v_head_dim``).
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

#: scenario -> what its probe case sets beyond a plain (B=2, H=2, N=16, D=16) fwd case
SCENARIOS: dict[str, dict[str, Any]] = {
    "forward": {},
    "causal": {"causal": True},
    "backward": {"mode": "fwd+bwd"},
    "compile": {"compile": True},
    "decode": {"mode": DECODE, "causal": True, "new_tokens": 1},
    "gqa": {"kv_heads": 1},
    "gqa decode": {"mode": DECODE, "causal": True, "new_tokens": 1, "kv_heads": 1},
    "ragged padded": {"ragged": "uniform:0.5", "ragged_form": "padded"},
    "ragged packed": {"ragged": "uniform:0.5", "ragged_form": "packed"},
    "Dv != D": {"dv": 8},
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
    fields = {"mode": "fwd", "causal": False, **SCENARIOS[scenario]}
    mode, causal = fields.pop("mode"), fields.pop("causal")
    return Case(spec, device, dtype, mode, causal, 2, 2, 16, 16, 16, **fields)


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

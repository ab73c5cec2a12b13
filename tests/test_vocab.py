"""The vocabulary is defined once and everything agrees with it: a row carries every identity
field, a case and its row have one key, and one describe() speaks for the whole project."""

from __future__ import annotations

import dataclasses
import json

import variants
from harness.cases import Case
from harness.interop import case_name
from harness.measure import base_row
from harness.rows import Row
from harness.specs import VariantSpec
from harness.vocab import ELEMENT_BYTES, IDENTITY, MEASURED, MODES, Status, case_key, describe
from variants.contract import DTYPES


def _case(nk: int = 128) -> Case:
    sdpa = variants.get("sdpa")
    spec = VariantSpec("sdpa@math", sdpa, sdpa.presets["math"])
    return Case(spec, "cpu", "fp32", "fwd", True, 1, 4, 128, nk, 64)


def test_a_row_carries_every_identity_field_and_the_case_key() -> None:
    """Row stores each IDENTITY field; base_row's key is the case's, built by case_key."""
    fields = {f.name for f in dataclasses.fields(Row)}
    assert set(IDENTITY) <= fields
    case = _case()
    row = base_row(case)
    assert row.key == case.key() == case_key(row)
    assert json.loads(row.key) == {name: getattr(case, name) for name in IDENTITY}
    assert row.extra["config_diff"] == {"backend": "math"}


def test_describe_is_the_one_way_a_case_reads() -> None:
    """Text, benchmark id and setting forms; a case and its row read the same."""
    case, row = _case(), base_row(_case())
    assert describe(case) == describe(row) == "sdpa@math cpu fp32 fwd causal B=1 H=4 N=128 D=64"
    assert describe(_case(nk=256)).endswith("Nq=128 Nk=256 D=64")
    assert case_name(row) == describe(row, "id") == "sdpa@math[fp32-fwd-causal-B1-H4-N128-D64]"
    assert describe(row, "setting") == "cpu fp32 fwd causal H=4 D=64"


def test_statuses_are_plain_strings_in_rows() -> None:
    """A Status is its string: rows written before the enum read the same."""
    assert Status.OK == "ok" and json.dumps({"s": Status.OOM}) == '{"s": "oom"}'
    assert {"ok", "mismatch"} == MEASURED and MODES == ("fwd", "bwd", "fwd+bwd", "decode")


def test_element_bytes_agree_with_the_torch_dtypes() -> None:
    """The report layer's torch-free sizes name the same dtypes, with torch's itemsize."""
    assert set(ELEMENT_BYTES) == set(DTYPES)
    assert all(ELEMENT_BYTES[name] == dtype.itemsize for name, dtype in DTYPES.items())

"""torch.compile as a grid axis: eager cases keep their keys, compiled cases are kept apart,
compile time is recorded outside the timed region, and the row says what ran (inductor's
own code, or SDPA where inductor substituted it)."""

from __future__ import annotations

import json
import time

import pytest
import torch

import variants
from harness.cases import Case
from harness.compiled import INDUCTOR_CODE
from harness.config import ConfigError, MeasureConf, grid_settings
from harness.grid import cases
from harness.measure import MeasureSettings, base_row, measure
from harness.rows import Row
from harness.rundir import GRID_KEYS
from harness.specs import VariantSpec, parse_spec
from harness.vocab import case_key, describe
from harness.worker import from_request, to_request
from tests.broken_variants import make_variant
from tests.conftest import ROOT

#: the key of tests/fixtures/report_run/rows.jsonl's first row, measured before compile existed
PINNED = ('{"b":1,"causal":false,"config":{},"d":16,"device":"cpu","dtype":"fp32","h":2,'
          '"mode":"fwd","nk":32,"nq":32,"variant":"naive"}')
QUICK = MeasureSettings(min_run_time=0.02, memory=False, roof=False)
COMPILED = {"naive", "memory_efficient", "linear", "sparse"}


def spec(text: str) -> VariantSpec:
    """Parse a spec against the registry."""
    return parse_spec(text, variants.load_all(names=[text.partition("@")[0]]))


def case(text: str, compiled: bool, mode: str = "fwd", n: int = 32) -> Case:
    """A tiny CPU fp32 case: B=1, H=2, D=16."""
    return Case(spec(text), "cpu", "fp32", mode, False, 1, 2, n, n, 16, compile=compiled)


def test_eager_keys_are_those_measured_before_compile_existed() -> None:
    """compile=false joins no key: today's key of a fixture's case is the stored one."""
    stored = (ROOT / "tests/fixtures/report_run/rows.jsonl").read_text().splitlines()[0]
    row = Row.from_dict(json.loads(stored))
    assert row.key == PINNED and row.compile is False  # an old row reads back eager
    assert case("naive", False).key() == PINNED == case_key(row)


def test_compiled_cases_have_their_own_key_and_label() -> None:
    """compile=true adds "compile": true to the key and "+compile" to the label, in the row
    too, and survives the trip to a worker."""
    eager, compiled = case("naive", False), case("naive", True)
    assert json.loads(compiled.key()) == {**json.loads(eager.key()), "compile": True}
    assert compiled.label == "naive+compile" and eager.label == "naive"
    assert describe(compiled) == "naive+compile cpu fp32 fwd full B=1 H=2 N=32 D=16"
    row = base_row(compiled)
    assert (row.label, row.compile, row.key) == ("naive+compile", True, compiled.key())
    assert Row.from_dict(row.to_json()) == row
    rebuilt = from_request(to_request(compiled, QUICK))
    assert rebuilt.compile is True and rebuilt.key() == compiled.key()


def test_the_grid_multiplies_by_the_compile_axis() -> None:
    """compile=[false,true] doubles the cases, eager first; the default is eager only."""
    assert MeasureConf().compile == [False] and "compile" in GRID_KEYS
    conf = MeasureConf(variants=["naive", "sdpa"], compile=[False, True], seq_lens=[64, 128])
    got = [(c.label, c.nq) for c in cases(grid_settings(conf))]
    assert got == [("naive", 64), ("naive", 128), ("naive+compile", 64),
                   ("naive+compile", 128), ("sdpa", 64), ("sdpa", 128),
                   ("sdpa+compile", 64), ("sdpa+compile", 128)]
    for bad in ([], ["yes"]):
        with pytest.raises(ConfigError, match="compile"):
            MeasureConf(compile=bad)


def test_only_the_pure_pytorch_variants_compile() -> None:
    """Supports.compile is declared by naive, memory_efficient, linear and sparse; sdpa with
    compile=true is a row saying why, and nothing runs."""
    declared = {name: variants.get(name).supports.compile for name in (*COMPILED, "sdpa")}
    assert declared == {**dict.fromkeys(COMPILED, True), "sdpa": False}
    start = time.perf_counter()
    row = measure(case("sdpa", True), QUICK)
    assert row.status == "unavailable" and row.label == "sdpa+compile"
    assert "sdpa has no compiled mode" in row.reason and "Supports.compile" in row.reason
    assert row.median_ms is None and "compile_s" not in row.extra
    assert time.perf_counter() - start < 5


def test_compiled_naive_is_timed_after_its_compile() -> None:
    """A compiled case records cold and warm-cache compile time, then a steady-state median;
    the oracle checks the compiled function; inductor's own code ran (no SDPA)."""
    row = measure(case("naive", True), QUICK)
    assert row.status == "ok" and row.check_ok is True and row.median_ms > 0
    assert row.extra["compile_s"] > 0 and row.extra["compile_warm_s"] is not None
    assert set(row.extra["compile_cache"]) == {"cold", "warm"}
    assert row.extra["kernel"] == {"forward": INDUCTOR_CODE}


def textbook(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
             scale: float | None, cfg: object) -> torch.Tensor:
    """softmax(Q K^T * scale) V written as inductor's _sfdp_pattern_2, which it replaces."""
    return torch.matmul(q, k.transpose(-2, -1)).mul(q.shape[-1] ** -0.5).softmax(
        dim=-1).matmul(v)  # (B, H, Nq, D)


def test_inductor_substituting_sdpa_is_what_the_row_says() -> None:
    """Inductor never rewrites our naive (it max-subtracts by hand and normalises after the
    matmul, unlike every fuse_attention pattern), so the detector is proven on a textbook
    softmax(QK^T)V it does replace: the row names the SDPA ops, forward and backward."""
    variant = make_variant("textbook", textbook)
    assert variant.supports.compile
    c = Case(VariantSpec("textbook", variant, variant.config_cls()), "cpu", "fp32", "fwd+bwd",
             False, 1, 2, 32, 32, 16, compile=True)
    row = measure(c, QUICK)
    assert row.status == "ok" and row.check_ok is True
    assert row.extra["kernel"] == {
        "forward": "sdpa via inductor: inductor replaced the computation with sdpa "
                   "(aten::_scaled_dot_product_flash_attention_for_cpu)",
        "backward": "sdpa via inductor: inductor replaced the computation with sdpa "
                    "(aten::_scaled_dot_product_flash_attention_for_cpu_backward)",
    }


def test_a_graph_break_makes_a_compiled_case_unavailable() -> None:
    """sparse@bigbird reads its block table back to Python: no single graph, so compile=true
    is unavailable with dynamo's reason rather than half eager."""
    row = measure(case("sparse@bigbird", True, n=256), QUICK)
    assert row.status == "unavailable" and "cannot capture sparse@bigbird+compile" in row.reason


@pytest.mark.slow
@pytest.mark.parametrize("label", ["naive", "memory_efficient", "linear", "sparse",
                                   "sparse@window", "memory_efficient@small_tiles"])
@pytest.mark.parametrize("causal", [False, True])
def test_every_compiled_variant_agrees_with_the_oracle(label: str, causal: bool) -> None:
    """The oracle checks each compiled pure-PyTorch variant, output and gradients (fwd+bwd),
    at a shape of several tiles with Nq = Nk not a multiple of them."""
    c = Case(spec(label), "cpu", "fp32", "fwd+bwd", causal, 1, 2, 200, 200, 16, compile=True)
    row = measure(c, QUICK)
    assert row.status == "ok" and row.check_ok is True, row.reason
    assert row.check_tensor in ("out", "dq", "dk", "dv")

"""Ragged batches: lengths drawn or given, every variant packed (sequence by sequence) and
the key-padding ones padded agree with the oracle run sequence by sequence, rows carry padding
waste and effective tokens per second, and bad axes are refused by name."""

from __future__ import annotations

import pytest
import torch

import variants as registry
from harness.cases import Case
from harness.config import ConfigError, MeasureSettings, sweep_settings
from harness.grid import cases
from harness.measure import measure, unavailable_reason
from harness.oracle import check_agreement
from harness.ragged import lengths, pairs, waste
from harness.specs import default_specs
from harness.support import support_matrix
from harness.vocab import Status, describe
from tests.test_sweep import composed
from variants.contract import Shape, Unavailable

SPECS = default_specs(registry.load_all())


def ragged_case(spec, form: str, causal: bool = False, mode: str = "fwd") -> Case:
    """B=3 sequences of up to 48 tokens, a quarter to all of N."""
    return Case(spec, "cpu", "fp32", mode, causal, 3, 2, 48, 48, 16, ragged="uniform:0.25",
                ragged_form=form)


PACKED = [s for s in SPECS if unavailable_reason(ragged_case(s, "packed")) is None]
PADDED = [s for s in SPECS if unavailable_reason(ragged_case(s, "padded")) is None]


def test_lengths_are_seeded_bounded_and_reach_n() -> None:
    """uniform:F draws in [F N, N] with the longest at N, the same for the same seed;
    explicit lists are taken as given and checked against B and N."""
    drawn = lengths("uniform:0.25", 8, 1000, seed=0)
    assert drawn == lengths("uniform:0.25", 8, 1000, seed=0) and max(drawn) == 1000
    assert all(250 <= n <= 1000 for n in drawn) and len(set(drawn)) > 1
    assert lengths("512/300/1024", 3, 1024, seed=0) == (512, 300, 1024)
    for spec, b, n in (("512/300", 3, 1024), ("512/2000", 2, 1024), ("uniform:0", 2, 8),
                       ("a/b", 2, 8)):
        with pytest.raises(ValueError):
            lengths(spec, b, n, seed=0)


def test_padding_waste_counts_computed_pairs() -> None:
    """Padded computes B N^2 pairs of which the real ones are sum L^2; packed wastes none."""
    lens = (4, 2)
    assert pairs(lens, causal=False) == 20 and pairs(lens, causal=True) == 13
    assert waste(lens, 4, False, "padded") == pytest.approx(1 - 20 / 32)
    assert waste(lens, 4, True, "padded") == pytest.approx(1 - 13 / 20)
    assert waste(lens, 4, False, "packed") == 0.0


@pytest.mark.parametrize("spec", PACKED, ids=lambda s: s.label)
@pytest.mark.parametrize("causal", [False, True])
def test_packed_agrees_with_the_oracle_sequence_by_sequence(spec, causal) -> None:
    """Output and gradients; padding rows and padding keys get zeros."""
    lens = (48, 13, 30)
    backward = unavailable_reason(ragged_case(spec, "packed", mode="fwd+bwd")) is None
    kw = {"device": "cpu", "dtype": torch.float32, "causal": causal, "backward": backward,
          "seed": 4}
    try:
        agreement = check_agreement(spec.variant, spec.cfg, Shape(3, 2, 48, 48, 16), **kw,
                                    ragged=(lens, "packed"))
    except Unavailable:  # only where the equal-length batch is refused too (prefix_lm causal)
        with pytest.raises(Unavailable):
            check_agreement(spec.variant, spec.cfg, Shape(3, 2, 48, 48, 16), **kw)
        return
    assert agreement.ok, agreement.checks


@pytest.mark.parametrize("spec", PADDED, ids=lambda s: s.label)
@pytest.mark.parametrize("causal", [False, True])
def test_padded_agrees_with_the_oracle(spec, causal) -> None:
    """One masked call over the padded batch computes each sequence's attention."""
    agreement = check_agreement(spec.variant, spec.cfg, Shape(3, 2, 48, 48, 16), device="cpu",
                                dtype=torch.float32, causal=causal, backward=True, seed=4,
                                ragged=((48, 13, 30), "padded"))
    assert agreement.ok, agreement.checks


def test_padded_runs_where_a_key_padding_form_exists_and_says_why_elsewhere() -> None:
    """naive and sdpa take a key-padding mask; the rest name the packed form instead."""
    assert {"naive", "sdpa"} <= {s.label for s in PADDED}
    spec = next(s for s in SPECS if s.label == "linear")
    assert "ragged_form=packed" in unavailable_reason(ragged_case(spec, "padded"))


def test_a_wrong_padded_mask_is_caught(monkeypatch) -> None:
    """A padded form that forgets the key-padding mask disagrees with the oracle."""
    spec = next(s for s in SPECS if s.label == "naive")
    module = spec.variant.module

    def unmasked(q, k, v, lens, *, causal, scale, cfg):
        return module.attention(q, k, v, causal=causal, scale=scale, cfg=cfg)

    monkeypatch.setattr(module, "attention_padded", unmasked)
    agreement = check_agreement(spec.variant, spec.cfg, Shape(3, 2, 48, 48, 16), device="cpu",
                                dtype=torch.float32, causal=False, backward=False, seed=4,
                                ragged=((48, 13, 30), "padded"))
    assert not agreement.ok


def test_a_ragged_row_carries_waste_tokens_per_second_and_real_flops() -> None:
    """Measured: ok, padding waste of the padded form, real-token FLOPs and throughput."""
    spec = next(s for s in SPECS if s.label == "sdpa")
    settings = MeasureSettings(min_run_time=0.02, roof=False)
    padded_row = measure(ragged_case(spec, "padded", causal=True), settings)
    packed_row = measure(ragged_case(spec, "packed", causal=True), settings)
    lens = ragged_case(spec, "padded").lengths
    for row in (padded_row, packed_row):
        assert row.status == Status.OK, row.reason
        assert row.flops == 4 * 2 * 16 * pairs(lens, causal=True)
        assert row.tokens_per_s == pytest.approx(sum(lens) / (row.median_ms * 1e-3))
    assert padded_row.padding_waste == pytest.approx(waste(lens, 48, True, "padded"))
    assert padded_row.padding_waste > 0
    assert packed_row.padding_waste == 0.0
    assert "ragged=uniform:0.25 padded" in describe(padded_row)


def test_ragged_axis_is_validated_and_spans_forms() -> None:
    """Bad specs and lists that do not fit B or N are named; each ragged spec runs in both
    forms unless ragged_forms narrows it; no ragged means one equal-length case."""
    over = ["sweep=smoke", "variants=[sdpa]", "seq_lens=[64]", "modes=[fwd]", "causal=[false]",
            "batch_sizes=[2]"]
    for bad in ("ragged=[uniform:2]", "ragged=[10/20/30]", "ragged_forms=[squeezed]"):
        with pytest.raises(ConfigError, match="ragged"):
            sweep_settings(composed("config", [*over, bad]))
    grid = sweep_settings(composed("config", [*over, "ragged=[uniform:0.5,10/64]"])).grid
    assert [(c.ragged, c.ragged_form) for c in cases(grid)] == [
        ("uniform:0.5", "padded"), ("uniform:0.5", "packed"), ("10/64", "padded"),
        ("10/64", "packed")]
    grid = sweep_settings(composed("config", over)).grid
    assert [(c.ragged, c.ragged_form) for c in cases(grid)] == [("", "")]


def test_the_support_matrix_has_both_ragged_forms() -> None:
    """Cells agree with what measure decides."""
    cells = {(c.label, c.scenario): c.reason for c in support_matrix(SPECS, ["cpu"], ["fp32"])}
    for spec in SPECS:
        assert (cells[(spec.label, "ragged packed")] == "") == (spec in PACKED)
        assert (cells[(spec.label, "ragged padded")] == "") == (spec in PADDED)


def test_the_report_shows_tokens_per_second_and_padding_waste(tmp_path) -> None:
    """A ragged setting's section: throughput and waste tables beside time and memory."""
    import json

    from harness.report import build
    from harness.results import load

    spec = next(s for s in SPECS if s.label == "sdpa")
    settings = MeasureSettings(min_run_time=0.01, roof=False)
    rows = [measure(ragged_case(spec, form), settings) for form in ("padded", "packed")]
    run = tmp_path / "run"
    run.mkdir()
    (run / "rows.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
    text = build(load([run], allow_no_manifest=True), tmp_path / "out", "sdpa").read_text()
    assert "ragged=uniform:0.25 padded" in text and "ragged=uniform:0.25 packed" in text
    assert "Effective throughput (thousand real tokens per second)" in text
    assert "Padding waste (% of computed query-key pairs that are padding)" in text

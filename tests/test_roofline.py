"""Bytes moved and the roofline: the I/O-only count by hand, a variant's own model taking its
place, both ceilings in every measured row, and the report's table and figure from rows."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from matplotlib.figure import Figure

import variants
from harness.cases import Case
from harness.measure import MeasureSettings, measure
from harness.report_figures import FigureView
from harness.report_plot import colours
from harness.report_roofline import roofline_figure, roofline_lines
from harness.report_text import legend_names
from harness.roofline import GIB, attainable_gflops, io_bytes, roofline_fields, traffic
from harness.specs import VariantSpec
from harness.vocab import IO_ONLY_BYTES
from variants.contract import Shape


def _case(name: str, mode: str, dtype: str = "fp32", dims=(2, 3, 40, 56, 16)) -> Case:
    variant = variants.get(name)
    return Case(VariantSpec(name, variant, variant.config_cls()), "cpu", dtype, mode, False,
                *dims)


def test_io_bytes_by_hand() -> None:
    """fwd: q, k, v in, out and float32 lse out; bwd: q, k, v, out, dout, lse in, dq, dk, dv
    out; bf16 halves the tensors but not lse."""
    b, h, nq, nk, d = 2, 3, 40, 56, 16
    q, k, lse = b * h * nq * d, b * h * nk * d, b * h * nq * 4
    fwd = (2 * q + 2 * k) * 4 + lse
    bwd = (3 * q + 2 * k) * 4 + lse + (q + 2 * k) * 4
    shape = Shape(b, h, nq, nk, d)
    assert io_bytes(shape, dtype=torch.float32, backward=False) == fwd
    assert io_bytes(shape, dtype=torch.float32, backward=True) == fwd + bwd
    assert io_bytes(shape, dtype=torch.bfloat16, backward=False) == fwd // 2 + lse // 2
    t = traffic(_case("sdpa", "bwd"))
    assert t.bytes == bwd and t.convention == IO_ONLY_BYTES


def test_io_bytes_count_grouped_heads_and_the_value_dim() -> None:
    """GQA: k, v at Hkv heads, read once; Dv: v, out and dout at Dv, q and k at D."""
    b, h, hkv, nq, nk, d, dv = 2, 4, 1, 40, 56, 24, 16
    q, k, v, o, lse = b * h * nq * d, b * hkv * nk * d, b * hkv * nk * dv, b * h * nq * dv, \
        b * h * nq * 4
    fwd = (q + k + v + o) * 4 + lse
    bwd = (q + k + v + 2 * o) * 4 + lse + (q + k + v) * 4
    shape = Shape(b, h, nq, nk, d, hkv, dv)
    assert io_bytes(shape, dtype=torch.float32, backward=False) == fwd
    assert io_bytes(shape, dtype=torch.float32, backward=True) == fwd + bwd
    gqa = replace(_case("sdpa", "fwd", dims=(b, h, nq, nk, d)), kv_heads=hkv, dv=dv)
    assert traffic(gqa).bytes == fwd
    assert traffic(replace(gqa, kv_heads=0)).bytes > fwd  # four heads of k, v, not one


def test_a_packed_ragged_batch_moves_its_sequences_and_a_padded_one_its_padding() -> None:
    """Packed: the sum over sequences at their own lengths; padded: the whole (B, N) batch."""
    case = replace(_case("naive", "fwd+bwd", dims=(3, 2, 64, 64, 16)), ragged="64/10/33",
                   ragged_form="packed")
    assert case.lengths == (64, 10, 33)
    each = sum(traffic(replace(_case("naive", "fwd+bwd", dims=(1, 2, n, n, 16)))).bytes
               for n in case.lengths)
    assert traffic(case).bytes == each
    padded = replace(case, ragged_form="padded")
    assert traffic(padded).bytes == traffic(replace(padded, ragged="", ragged_form="")).bytes


def test_a_variants_own_model_replaces_the_io_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module's bytes_moved(…, backward) is used per mode: bwd is fwd+bwd minus fwd."""
    module = variants.get("naive").module
    monkeypatch.setattr(module, "bytes_moved", lambda *a, backward, **kw: 500 if backward
                        else 200, raising=False)
    assert traffic(_case("naive", "fwd")).bytes == 200
    assert traffic(_case("naive", "bwd")).bytes == 300
    moved = traffic(_case("naive", "fwd+bwd"))
    assert moved.bytes == 500 and moved.convention == "naive's traffic model"


def test_the_roofline_is_the_lower_ceiling() -> None:
    """Below the ridge the bandwidth binds, above it the compute roof."""
    bw = 10.0  # GiB/s: 10.74 GB/s; roof 100 GFLOP/s: ridge at about 9.3 FLOP/byte
    assert attainable_gflops(1000, 1000, 100.0, bw) == pytest.approx(bw * GIB / 1e9)
    assert attainable_gflops(10**6, 1000, 100.0, bw) == 100.0
    low = roofline_fields(1000, 1000, 5.0, 100.0, bw)
    assert low["bound"] == "memory"
    assert low["roofline_efficiency"] == pytest.approx(5.0 / (bw * GIB / 1e9))
    assert roofline_fields(10**6, 1000, 50.0, 100.0, bw)["bound"] == "compute"
    assert roofline_fields(None, 1000, 5.0, 100.0, bw) == {}


def test_a_measured_row_carries_both_ceilings() -> None:
    """bytes, GiB/s, attainable GFLOP/s and efficiency against it, all consistent."""
    row = measure(_case("sdpa", "fwd+bwd"), MeasureSettings(min_run_time=0.05, memory=False,
                                                            check=False))
    assert row.status == "ok"
    assert row.bytes_moved == traffic(_case("sdpa", "fwd+bwd")).bytes
    assert row.gib_s == pytest.approx(row.bytes_moved / (row.median_ms * 1e-3) / GIB)
    attainable = attainable_gflops(row.flops, row.bytes_moved, row.roof_gflops, row.copy_gib_s)
    assert row.attainable_gflops == pytest.approx(attainable)
    assert row.roofline_efficiency == pytest.approx(row.gflops / attainable)
    assert row.extra["bound"] in ("memory", "compute")
    assert row.extra["bytes_convention"] == IO_ONLY_BYTES

    view = FigureView(None, [row], legend_names([row]), colours([row.label]), "sdpa")
    text = "\n".join(roofline_lines([row, replace(row, label="x", status="error")]))
    assert "## Roofline" in text and "| sdpa |" in text and "I/O only" in text
    assert "| x |" not in text
    fig = roofline_figure(view)
    assert isinstance(fig, Figure) and len(fig.axes[0].get_lines()) == 2  # sdpa, roofline
    assert roofline_lines([replace(row, bytes_moved=None)]) == []


def test_materialising_variants_count_every_pass_over_their_scores() -> None:
    """masked (naive impl) and eager flex model their score passes; a dense-masked SDPA adds
    its mask; compiled flex has no model (I/O only)."""
    from variants import memory_models

    dims, f32 = (1, 2, 64, 80, 16), torch.float32
    m = memory_models.dims(*dims, f32, upcast_low_precision=False)
    masked, flex = variants.get("masked"), variants.get("flex")
    kw = {"dtype": f32, "causal": False, "device": "cpu"}
    naive_impl = masked.bytes_moved(Shape(*dims), backward=True, cfg=masked.presets["window_naive"],
                                    **kw)
    passes = (memory_models.SCORE_PASSES_FWD + memory_models.MASK_PASSES
              + memory_models.SCORE_PASSES_BWD)
    assert naive_impl == (memory_models.io_traffic(m, backward=True) + passes * m.scores * 4
                          + 2 * 64 * 80)
    sdpa_impl = masked.bytes_moved(Shape(*dims), backward=False, cfg=masked.presets["window"], **kw)
    assert sdpa_impl == memory_models.io_traffic(m, backward=False) + 64 * 80 * (1 + 2 * 4)
    assert flex.bytes_moved(Shape(*dims), backward=False, cfg=flex.presets["window"], **kw) is None
    eager = flex.bytes_moved(Shape(*dims), backward=False, cfg=flex.presets["eager"], **kw)
    assert eager > io_bytes(Shape(*dims), dtype=f32, backward=False) + 6 * m.scores * 4


def test_a_model_without_the_grouping_keywords_still_serves_plain_shapes(monkeypatch) -> None:
    """A module's model written before hkv and dv existed gets neither for a plain shape; a
    grouped shape hands them to a model that takes them."""
    naive = variants.get("naive")
    kw = {"dtype": torch.float32, "causal": False, "backward": False,
          "cfg": naive.config_cls(), "device": "cpu"}

    def old(b, h, nq, nk, d, *, dtype, causal, backward, cfg, device):
        return b * h * nq * nk * d

    monkeypatch.setattr(naive.module, "bytes_moved", old)
    assert naive.bytes_moved(Shape(1, 2, 8, 8, 4), **kw) == 2 * 8 * 8 * 4
    monkeypatch.setattr(naive.module, "bytes_moved", lambda *a, hkv=0, dv=0, **k: 100 * hkv + dv)
    assert naive.bytes_moved(Shape(1, 2, 8, 8, 4, 1, 6), **kw) == 106

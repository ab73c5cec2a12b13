"""flex and masked: the patterns they share (variants/patterns.py) by hand, agreement with the
float64 oracle per preset, torch's own refusals, the FLOP conventions, and what a measured
row says ran. Compiled flex compiles (about 5 s a graph on two cores, docs/flex.md): those
tests are marked slow; the fast ones run eager flex and the masked references."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import variants
from harness.cases import Case
from harness.flops import flops_convention, forward_flops
from harness.measure import MeasureSettings, measure
from harness.oracle import check_agreement
from harness.specs import parse_spec
from variants import flex, masked, patterns, sparse
from variants.contract import Shape, SoftmaxAttention, Unavailable
from variants.patterns import MaskSpec

FLEX, MASKED = variants.get("flex"), variants.get("masked")
#: small patterns that cross several 16-wide blocks at N of 40-60
SMALL = {"window": 5, "documents": 3, "prefix": 7, "block": 16}
SHAPES = (Shape(2, 2, 45, 45, 16), Shape(1, 2, 37, 61, 16), Shape(1, 3, 61, 29, 16))


def _keep(spec: MaskSpec, nq: int, nk: int, causal: bool) -> torch.Tensor:
    fn = patterns.mask_fn(spec, causal, nq, nk)
    return patterns.dense_keep(fn, nq, nk, "cpu")


def _cases(variant, *, small: dict) -> list[tuple[str, object, bool]]:
    """(label, config, causal) for the default and every preset, both maskings where the
    pattern takes them, with the small sizes of ``small`` applied."""
    cfgs = {"default": variant.config_cls(), **variant.presets}
    out = []
    for name, cfg in cfgs.items():
        fields = {k: v for k, v in small.items() if hasattr(cfg, k)}
        cfg = dataclasses.replace(cfg, **fields)
        out += [(name, cfg, c) for c in (False, True) if patterns.causal_conflict(cfg, c) is None]
    return out


# ---------------------------------------------------------------- the patterns by hand


@pytest.mark.parametrize(("nq", "nk"), [(9, 9), (5, 11), (11, 5), (1, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("w", [1, 3])
def test_window_is_the_sparse_variants_window(nq: int, nk: int, causal: bool, w: int) -> None:
    """One window: patterns' predicate equals variants.sparse.window_keep."""
    got = _keep(MaskSpec(pattern="window", window=w), nq, nk, causal)
    assert torch.equal(got, sparse.window_keep(nq, nk, causal, torch.device("cpu"), window=w))


def test_document_by_hand() -> None:
    """Equal segments, block-diagonal; Nq != Nk splits each side into its own segments."""
    spec = MaskSpec(pattern="document", documents=2)
    one = torch.ones(3, 3, dtype=torch.bool)
    assert torch.equal(_keep(spec, 6, 6, False), torch.block_diag(one, one))
    assert torch.equal(_keep(spec, 6, 6, True), torch.block_diag(one.tril(), one.tril()))
    wide = torch.block_diag(torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))
    assert torch.equal(_keep(spec, 4, 8, False), wide)


def test_prefix_lm_by_hand() -> None:
    """Keys 0..prefix-1 for every query, causal after; causal=true is refused, with why."""
    spec = MaskSpec(pattern="prefix_lm", prefix=2)
    want = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(_keep(spec, 5, 5, False), want)
    assert "causal=false" in patterns.causal_conflict(spec, True)


def test_alibi_and_softcap_applied_densely() -> None:
    """ALiBi adds slope_h * (kv - q); the soft-cap is cap * tanh(s / cap)."""
    s = torch.randn(2, 4, 5, 7, dtype=torch.float64) * 50  # (B, H, Nq, Nk)
    alibi = patterns.score_mod(MaskSpec(score_mod="alibi"))
    slopes = patterns.alibi_slopes(4)[:, None, None]  # (H, 1, 1)
    rel = torch.arange(7)[None, :] - torch.arange(5)[:, None]  # (Nq, Nk): kv - q
    torch.testing.assert_close(alibi.dense(s), s + slopes * rel)
    cap = patterns.score_mod(MaskSpec(score_mod="softcap", softcap=20.0))
    torch.testing.assert_close(cap.dense(s), 20.0 * torch.tanh(s / 20.0))
    assert cap.dense(s).abs().max() < 20.0


# ---------------------------------------------------------------- agreement with the oracle


@pytest.mark.parametrize(("name", "cfg", "causal"), _cases(MASKED, small=SMALL))
def test_masked_agrees_with_oracle(name: str, cfg, causal: bool) -> None:
    """Every masked preset, on shapes with Nq != Nk both ways, in fp32 and bf16."""
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            got = check_agreement(MASKED, cfg, shape, device="cpu", dtype=dtype, causal=causal,
                                  backward=True)
            assert got.ok, (name, shape.label(), dtype, got.worst())


@pytest.mark.parametrize(("name", "cfg", "causal"),
                         _cases(FLEX, small={**SMALL, "compiled": False}))
def test_eager_flex_agrees_with_oracle(name: str, cfg, causal: bool) -> None:
    """flex's eager path over every preset's pattern and score mod (forward: CPU has none)."""
    for shape in SHAPES:
        got = check_agreement(FLEX, cfg, shape, device="cpu", dtype=torch.float32,
                              causal=causal, backward=False, logit_scale=3.0)
        assert got.ok, (name, shape.label(), got.worst())


def test_fully_masked_rows_are_zero() -> None:
    """A causal window with Nq > Nk + w leaves rows that see no key: zeros, as the oracle."""
    cfg = flex.Config(pattern="window", window=1, compiled=False, block=16)
    q = torch.randn(1, 1, 12, 8)
    k = torch.randn(1, 1, 4, 8)
    for variant, c in ((FLEX, cfg), (MASKED, masked.Config(pattern="window", window=1))):
        out = variant.attention(q, k, k, causal=True, scale=None, cfg=c)
        assert torch.equal(out[0, 0, 5:], torch.zeros(7, 8)), variant.name  # rows i >= Nk + w


# ---------------------------------------------------------------- refusals, in torch's words


def test_cpu_backward_is_unavailable_in_torchs_words() -> None:
    """torch 2.13's flex has no CPU backward: the reason quotes torch, attention raises it."""
    reason = FLEX.unavailable_reason("cpu", torch.float32, causal=False, backward=True,
                                     cfg=flex.Config(compiled=False))
    assert "FlexAttention does not support backward on CPU" in reason
    q = torch.randn(1, 1, 8, 8, requires_grad=True)
    with pytest.raises(Unavailable, match="does not support backward on CPU"):
        FLEX.attention(q, q, q, causal=False, scale=None, cfg=flex.Config(compiled=False))
    assert FLEX.unavailable_reason("cpu", torch.float32, causal=False, backward=False,
                                   cfg=flex.Config()) is None


def test_prefix_lm_causal_and_sdpa_softcap_are_unavailable() -> None:
    """prefix_lm takes causal=false (both variants); SDPA cannot soft-cap, naive can."""
    for variant in (FLEX, MASKED):
        cfg = variant.presets["prefix_lm"]
        reason = variant.unavailable_reason("cpu", torch.float32, causal=True, backward=False,
                                            cfg=cfg)
        assert reason == patterns.causal_conflict(cfg, True)
        q = torch.randn(1, 1, 4, 8)
        with pytest.raises(Unavailable, match="its own causal structure"):
            variant.attention(q, q, q, causal=True, scale=None, cfg=cfg)
    capped = masked.Config(score_mod="softcap")
    reason = MASKED.unavailable_reason("cpu", torch.float32, causal=False, backward=False,
                                       cfg=capped)
    assert "not additive" in reason and "soft-cap" in reason
    with pytest.raises(Unavailable, match="not additive"):
        MASKED.attention(q, q, q, causal=False, scale=None, cfg=capped)
    assert MASKED.unavailable_reason("cpu", torch.float32, causal=False, backward=False,
                                     cfg=MASKED.presets["softcap"]) is None


def test_config_validation_names_the_field() -> None:
    """Bad values are refused with the field's name."""
    for make, field, bad in ((flex.Config, "block", 0), (flex.Config, "compiled", "yes"),
                             (flex.Config, "pattern", "bigbird"),
                             (masked.Config, "impl", "flash"),
                             (masked.Config, "score_mod", "rope")):
        with pytest.raises(ValueError, match=field):
            make(**{field: bad})


# ---------------------------------------------------------------- FLOP conventions


@pytest.mark.parametrize("pattern", patterns.PATTERNS)
@pytest.mark.parametrize(("nq", "nk"), [(300, 300), (129, 517), (517, 129)])
@pytest.mark.parametrize("causal", [False, True])
def test_flex_flops_count_the_block_masks_nonempty_blocks(pattern: str, nq: int, nk: int,
                                                         causal: bool) -> None:
    """block_table equals create_block_mask's partial + full blocks; computed pairs are those
    blocks' pairs, clipped to Nq x Nk; FLOPs are 4 B H D times that."""
    if patterns.causal_conflict(MaskSpec(pattern=pattern), causal):
        return
    cfg = flex.Config(pattern=pattern, window=100, prefix=100, documents=3)
    table = flex.block_table(patterns.mask_only(cfg), 128, nq, nk, causal)
    bm = flex.block_mask(patterns.mask_only(cfg), 128, nq, nk, causal, "cpu")
    if bm is not None:
        blocks = int(bm.kv_num_blocks.sum()) + int(bm.full_kv_num_blocks.sum())
        assert int(table.sum()) == blocks
    if pattern == "full":  # softmax attention: FLOPs as sdpa's rows (next test)
        assert isinstance(FLEX.computes(cfg), SoftmaxAttention)
        return
    sem = FLEX.computes(cfg)
    keep = sem.keep(nq, nk, causal, torch.device("cpu"))  # (Nq, Nk)
    assert sem.kept(nq, nk, causal) == int(keep.sum())
    pad = torch.zeros(-(-nq // 128) * 128, -(-nk // 128) * 128, dtype=torch.bool)
    pad[:nq, :nk] = keep
    tiles = pad.view(pad.shape[0] // 128, 128, -1, 128).any(dim=3).any(dim=1)  # (nqb, nkb)
    assert torch.equal(tiles, table)
    inside = torch.zeros_like(pad)
    inside[:nq, :nk] = True
    pairs = int((inside.view(tiles.shape[0], 128, -1, 128) * tiles[:, None, :, None]).sum())
    assert sem.computed(nq, nk, causal) == pairs >= sem.kept(nq, nk, causal)
    assert forward_flops(sem, 2, 3, nq, nk, 64, causal) == 4 * 2 * 3 * 64 * pairs
    assert "128x128 blocks of the block mask" in sem.flops_convention


def test_no_mask_is_softmax_attention_and_a_dense_mask_counts_every_pair() -> None:
    """flex with no mask computes softmax attention, counted as sdpa's rows are (causal
    pairs); a dense mask counts every pair, says so, and is not sub-quadratic; a block mask
    counts whole diagonal blocks (causal window N = 256 in 128-blocks: three, 49152 pairs)."""
    from harness.report_data import is_subquadratic
    from harness.vocab import DENSE_MASK_FLOPS

    plain = FLEX.computes(flex.Config(score_mod="alibi"))
    assert isinstance(plain, SoftmaxAttention) and plain.score_mod is not None
    assert forward_flops(plain, 1, 1, 256, 256, 64, True) == 4 * 64 * (256 * 257 // 2)
    window = FLEX.computes(flex.Config(pattern="window", window=200))
    assert window.computed(256, 256, True) == 3 * 128 * 128
    dense = MASKED.computes(MASKED.presets["window"])
    assert dense.dense and flops_convention(dense, True) == DENSE_MASK_FLOPS
    assert forward_flops(dense, 1, 1, 300, 200, 64, True) == 4 * 64 * 300 * 200
    row = _measured("masked@window", False)
    assert row.extra["flops_convention"] == DENSE_MASK_FLOPS and not is_subquadratic(row)
    flex_row = dataclasses.replace(row, variant="flex", extra={
        **row.extra, "flops_convention": window.flops_convention})
    assert is_subquadratic(flex_row)


def test_masks_are_described_once() -> None:
    """flex, masked and sparse windows say the same (reports group rows by it)."""
    texts = {variants.get(n).definition(variants.get(n).presets["window"]).split(";")[0]
             for n in ("flex", "masked", "sparse")}
    assert len(texts) == 1, texts


# ---------------------------------------------------------------- what ran


def test_dispatched_says_what_runs() -> None:
    """flex names compiled or eager and the block count; masked names SDPA's backend."""
    shape = Shape(1, 2, 300, 300, 64)
    kw = {"device": "cpu", "dtype": torch.float32, "causal": True, "backward": False}
    ran = FLEX.dispatched(shape, cfg=FLEX.presets["window"], **kw)["forward"]
    assert ran.startswith("flex compiled: flex_attention by inductor") and "C++" in ran
    assert "block mask 128x128, 6 non-empty blocks of 9" in ran
    assert FLEX.dispatched(shape, cfg=FLEX.presets["eager"], **kw)["forward"].startswith(
        "flex eager: ")
    sdpa = MASKED.dispatched(shape, cfg=MASKED.presets["window"], **kw)["forward"]
    assert sdpa.startswith("sdpa ") and "boolean attn_mask" in sdpa
    assert "float bias" in MASKED.dispatched(shape, cfg=MASKED.presets["alibi"], **kw)["forward"]
    assert MASKED.dispatched(shape, cfg=MASKED.presets["softcap"], **kw) == {}


def _measured(text: str, causal: bool):
    spec = parse_spec(text, variants.load_all(names=[text.split("@")[0]]))
    case = Case(spec, "cpu", "fp32", "fwd", causal, b=1, h=2, nq=300, nk=300, d=32)
    return measure(case, MeasureSettings(min_run_time=0.05, memory=False, roof=False))


def test_eager_flex_row_says_what_ran() -> None:
    """A measured eager row: ok, checked, eager named; no mask: FLOPs on the causal pairs,
    as sdpa's rows count them (the kernel still computes 6 whole blocks)."""
    row = _measured("flex@eager", True)
    assert row.status == "ok" and row.check_ok, row.reason
    assert row.extra["kernel"]["forward"].startswith("flex eager: ")
    pairs = 300 * 301 // 2
    assert row.extra["flops_convention"] == "causal pairs j <= i"
    assert row.flops == 4 * 1 * 2 * 32 * pairs


# ---------------------------------------------------------------- compiled flex (slow)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "cfg", "causal"), _cases(FLEX, small={}))
def test_compiled_flex_agrees_with_oracle(name: str, cfg, causal: bool) -> None:
    """Every preset compiled (the eager one too), at the preset's own sizes, multi-block."""
    for shape in (Shape(2, 2, 300, 300, 32), Shape(1, 2, 129, 517, 32)):
        got = check_agreement(FLEX, cfg, shape, device="cpu", dtype=torch.float32,
                              causal=causal, backward=False)
        assert got.ok, (name, shape.label(), got.worst())


@pytest.mark.slow
def test_compiled_flex_low_precision_and_small_blocks() -> None:
    """bf16 and fp16 compile and agree; a 16-wide block mask too."""
    cfg = flex.Config(**SMALL, pattern="document")
    for dtype in (torch.bfloat16, torch.float16):
        got = check_agreement(FLEX, cfg, Shape(1, 2, 61, 45, 32), device="cpu", dtype=dtype,
                              causal=True, backward=False)
        assert got.ok, (dtype, got.worst())


@pytest.mark.slow
def test_compiled_fp64_on_cpu_is_unavailable_in_inductors_words() -> None:
    """Inductor's CPU flex lowers fp32, bf16, fp16: fp64 is refused, in its words."""
    reason = FLEX.unavailable_reason("cpu", torch.float64, causal=False, backward=False,
                                     cfg=flex.Config())
    assert "are supported in FlexAttention for CPU device" in reason and "float64" in reason
    q = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(Unavailable, match="FlexAttention for CPU device"):
        FLEX.attention(q, q, q, causal=False, scale=None, cfg=flex.Config())
    assert FLEX.unavailable_reason("cpu", torch.float64, causal=False, backward=False,
                                   cfg=flex.Config(compiled=False)) is None


@pytest.mark.slow
def test_sequence_lengths_share_one_graph() -> None:
    """dynamic=True: once a multi-block shape compiled, other lengths add no graph."""
    from torch._dynamo.utils import counters

    cfg = flex.Config(pattern="window")
    q, k = torch.randn(2, 3, 300, 64), torch.randn(2, 3, 300, 64)
    FLEX.attention(q, k, k, causal=True, scale=None, cfg=cfg)
    before = counters["stats"]["unique_graphs"]
    for n in (257, 640, 1000):
        x = torch.randn(2, 3, n, 64)
        y = torch.randn(2, 3, n + 77, 64)
        FLEX.attention(x, y, y, causal=True, scale=None, cfg=cfg)
    assert counters["stats"]["unique_graphs"] == before


@pytest.mark.slow
def test_compiled_flex_row_says_what_ran() -> None:
    """A measured compiled row: ok, checked, inductor named with the block count."""
    row = _measured("flex@window", True)
    assert row.status == "ok" and row.check_ok, row.reason
    ran = row.extra["kernel"]["forward"]
    assert ran.startswith("flex compiled: ")
    assert "block mask 128x128, 6 non-empty blocks of 9" in ran

"""Decode steps (mode=decode): every variant that declares one agrees with the float64 oracle
(output and cache), steps are repeatable, caches have the sizes their forms promise, and the
grid, support matrix and rows treat decode as its own mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import variants as registry
from harness.cases import Case
from harness.config import MeasureSettings
from harness.decode import check_decode, step_call
from harness.measure import measure, unavailable_reason
from harness.specs import default_specs
from harness.support import support_matrix
from harness.vocab import Status, case_key
from variants import decoding
from variants.contract import DTYPES

SPECS = default_specs(registry.load_all())


def decode_case(spec, n: int, t: int, dtype: str = "fp32", b: int = 2, h: int = 3) -> Case:
    """A decode case: t new tokens after a cached context of n."""
    return Case(spec, "cpu", dtype, "decode", True, b, h, n, n, 16, new_tokens=t)


#: what runs decode on this CPU; what has no decode form (whatever the device)
DECODING = [s for s in SPECS if unavailable_reason(decode_case(s, 8, 1)) is None]
REFUSING = [s for s in SPECS if s.variant.decode_reason(s.cfg) is not None]


def test_the_exact_linear_and_window_variants_declare_decode() -> None:
    """Which forms exist: exact K/V caches, linear's state, the sliding window's last w,
    BigBird's K/V cache read through its block table."""
    labels = {s.label for s in DECODING}
    assert {"naive", "sdpa", "memory_efficient", "linear", "sparse", "sparse@bigbird"} <= labels
    assert {"flex", "masked"} <= {s.label for s in REFUSING}


@pytest.mark.parametrize("spec", DECODING, ids=lambda s: s.label)
@pytest.mark.parametrize("n, t", [(1, 1), (37, 1), (300, 4), (700, 8)])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_step_agrees_with_the_last_rows_of_causal_attention(spec, n, t, dtype) -> None:
    """Output against the last t rows over N + t tokens, cache against the longer prefill
    (N = 300 and 700 lie beyond the default window of 256, 1 and 37 within it)."""
    agreement, shape = check_decode(decode_case(spec, n, t, dtype), spec.variant, 2**22, seed=1)
    assert shape.nk == n  # checked at the case's own shape
    assert agreement.ok, agreement.checks
    assert [c.tensor for c in agreement.checks] == ["out", "cache"]


@dataclasses.dataclass(frozen=True)
class _StaleCache:
    """A cache whose step forgets to add the new keys (what the cache check must catch)."""

    inner: decoding.KVCache

    def nbytes(self) -> int:
        return self.inner.nbytes()

    def state(self) -> dict[str, torch.Tensor]:
        return self.inner.state()


def test_the_cache_check_catches_a_step_that_does_not_update_its_cache(monkeypatch) -> None:
    """A correct output with a stale cache is a mismatch on 'cache'."""
    spec = next(s for s in DECODING if s.label == "naive")
    real = spec.variant.module.decode

    def stale(q, k, v, cache, *, scale, cfg):
        out, _ = real(q, k, v, cache, scale=scale, cfg=cfg)
        return out, decoding.KVCache(cache.k, cache.v, cache.length)  # length not advanced

    monkeypatch.setattr(spec.variant.module, "decode", stale)
    agreement, _ = check_decode(decode_case(spec, 50, 2), spec.variant, 2**22, seed=0)
    bad = [c for c in agreement.checks if not c.ok]
    assert [c.tensor for c in bad] == ["cache"]


def test_the_output_check_catches_a_window_off_by_one(monkeypatch) -> None:
    """A window step that drops its oldest cached key (sees w - 1 back) disagrees with the
    oracle."""
    spec = next(s for s in DECODING if s.label == "sparse")
    module = spec.variant.module
    real = module.decode

    def short(q, k, v, cache, *, scale, cfg):
        narrow = dataclasses.replace(cache, window=cache.window - 1)
        out, after = real(q, k, v, narrow, scale=scale, cfg=cfg)
        return out, dataclasses.replace(after, window=cache.window)

    monkeypatch.setattr(module, "decode", short)
    agreement, _ = check_decode(decode_case(spec, 400, 1), spec.variant, 2**22, seed=0)
    assert not agreement.ok and agreement.worst().tensor == "out"


@pytest.mark.parametrize("n, t", [(40, 1), (2000, 1), (2000, 5), (2010, 8)])
def test_a_bigbird_step_reads_just_the_key_blocks_its_rows_keep(n, t) -> None:
    """BigBird's step gathers the kept blocks of the N + t table's last t rows: exactly the
    dense pattern's keys there, (3 + g + r) blocks of a row at most (a query block in the
    global rows sees every key)."""
    from variants import sparse

    cfg = sparse.Config(pattern="bigbird", block=16)
    blocks = -(-n // cfg.block)
    pos, keep = decoding.block_step_keys(sparse._table(cfg, blocks, blocks), t, n, cfg.block)
    dense = sparse.bigbird_keep(n, n, True, torch.device("cpu"), cfg=cfg)[n - t:]  # (t, n)
    assert torch.equal(dense[:, pos], keep) and int(dense.sum()) == int(keep.sum())
    row_blocks = len({(i // cfg.block) for i in range(n - t, n)})
    per_row = 3 + cfg.num_global_blocks + cfg.num_random_blocks
    if blocks <= 3:  # local (+-1) and global blocks keep every key of three blocks
        assert len(pos) == n
    else:
        assert len(pos) <= row_blocks * per_row * cfg.block < n


def test_the_output_check_catches_a_bigbird_step_on_another_table(monkeypatch) -> None:
    """A BigBird step that reads a table drawn for other block counts than N + t's disagrees
    with the oracle (the random blocks move with the block counts)."""
    from variants import sparse

    spec = next(s for s in DECODING if s.label == "sparse@bigbird")
    real = sparse.block_step_keys

    def other_table(table, t, n, block):
        return real(sparse._table(spec.cfg, table.shape[0] + 1, table.shape[1] + 1), t, n, block)

    monkeypatch.setattr(sparse, "block_step_keys", other_table)
    agreement, _ = check_decode(decode_case(spec, 640, 1), spec.variant, 2**22, seed=0)
    assert not agreement.ok and agreement.worst().tensor == "out"


@pytest.mark.parametrize("spec", DECODING, ids=lambda s: s.label)
def test_a_step_is_repeatable_and_leaves_its_cache_alone(spec) -> None:
    """Timing calls the same step again and again: same output, same cache before it."""
    run, held, read = step_call(decode_case(spec, 300, 4), spec.variant, seed=0)
    first, after = run()
    second, _ = run()
    assert torch.equal(first, second) and 0 < read <= held
    assert after.length == 304 if hasattr(after, "length") else True


def test_cache_bytes_follow_each_form() -> None:
    """K/V grows with N; the window's ring holds w + t slots; linear's state does not grow."""
    def held(label: str, n: int) -> int:
        spec = next(s for s in DECODING if s.label == label)
        return step_call(decode_case(spec, n, 1, b=1, h=1), spec.variant, seed=0)[1]

    element = 4  # fp32
    assert held("sdpa", 2000) == 2 * 2000 * 16 * element  # K and V, 16 dims
    window = next(s for s in DECODING if s.label == "sparse").cfg.window
    ring = 2 * (window + 1) * 16 * element  # w + t slots, preallocated: flat from the start
    assert held("sparse", 100) == held("sparse", 2000) == held("sparse", 4000) == ring
    assert held("linear", 100) == held("linear", 4000) == (16 * 16 + 16) * element
    assert held("sparse@bigbird", 2000) == held("sdpa", 2000)  # any key block may be drawn
    bigbird = next(s for s in DECODING if s.label == "sparse@bigbird")
    _, kept, read = step_call(decode_case(bigbird, 4000, 1, b=1, h=1), bigbird.variant, seed=0)
    blocks = 3 + bigbird.cfg.num_global_blocks + bigbird.cfg.num_random_blocks
    assert 0 < read <= blocks * bigbird.cfg.block * 2 * 16 * element < kept  # its rows' blocks


@pytest.mark.parametrize("spec", REFUSING, ids=lambda s: s.label)
def test_a_variant_without_decode_is_unavailable_with_its_reason(spec) -> None:
    """No silent fallback: the row says why."""
    row = measure(decode_case(spec, 64, 1), MeasureSettings(min_run_time=0.01))
    assert row.status == Status.UNAVAILABLE and "decode" in row.reason


def test_a_decode_row_carries_time_cache_traffic_and_flops() -> None:
    """One measured decode row: ok, its cache's MiB, bytes moved, FLOPs of t rows."""
    spec = next(s for s in DECODING if s.label == "sdpa")
    case = decode_case(spec, 512, 1, b=1, h=2)
    row = measure(case, MeasureSettings(min_run_time=0.02, roof=False))
    assert row.status == Status.OK, row.reason
    assert row.cache_mib == pytest.approx(2 * 2 * 512 * 16 * 4 / 2**20)
    assert row.flops == 4 * 2 * 16 * 513  # one row over 513 keys
    assert row.bytes_moved >= row.cache_mib * 2**20 and row.gib_s > 0
    assert row.new_tokens == 1 and '"new_tokens":1' in row.key == case_key(case)
    assert row.peak_fwd_mib is not None and row.check_tensor in ("out", "cache")


def test_decode_and_compile_do_not_mix() -> None:
    """compile=true compiles attention(), not a step: said, not run."""
    spec = next(s for s in DECODING if s.label == "naive")
    case = dataclasses.replace(decode_case(spec, 64, 1), compile=True)
    assert "decode step" in unavailable_reason(case)


def test_a_decode_case_must_be_causal_with_new_tokens() -> None:
    """Case validation: decode needs t >= 1, causal and nq == nk; other modes t == 0."""
    spec = SPECS[0]
    with pytest.raises(ValueError, match="new_tokens"):
        Case(spec, "cpu", "fp32", "decode", True, 1, 1, 8, 8, 16)
    with pytest.raises(ValueError, match="new_tokens"):
        Case(spec, "cpu", "fp32", "fwd", True, 1, 1, 8, 8, 16, new_tokens=1)
    with pytest.raises(ValueError, match="causal"):
        Case(spec, "cpu", "fp32", "decode", False, 1, 1, 8, 8, 16, new_tokens=1)


def test_the_support_matrix_agrees_with_what_decode_runs() -> None:
    """The matrix's decode column is None exactly where a decode case measures."""
    cells = {c.label: c.reason for c in support_matrix(SPECS, ["cpu"], ["fp32"])
             if c.scenario == "decode"}
    for spec in SPECS:
        assert (cells[spec.label] == "") == (spec in DECODING), spec.label
        if spec in REFUSING:
            assert cells[spec.label] == spec.variant.decode_reason(spec.cfg)
    assert DTYPES["fp32"] == torch.float32


def test_the_report_shows_decode_settings_with_cache_figure_and_which_one(tmp_path) -> None:
    """Decode rows (two contexts, two variants) make a decode section: step time and cache
    tables by context N, the decode figure, and the which-one table; fit exponents too."""
    import json

    from harness.report import build
    from harness.results import load

    settings = MeasureSettings(min_run_time=0.01, roof=True)
    picked = [s for s in DECODING if s.label in ("sdpa", "linear")]
    rows = [measure(decode_case(spec, n, 1, b=1, h=2), settings)
            for spec in picked for n in (256, 1024)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "rows.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
    report = build(load([run], allow_no_manifest=True), tmp_path / "out", "sdpa")
    text = report.read_text()
    assert "decode t=1" in text and "Cache the step holds (MiB" in text
    assert "Which one: the fastest exact variant" in text
    assert list((tmp_path / "out" / "figures").glob("decode_*.png"))

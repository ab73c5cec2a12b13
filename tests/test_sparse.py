"""The sparse variant: the exact window boundary, agreement with the float64 oracle (both patterns,
ragged shapes, rows without keys, large logits), the oracle rejecting a window one too wide,
BigBird's pattern properties, memory proportional to the kept entries, config validation."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

import variants
from harness.memory import peak_bytes
from harness.oracle import Shape, check_agreement
from harness.timing import timed_callable
from variants import sparse
from variants.contract import Variant, check_module
from variants.sparse import Config

WINDOW = Config(pattern="window", window=5, block=4)
BIGBIRD = Config(pattern="bigbird", block=4, num_global_blocks=1, num_random_blocks=2, seed=3)
# Square sizes, Nq != Nk both ways, rows with no key (Nq > Nk + 5), windows past Nk (12, 3).
SIZES = [(1, 1), (3, 3), (17, 17), (33, 33), (17, 33), (33, 17), (1, 33), (33, 3), (12, 3)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def variant() -> Variant:
    """The registered sparse variant."""
    return variants.get("sparse")


def _expected_window(nq: int, nk: int, w: int, causal: bool) -> torch.Tensor:
    """The window written out entry by entry: |i-j| <= w, or i-w <= j <= i if causal."""
    keep = torch.zeros(nq, nk, dtype=torch.bool)
    for i in range(nq):
        for j in range(nk):
            keep[i, j] = (i - w <= j <= i) if causal else abs(i - j) <= w
    return keep


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("w", [0, 1, 3])
@pytest.mark.parametrize(("nq", "nk"), [(1, 1), (7, 7), (12, 5), (5, 12), (9, 2)])
def test_window_boundary_exact(nq: int, nk: int, w: int, causal: bool) -> None:
    """The keep-mask is exactly |i-j| <= w (causal i-w <= j <= i), diagonal included."""
    keep = sparse.computes(Config(window=w)).keep(nq, nk, causal, torch.device("cpu"))
    assert torch.equal(keep, _expected_window(nq, nk, w, causal))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize(("nq", "nk"), SIZES, ids=[f"Nq{a}-Nk{b}" for a, b in SIZES])
@pytest.mark.parametrize("cfg", [WINDOW, BIGBIRD], ids=["window", "bigbird"])
def test_agrees_with_oracle(
    variant: Variant, cfg: Config, nq: int, nk: int, dtype: torch.dtype, causal: bool
) -> None:
    """Output and gradients match the float64 masked softmax, logits scaled x30."""
    agreement = check_agreement(
        variant, cfg, Shape(2, 3, nq, nk, 8), device="cpu", dtype=dtype, causal=causal,
        backward=True, logit_scale=30.0,
    )
    assert agreement.ok, agreement.worst()


@pytest.mark.parametrize(
    "cfg",
    [Config(), Config(pattern="bigbird"), Config(window=0, block=1),
     Config(pattern="bigbird", block=3, num_global_blocks=0, num_random_blocks=0),
     Config(pattern="bigbird", block=5, num_global_blocks=2, num_random_blocks=9)],
    ids=["window-default", "bigbird-default", "diagonal-only", "local-only", "many-random"],
)
@pytest.mark.parametrize(("nq", "nk"), [(257, 127), (40, 9)])
def test_other_configs_fp64_fp16(variant: Variant, cfg: Config, nq: int, nk: int) -> None:
    """Defaults (window wider than Nk), extreme configs and empty rows, in fp64 and fp16."""
    for dtype, causal in ((torch.float64, False), (torch.float16, True)):
        agreement = check_agreement(
            variant, cfg, Shape(1, 2, nq, nk, 8), device="cpu", dtype=dtype, causal=causal,
            backward=True, scale=0.3,
        )
        assert agreement.ok, agreement.worst()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("cfg", [WINDOW, BIGBIRD], ids=["window", "bigbird"])
def test_many_groups_and_chunks(
    variant: Variant, monkeypatch: pytest.MonkeyPatch, cfg: Config, causal: bool
) -> None:
    """Tiny group and chunk budgets (one (b, h) and one tile per step) change nothing, in the
    forward and in the recomputing backward."""
    monkeypatch.setattr(sparse, "GROUP_ELEMENTS", 1)
    monkeypatch.setattr(sparse, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(sparse, "BACKWARD_CHUNK_ELEMENTS", 1)
    for nq, nk in ((33, 17), (17, 33)):
        agreement = check_agreement(
            variant, cfg, Shape(2, 3, nq, nk, 8), device="cpu", dtype=torch.float32,
            causal=causal, backward=True, logit_scale=30.0,
        )
        assert agreement.ok, agreement.worst()


def test_strided_inputs_match_contiguous() -> None:
    """Inputs laid out (B, N, H, D) and transposed give the same result as contiguous ones."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 8, generator=gen).transpose(1, 2) for n in (19, 23, 23))
    for cfg in (WINDOW, BIGBIRD):
        strided = sparse.attention(q, k, v, causal=True, cfg=cfg)
        dense = sparse.attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True,
                                 cfg=cfg)
        torch.testing.assert_close(strided, dense, rtol=0, atol=0)


def _misconfigured(change: dict[str, int]) -> Variant:
    """A copy of the sparse module whose attention runs with ``change`` applied to its cfg."""
    module = types.ModuleType("tests.misconfigured_sparse")
    for name in ("NAME", "Config", "PRESETS", "SUPPORTS", "computes", "unavailable_reason"):
        setattr(module, name, getattr(sparse, name))

    def attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
        causal: bool = False, scale: float | None = None, cfg: Config = WINDOW,
    ) -> torch.Tensor:
        wrong = dataclasses.replace(cfg, **change)
        return sparse.attention(q, k, v, causal=causal, scale=scale, cfg=wrong)

    module.attention = attention
    return check_module(module)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_oracle_rejects_window_one_too_wide(causal: bool) -> None:
    """Declaring window w but attending with w + 1 fails the oracle; the honest one passes."""
    wide = _misconfigured({"window": WINDOW.window + 1})
    shape = Shape(1, 2, 17, 17, 8)
    kwargs = {"device": "cpu", "dtype": torch.float32, "causal": causal, "backward": True}
    assert not check_agreement(wide, WINDOW, shape, **kwargs).ok
    assert check_agreement(variants.get("sparse"), WINDOW, shape, **kwargs).ok


def test_oracle_rejects_other_random_blocks() -> None:
    """Attending with another seed's random blocks than declared fails the oracle."""
    other = _misconfigured({"seed": BIGBIRD.seed + 1})
    agreement = check_agreement(
        other, BIGBIRD, Shape(1, 2, 33, 33, 8), device="cpu", dtype=torch.float32,
        causal=False, backward=False,
    )
    assert not agreement.ok


def _blocks(cfg: Config, nq: int, nk: int) -> torch.Tensor:
    """The block table behind the dense BigBird keep-mask, recomputed (cache cleared)."""
    sparse.block_table.cache_clear()
    return sparse.block_table(-(-nq // cfg.block), -(-nk // cfg.block),
                              cfg.num_global_blocks, cfg.num_random_blocks, cfg.seed)


@pytest.mark.parametrize(("nq", "nk"), [(64, 64), (61, 23), (23, 61), (9, 200)])
def test_bigbird_pattern_properties(nq: int, nk: int) -> None:
    """Deterministic per seed, seed-dependent, no empty row, global rows full, r fresh blocks."""
    cfg, cpu = Config(pattern="bigbird", block=4, num_global_blocks=2, num_random_blocks=3), "cpu"
    keep = sparse.computes(cfg).keep(nq, nk, False, torch.device(cpu))
    table = _blocks(cfg, nq, nk)
    assert torch.equal(keep, sparse.computes(cfg).keep(nq, nk, False, torch.device(cpu)))
    assert torch.equal(table, _blocks(cfg, nq, nk))
    other = _blocks(dataclasses.replace(cfg, seed=cfg.seed + 1), nq, nk)
    assert not torch.equal(table, other) or table.all()
    assert keep.any(dim=1).all()
    assert keep[: 2 * cfg.block].all() and keep[:, : 2 * cfg.block].all()
    causal = sparse.computes(cfg).keep(nq, nk, True, torch.device(cpu))
    assert causal.any(dim=1).all() and torch.equal(causal, keep & torch.ones_like(keep).tril())
    nqb, nkb = table.shape
    for row in range(2, nqb):
        fixed = {row - 1, row, row + 1, 0, 1} & set(range(nkb))
        kept = set(table[row].nonzero().flatten().tolist())
        assert fixed <= kept
        assert len(kept) == len(fixed) + min(3, nkb - len(fixed))  # duplicates would count less


def test_key_lists_have_no_duplicates() -> None:
    """Each block row gathers its kept key blocks once each, then only the sentinel."""
    table = _blocks(BIGBIRD, 61, 47)
    ids = sparse._key_lists(table, table.shape[1])
    for row, kept in zip(ids.tolist(), table, strict=True):
        real = [i for i in row if i != table.shape[1]]
        assert real == kept.nonzero().flatten().tolist()


def _peak(cfg: Config, n: int, backward: bool) -> int:
    """Peak bytes of a (1, 4, n, 16) sparse forward (and backward), inputs excluded."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 16, generator=gen).requires_grad_(backward) for _ in "qkv")

    def run() -> object:
        out = sparse.attention(q, k, v, cfg=cfg)
        if backward:
            return torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        return out

    run()  # warm-up outside the window (the first profiler start is slow anyway)
    return peak_bytes(run, "cpu")


@pytest.mark.parametrize(
    "cfg", [Config(window=16, block=16), Config(pattern="bigbird", block=16)],
    ids=["window", "bigbird"],
)
def test_memory_follows_kept_entries(cfg: Config) -> None:
    """At N=2048 no Nq x Nk tensor is ever allocated; the peak grows about linearly in N."""
    dense = 4 * 2048 * 2048 * 4  # B H N N fp32 score matrix: 64 MiB
    with torch.inference_mode():
        fwd_1k, fwd_2k = _peak(cfg, 1024, False), _peak(cfg, 2048, False)
    both_1k, both_2k = _peak(cfg, 1024, True), _peak(cfg, 2048, True)
    assert fwd_2k < dense / 4 and both_2k < dense / 2, (fwd_2k, both_2k)
    assert fwd_2k < 2.5 * fwd_1k and both_2k < 2.5 * both_1k, (fwd_1k, fwd_2k, both_1k, both_2k)


def test_inference_mode_matches_autograd_and_keeps_dtype() -> None:
    """Forward under inference_mode equals the autograd path; bf16 in, bf16 out and grads."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 21, 16, generator=gen).bfloat16() for _ in "qkv")
    for cfg in (WINDOW, BIGBIRD):
        with torch.inference_mode():
            fast = sparse.attention(q, k, v, causal=True, cfg=cfg)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = sparse.attention(*leaves, causal=True, cfg=cfg)
        assert fast.dtype == out.dtype == torch.bfloat16 and fast.shape == q.shape
        assert torch.equal(fast, out.detach())
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        assert [g.dtype for g in grads] == [torch.bfloat16] * 3


def test_presets_and_description() -> None:
    """Presets name the two patterns; the window description states the boundary."""
    assert {name: cfg.pattern for name, cfg in sparse.PRESETS.items()} == {
        "window": "window", "bigbird": "bigbird"}
    assert "|i-j|<=256" in sparse.computes(Config()).description
    assert sparse.unavailable_reason("cpu", torch.float32, causal=True, backward=True,
                                     cfg=Config()) is None


@pytest.mark.parametrize(
    ("field", "bad"),
    [("pattern", "dense"), ("window", -1), ("window", 2.5), ("block", 0), ("block", True),
     ("num_global_blocks", -1), ("num_random_blocks", "2"), ("seed", -3)],
)
def test_config_errors_name_the_field(field: str, bad: object) -> None:
    """A bad value raises ValueError naming the field and what is allowed."""
    allowed = "one of" if field == "pattern" else "an int >="
    with pytest.raises(ValueError, match=f"{field} must be {allowed}"):
        Config(**{field: bad})


@pytest.mark.parametrize("pattern", ["window", "bigbird"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("nq", "nk"), [(1, 1), (17, 17), (33, 20), (20, 33), (64, 64)])
def test_kept_count_matches_dense_mask(pattern: str, causal: bool, nq: int, nk: int) -> None:
    """The FLOP model's kept-pair count equals the dense keep-mask's, without building it."""
    cfg = sparse.Config(pattern=pattern, window=5, block=4, num_random_blocks=1)
    sem = sparse.computes(cfg)
    assert sem.kept(nq, nk, causal) == int(sem.keep(nq, nk, causal, torch.device("cpu")).sum())


@pytest.mark.parametrize("pattern", ["window", "bigbird"])
@pytest.mark.parametrize("scale", [-0.5, 1e-31, 3.0])
def test_padding_stays_masked_for_any_nonzero_scale(pattern: str, scale: float) -> None:
    """Negative, tiny and large scales agree with the float64 reference (review finding)."""
    cfg = sparse.Config(pattern=pattern, window=3, block=4, num_random_blocks=1)
    for causal in (False, True):
        a = check_agreement(variants.get("sparse"), cfg, Shape(1, 2, 13, 13, 8), device="cpu",
                            dtype=torch.float32, causal=causal, backward=True, scale=scale)
        assert a.ok, (causal, a.worst())


def test_zero_scale_is_refused() -> None:
    """A zero scale would unmask padding: refused with a clear message."""
    q = torch.randn(1, 1, 5, 8)
    with pytest.raises(ValueError, match="nonzero scale"):
        sparse.attention(q, q, q, scale=0.0, cfg=sparse.Config(window=2, block=4))


def _dense_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, scale: float
) -> torch.Tensor:
    """Masked softmax attention written out densely; rows that keep nothing give zeros."""
    empty = ~keep.any(dim=-1, keepdim=True)  # (Nq, 1)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Nq, Nk)
    scores = scores.masked_fill(~keep, -torch.inf).masked_fill(empty, 0.0)
    return (torch.softmax(scores, dim=-1) * ~empty) @ v  # (B, H, Nq, D)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(("nq", "nk"), [(37, 37), (29, 45), (45, 23)],
                         ids=["Nq37-Nk37", "Nq29-Nk45", "Nq45-Nk23"])
@pytest.mark.parametrize("cfg", [WINDOW, Config(window=4, block=4), BIGBIRD],
                         ids=["window", "window-whole-tiles", "bigbird"])
def test_backward_matches_dense_autograd(cfg: Config, nq: int, nk: int, causal: bool) -> None:
    """The custom backward's dq, dk, dv equal autograd through the dense masked float64
    reference: odd N (not whole blocks), Nq != Nk, rows without keys (45 x 23 window); a
    window span of whole tiles adds key gradients back with index_add_, others tile by tile."""
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 3, nq, 8, generator=gen, dtype=torch.float64) * 3
    k, v = (torch.randn(2, 3, nk, 8, generator=gen, dtype=torch.float64) for _ in "kv")
    dout = torch.randn(2, 3, nq, 8, generator=gen, dtype=torch.float64)
    keep = sparse.computes(cfg).keep(nq, nk, causal, torch.device("cpu"))
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        refs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = sparse.attention(*leaves, causal=causal, scale=0.4, cfg=cfg)
        ref = _dense_reference(*refs, keep, 0.4)
        got = torch.autograd.grad(out, leaves, dout.to(dtype))
        want = torch.autograd.grad(ref, refs, dout)
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
        for name, g, w in zip("qkv", got, want, strict=True):
            torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol, msg=name)


def _saved_bytes(cfg: Config, n: int) -> tuple[int, int]:
    """Bytes autograd saves for one (1, 4, n, 16) sparse call, and the largest tensor's."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 16, generator=gen).requires_grad_() for _ in "qkv")
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sparse.attention(q, k, v, cfg=cfg)
    return sum(sizes), max(sizes)


@pytest.mark.parametrize("cfg", [WINDOW, BIGBIRD, Config(), Config(pattern="bigbird")],
                         ids=["window", "bigbird", "window-default", "bigbird-default"])
def test_backward_saves_only_rows(cfg: Config) -> None:
    """Autograd saves q, k, v, the output and row logsumexps (rows padded to whole tiles),
    nothing score-sized: at most five (B, H, N + pad, D) tensors, linear in N."""
    row = 4 * 16 * 4  # bytes of one key row over H=4, D=16, fp32
    for n in (1024, 2048):
        total, largest = _saved_bytes(cfg, n)
        pad = cfg.window + cfg.block if cfg.pattern == "window" else cfg.block
        assert total <= 5 * (n + pad) * row and largest <= (n + pad) * row, (n, total)


@pytest.mark.parametrize("pattern", ["window", "bigbird"])
def test_fwd_bwd_peak_sits_on_the_model(pattern: str) -> None:
    """B=1, H=8, N=4096, D=64 fp32, as the harness runs it: the measured peaks of fwd and
    fwd+bwd are within 20% of expected_peak_bytes, and fwd+bwd stays O(N): under ten
    (B, H, N, D) rows, twice the about five that sdpa's fused CPU backward holds."""
    cfg = sparse.PRESETS[pattern]
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, 8, 4096, 64, generator=gen) for _ in range(4))
    for mode in ("fwd", "fwd+bwd"):
        run = timed_callable(lambda x, y, z: sparse.attention(x, y, z, cfg=cfg), q, k, v,
                             dout, mode)
        run()
        peak = peak_bytes(run, "cpu")
        model = sparse.expected_peak_bytes(1, 8, 4096, 4096, 64, dtype=torch.float32,
                                           causal=False, backward=mode != "fwd", cfg=cfg)
        assert 0.8 * model <= peak <= 1.2 * model, (mode, peak / 2**20, model / 2**20)
    assert peak < 10 * q.numel() * 4, peak / 2**20

"""Per-variant behaviour beyond agreement: contract shapes and dtypes, gradients, config
validation, unavailability reasons, and the xformers layout and mask mapping on CPU."""

from __future__ import annotations

import pytest
import torch

import variants
from tests.conftest import REGISTERED
from variants import naive
from variants.contract import DTYPES, Unavailable


def _available_configs(name: str, dtype: torch.dtype) -> list:
    variant = variants.get(name)
    cfgs = [variant.config_cls(), *variant.presets.values()]
    return [c for c in cfgs if variant.unavailable_reason(
        "cpu", dtype, causal=True, backward=variant.supports.backward, cfg=c) is None]


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_output_shape_dtype_and_gradients(name: str, dtype: str, qkv) -> None:
    """(B, H, Nq, D) out in the input dtype; gradients reach q, k and v."""
    variant = variants.get(name)
    q, k, v = (t.to(DTYPES[dtype]).requires_grad_() for t in qkv)
    for cfg in _available_configs(name, DTYPES[dtype]):
        out = variant.attention(q, k, v, causal=True, scale=None, cfg=cfg)
        assert out.shape == q.shape and out.dtype == q.dtype
        if variant.supports.backward:
            grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
            for grad, t in zip(grads, (q, k, v), strict=True):
                assert grad.shape == t.shape
            assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", REGISTERED)
def test_runs_under_inference_mode(name: str, qkv) -> None:
    """Forward timing runs under torch.inference_mode; every available variant must too."""
    variant = variants.get(name)
    with torch.inference_mode():
        for cfg in _available_configs(name, torch.float32):
            out = variant.attention(*qkv, causal=False, scale=0.3, cfg=cfg)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "field", "bad"),
    [("sdpa", "backend", "fastest"), ("xformers", "op", "triton"), ("linear", "chunk", 0),
     ("linear", "eps", -1.0)],
)
def test_config_validation_names_the_field(name: str, field: str, bad: object) -> None:
    """A bad config value is refused with the field's name."""
    with pytest.raises(ValueError, match=field):
        variants.get(name).config_cls(**{field: bad})


def test_sdpa_cpu_backends_without_kernels_say_so() -> None:
    """efficient and cudnn have no CPU kernel: a reason, and no silent fallback if forced."""
    sdpa = variants.get("sdpa")
    for backend in ("efficient", "cudnn"):
        cfg = sdpa.config_cls(backend=backend)
        reason = sdpa.unavailable_reason("cpu", torch.float32, causal=False, backward=True, cfg=cfg)
        assert reason and backend in reason and "CPU" in reason
        q = torch.randn(1, 1, 4, 8)
        with pytest.raises(Unavailable, match=backend):
            sdpa.attention(q, q, q, causal=False, scale=None, cfg=cfg)
    for backend in ("math", "flash", "auto"):
        cfg = sdpa.config_cls(backend=backend)
        assert sdpa.unavailable_reason("cpu", torch.float32, causal=True, backward=True,
                                       cfg=cfg) is None


def test_sdpa_pinned_backend_rejecting_inputs_is_unavailable() -> None:
    """flash cannot take a v head size other than q's: Unavailable, not a crash or fallback."""
    sdpa = variants.get("sdpa")
    q, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 16)
    with pytest.raises(Unavailable, match="'flash' cannot run these inputs"):
        sdpa.attention(q, q, v, causal=False, scale=None, cfg=sdpa.presets["flash"])


def test_xformers_is_unavailable_on_cpu_with_reason() -> None:
    """xformers 0.0.35 has no CPU kernels; the reason is each op's own, from the probe that
    harness doctor prints (never is_available() alone, which says True for cutlassF-pt)."""
    from xformers.ops import fmha

    xf = variants.get("xformers")
    reason = xf.unavailable_reason("cpu", torch.float16, causal=False, backward=True,
                                   cfg=xf.config_cls())
    assert reason and "cutlassF-pt: device=cpu (supported: {'cuda'})" in reason
    assert "cutlassB-pt" in reason and fmha.cutlass.FwOp.is_available()
    flash = xf.unavailable_reason("cpu", torch.float16, causal=False, backward=False,
                                  cfg=xf.presets["flash"])
    assert flash.startswith("no xformers op accepts") and "cutlass" not in flash


def test_xformers_layout_round_trip(qkv) -> None:
    """(B, H, N, D) -> (B, N, H, D) -> back is the identity, element by element."""
    from variants import xformers as xf

    q = qkv[0]
    bmhk = xf.to_bmhk(q)
    assert bmhk.shape == (q.shape[0], q.shape[2], q.shape[1], q.shape[3])
    assert torch.equal(bmhk[1, 5, 2], q[1, 2, 5])
    assert torch.equal(xf.from_bmhk(bmhk), q)


@pytest.mark.parametrize(("nq", "nk"), [(5, 5), (3, 7), (7, 3), (1, 1)])
def test_xformers_causal_bias_is_top_left(nq: int, nk: int) -> None:
    """LowerTriangularMask materialises to our top-left causal mask; non-causal is None."""
    from variants import xformers as xf

    assert xf.causal_bias(False) is None
    bias = xf.causal_bias(True).materialize((nq, nk), dtype=torch.float32, device="cpu")
    keep = naive.causal_keep(nq, nk, "cpu")
    assert torch.equal(bias == 0, keep)
    assert torch.isneginf(bias[~keep]).all()


def test_linear_scale_is_ignored(qkv) -> None:
    """Linear attention has no softmax: the scale argument cancels and is documented so."""
    lin = variants.get("linear")
    a = lin.attention(*qkv, causal=True, scale=None, cfg=lin.config_cls())
    b = lin.attention(*qkv, causal=True, scale=7.0, cfg=lin.config_cls())
    assert torch.equal(a, b)


def test_linear_causal_chunking_does_not_change_result(qkv) -> None:
    """Chunk length is an implementation detail: 1, 4 and one chunk give the same answer."""
    lin = variants.get("linear")
    outs = [lin.attention(*qkv, causal=True, scale=None, cfg=lin.config_cls(chunk=c))
            for c in (1, 4, 64)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-6)

"""The variant contract: registry, YAML per variant, external modules and clear errors."""

from __future__ import annotations

import dataclasses
import textwrap
import types
from pathlib import Path

import pytest

import variants
from tests.conftest import REGISTERED, ROOT
from variants.contract import ContractError, Supports, Variant, load_module


@pytest.mark.parametrize("name", REGISTERED)
def test_registered_module_follows_contract(name: str) -> None:
    """Each registry entry loads, is named as registered and has a frozen default Config."""
    variant = variants.get(name)
    assert variant.name == name
    assert isinstance(variant.supports, Supports)
    cfg = variant.config_cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        for field in dataclasses.fields(cfg):
            setattr(cfg, field.name, getattr(cfg, field.name))
        raise dataclasses.FrozenInstanceError  # configs without fields are frozen too
    for preset in variant.presets.values():
        assert isinstance(preset, variant.config_cls)


def test_registry_is_every_module_of_the_package() -> None:
    """A variant is found by its module alone: every module of variants/ but the helpers."""
    modules = {p.stem for p in (ROOT / "variants").glob("*.py") if not p.stem.startswith("_")}
    assert set(variants.REGISTRY) == modules - variants.HELPERS
    assert not (ROOT / "conf" / "variant").exists()  # no YAML mirror of a variant's Config


def _write(tmp_path: Path, name: str, body: str) -> None:
    """Write mypkg_<name>/<name>.py (a fresh package per test: sys.modules caches names)."""
    pkg = tmp_path / f"mypkg_{name}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / f"{name}.py").write_text(textwrap.dedent(body))


GOOD = """
    from dataclasses import dataclass
    import torch
    from variants.contract import DTYPES, SoftmaxAttention, Supports

    NAME = "myattn"
    PRESETS = {}
    SUPPORTS = Supports(devices=frozenset({"cpu"}), dtypes=frozenset({DTYPES["fp32"]}))

    @dataclass(frozen=True)
    class Config:
        pass

    def computes(cfg):
        return SoftmaxAttention()

    def unavailable_reason(device, dtype, *, causal, backward, cfg):
        return None

    def attention(q, k, v, *, causal=False, scale=None, cfg=Config()):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                scale=scale)
"""


def test_external_module_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module outside the project that follows the contract loads like a built-in."""
    _write(tmp_path, "myattn", GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = variants.load_all(["mypkg_myattn.myattn"], names=["naive"])
    assert set(loaded) == {"naive", "myattn"}


def test_import_error_names_the_module() -> None:
    """A module that cannot be imported gets a message naming it."""
    with pytest.raises(ContractError, match=r"cannot import variant module 'nope\.nothing'"):
        load_module("nope.nothing")


def test_missing_attributes_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module missing parts of the contract is told exactly which."""
    _write(tmp_path, "half", "NAME = 'half'\nPRESETS = {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ContractError) as info:
        load_module("mypkg_half.half")
    message = str(info.value)
    assert "'mypkg_half.half'" in message
    for attr in ("Config", "SUPPORTS", "computes", "unavailable_reason", "attention"):
        assert attr in message


def test_unfrozen_config_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mutable Config breaks the contract, with a message saying so."""
    _write(tmp_path, "mutable", GOOD.replace("@dataclass(frozen=True)", "@dataclass"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ContractError, match="frozen"):
        load_module("mypkg_mutable.mutable")


def test_unknown_variant_lists_registered() -> None:
    """Unknown names list what is registered."""
    with pytest.raises(ContractError, match="registered"):
        variants.get("flashy")


def test_name_clash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An external module may not take a built-in's name."""
    _write(tmp_path, "clash", GOOD.replace('NAME = "myattn"', 'NAME = "naive"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ContractError, match="already taken"):
        variants.load_all(["mypkg_clash.clash"], names=["naive"])


def test_definition_names_semantics_and_revision() -> None:
    """definition() tells softmax, sparse and linear apart and carries REVISION."""
    texts = {name: variants.get(name).definition(variants.get(name).config_cls())
             for name in ("naive", "sparse", "linear")}
    assert texts["naive"] == "softmax attention; revision 0"
    assert texts["sparse"].startswith("sparse softmax (sliding window")
    assert "elu(x) + 1" in texts["linear"] and "eps=1e-06" in texts["linear"]
    bigger = variants.get("sparse").definition(variants.get("sparse").config_cls(window=8))
    assert bigger != texts["sparse"]
    bumped = types.ModuleType("bumped")
    bumped.__dict__.update({**vars(variants.get("naive").module), "REVISION": 1})
    cfg = variants.get("naive").config_cls()
    assert Variant("naive", bumped).definition(cfg) == "softmax attention; revision 1"

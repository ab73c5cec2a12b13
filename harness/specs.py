"""Variant specs: a variant plus one configuration of it, named on the command line.

Grammar: ``NAME[@PRESET][:FIELD=VALUE[,FIELD=VALUE...]]``, for example ``sdpa@flash``,
``sparse@bigbird`` or ``'memory_efficient:block_q=64,block_k=32'`` (quote specs holding ``=``
inside Hydra lists). Fields are converted to the types the variant's Config declares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from variants.contract import Variant


class SpecError(ValueError):
    """A variant spec names an unknown variant, preset or field, or a bad value."""


@dataclass(frozen=True)
class VariantSpec:
    """One variant with one configuration, and the label it is reported under."""

    label: str
    variant: Variant
    cfg: Any

    @property
    def name(self) -> str:
        """The variant's registry name."""
        return self.variant.name


def _convert(value: str, typ: Any, field: str, label: str) -> Any:
    """Convert a command-line string to a Config field's declared type."""
    try:
        if typ is bool:
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return value.lower() == "true"
        if typ in (int, float, str):
            return typ(value)
    except ValueError:
        raise SpecError(f"{label}: field {field!r} needs a {typ.__name__}, got {value!r}") from None
    raise SpecError(f"{label}: field {field!r} has type {typ!r}, which specs cannot set")


def _overrides(text: str, cfg_cls: type, label: str) -> dict[str, Any]:
    """Parse ``a=1,b=x`` against the Config's fields."""
    hints = get_type_hints(cfg_cls)
    fields = [f.name for f in dataclasses.fields(cfg_cls)]
    result: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"{label}: expected FIELD=VALUE, got {item!r}")
        if key not in fields:
            raise SpecError(f"{label}: unknown field {key!r}; {cfg_cls.__qualname__} has {fields}")
        result[key] = _convert(value, hints[key], key, label)
    return result


def spec_name(text: str) -> str:
    """The variant name a spec string refers to."""
    return text.partition(":")[0].partition("@")[0]


def parse_spec(text: str, variants: Mapping[str, Variant]) -> VariantSpec:
    """Parse one spec string against the loaded variants."""
    head, _, fields = text.partition(":")
    name, _, preset = head.partition("@")
    if name not in variants:
        raise SpecError(f"variants: unknown variant {name!r}; allowed: {sorted(variants)}")
    variant = variants[name]
    if preset and preset not in variant.presets:
        allowed = sorted(variant.presets)
        raise SpecError(f"{text}: unknown preset {preset!r} of {name}; allowed: {allowed}")
    base = variant.presets[preset] if preset else variant.config_cls()
    try:
        cfg = dataclasses.replace(base, **_overrides(fields, variant.config_cls, text))
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{text}: {exc}") from exc
    return VariantSpec(label=text, variant=variant, cfg=cfg)


def default_specs(variants: Mapping[str, Variant]) -> list[VariantSpec]:
    """Every variant at its default config, then each of its presets (duplicates dropped)."""
    texts = []
    for name, variant in variants.items():
        texts.append(name)
        texts.extend(f"{name}@{preset}" for preset in variant.presets)
    return dedupe(parse_spec(t, variants) for t in texts)


def dedupe(specs: Iterable[VariantSpec]) -> list[VariantSpec]:
    """Drop specs whose (variant, config) repeats an earlier one."""
    seen: set[tuple[str, Any]] = set()
    kept = []
    for spec in specs:
        key = (spec.name, spec.cfg)
        if key not in seen:
            seen.add(key)
            kept.append(spec)
    return kept

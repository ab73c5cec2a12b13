"""Registry of attention variants: a plain mapping from name to module path.

Adding a variant is one module here, one entry below and one YAML file in ``conf/variant/``;
the tests pick it up from this mapping. Modules are imported on first use, never at import.
"""

from __future__ import annotations

from collections.abc import Iterable

from variants.contract import ContractError, Variant, load_module

REGISTRY: dict[str, str] = {
    "naive": "variants.naive",
    "memory_efficient": "variants.memory_efficient",
    "linear": "variants.linear",
    "sparse": "variants.sparse",
    "xformers": "variants.xformers",
    "sdpa": "variants.sdpa",
}


def get(name: str) -> Variant:
    """Load a registered variant by name; unknown names list what is allowed."""
    if name not in REGISTRY:
        raise ContractError(f"unknown variant {name!r}; registered: {sorted(REGISTRY)}")
    variant = load_module(REGISTRY[name])
    if variant.name != name:
        raise ContractError(
            f"module {REGISTRY[name]!r} declares NAME={variant.name!r}, not {name!r}"
        )
    return variant


def load_all(
    extra_modules: Iterable[str] = (), names: Iterable[str] | None = None
) -> dict[str, Variant]:
    """Registered variants (all, or those named) plus external modules (dotted paths)."""
    loaded = {name: get(name) for name in (REGISTRY if names is None else names)}
    for path in extra_modules:
        variant = load_module(path)
        if variant.name in loaded:
            raise ContractError(
                f"external variant module {path!r} declares NAME={variant.name!r}, "
                "which is already taken"
            )
        loaded[variant.name] = variant
    return loaded


__all__ = ["REGISTRY", "ContractError", "Variant", "get", "load_all"]

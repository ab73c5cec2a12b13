"""Registry of attention variants: every module of this package is one, found by name.

Adding a variant is one module here, ``variants/<name>.py``, whose ``NAME`` is ``<name>`` and
which follows ``variants/contract.py``; nothing else to edit. The registry, sweeps
(``variants: []`` means all of them) and the tests parametrised over it pick it up. The
package's helper modules (``HELPERS``) are not variants. Modules are imported on first use.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Iterable

from variants.contract import ContractError, Variant, load_module

#: modules of this package that are not variants
HELPERS = frozenset({"contract", "decoding", "grouping", "memory_models", "patterns",
                     "sparse_kernels"})


def discover() -> dict[str, str]:
    """Registry name -> module path of every variant module in this package, by name."""
    found = (m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg)
    return {name: f"{__name__}.{name}" for name in sorted(found)
            if name not in HELPERS and not name.startswith("_")}


REGISTRY: dict[str, str] = discover()


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


__all__ = ["HELPERS", "REGISTRY", "ContractError", "Variant", "discover", "get", "load_all"]

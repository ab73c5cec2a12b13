"""The import direction docs/design.md writes down holds in the code: every import of a
project module (at module top or inside a function) points to the same layer or one below."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

LAYER_LINE = re.compile(r"^ {4}(\d)  (\w+) +(.*)$")
#: the arrows design.md names as exceptions, (importer, imported)
EXCEPTIONS = {("harness.rundir", "harness.fingerprint")}


def layers() -> dict[str, int]:
    """Module -> layer number, read from the layer block of docs/design.md."""
    found: dict[str, int] = {}
    layer = 0
    for line in (ROOT / "docs" / "design.md").read_text().splitlines():
        match = LAYER_LINE.match(line)
        if match:
            layer, text = int(match.group(1)), match.group(3)
        elif layer and line.startswith(" " * 17) and line.strip():
            text = line.strip()
        else:
            layer = 0 if not line.strip() else layer
            continue
        for item in re.split(r",\s*", text.strip().rstrip(",")):
            name = item.split()[0].removesuffix(".py") if item else ""
            if name:
                path = "/" in name
                name = name.replace("/", ".").removesuffix(".__init__")
                found[name if path else f"harness.{name}"] = layer
    return found


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Project modules the file imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.split(".")[0] in ("harness", "variants")}


def _layer_of(module: str, table: dict[str, int]) -> int | None:
    if module in table:
        return table[module]
    if module.startswith("variants.") and module.count(".") == 1:
        return table.get("variants.<name>")
    return None


def test_every_module_has_a_layer() -> None:
    """design.md places every module of harness/ and variants/."""
    table = layers()
    files = [*(ROOT / "harness").glob("*.py"), *(ROOT / "variants").glob("*.py")]
    missing = [_module(p) for p in files if _module(p) != "harness"  # the package marker
               and _layer_of(_module(p), table) is None]
    assert not missing, f"docs/design.md places no layer for {missing}"


def test_imports_point_down_or_sideways() -> None:
    """No module imports one from a layer above its own."""
    table = layers()
    bad = []
    for path in [*(ROOT / "harness").glob("*.py"), *(ROOT / "variants").glob("*.py")]:
        me = _module(path)
        mine = _layer_of(me, table)
        for imported in _imports(path):
            theirs = _layer_of(imported, table)
            if theirs is not None and mine is not None and theirs > mine \
                    and (me, imported) not in EXCEPTIONS:
                bad.append(f"{me} (layer {mine}) imports {imported} (layer {theirs})")
    assert not bad, "\n".join(sorted(bad))


def test_readers_read_rows_not_todays_code() -> None:
    """compare, ab and report (layer 7) import only the bottom, the store and each other:
    never a variant, the measurement code or the sweep."""
    table = layers()
    bad = []
    for path in (ROOT / "harness").glob("*.py"):
        if _layer_of(_module(path), table) != 7:
            continue
        for imported in _imports(path):
            if _layer_of(imported, table) not in (1, 5, 7, None):
                bad.append(f"{_module(path)} imports {imported}")
    assert not bad, "\n".join(sorted(bad))

"""Where the installed project keeps its files: the Hydra configs (``conf/``)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The config directory: packaged as ``harness/conf`` by ``pip install .``, else the
    source tree's ``conf/`` (a checkout, an editable install)."""
    packaged = HERE / "conf"
    return packaged if packaged.is_dir() else HERE.parent / "conf"

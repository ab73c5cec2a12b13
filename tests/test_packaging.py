"""Packaging: a regular ``pip install .`` carries the Hydra configs (conf/ as harness/conf),
and every package under harness/ and variants/ is in pyproject.toml's explicit list."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Not copied into the build tree: environments, VCS data, outputs and build leftovers. An
# in-tree build would write build/ and *.egg-info into the shared checkout, and a stale
# build/lib/harness/conf could hide a packaging regression, so the install builds a copy.
TOP_LEVEL_SKIP = {".venv", "venv", ".git", "results", "build", "dist", "outputs", "multirun",
                  ".ab-trees", ".pytest_cache", ".ruff_cache", ".benchmarks"}


def _skip(top: Path):
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(folder) == top:
            skipped |= {n for n in names if n in TOP_LEVEL_SKIP
                        or (Path(folder, n) / "pyvenv.cfg").exists()}
        return skipped

    return ignore


def test_every_package_is_listed() -> None:
    """pyproject.toml lists packages explicitly (packages.find cannot add the mapped
    harness.conf): a new subpackage of harness/ or variants/ must be added there, or a
    regular install silently lacks it."""
    from setuptools import find_namespace_packages

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_namespace_packages(
        where=str(ROOT), include=["harness", "harness.*", "variants", "variants.*"],
        exclude=["*__pycache__*"])
    missing = sorted(set(found) - set(listed["packages"]))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert listed["package-dir"]["harness.conf"] == "conf"


@pytest.mark.slow
def test_regular_install_runs_a_sweep_from_elsewhere(tmp_path: Path) -> None:
    """A fresh venv, `pip install --no-deps --no-build-isolation <repo>`, then a smoke sweep
    from another directory: the installed harness finds its configs in harness/conf.

    The fresh venv sees this environment's dependencies (torch, hydra, setuptools, pip) via
    a .pth listing its site-packages; .pth files inside a directory added that way are not
    processed, so this environment's editable hook for attnbench is not loaded (checked)."""
    fresh, src, elsewhere = tmp_path / "venv", tmp_path / "src", tmp_path / "elsewhere"
    shutil.copytree(ROOT, src, symlinks=True, ignore=_skip(ROOT))
    elsewhere.mkdir()
    # --without-pip: ensurepip would bring its own old setuptools, shadowing this one
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / "bin" / "python"
    site = Path(sysconfig.get_path("purelib", vars={"base": str(fresh),
                                                    "platbase": str(fresh)}))
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "_attnbench_test_deps.pth").write_text("".join(f"{p}\n" for p in ours))

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INDEX": "1"}

    def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(python), *args], cwd=elsewhere, env=env, text=True,
                              capture_output=True, timeout=timeout)

    # pip (from this environment) installs into the fresh venv's prefix; it declines to
    # uninstall this environment's attnbench ("outside environment")
    pip = run("-m", "pip", "install", "--no-deps", "--no-build-isolation", str(src),
              timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr

    probe = run("-c", "import json, sys, setuptools, harness\n"
                "from harness.resources import conf_dir\n"
                "print(json.dumps({'harness': harness.__file__, 'conf': str(conf_dir()),\n"
                "  'setuptools': setuptools.__file__,\n"
                "  'editable': [m for m in sys.modules if m.startswith('__editable__')]\n"
                "    + [repr(f) for f in sys.meta_path if 'editable' in repr(f).lower()]}))",
                timeout=120)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["editable"] == [], seen
    assert Path(seen["harness"]).resolve().is_relative_to(site.resolve()), seen
    assert not Path(seen["harness"]).resolve().is_relative_to(ROOT), seen
    conf = Path(seen["conf"])
    assert conf.resolve().is_relative_to(site.resolve()), seen
    assert (conf / "config.yaml").is_file() and (conf / "sweep" / "smoke.yaml").is_file()

    results = tmp_path / "results"
    sweep = run("-m", "harness", "sweep", "sweep=smoke", "variants=[naive]", "modes=[fwd]",
                "causal=[false]", "seq_lens=[128]", "min_samples=1", "min_run_time=0.01",
                f"results_dir={results}", timeout=600)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    rows = list(results.glob("*/rows.jsonl"))
    assert len(rows) == 1, sorted(p.relative_to(results) for p in results.rglob("*"))
    lines = [json.loads(line) for line in rows[0].read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0]["label"] == "naive", lines

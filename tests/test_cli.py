"""The command line: help, usage errors, and `check` end to end in a subprocess."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_harness
from tests.test_contract import GOOD


def test_help_lists_subcommands(harness_env) -> None:
    """--help names every subcommand."""
    result = run_harness(["--help"], harness_env)
    assert result.returncode == 0
    assert "check" in result.stdout


def test_unknown_subcommand_is_usage_error(harness_env) -> None:
    """An unknown subcommand exits 2 with argparse's message."""
    result = run_harness(["frobnicate"], harness_env)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("variants=[nope]", ["variants", "nope", "naive"]),
        ("dtypes=[fp8]", ["dtypes", "fp8", "fp32"]),
        ("device=tpu", ["device", "tpu", "cpu"]),
        ("seed=x", ["seed"]),
        ("variants=[sdpa@turbo]", ["turbo", "flash"]),
        ("variants=['linear:chunk=0']", ["chunk", "positive"]),
        ("variants=['linear:chonk=3']", ["chonk", "chunk"]),
        ("variants=[naive", ["variants=[naive"]),
        ("causal=[]", ["causal"]),
    ],
)
def test_bad_config_names_field_and_exits_2(harness_env, override: str, names: list[str]) -> None:
    """Bad input: exit 2, a message naming the field and what is allowed, nothing run."""
    result = run_harness(["check", override], harness_env)
    assert result.returncode == 2, result.stderr
    for name in names:
        assert name in result.stderr
    assert "agree" not in result.stdout


def test_check_subset_passes(harness_env) -> None:
    """A small selection agrees everywhere: exit 0 and a table with verdicts."""
    result = run_harness(["check", "variants=[naive,sdpa@math,xformers]", "dtypes=[fp32]"],
                         harness_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sdpa@math" in result.stdout and "ok" in result.stdout
    assert "device=cpu (supported: {'cuda'})" in result.stdout  # unavailable, xformers' words
    assert "0 disagree" in result.stdout


def _package(tmp_path: Path, body: str) -> dict[str, str]:
    pkg = tmp_path / "extpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "myattn.py").write_text(textwrap.dedent(body))
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def test_external_variant_is_checked(harness_env, tmp_path: Path) -> None:
    """extra_variants=[pkg.mod] is checked like a built-in one."""
    env = {**harness_env}
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    _package(tmp_path, GOOD)
    result = run_harness(["check", "extra_variants=[extpkg.myattn]", "variants=[myattn]",
                          "dtypes=[fp32]"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "myattn" in result.stdout


def test_disagreeing_external_variant_exits_1(harness_env, tmp_path: Path) -> None:
    """A wrong external variant (scale off) is reported as a mismatch: exit 1."""
    env = {**harness_env}
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    _package(tmp_path, GOOD.replace("scale=scale)", "scale=0.5)"))
    result = run_harness(["check", "extra_variants=[extpkg.myattn]", "variants=[myattn]",
                          "dtypes=[fp32]"], env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH" in result.stdout


def test_broken_external_module_is_a_clear_error(harness_env) -> None:
    """An external module that cannot be imported: exit 2 naming the module."""
    result = run_harness(["check", "extra_variants=[no_such_pkg.attn]"], harness_env)
    assert result.returncode == 2
    assert "no_such_pkg.attn" in result.stderr

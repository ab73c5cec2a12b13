"""Shared fixtures: seeded inputs and the variant registry to parametrize over."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import variants

ROOT = Path(__file__).resolve().parent.parent
REGISTERED = sorted(variants.REGISTRY)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state."""
    torch.manual_seed(0)


@pytest.fixture
def qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded fp32 q (2, 3, 17, 16), k and v (2, 3, 23, 16)."""
    gen = torch.Generator().manual_seed(1234)
    q = torch.randn(2, 3, 17, 16, generator=gen)
    k = torch.randn(2, 3, 23, 16, generator=gen)
    v = torch.randn(2, 3, 23, 16, generator=gen)
    return q, k, v


@pytest.fixture
def harness_env() -> dict[str, str]:
    """Environment for running ``python -m harness`` in a subprocess from the project root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_harness(args: list[str], env: dict[str, str], timeout: float = 600):
    """Run ``python -m harness ARGS`` and return the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, with the reason, where no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

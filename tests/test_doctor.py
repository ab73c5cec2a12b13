"""``python -m harness doctor``, and a drift check between the xformers wheel and the torch pin."""

from __future__ import annotations

import re
from importlib import metadata

from harness.doctor import drift, sdpa_backends, xformers_build, xformers_ops
from tests.conftest import ROOT, run_harness


def test_doctor_runs_and_names_what_runs_here(harness_env) -> None:
    """Exit 0; versions, devices, the xformers build line, both matrices and the runtime."""
    done = run_harness(["doctor"], harness_env)
    assert done.returncode == 0, done.stderr
    for words in ("versions: python", "devices:", "xformers was built for torch",
                  "xformers FMHA ops on cpu", "cutlassF-pt: runs nothing here",
                  "SDPA backends on cpu", "math: runs fp32/D64", "runtime:"):
        assert words in done.stdout, words


def test_sdpa_and_xformers_probes_on_cpu() -> None:
    """On CPU: SDPA's math and flash backends run every dtype/D, efficient and cudnn none;
    no xformers op runs, each with xformers' own reason."""
    sdpa = sdpa_backends("cpu")
    assert all(v == "yes" for v in sdpa["math"].values())
    assert all(v.startswith("no cpu kernel") for v in sdpa["efficient"].values())
    ops = xformers_ops("cpu")
    assert "cutlassF-pt" in ops and "triton_splitKF" in ops
    assert all("device=cpu" in v for cells in ops.values() for v in cells.values())


def test_xformers_wheel_against_the_torch_pin() -> None:
    """The torch the installed xformers wheel was built for (cpp_lib.json), the pinned torch,
    and the pair the README says loads the extension must agree; doctor says which is which.
    A new xformers or torch pin fails here until the README and doctor are checked again."""
    build = xformers_build()
    pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert build["running_torch"].split("+")[0] == pin
    pair = f"torch {build['built_for_torch']} with xformers {metadata.version('xformers')}"
    assert pair in (ROOT / "README.md").read_text(), pair
    line = drift(build)
    assert build["built_for_torch"] in line and build["running_torch"] in line
    assert ("the same" in line) == (build["built_for_torch"] == build["running_torch"])
    assert build["extension_loaded"] is (build["built_for_torch"] == build["running_torch"])

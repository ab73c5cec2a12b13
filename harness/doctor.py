"""``python -m harness doctor``: what this machine can run, in the spirit of
``python -m xformers.info`` and ``torch.utils.collect_env``.

Versions (Python, torch, CUDA, cuDNN, triton, xformers), devices, whether xformers' C++
extension loaded (and what that does and does not affect), which xformers FMHA ops and which
SDPA backends accept which dtypes and head dims here, and the threads and allocator settings.
The xformers probe is the variant's own (``variants.xformers.op_reasons``), so the
unavailability reasons in rows and the doctor's table cannot disagree. ``summary()`` is
recorded in every run's manifest and shown in the report's header.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import torch

from harness.fingerprint import package_version

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HEAD_DIMS = (64, 128, 256)
BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD", "PYTORCH_CUDA_ALLOC_CONF")
#: what xformers' C++ extension holds in 0.0.35 (its FMHA ops call torch's own kernels)
EXTENSION_SCOPE = ("affects sparse24 and merge-attention ops only; attention does not need it: "
                   "cutlassF/B-pt and fa2F/B-pt call torch's _efficient_attention_* and "
                   "_flash_attention_* kernels (SDPA's efficient and flash backends)")


def versions() -> dict[str, Any]:
    """Python, torch, its CUDA and cuDNN, triton and xformers versions."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn, "triton": package_version("triton"),
            "xformers": package_version("xformers"), "attnbench": package_version("attnbench")}


def devices() -> list[str]:
    """The CPU, and each CUDA device with its capability and memory."""
    found = [f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"capability {torch.backends.cpu.get_cpu_capability()}"]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        p = torch.cuda.get_device_properties(i)
        found.append(f"cuda:{i}: {p.name}, sm {p.major}.{p.minor}, "
                     f"{p.total_memory // 2**20} MiB")
    return found


@functools.cache
def _xformers_quietly() -> Any:
    """Import xformers with its extension warning captured; None when not installed."""
    logger = logging.getLogger("xformers")  # it logs the warning; Hydra sends logs to stdout
    level = logger.level
    logger.setLevel(logging.ERROR)
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import xformers
            import xformers.ops
        except ImportError:
            return None
        finally:
            logger.setLevel(level)
    return xformers


def xformers_build() -> dict[str, Any]:
    """The torch build xformers' wheel was made for (cpp_lib.json), against the running one."""
    xformers = _xformers_quietly()
    if xformers is None:
        return {"installed": False}
    path = Path(xformers.__file__).parent / "cpp_lib.json"
    built = json.loads(path.read_text())["version"] if path.exists() else {}
    from xformers import _cpp_lib

    error = _cpp_lib._cpp_library_load_exception
    return {"installed": True, "built_for_torch": built.get("torch"),
            "built_for_python": built.get("python"), "running_torch": torch.__version__,
            "extension_loaded": error is None,
            "extension_error": None if error is None else type(error).__name__,
            "extension_scope": EXTENSION_SCOPE}


def xformers_ops(device: str) -> dict[str, dict[str, str]]:
    """Op NAME -> 'dtype/D' -> 'yes' or xformers' reasons, forward and backward ops."""
    if _xformers_quietly() is None:
        return {}
    from variants.xformers import op_reasons

    table: dict[str, dict[str, str]] = {}
    for dname, dtype in DTYPES.items():
        for d in HEAD_DIMS:
            for op, why in op_reasons(device, dtype, head_dim=d, backward=True).items():
                table.setdefault(op, {})[f"{dname}/D{d}"] = "; ".join(why) or "yes"
    return table


def sdpa_backends(device: str) -> dict[str, dict[str, str]]:
    """SDPA backend -> 'dtype/D' -> 'yes' or torch's reason, from a tiny call pinned to it."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table: dict[str, dict[str, str]] = {}
    for name in BACKENDS:
        for dname, dtype in DTYPES.items():
            for d in HEAD_DIMS:
                q = torch.zeros(1, 2, 4, d, device=device, dtype=dtype)  # (B, H, N, D)
                with warnings.catch_warnings(record=True) as said:
                    warnings.simplefilter("always")
                    try:
                        with sdpa_kernel(getattr(SDPBackend, name)):
                            F.scaled_dot_product_attention(q, q, q)
                        verdict = "yes"
                    except RuntimeError as exc:
                        reasons = [str(w.message).splitlines()[0] for w in said]
                        verdict = "; ".join(r for r in reasons if "not used" in r
                                            or "because" in r)[:300] or (
                            f"no {device} kernel (torch: {str(exc).split('.')[0]})")
                table.setdefault(name.split("_")[0].lower(), {})[f"{dname}/D{d}"] = verdict
    return table


def runtime() -> dict[str, Any]:
    """Threads and the allocator and threading environment."""
    return {"threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}}


def _can(table: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """Name -> the dtype/D cells it can run."""
    return {name: [cell for cell, v in cells.items() if v == "yes"]
            for name, cells in table.items()}


@functools.cache
def summary(device: str = "cpu") -> dict[str, Any]:
    """The short form recorded in manifests and report headers."""
    return {"versions": versions(), "xformers_build": xformers_build(),
            "xformers_ops_can_run": _can(xformers_ops(device)),
            "sdpa_backends_can_run": _can(sdpa_backends(device)), "runtime": runtime()}


def drift(build: dict[str, Any]) -> str:
    """One line on the torch xformers was built for against the torch running here."""
    if not build.get("installed"):
        return "xformers is not installed"
    built, running = build["built_for_torch"], build["running_torch"]
    state = "loaded" if build["extension_loaded"] else (
        f"did not load ({build['extension_error']})")
    same = built == running
    return (f"xformers was built for torch {built}; torch here is {running} "
            f"({'the same' if same else 'different'}): its C++ extension {state}; "
            f"{build['extension_scope']}")


def _matrix(title: str, table: dict[str, dict[str, str]]) -> list[str]:
    lines = [f"{title}:"]
    for name, cells in table.items():
        yes = [c for c, v in cells.items() if v == "yes"]
        no = {v for v in cells.values() if v != "yes"}
        lines.append(f"  {name}: " + (f"runs {', '.join(yes)}" if yes else "runs nothing here")
                     + (f"; otherwise: {' | '.join(sorted(no))[:400]}" if no else ""))
    return lines


def report(device: str = "cpu") -> str:
    """The whole doctor output as text."""
    v, build, rt = versions(), xformers_build(), runtime()
    lines = ["attnbench doctor", "versions: " + ", ".join(f"{k} {v[k]}" for k in v),
             "devices:", *(f"  {d}" for d in devices()), f"xformers: {drift(build)}",
             *_matrix(f"xformers FMHA ops on {device} (D in {HEAD_DIMS})", xformers_ops(device)),
             *_matrix(f"SDPA backends on {device}", sdpa_backends(device)),
             f"runtime: {rt['threads']} threads, {rt['interop_threads']} interop threads; "
             + (", ".join(f"{k}={val}" for k, val in rt["env"].items()) or "no allocator or "
                "threading variables set (glibc's defaults)")]
    return "\n".join(lines)

"""The run's fingerprint: what makes two sets of numbers comparable.

``hard`` keys must match for a comparison to mean anything (device model, library versions);
``soft`` keys are recorded so a reader can explain differences (threads, allocator settings,
git commit). Nothing here imports xformers: its version comes from package metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIXES = ("MALLOC_", "PYTORCH_", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "CUDA_", "GOMP_")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "fma")


@dataclass(frozen=True)
class Fingerprint:
    """Hard keys (must match to compare) and soft keys (context)."""

    hard: dict[str, Any] = field(default_factory=dict)
    soft: dict[str, Any] = field(default_factory=dict)


def package_version(dist: str) -> str | None:
    """An installed distribution's version, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, Any]:
    """Commit and dirty flag of the project checkout, or None outside git."""
    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()
    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def _cpu() -> dict[str, Any]:
    """CPU model and the vector/matrix flags that decide kernel choice."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    return {"cpu_model": model, "cpu_flags": sorted(flags.intersection(CPU_FLAGS)),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count()}


def _gpu(device: str) -> dict[str, Any]:
    """GPU name, capability, memory, CUDA and cuDNN versions, and what nvidia-smi says of the
    driver and clocks, when CUDA is in use."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return {}
    dev = torch.device(device)
    props = torch.cuda.get_device_properties(dev)
    return {"gpu_name": props.name, "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_mib": props.total_memory // 2**20, "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version(),
            **_nvidia_smi(dev.index if dev.index is not None else torch.cuda.current_device())}


#: nvidia-smi --query-gpu fields -> fingerprint keys (clocks in MHz, power in W)
SMI_FIELDS = {"driver_version": "gpu_driver", "clocks.sm": "gpu_clock_sm_mhz",
              "clocks.max.sm": "gpu_clock_sm_max_mhz", "clocks.mem": "gpu_clock_mem_mhz",
              "clocks.max.mem": "gpu_clock_mem_max_mhz", "power.limit": "gpu_power_limit_w",
              "persistence_mode": "gpu_persistence_mode"}


def parse_smi(text: str) -> dict[str, Any]:
    """One CSV line of nvidia-smi's SMI_FIELDS (``--format=csv,noheader,nounits``) as keys;
    numbers as numbers, '[N/A]' as None."""
    values = [v.strip() for v in text.strip().splitlines()[0].split(",")] if text.strip() else []
    out: dict[str, Any] = {}
    for key, value in zip(SMI_FIELDS.values(), values, strict=False):
        try:
            out[key] = float(value) if key not in ("gpu_driver", "gpu_persistence_mode") \
                else value
        except ValueError:
            out[key] = None if value.startswith("[") else value
    return out


def _nvidia_smi(index: int) -> dict[str, Any]:
    """The driver and clocks of GPU ``index`` from nvidia-smi ({} without it)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(SMI_FIELDS)}",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_smi(done.stdout)


def config_hash(resolved: Any) -> str:
    """sha256 of the resolved configuration as canonical JSON (first 16 hex digits)."""
    text = json.dumps(resolved, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(device: str, resolved_config: Any = None) -> Fingerprint:
    """Collect the fingerprint of this process for runs on ``device``."""
    cpu, gpu = _cpu(), _gpu(device)
    hard = {
        "device": torch.device(device).type,
        "device_model": gpu.get("gpu_name", cpu["cpu_model"]),
        "python": platform.python_version(), "torch": torch.__version__,
        "xformers": package_version("xformers"),
    }
    soft = {
        "attnbench": package_version("attnbench"), **_git(), **cpu, **gpu,
        "threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
        "platform": platform.platform(), "config_hash": config_hash(resolved_config),
    }
    return Fingerprint(hard=hard, soft=soft)

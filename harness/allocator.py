"""The allocator a sweep's worker runs under (``allocator=``), and the one a process has.

``default`` leaves the environment as it is: what a user's program gets (glibc's malloc, which
returns freed blocks of 32 MiB and more to the OS, so each call that allocates them maps and
page-faults fresh memory). ``tuned`` raises glibc's mmap and trim thresholds so freed memory is
reused (what ``make bench`` and the CI gate set). ``jemalloc`` and ``tcmalloc`` preload that
library where the system has one. Every row records the allocator in effect.
"""

from __future__ import annotations

import ctypes.util
import os
from collections.abc import Mapping

ALLOCATORS = ("default", "tuned", "jemalloc", "tcmalloc")
#: glibc's thresholds for ``tuned`` (the same as the Makefile's BENCH_ENV and .ci/gate)
TUNED = {"MALLOC_MMAP_THRESHOLD_": "2147483647", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def allocator_env(name: str) -> dict[str, str]:
    """The environment a worker needs for allocator ``name``; ValueError naming what is
    missing when the system has no such library."""
    if name not in ALLOCATORS:
        raise ValueError(f"allocator: unknown allocator {name!r}; allowed: {list(ALLOCATORS)}")
    if name == "default":
        return {}
    if name == "tuned":
        return dict(TUNED)
    library = ctypes.util.find_library(name)
    if library is None:
        package = {"jemalloc": "libjemalloc2", "tcmalloc": "libgoogle-perftools4"}[name]
        raise ValueError(f"allocator: {name} is not installed here (Debian: apt-get install "
                         f"{package}); allowed here: default, tuned")
    return {"LD_PRELOAD": library}


def in_effect(env: Mapping[str, str] | None = None) -> str:
    """The allocator this process runs under, in words (recorded in each row)."""
    env = os.environ if env is None else env
    preload = env.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc"):
        if name in preload:
            return f"{name} (LD_PRELOAD={preload})"
    tuned = {k: v for k, v in env.items() if k.startswith("MALLOC_")}
    if tuned:
        return "glibc, " + ", ".join(f"{k}={v}" for k, v in sorted(tuned.items()))
    return "glibc defaults"

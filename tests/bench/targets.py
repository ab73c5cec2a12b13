"""Check the speed targets against a pytest-benchmark JSON file (``make bench`` writes one).

Usage: ``python -m tests.bench.targets results/bench.json``; prints medians and ratios, exits 1
if a target is missed. Ratios are of medians from the same run, so machine noise mostly cancels.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    """numerator / denominator median ratio must be <= limit."""

    label: str
    numerator: str
    denominator: str
    limit: float


TARGETS = (
    # memory_efficient (pure PyTorch, O(N) memory) vs sdpa's fused kernel, N=4096, same run
    Target("memory_efficient within 1.10x of sdpa fwd at B=1 N=4096", "memory_efficient-4096",
           "sdpa-4096", 1.10),
    Target("memory_efficient within 1.10x of sdpa fwd at B=4 N=4096",
           "memory_efficient-fwd-B4-4096", "sdpa-fwd-B4-4096", 1.10),
    *(Target(f"memory_efficient within 1.10x of sdpa fwd+bwd at B={b} N=4096",
             f"memory_efficient-fwd+bwd-B{b}-4096", f"sdpa-fwd+bwd-B{b}-4096", 1.10)
      for b in (1, 4)),
    Target("linear t(16384)/t(4096) <= 5", "linear-16384", "linear-4096", 5.0),
    Target("sparse window t(16384)/t(4096) <= 5", "sparse@window-16384", "sparse@window-4096",
           5.0),
    Target("sparse window >= 5x faster than sdpa at N=16384", "sparse@window-16384",
           "sdpa-16384", 1 / 5),
    # linear fwd+bwd grows as N^1.15 at most: 2^1.15 ~ 2.2 (2.3 with room), 4^1.15 ~ 4.9
    Target("linear fwd+bwd B=4 t(8192)/t(4096) <= 2.3", "linear-fwd+bwd-B4-8192",
           "linear-fwd+bwd-B4-4096", 2.3),
    Target("linear fwd+bwd B=1 t(16384)/t(4096) <= 4.9", "linear-fwd+bwd-B1-16384",
           "linear-fwd+bwd-B1-4096", 4.9),
    # sparse fwd+bwd (custom backward recomputing the band): vs sdpa, and BigBird vs window
    Target("sparse window fwd+bwd >= 3x faster than sdpa at B=1 N=4096",
           "sparse@window-fwd+bwd-B1-4096", "sdpa-fwd+bwd-B1-4096", 1 / 3),
    Target("sparse window fwd+bwd >= 3x faster than sdpa at B=4 N=4096",
           "sparse@window-fwd+bwd-B4-4096", "sdpa-fwd+bwd-B4-4096", 1 / 3),
    Target("sparse window fwd+bwd >= 10x faster than sdpa at B=1 N=16384",
           "sparse@window-fwd+bwd-B1-16384", "sdpa-fwd+bwd-B1-16384", 1 / 10),
    *(Target(f"sparse bigbird fwd+bwd within 1.5x of window at B={b} N={n}",
             f"sparse@bigbird-fwd+bwd-B{b}-{n}", f"sparse@window-fwd+bwd-B{b}-{n}", 1.5)
      for b, n in ((1, 4096), (4, 4096), (1, 16384))),
)


def allocator_env(path: Path) -> dict[str, str]:
    """The MALLOC_* settings the benchmarks ran under (empty: glibc defaults)."""
    data = json.loads(path.read_text())
    envs = [b.get("extra_info", {}).get("allocator_env", {}) for b in data["benchmarks"]]
    return envs[0] if envs else {}


def medians(path: Path) -> dict[str, float]:
    """Median seconds per benchmark case id, from pytest-benchmark JSON."""
    data = json.loads(path.read_text())
    result = {}
    for bench in data["benchmarks"]:
        case = bench["name"].split("[", 1)[1].rstrip("]")
        result[case] = bench["stats"]["median"]
    return result


def missing(meds: dict[str, float]) -> list[Target]:
    """Targets whose two cases are not both in this run (``pytest tests/bench -k ...``)."""
    return [t for t in TARGETS if t.numerator not in meds or t.denominator not in meds]


def evaluate(meds: dict[str, float]) -> list[tuple[Target, float, bool]]:
    """Each target whose cases ran, with its measured ratio and whether it holds."""
    rows = []
    for t in TARGETS:
        if t in missing(meds):
            continue
        ratio = meds[t.numerator] / meds[t.denominator]
        rows.append((t, ratio, ratio <= t.limit))
    return rows


def main(argv: list[str]) -> int:
    """Print medians (ms) and target ratios; exit 1 when a target is missed."""
    meds = medians(Path(argv[0]))
    print(f"allocator environment: {allocator_env(Path(argv[0])) or 'glibc defaults'}")
    for case, sec in sorted(meds.items()):
        print(f"{case:>26}: median {sec * 1e3:9.2f} ms")
    rows = evaluate(meds)
    lost = missing(meds)
    for t in lost:  # a target that cannot be judged fails: a renamed case never hides one
        print(f"MISSING  {t.label}: {t.numerator} or {t.denominator} not in this run")
    for t, ratio, ok in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {t.label}: ratio {ratio:.3f} (limit {t.limit:.3g})")
    return 0 if all(ok for _, _, ok in rows) and not lost else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

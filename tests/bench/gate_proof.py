"""The CI gate's calibration on this machine: A/A runs, an injected slowdown, injected memory.

``make gate-proof`` runs it; every run is ``.ci/gate`` itself (an A/B run of the ``gate``
preset, confirmed), with the base revision set to HEAD so that both sides run the same code,
plus the test-only ``injected`` variant (tests/injected_variants.py). The injection is given
to the head side only, through its environment (``--head-env``): the same case keys, slower
or bigger. Each run's directory is kept (a finished one is reused), and the figures printed
are those quoted in docs/gate.md.

    python -m tests.bench.gate_proof --runs 10 --out results/gate-proof
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KINDS = {  # name -> the head side's injected environment
    "A/A": {},
    "1.5x slower": {"ATTNBENCH_INJECT_SLOWDOWN": "1.5"},
    "+20% memory": {"ATTNBENCH_INJECT_MEMORY": "0.2"},
}


@dataclass(frozen=True)
class GateRun:
    """What one gate run said."""

    kind: str
    exit_code: int
    wall_s: float
    doc: dict

    def flagged(self) -> dict[str, int]:
        """Variant -> cases flagged as regressions (time, status or memory)."""
        out: dict[str, int] = {}
        for v in self.doc["verdicts"]:
            if v["state"] in ("worse", "now failing") or v["memory_state"] == "worse":
                out[v["variant"]] = out.get(v["variant"], 0) + 1
        return out

    def caught(self) -> str:
        """'k/n': injected cases flagged the way this kind should be."""
        mine = [v for v in self.doc["verdicts"] if v["variant"] == "injected"]
        key = "memory_state" if "memory" in self.kind else "state"
        return f"{sum(v[key] == 'worse' for v in mine)}/{len(mine)}"

    def max_ratio(self) -> float:
        """The largest |log| time ratio, as a ratio, among the cases not injected."""
        logs = [abs(math.log(v["ratio"])) for v in self.doc["verdicts"]
                if v["ratio"] and v["variant"] != "injected"]
        return math.exp(max(logs)) if logs else float("nan")


def gate(kind: str, out: Path) -> GateRun:
    """Run .ci/gate once into ``out`` (unless a finished run is there) and read its verdicts."""
    stamp = out / "exit_code"
    if not stamp.exists():
        env = {**os.environ, "ATTNBENCH_GATE_BASE": "HEAD", "ATTNBENCH_GATE_DIR": str(out),
               "ATTNBENCH_GATE_EXTRA": "extra_variants=[tests.injected_variants]"}
        args = [f"--head-env={k}={v}" for k, v in KINDS[kind].items()]
        start = time.perf_counter()
        done = subprocess.run(["bash", ".ci/gate", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        (out / "gate.log").write_text(done.stdout + done.stderr)
        stamp.write_text(f"{done.returncode} {wall:.1f}\n")
    code, wall = stamp.read_text().split()
    doc = json.loads((out / "compare.json").read_text())
    return GateRun(kind, int(code), float(wall), doc)


def table(runs: list[GateRun]) -> list[str]:
    """One markdown line per run, then a summary per kind."""
    lines = ["| run | kind | exit | wall s | injected caught | flagged | max other ratio |",
             "|---|---|---:|---:|---:|---|---:|"]
    for i, r in enumerate(runs):
        lines.append(f"| {i} | {r.kind} | {r.exit_code} | {r.wall_s:.0f} | {r.caught()} | "
                     f"{r.flagged() or '-'} | {r.max_ratio():.3f} |")
    lines += ["", "| kind | runs | gate failed | injected caught in every case | other variant "
              "flagged | median wall s |", "|---|---:|---:|---:|---:|---:|"]
    for kind in KINDS:
        mine = [r for r in runs if r.kind == kind]
        if not mine:
            continue
        every = sum(r.caught().split("/")[0] == r.caught().split("/")[1] != "0" for r in mine)
        others = sum(bool(set(r.flagged()) - {"injected"}) for r in mine)
        walls = sorted(r.wall_s for r in mine)
        lines.append(f"| {kind} | {len(mine)} | {sum(r.exit_code != 0 for r in mine)} | "
                     f"{every if kind != 'A/A' else '-'} | {others} | "
                     f"{walls[len(walls) // 2]:.0f} |")
    return lines


def spread(runs: list[GateRun]) -> list[str]:
    """A/A ratio quantiles over every judged case of the A/A runs, and what --confirm did."""
    aa = [r for r in runs if r.kind == "A/A"]
    logs = sorted(abs(math.log(v["ratio"])) for r in aa for v in r.doc["verdicts"]
                  if v["ratio"])
    if not logs:
        return []
    pick = {q: math.exp(logs[min(len(logs) - 1, int(q * len(logs)))]) for q in (.5, .9, .99)}
    undone = sum("not reproduced" in v["reason"] for r in runs for v in r.doc["verdicts"]
                 if v["variant"] != "injected")
    return [f"A/A |ratio| over {len(logs)} judged cases of {len(aa)} runs: p50 "
            f"{pick[.5]:.3f}, p90 {pick[.9]:.3f}, p99 {pick[.99]:.3f}, max "
            f"{math.exp(logs[-1]):.3f}",
            f"cases of variants other than 'injected' flagged in a first round and cleared by "
            f"--confirm, over all {len(runs)} runs: {undone}"]


def main() -> None:
    """Run the gate runs of every kind and print the calibration table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="gate runs of each kind")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--kinds", nargs="*", default=list(KINDS), choices=list(KINDS))
    args = p.parse_args()
    runs = []
    for i in range(args.runs):  # kinds alternate, so a slow hour of the host hits all alike
        for kind in args.kinds:
            slug = kind.replace("/", "").replace(" ", "_").replace("%", "pct").replace(".", "")
            runs.append(gate(kind, args.out / f"{slug}-{i}"))
            print(table(runs)[2 + len(runs) - 1], flush=True)
    print("\n".join([*table(runs), "", *spread(runs)]))


if __name__ == "__main__":
    main()

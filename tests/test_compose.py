"""Hydra in one place: a multirun expands as Hydra's basic sweeper runs it, and every job is
composed and validated once by attnbench, before the first job starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import cli, compose, sweep
from harness.compose import expand


def test_expand_is_the_cartesian_product_in_override_order() -> None:
    """Comma-separated choices multiply (values as Hydra renders them); hydra.* overrides
    are Hydra's, not a job's."""
    jobs = expand(["seq_lens=[16],[32]", "dtypes=[fp32]", "causal=[false],[true]",
                   "hydra/launcher=basic"])
    assert jobs == [
        ["seq_lens=[16]", "dtypes=[fp32]", "causal=[False]"],
        ["seq_lens=[16]", "dtypes=[fp32]", "causal=[True]"],
        ["seq_lens=[32]", "dtypes=[fp32]", "causal=[False]"],
        ["seq_lens=[32]", "dtypes=[fp32]", "causal=[True]"],
    ]


@pytest.mark.parametrize("multirun", [True, False])
def test_each_job_is_composed_and_validated_once(tmp_path: Path, multirun: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-job multirun: two compositions, two validations, every one before the first
    job runs, and each job runs with the settings validated for it; a single run alike."""
    events: list[str] = []
    real_compose, real_settings = compose.compose_conf, compose.sweep_settings

    def counting_compose(name: str, overrides: list[str]):
        events.append(f"compose {overrides[0]}")
        return real_compose(name, overrides)

    def counting_settings(conf):
        events.append("validate")
        return real_settings(conf)

    def fake_run(settings, out_dir, resolved):
        events.append(f"run N={settings.grid.seq_lens}")
        return []

    monkeypatch.setattr(compose, "compose_conf", counting_compose)
    monkeypatch.setattr(compose, "sweep_settings", counting_settings)
    monkeypatch.setattr(sweep, "run_sweep", fake_run)
    lens = ["-m", "seq_lens=[16],[32]"] if multirun else ["seq_lens=[16]"]
    code = cli.main(["sweep", *lens, "variants=[naive]", "modes=[fwd]", "causal=[false]",
                     f"results_dir={tmp_path}"])
    assert code == 0
    if multirun:
        assert events == ["compose seq_lens=[16]", "validate", "compose seq_lens=[32]",
                          "validate", "run N=(16,)", "run N=(32,)"]
    else:
        assert events == ["compose seq_lens=[16]", "validate", "run N=(16,)"]

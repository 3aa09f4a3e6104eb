"""``python -m mixout_theory reproduce`` ends with a summary: runs computed / already stored / total,
the wall time, the Figure 2 claims in words, and where the table and figures are (the pipeline itself
is replaced by a store of synthetic records: tests/experiment/conftest.py)."""

import pytest

from mixout_theory import cli
from mixout_theory.experiment import report, sweep


@pytest.fixture
def fake_pipeline(sweep_records, tmp_path, monkeypatch):
    config = sweep.profile_config("smoke", ps=(0.0, 0.4, 0.8), restarts=3)
    assert len(sweep.sweep_members(config)) == len(sweep_records) == 15

    def run_experiment(ctx, **kwargs):
        store = sweep.SweepStore(ctx.results_dir, config)
        for r in sweep_records:
            if r["run_id"] not in store.done():
                store.write(r)
        return store

    monkeypatch.setattr(sweep, "run_experiment", run_experiment)
    return ["reproduce", "--profile", "smoke", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "f")]


def test_reproduce_ends_with_a_summary(fake_pipeline, sweep_records, tmp_path, capsys):
    assert cli.main(fake_pipeline) == 0
    out = capsys.readouterr().out
    assert "reproduce, smoke profile, stand-in: EMNIST-style MNIST (not EMNIST): done in " in out
    assert "runs: 15 computed now, 0 already stored; 15 of 15 in " in out
    for line in report.claims_in_words(report.figure2_claims(sweep_records)):
        assert "  " + line in out
    assert out.count("held: ") == 2 and "did NOT hold" not in out
    folder = tmp_path / "f" / "experiment-smoke-stand-in"
    assert (
        f"table:   {folder / 'table.md'}" in out
        and f"figures: {folder}/figure2.png and layer_distances.png" in out
    )
    assert cli.main(fake_pipeline) == 0  # a rerun computes nothing and says so
    assert "runs: 15 of 15 runs already stored, nothing to compute" in capsys.readouterr().out


def test_claims_in_words_say_when_a_claim_fails(sweep_records):
    checks = report.figure2_claims(
        [dict(r, source_val_acc=0.0) if r["method"] == "mixout" else r for r in sweep_records]
    )
    held, failed = report.claims_in_words(checks)
    assert held.startswith("held: mixout's squared distance") and "smallest drop of the mean 4.0 std" in held
    assert failed.startswith("did NOT hold: mixout keeps at least dropout's source-task accuracy")

"""What the notebooks show when nothing is stored: the committed paper-profile results, read back
from their tables and checked against their sha256 (mixout_theory.experiment.shown)."""

import pytest

from mixout_theory.experiment import report, shown, store


@pytest.fixture
def nothing_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXOUT_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MIXOUT_FIGURES", str(tmp_path / "figures"))
    monkeypatch.delenv("MIXOUT_RECOMPUTE", raising=False)
    return tmp_path


def test_project_folders_follow_their_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXOUT_RESULTS", str(tmp_path / "r"))
    assert store.project_dir("results") == tmp_path / "r"
    monkeypatch.setenv("MIXOUT_RESULTS", "")
    assert store.project_dir("results").name == "results"
    assert store.project_dir("docs").name == "docs"  # the committed results never move


def test_recompute_switch(monkeypatch):
    for value, want in (("1", True), ("0", False), ("", False), ("yes", False)):
        monkeypatch.setenv("MIXOUT_RECOMPUTE", value)
        assert shown.recompute_requested() is want


def test_figure2_shows_the_committed_runs(nothing_stored):
    records, what = shown.results("figure2", "smoke")
    assert what.origin == shown.SHIPPED and what.where.name == "figure2-paper-stand-in"
    assert (what.profile, what.config) == ("paper", "7df3f5017f3e") and len(records) == 170
    assert str(what).startswith("showing: committed with the repository, from ")
    assert "source task: stand-in: EMNIST-style MNIST (not EMNIST) -> target: MNIST" in str(what)
    checks = report.figure2_claims(records)
    assert checks["mixed_distance_decreasing_every_restart"] and checks["source_acc_mixout_ge_dropout"]


def test_ablations_show_the_committed_export(nothing_stored):
    res, what = shown.results("ablations", "smoke")
    assert (
        what.origin == shown.SHIPPED
        and res.config.profile == "paper"
        and res.w_pre_acc == pytest.approx(0.7673)
    )
    assert {s: len(r) for s, r in res.records.items()} == {
        "small_data": 720,
        "new_head": 240,
        "trajectory": 8,
    }
    committed = store.read_csv(what.where / "small_data_summary.csv", text=("setting", "label"))
    again = report.summarise_runs(res.records["small_data"], res.w_pre_acc)
    assert [r["mean"] for r in again] == pytest.approx([r["mean"] for r in committed], rel=1e-5)


def test_theorem1_shows_the_committed_tables(nothing_stored):
    tables, what = shown.results("theorem1", "smoke")
    assert what.origin == shown.SHIPPED and what.profile == "paper"
    assert tables.points and tables.trajectory and tables.layers and tables.scale


def test_fidelity_shows_the_committed_study_and_its_claims_recompute(nothing_stored):
    res, what = shown.results("fidelity", "smoke")
    assert (
        what.origin == shown.SHIPPED
        and what.where.name == "fidelity-paper-stand-in"
        and res.profile == "paper"
    )
    assert len(res.variants) == 5 and len(res.runs) == 5 * 170
    committed = store.read_csv(
        what.where / "claims.csv", text=("variant", "claim", "what", "paper_source", "kind", "reproduced")
    )
    assert [(r["variant"], r["claim"], r["reproduced"]) for r in committed] == [
        (r["variant"], r["claim"], r["reproduced"]) for r in res.rows
    ]  # recomputed from runs.csv
    measured = [(a["ours"], b["ours"]) for a, b in zip(committed, res.rows, strict=False) if b["reproduced"]]
    assert measured and all(a == pytest.approx(b, rel=1e-9) for a, b in measured)


def test_the_suite_never_writes_into_the_checkouts_results_or_figures():
    """The root conftest.py moves both folders into one temporary folder for the whole session."""
    checkout = store.project_dir("docs").parent
    for name in ("results", "figures"):
        assert checkout not in store.project_dir(name).parents and "mixout-tests-" in str(
            store.project_dir(name)
        )

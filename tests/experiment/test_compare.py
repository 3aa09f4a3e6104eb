"""``compare A B``: two results of one study, number by number, within noise (experiment/compare.py)."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from mixout_theory.cli import main
from mixout_theory.experiment import compare
from mixout_theory.experiment.store import write_meta

DOCS = Path(__file__).resolve().parents[2] / "docs" / "results"
COMMITTED = {
    "figure2": DOCS / "figure2-paper-stand-in",
    "ablations": DOCS / "ablations",
    "theorem1": DOCS / "theorem1-paper-stand-in",
    "fidelity": DOCS / "fidelity-paper-stand-in",
}


@pytest.mark.parametrize("study", list(COMMITTED))
def test_every_committed_export_agrees_with_itself(study, capsys):
    assert compare.detect(COMMITTED[study]) == study
    assert main(["compare", str(COMMITTED[study]), str(COMMITTED[study])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("claims: ")  # nothing outside noise: the summary alone
    n = int(lines[0].split(" of ")[1].split()[0])
    assert n > 0 and f"claims: {n} of {n} within noise" in lines[0]


def _moved_copy(tmp_path, metric, method, p, by) -> Path:
    """The committed Figure 2 export with ``metric`` of every (method, p) run moved by ``by``, its
    checksums made to match (an honest other result, not an altered file)."""
    out = tmp_path / "moved"
    shutil.copytree(COMMITTED["figure2"], out)
    with open(out / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["method"] == method and float(r["p"]) == p:
            r[metric] = repr(float(r[metric]) + by)
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\r\n")
        w.writeheader()
        w.writerows(rows)
    meta = json.loads((out / "meta.json").read_text())
    write_meta(out, meta, list(meta["sha256"]))  # the tables' and its own sha256 made to match
    return out


def test_a_mean_moved_by_many_standard_errors_is_flagged_by_name(tmp_path, capsys):
    # mixout's source accuracy at p = 0.3: restarts' std about 0.002 (standard error 0.0007), the committed
    # spread across w_pre tau about 0.0025 (the gap's about 0.0045): +0.05 is over 7 sigma of either
    moved = _moved_copy(tmp_path, "source_val_acc", "mixout", 0.3, 0.05)
    assert main(["compare", str(COMMITTED["figure2"]), str(moved)]) == 1  # the gap at p = 0.3 (a claim) moved
    lines = capsys.readouterr().out.strip().splitlines()
    assert "+ 2 tau_w_pre^2" in lines[-1]  # the committed w_pre spread is counted by default
    flagged = lines[:-1]
    assert any(line.startswith("figure2: mixout p=0.3 source_val_acc (level)") for line in flagged)
    assert any(line.startswith("figure2: gap p=0.3 source_acc_gap (claim)") for line in flagged)
    assert not any("p=0.4" in line or "target" in line for line in flagged)  # nothing else moved
    assert "largest deviation" in lines[-1] and "claims: " in lines[-1]


def test_levels_inform_and_claims_decide(tmp_path, capsys):
    moved = _moved_copy(tmp_path, "target_test_acc", "dropout", 0.5, 0.05)  # no claim rests on it
    assert main(["compare", str(COMMITTED["figure2"]), str(moved)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1  # target_test_acc is not one of the compared levels: nothing flagged
    moved = _moved_copy(tmp_path / "b", "target_val_acc", "dropout", 0.5, 0.05)
    assert main(["compare", str(COMMITTED["figure2"]), str(moved)]) == 0
    out = capsys.readouterr().out
    assert "figure2: dropout p=0.5 target_val_acc (level)" in out and "claims: 11 of 11 within noise" in out


def test_different_studies_profiles_and_bad_folders_are_refused_in_one_line(tmp_path, capsys):
    assert main(["compare", str(COMMITTED["figure2"]), str(COMMITTED["theorem1"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the figure2 study" in err[0] and "the theorem1 study" in err[0]
    other = tmp_path / "quick"
    shutil.copytree(COMMITTED["figure2"], other)
    meta = json.loads((other / "meta.json").read_text())
    meta["config"]["profile"] = "quick"
    write_meta(other, meta, list(meta["sha256"]))
    assert main(["compare", str(COMMITTED["figure2"]), str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'paper'" in err[0] and "'quick'" in err[0]
    assert main(["compare", str(COMMITTED["figure2"]), str(tmp_path / "missing")]) == 2
    assert main(["compare", str(COMMITTED["figure2"]), str(tmp_path)]) == 2
    (other / "runs.csv").write_text("altered")  # a table that no longer matches its checksum
    assert main(["compare", str(COMMITTED["figure2"]), str(other)]) == 2
    assert all(len(line.splitlines()) == 1 for line in capsys.readouterr().err.strip().split("\n"))


def test_the_jackknife_of_a_mean_is_its_standard_error():
    rng = np.random.default_rng(0)
    vals = rng.normal(size=7)
    records = [{"restart": i, "x": float(v)} for i, v in enumerate(vals)]
    out = compare.jackknife(records, "restart", lambda rs: {"mean": float(np.mean([r["x"] for r in rs]))})
    mean, se = out["mean"]
    assert mean == pytest.approx(vals.mean(), abs=1e-15)
    assert se == pytest.approx(vals.std(ddof=1) / math.sqrt(len(vals)), rel=1e-12)  # exact for a mean
    assert compare.jackknife(records[:1], "restart", lambda rs: {"m": 1.0}) == {"m": (1.0, None)}


def test_the_rule_counts_the_w_pre_spread_and_booleans_must_match():
    a = compare.Result(
        "figure2",
        "paper",
        "stand-in",
        {
            ("mixout", 0.3, "source_val_acc"): compare.Number(
                ("mixout", 0.3, "source_val_acc"), "level", 0.90, 0.001
            ),
            ("claim", "", "held"): compare.Number(("claim", "", "held"), "claim", True),
            ("x", 0.1, "m_eff"): compare.Number(("x", 0.1, "m_eff"), "level", 2.0, None),
        },
        Path("a"),
    )
    b = compare.Result(
        "figure2",
        "paper",
        "stand-in",
        {
            ("mixout", 0.3, "source_val_acc"): compare.Number(
                ("mixout", 0.3, "source_val_acc"), "level", 0.905, 0.001
            ),
            ("claim", "", "held"): compare.Number(("claim", "", "held"), "claim", False),
            ("x", 0.1, "m_eff"): compare.Number(("x", 0.1, "m_eff"), "level", 2.2, None),
        },
        Path("b"),
    )
    rows = {r.key: r for r in compare.compare(a, b)}
    level = rows["mixout", 0.3, "source_val_acc"]
    assert level.sigma == pytest.approx(math.sqrt(2) * 0.001) and level.within is False  # 3.5 sigma
    assert rows["claim", "", "held"].within is False and rows["x", 0.1, "m_eff"].within is None
    assert not compare.agrees(list(rows.values()))
    # with a w_pre spread tau = 0.002: sigma = sqrt(2 (0.001^2 + 0.002^2)) = 0.00316, 1.6 sigma: within
    rows = {r.key: r for r in compare.compare(a, b, {("mixout", 0.3, "source_val_acc"): 0.002})}
    assert rows["mixout", 0.3, "source_val_acc"].within is True
    text = compare.summary("figure2", list(rows.values()), True)
    assert (
        "not judged (no noise estimate): 1, largest relative difference 10.00%" in text
        and "tau_w_pre" in text
    )


def test_a_study_command_ends_with_the_comparison_against_the_committed_results():
    lines = compare.against_committed("figure2", COMMITTED["figure2"], "paper", "stand-in")
    assert (
        lines[0].startswith("compare with the committed results") and "every claim within noise" in lines[0]
    )
    assert "claims: 11 of 11 within noise" in lines[-1]
    none = compare.against_committed("theorem1", COMMITTED["theorem1"], "smoke", "stand-in")
    assert none == [
        "compare: no committed theorem1 results of profile 'smoke', source 'stand-in' to compare with"
    ]

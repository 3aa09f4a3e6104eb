"""The fidelity study (mixout_theory.experiment.fidelity): the source's orientation and the layers
mixed as recorded sweep options, each variant in its own store, the claims table recomputable from
runs.csv, the export read back checked, and the figures drawn. The smoke study runs once (about a
minute) into the session's results folder, where notebook 03 then finds it."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from mixout_theory.experiment import data, fidelity, fidelity_report, pretraining, shown, sweep
from mixout_theory.experiment.data import oriented_name, transposed_images
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.store import IntegrityError, config_hash, project_dir
from mixout_theory.experiment.study import Context


@pytest.fixture(scope="module")
def study():
    res = fidelity.run_fidelity(Context("smoke", options=RunOptions(progress=False)))
    folder = project_dir("figures") / f"fidelity-smoke-{res.runs[0]['source']}"
    return res, folder, fidelity_report.export_fidelity(res, folder)


@pytest.mark.slow  # the study fixture runs the whole smoke study (~2 min, once per module)
def test_each_variant_is_its_own_store_and_records_its_reading(study):
    res, _, _ = study
    names = [v.name for v in fidelity.GRID]
    assert list(res.variants)[:4] == names and len(res.variants) == 5  # the grid, then matched steps
    assert len({v["config"] for v in res.variants.values()}) == 5 and len({s.dir for s in res.stores}) == 5
    for name, v in res.variants.items():
        runs = [r for r in res.runs if r["variant"] == name]
        assert len(runs) == 2 * (1 + 2 * 2)  # 2 restarts x (p = 0, then 0.3 and 0.8 for both methods)
        assert {r["orientation"] for r in runs} == {v["fields"]["orientation"]}
        assert {r["mixed_layers"] for r in runs} == {v["fields"]["mixed_layers"]}
        assert {r["config"] for r in runs} == {v["config"]}  # nothing from another variant
        if v["fields"]["orientation"] == "transposed":
            assert all("transposed" in r["source_name"] for r in runs)
    matched = list(res.variants.values())[4]
    best = fidelity.scores([r for r in res.rows if r["variant"] in names])[0]["variant"]
    assert matched["fields"] == dict(res.variants[best]["fields"], matched_steps=True)
    assert (
        matched["finetune_steps"] == 2 * res.variants[best]["finetune_steps"]
    )  # 27,000 -> 54,000 images' worth
    upright = res.variants[names[0]]
    assert sweep.is_figure2_store(project_dir("results") / upright["store"])  # = the Figure 2 sweep's store
    assert not any(
        sweep.is_figure2_store(project_dir("results") / v["store"]) for v in list(res.variants.values())[1:]
    )


def test_the_mixed_distance_follows_the_layer_reading():
    from mixout_theory.experiment import mlp

    ref = mlp.init_params(None, 0)
    moved = {k: v + (1.0 if k.endswith("weight") else 0.0) for k, v in ref.items()}
    hidden = mlp.squared_distances(moved, ref, sweep.SweepConfig().mixed)["mixed"]
    every = mlp.squared_distances(moved, ref, sweep.SweepConfig(mixed_layers="all").mixed)["mixed"]
    assert float(hidden) == pytest.approx(300 * 100 + 100 * 10, rel=1e-5)
    assert float(every - hidden) == pytest.approx(784 * 300, rel=1e-5)


@pytest.mark.slow  # the study fixture runs the whole smoke study (~2 min, once per module)
def test_claims_are_recomputed_from_runs_csv_and_read_back_checked(study):
    res, folder, written = study
    back = fidelity.load_fidelity(folder)
    assert json.dumps(back.rows) == json.dumps(fidelity.claim_rows(back.runs, back.w_pre_accs))  # NaN-safe
    for a, b in zip(back.rows, res.rows, strict=False):
        assert a["claim"] == b["claim"] and a["reproduced"] == b["reproduced"]
        assert (math.isnan(a["ours"]) and math.isnan(b["ours"])) or a["ours"] == pytest.approx(
            b["ours"], rel=1e-12
        )
    measured = [r for r in res.rows if r["reproduced"]]
    assert measured and all(r["ratio"] == pytest.approx(r["ours"] / r["paper"]) for r in measured)
    gaps = [r for r in res.rows if r["claim"] == "source_gap_p0.1"]
    assert all(r["reproduced"] == "" and math.isnan(r["ours"]) for r in gaps)  # p = 0.1 not in the smoke grid
    text = written["report"].read_text()
    assert "read off the paper's figure" in text and "Reproduced by no variant" in text
    runs_csv = folder / "runs.csv"
    runs_csv.write_text(runs_csv.read_text().replace("mixout", "dropout", 1))
    with pytest.raises(IntegrityError, match="runs.csv"):
        fidelity.load_fidelity(folder)
    fidelity_report.export_fidelity(res, folder)  # restore for the notebook


def test_reproduced_rules():
    level, size = fidelity.CLAIMS[0], next(c for c in fidelity.CLAIMS if c.kind == "size")
    assert fidelity.reproduced(level, level.paper + 0.0099) and not fidelity.reproduced(
        level, level.paper - 0.011
    )
    assert fidelity.reproduced(size, size.paper * 1.24) and not fidelity.reproduced(size, size.paper / 1.26)
    assert fidelity.reproduced(size, -size.paper) is False and fidelity.reproduced(size, math.nan) is None


@pytest.mark.slow  # the study fixture runs the whole smoke study (~2 min, once per module)
def test_figures_have_every_variant_and_the_paper_points(study):
    res, folder, written = study
    assert {p.name for p in written["figures"]} == {
        f"{stem}.{ext}" for stem, *_ in fidelity_report.PANELS for ext in ("png", "pdf")
    }
    stem, panels, paper = fidelity_report.PANELS[0]
    fig = fidelity_report.panel_figure(res, panels, paper)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(labels) == 2 * len(res.variants) + 1 and "read off the paper's figure" in labels[-1]
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    assert "stand-in" in fig._suptitle.get_text() or "EMNIST" in fig._suptitle.get_text()


@pytest.mark.slow  # the study fixture runs the whole smoke study (~2 min, once per module)
def test_notebook_loader_shows_the_stored_export(study):
    res, folder, _ = study
    got, seen = shown.results("fidelity", "smoke", recompute=False)
    assert seen.origin == shown.STORED and seen.where == folder
    assert json.dumps(got.rows) == json.dumps(fidelity.load_fidelity(folder).rows)


def test_orientation_is_applied_to_the_source_only_and_named(make_exp):
    exp = make_exp()
    up = pretraining.experiment_tensors(exp, sweep.SweepConfig())
    tr = pretraining.experiment_tensors(exp, sweep.SweepConfig(orientation="transposed"))
    x = up["source_train"][0]
    assert torch.equal(tr["source_train"][0], x.view(-1, 28, 28).transpose(1, 2).reshape(x.shape))
    assert torch.equal(tr["target_train"][0], up["target_train"][0])  # MNIST stays as it is
    assert torch.equal(transposed_images(transposed_images(x)), x)
    assert oriented_name("EMNIST Digits", "transposed").startswith("EMNIST Digits as stored")
    assert "(transposed to MNIST's orientation)" not in data.task_line(
        oriented_name("EMNIST Digits", "transposed")
    )
    assert oriented_name("stand-in", "upright") == "stand-in"


def test_new_options_keep_old_keys_and_reject_bad_values():
    config = sweep.SweepConfig()
    legacy = {k: v for k, v in dataclasses.asdict(config).items() if k not in sweep.LATER_FIELDS}
    assert config.key() == config_hash(legacy)  # stores from before the options keep their folders
    assert sweep.SweepConfig(orientation="transposed").key() != config.key()
    assert sweep.SweepConfig(orientation="transposed").pretrain_key() != config.pretrain_key()
    assert sweep.SweepConfig(mixed_layers="all").pretrain_key() == config.pretrain_key()  # same w_pre
    with pytest.raises(
        ValueError, match="orientation must be one of 'upright', 'transposed', got 'sideways'"
    ):
        sweep.SweepConfig(orientation="sideways")
    with pytest.raises(ValueError, match="mixed_layers must be one of 'hidden', 'all', got 'fc1'"):
        fidelity.Variant(mixed_layers="fc1")
    members = sweep.sweep_members(sweep.SweepConfig(mixed_layers="all", ps=(0.0, 0.5), restarts=1))
    by_method = {fields["method"]: m for _, fields, m in members}
    assert by_method["dropout"].input_dropout == 0.5 and by_method["mixout"].input_mixout == 0.5
    assert by_method["none"].input_dropout == by_method["none"].input_mixout == 0.0
    assert (
        json.dumps(sweep.SweepConfig(mixed_layers="all").mixed)
        == '["fc1.weight", "fc2.weight", "fc3.weight"]'
    )

"""The experiment's figures and exported tables (mixout_theory.experiment.plots), drawn from synthetic
records (tests/experiment/conftest.py): the panels, their labels and data, the files written. Every
file goes under tmp_path; figures are matplotlib ``Figure`` objects (Agg, no pyplot state)."""

import dataclasses
import json
import os
import time

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mixout_theory.experiment import ablations, exports, plots, report, store, studies, sweep

SOURCE_NAME = "stand-in: EMNIST-style MNIST (not EMNIST)"
PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF"


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _method_lines(ax):
    return {
        m: line
        for line in ax.get_lines()
        for m, label in plots.METHOD_LABEL.items()
        if line.get_label() == label
    }


def _is_file(path, head) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes().startswith(head)


# --------------------------------------------------------------------------------------- Figure 2


def test_figure2_panels_plot_the_summary_and_name_the_source(sweep_records):
    summary = report.summarise(sweep_records)
    meta = report.experiment_meta(sweep_records)
    fig = plots.figure2(summary, meta)
    assert isinstance(fig, Figure)
    axes = _visible_axes(fig)
    assert len(axes) == 3
    assert [ax.get_title() for ax in axes] == [title for _, title, _ in plots.FIG2_PANELS]
    assert [ax.get_ylabel() for ax in axes] == [label for _, _, label in plots.FIG2_PANELS]
    assert all(ax.get_xlabel().startswith("p (") for ax in axes)
    assert (
        SOURCE_NAME in fig.get_suptitle()
        and "Fig. 2" in fig.get_suptitle()
        and "-> target: MNIST" in fig.get_suptitle()
    )
    assert report.caption(meta) in fig.get_suptitle() and "mean +- 1 std" in fig.get_suptitle()
    for ax in axes:  # a legend in every panel
        assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["dropout(p)", "mixout(w_pre, p)"]
    # each panel: one line per method through the means at p = 0, 0.4, 0.8 (p = 0 shared)
    for ax, (metric, _, _) in zip(axes, plots.FIG2_PANELS, strict=False):
        lines = _method_lines(ax)
        assert set(lines) == {"dropout", "mixout"}
        for method, line in lines.items():
            assert list(line.get_xdata()) == [0.0, 0.4, 0.8]
            want = [r[f"{metric}_mean"] for r in summary if r["method"] == method]
            np.testing.assert_allclose(line.get_ydata(), want)
    np.testing.assert_allclose(_method_lines(axes[0])["mixout"].get_ydata(), [12.625, 11.625, 8.625])
    assert len(axes[0].collections) == 2  # the +-1 std bands
    # mixout's dist_all = dist_mixed + dist_fc1 + 0.125: std 1 + 0.5 = 1.5 at every p
    band = axes[0].collections[1].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(8.625 - 1.5) and band.max() == pytest.approx(12.625 + 1.5)


def test_figure2_band_can_be_the_t_based_95ci(sweep_records):
    from scipy import stats

    summary = report.summarise(sweep_records)
    fig = plots.figure2(summary, report.experiment_meta(sweep_records), band="ci95")
    assert "95% CI" in fig.get_suptitle()
    half = 1.5 * stats.t.ppf(0.975, 2) / np.sqrt(3)  # 3 restarts, std 1.5: t_{0.975, 2} = 4.3027
    assert half == pytest.approx(1.5 * 4.302653 / 3**0.5)
    band = _visible_axes(fig)[0].collections[1].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(8.625 - half) and band.max() == pytest.approx(12.625 + half)
    with pytest.raises(ValueError, match="band must be one of"):
        plots.figure2(summary, report.experiment_meta(sweep_records), band="sem")


def test_layer_distance_figure(sweep_records):
    summary = report.summarise(sweep_records)
    fig = plots.layer_distance_figure(summary, report.experiment_meta(sweep_records))
    axes = _visible_axes(fig)
    assert len(axes) == len(plots.LAYER_PANELS) == 5
    assert [ax.get_title() for ax in axes] == [title for _, title in plots.LAYER_PANELS]
    assert all(ax.get_ylabel() == plots.DIST_LABEL and ax.get_legend() for ax in axes)
    assert SOURCE_NAME in fig.get_suptitle()
    np.testing.assert_allclose(_method_lines(axes[0])["mixout"].get_ydata(), [11.0, 7.0, 3.0])  # dist_mixed
    np.testing.assert_allclose(_method_lines(axes[3])["dropout"].get_ydata(), [1.5, 2.5, 3.5])  # dist_fc1


#: the sweep whose run list the synthetic records of conftest.sweep_records are
SYNTHETIC_SWEEP = sweep.profile_config("smoke", ps=(0.0, 0.4, 0.8), restarts=3)


def test_render_experiment_writes_the_figures_and_the_table(sweep_records, tmp_path):
    run_store = sweep.SweepStore(tmp_path / "results", SYNTHETIC_SWEEP)
    for r in sweep_records:
        run_store.write(r)
    out = tmp_path / "figures"
    paths = exports.render_experiment(run_store.dir, out)
    folder = out / "experiment-smoke-stand-in"
    assert paths == [
        folder / n
        for n in (
            "figure2.png",
            "figure2.pdf",
            "layer_distances.png",
            "layer_distances.pdf",
            "table.csv",
            "table.md",
            "runs.csv",
            "meta.json",
        )
    ]
    for p in paths[:4]:
        assert _is_file(p, PNG if p.suffix == ".png" else PDF), p
    assert (folder / "table.md").read_text().count("\n| mixout |") == 3
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)
    empty = sweep.SweepStore(tmp_path / "results", dataclasses.replace(SYNTHETIC_SWEEP, restarts=2))
    assert exports.render_experiment(empty.dir, out) == []
    # the export reads back: the same records, the tables checked against meta.json
    records, meta = exports.load_figure2(folder)
    assert records == sweep.load_records(run_store.dir)
    assert (
        meta["config"]["profile"] == "smoke" and meta["config"]["restarts"] == 3 and meta["pretrain"] is None
    )
    assert meta["claims"]["mixed_distance_decreasing_every_restart"] is True
    with open(folder / "runs.csv", "a") as f:
        f.write("forged\n")
    with pytest.raises(ValueError, match="runs.csv: sha256 .* differs"):
        exports.load_figure2(folder)


def test_render_stored_renders_the_theory_figures(tmp_path, monkeypatch):
    """``figures`` (studies.render_stored) draws the theory figures even with nothing stored."""
    calls = []

    def fake(out_dir, **kw):
        calls.append(out_dir)
        return [tmp_path / "x.png"]

    monkeypatch.setattr(studies, "render_theory_figures", fake)
    assert studies.render_stored(tmp_path, results=tmp_path / "results") == [tmp_path / "x.png"]
    assert calls == [tmp_path]


def test_render_stored_renders_the_newest_sweep_and_the_stored_ablations(
    sweep_records, ablation_records, tmp_path, monkeypatch
):
    monkeypatch.setattr(studies, "render_theory_figures", lambda out_dir, **kw: [])
    monkeypatch.setattr(sweep, "is_complete", lambda folder: True)  # synthetic records, not a run list
    results = tmp_path / "results"
    old = sweep.SweepStore(results, dataclasses.replace(SYNTHETIC_SWEEP, restarts=1))
    old.write(dict(sweep_records[0], profile="old"))
    past = time.time() - 3600
    os.utime(next(old.runs.glob("*.json")), (past, past))
    new = sweep.SweepStore(results, SYNTHETIC_SWEEP)
    for r in sweep_records:
        new.write(r)
    cfg = ablations.ablation_config(
        "smoke", source="stand-in", sizes=(100,), head_sizes=(100,), trajectory_size=300
    )
    index = ablations.nested_subsets(1000, (100, 300), cfg.subset_seed)
    context = {
        "w_pre_test_acc": 0.8,
        "source_name": SOURCE_NAME,
        "target_train_size": 1000,
        "subset_sha256": ablations.subset_sha256(index),
    }
    for study in ablations.STUDIES:
        s = ablations.AblationStore(results, study, cfg)
        for r in ablation_records[study]:
            s.write(r)
        (s.dir / ablations.CONTEXT).write_text(json.dumps(context))
    out = tmp_path / "figures"
    paths = studies.render_stored(out, results=results)
    names = {p.relative_to(out).as_posix() for p in paths}
    assert {
        "experiment-smoke-stand-in/figure2.png",
        "experiment-smoke-stand-in/table.md",
        "ablations-smoke-stand-in/small_data.png",
        "ablations-smoke-stand-in/new_head.png",
        "ablations-smoke-stand-in/trajectory.png",
        "ablations-smoke-stand-in/meta.json",
    } <= names
    assert not (out / "experiment-old-stand-in").exists()  # only the newest store per profile and source
    assert all(p.is_file() for p in paths)


# --------------------------------------------------------------------------------------- ablations


def test_small_data_figure(ablation_records):
    recs = ablation_records["small_data"]
    fig = plots.small_data_figure(recs, 0.80, SOURCE_NAME)
    (ax,) = _visible_axes(fig)  # one panel per size
    th = report.failure_thresholds(recs, 0.80)
    assert ax.get_title() == (
        "100 target images, 3 restarts, 40 steps (4 epochs)\n"
        f"w_pre 0.800, median - 3 sd {th['outlier_below']:.3f}"
    )
    assert ax.get_ylabel() == "target (MNIST) test accuracy, fraction"
    assert ax.get_legend() is None  # the cut-offs' legend is the figure's, below the panels
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        text for _, _, text in plots.THRESHOLD_STYLE
    ]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "dropout(0.1) + wd(0, 0.01)",
        "mix(w_pre, 0.7)",
        "mix(w_pre, 0.8)",
        "mix(w_pre, 0.9)",
        "mix(w_pre, 0.8) + wd(w_pre, 0.01)",
    ]
    assert f"source task: {SOURCE_NAME} -> target: MNIST" in fig.get_suptitle()
    points = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if c.get_offsets().shape[0] == 3])
    np.testing.assert_allclose(np.sort(points), np.sort([r["test_acc"] for r in recs]))  # every run drawn
    two = plots.small_data_figure(recs + [dict(r, size=300) for r in recs], 0.80)
    assert len(_visible_axes(two)) == 2


def test_new_head_figure(ablation_records):
    head = ablation_records["new_head"]
    fig = plots.new_head_figure(head, 0.80, source_name=SOURCE_NAME)
    (ax,) = _visible_axes(fig)
    assert ax.get_title().startswith("100 target images, 2 restarts\nw_pre 0.800")
    assert ax.get_ylabel() == "target (MNIST) test accuracy, fraction" and fig.legends
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "no regularisation",
        "dropout(0.7) on its inputs",
        "mix(w_0, 0.7)",
    ]
    assert f"source task: {SOURCE_NAME}" in fig.get_suptitle() and "new output layer" in fig.get_suptitle()
    # study 1's mixout(w_pre, 0.7) runs as a grey reference group
    with_ref = plots.new_head_figure(head, 0.80, reference=ablation_records["small_data"])
    (ax,) = _visible_axes(with_ref)
    assert len(ax.get_xticklabels()) == 4 and ax.get_xticklabels()[-1].get_text().startswith(
        "pretrained head"
    )


def test_trajectory_figure(ablation_records):
    traj = ablation_records["trajectory"]
    fig = plots.trajectory_figure(traj, SOURCE_NAME, warmup=0.1)
    axes = _visible_axes(fig)
    assert len(axes) == 3
    assert all(ax.get_title() and ax.get_ylabel() and ax.get_xlabel() == "optimiser step" for ax in axes)
    assert axes[1].get_yscale() == axes[2].get_yscale() == "log"
    sup = fig.get_suptitle()
    assert (
        "300 target images" in sup
        and "96 masks per checkpoint" in sup
        and f"source task: {SOURCE_NAME}" in sup
    )
    assert "one line per run (1 restart per p)" in sup
    warm = "end of warm-up (step 3)"  # 10% of 30 steps, in the legend rather than written over the curves
    assert sorted(t.get_text() for t in axes[0].get_legend().get_texts()) == [warm, "p = 0.5", "p = 0.8"]
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == [
        warm,
        "L2-SP lambdas of study 1 (right margin)",
    ]
    margin = [t for t in axes[1].texts if t.get_text() in ("0.01", "0.1", "1")]
    assert len(margin) == 3 and all(t.xy[0] > 1 for t in margin)  # outside the plotting area
    m_lines = [line for line in axes[0].get_lines() if line.get_label().startswith("p = ")]
    assert [list(line.get_ydata()) for line in m_lines] == [[0.1, 0.5, 0.2], [0.3, 0.35, 0.2]]
    assert [list(line.get_xdata()) for line in m_lines] == [[10, 20, 30]] * 2


def _results(ablation_records) -> ablations.AblationResults:
    cfg = ablations.ablation_config("smoke", source="stand-in", sizes=(100,), head_sizes=(100,))
    return ablations.AblationResults(cfg, 0.80, SOURCE_NAME, torch.arange(7), records=ablation_records)


def test_export_ablations_writes_every_table_figure_and_meta(ablation_records, tmp_path):
    res = _results(ablation_records)
    out = tmp_path / "export"
    written = exports.export_ablations(res, out)
    expected = {
        "small_data_runs.csv",
        "small_data_summary.csv",
        "small_data.png",
        "small_data.pdf",
        "small_data_paired.csv",
        "new_head_runs.csv",
        "new_head_summary.csv",
        "new_head.png",
        "new_head.pdf",
        "trajectory.csv",
        "trajectory_runs.csv",
        "trajectory_summary.csv",
        "trajectory.png",
        "trajectory.pdf",
        "subsets.csv",
        "tables.md",
        "meta.json",
    }
    assert set(written) == expected and {p.name for p in out.iterdir()} == expected
    assert all(path == out / name for name, path in written.items())
    for name in ("small_data.png", "new_head.png", "trajectory.png"):
        assert _is_file(out / name, PNG)
    runs = (out / "small_data_runs.csv").read_text().splitlines()
    assert runs[0] == (
        "size,setting,restart,data_seed,mask_seed,epochs,steps,test_acc,test_loss,train_loss,"
        "dist_mixed,dist_fc1,dist_fc2,dist_fc3,dist_all"
    )
    assert len(runs) == 1 + 15 and runs[1].startswith("100,dropout0.1+wd0.01,0,0,1000,4,40,0.85,")
    assert (out / "subsets.csv").read_text().splitlines() == ["rank,target_train_index"] + [
        f"{i},{i}" for i in range(7)
    ]
    assert len((out / "trajectory.csv").read_text().splitlines()) == 1 + 6
    tables = (out / "tables.md").read_text()
    for heading in (
        "## Small data, many restarts",
        "### Paired differences",
        "## A new output layer",
        "## Effective L2 coefficient along the run",
    ):
        assert heading in tables
    meta = json.loads((out / "meta.json").read_text())
    assert meta["w_pre_test_acc"] == 0.8 and meta["source_name"] == SOURCE_NAME
    assert meta["subset_sha256"] == ablations.subset_sha256(torch.arange(7))
    assert meta["store_keys"] == {s: res.config.key(s) for s in ablations.STUDIES}
    assert meta["training"]["small_data"] == {"runs": 15, "member_steps": 15 * 40, "seconds": 15 * 2.0 / 4}
    assert meta["claims"]["head"] == {"100": "head-mixout-w0-0.7"}
    assert meta["claims"]["mixout_fewer_failures"] == {"100": [0, 1]}
    assert meta["this_invocation_seconds"] == {} and meta["config"]["profile"] == "smoke"


def test_export_ablations_of_one_study(ablation_records, tmp_path):
    res = _results({"trajectory": ablation_records["trajectory"]})
    written = exports.export_ablations(res, tmp_path)
    assert set(written) == {
        "trajectory.csv",
        "trajectory_runs.csv",
        "trajectory_summary.csv",
        "trajectory.png",
        "trajectory.pdf",
        "subsets.csv",
        "tables.md",
        "meta.json",
    }
    assert json.loads((tmp_path / "meta.json").read_text())["claims"]["m_peak_over_last"] == {
        "0.5": pytest.approx(2.5),
        "0.8": pytest.approx(1.75),
    }


def test_figures_leave_the_backend_alone():
    assert matplotlib.get_backend().lower() == "agg"
    assert set(plots.__all__) >= {
        "figure2",
        "layer_distance_figure",
        "small_data_figure",
        "new_head_figure",
        "trajectory_figure",
    }
    writers = {"render_experiment", "export_experiment", "export_ablations", "export_theorem1"}
    assert writers <= set(exports.__all__) and not writers & set(plots.__all__)  # plots draws, exports write


def test_an_ablation_export_reads_back_as_the_same_results(ablation_records, tmp_path):
    res = _results(ablation_records)
    exports.export_ablations(res, tmp_path / "a")
    back = exports.load_ablations(tmp_path / "a")
    assert back.config == res.config and back.w_pre_acc == 0.80 and back.source_name == SOURCE_NAME
    assert torch.equal(back.subset_index, res.subset_index)
    for study, recs in res.records.items():  # every exported field of every run, lossless
        got = back.records[study]
        assert len(got) == len(recs)
        for a, b in zip(got, recs, strict=False):
            assert {k: v for k, v in b.items() if k in a} == a
    assert [r["checkpoints"] for r in back.records["trajectory"]] == [
        r["checkpoints"] for r in res.records["trajectory"]
    ]
    # so the tables and claims of the read-back results are those of the original
    exports.export_ablations(back, tmp_path / "b")
    assert (tmp_path / "b" / "tables.md").read_text() == (tmp_path / "a" / "tables.md").read_text()
    meta_a, meta_b = (json.loads((tmp_path / d / "meta.json").read_text()) for d in "ab")
    assert meta_a["claims"] == meta_b["claims"] and meta_a["sha256"] == meta_b["sha256"]
    # a table altered after the export is refused, naming the file
    with open(tmp_path / "a" / "new_head_runs.csv", "a") as f:
        f.write("100,head-none,9,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n")
    with pytest.raises(ValueError, match="new_head_runs.csv: sha256"):
        exports.load_ablations(tmp_path / "a")


def test_an_older_ablation_export_without_trajectory_runs(ablation_records, tmp_path):
    """Exports from before trajectory_runs.csv keep the trajectory runs' test accuracy per p only."""
    res = _results({"trajectory": ablation_records["trajectory"]})
    exports.export_ablations(res, tmp_path)
    (tmp_path / "trajectory_runs.csv").unlink()
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["sha256"]["trajectory_runs.csv"]
    store.write_meta(tmp_path, meta, list(meta["sha256"]))
    back = exports.load_ablations(tmp_path)
    want = {r["p"]: r["test_acc"] for r in report.trajectory_summary(res.records["trajectory"])}
    got = {r["p"]: r["test_acc"] for r in report.trajectory_summary(back.records["trajectory"])}
    assert got == pytest.approx(want, rel=1e-5)  # the summary keeps 6 significant digits


def test_source_target_figure_names_both_tasks():
    import types

    y = torch.arange(10)
    task = types.SimpleNamespace(val=types.SimpleNamespace(y=y))
    exp = types.SimpleNamespace(
        source_name=SOURCE_NAME,
        task=lambda name: task,
        images=lambda name, split, n: torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(0)),
    )
    fig = plots.source_target_figure(exp, n=4)
    axes = _visible_axes(fig)
    assert len(axes) == 8 and [ax.get_title() for ax in axes[:4]] == ["0", "1", "2", "3"]
    assert axes[0].get_ylabel() == "source" and axes[4].get_ylabel() == "target\n(MNIST)"
    assert fig.get_suptitle().startswith(f"source task: {SOURCE_NAME} -> target: MNIST")

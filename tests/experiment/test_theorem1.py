"""Theorem 1 on the paper's MLP (mixout_theory.experiment.theorem1): the loss it measures, the
consistency of one measurement, and the study end to end on a synthetic task (resume, kept weights
checked by sha256, tables checked by sha256, figures rendered from the tables)."""

import json

import pytest
import torch
import torch.nn.functional as F

from mixout_theory.experiment import beyond_second_order, compare, exports, mlp, theorem1
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.study import Context

CPU = RunOptions(device="cpu", progress=False)


def _moved(params, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=g) if k in mlp.MIXED else v.clone()
        for k, v in params.items()
    }


def test_network_loss_is_the_models_mean_cross_entropy(blob_task):
    params = _moved(mlp.init_params(None, seed=0), 0.01, 1)
    x, y = blob_task(50, 2)
    loss_fn, w = theorem1.network_loss(params, x, y)
    assert set(w) == set(mlp.MIXED) and all(v.dtype == torch.float64 for v in w.values())
    p64 = {k: v.double() for k, v in params.items()}
    want = F.cross_entropy(mlp.forward(p64, x.double()), y)
    assert loss_fn(w).item() == pytest.approx(want.item(), rel=1e-12)


@pytest.mark.slow  # ~40 s
def test_one_measurement_is_consistent(blob_task):
    """m_eff is a weighted mean of Rayleigh quotients of H, so m_min <= m_eff <= m_max; Corollary 1.1
    with m = m_eff is the second-order value; the per-layer terms add up."""
    u = mlp.init_params(None, seed=0)
    w = _moved(u, 0.01, 3)
    x, y = blob_task(64, 4)
    row = theorem1.measure_point(w, u, 0.4, x, y, mc_samples=128, mc_seed=5, lanczos_tol=1e-6)
    assert row["m_min"] <= row["m_eff"] <= row["m_max"]
    assert row["corollary_m_eff"] == pytest.approx(row["second_order"], rel=1e-12)
    assert row["quad_fc2"] + row["quad_fc3"] == pytest.approx(row["m_eff"] * row["dist2"], rel=1e-10)
    assert row["dist2_fc2"] + row["dist2_fc3"] == pytest.approx(row["dist2"], rel=1e-12)
    assert row["second_order"] == pytest.approx(0.4 / 0.6 / 2 * row["m_eff"] * row["dist2"], rel=1e-12)
    assert row["mc_lo"] < row["mc"] < row["mc_hi"] and row["corollary_m_min"] is None  # m_min < 0 here


def test_checkpoint_epochs_are_geometric_with_both_ends():
    assert theorem1.checkpoint_epochs(78, 10) == [1, 2, 3, 4, 7, 11, 18, 30, 48, 78]
    assert theorem1.checkpoint_epochs(5, 1) == [5] and theorem1.checkpoint_epochs(1, 4) == [1]


@pytest.fixture(scope="module")
def exp(make_exp):
    return make_exp(source=(400, 100, 100), target=(400, 100, 100))


@pytest.mark.slow  # ~110 s
def test_the_study_end_to_end(exp, tmp_path, monkeypatch):
    ctx = Context("smoke", results=tmp_path / "results", options=CPU)
    kw = dict(
        exp=exp,
        ps=(0.6,),
        mc_samples=64,
        loss_size=200,
        checkpoints=2,
        scan_ps=(0.2, 0.6),
        scale_ps=(0.6,),
        scale_ts=(0.5, 1.0),
    )
    res = theorem1.run_theorem1(ctx, **kw)
    parts = ("w_pre", "finetuned", "displaced", "scan", "layers", "scale", "trajectory")
    assert [len(res.records[k]) for k in parts] == [1, 1, 1, 4, 6, 4, 2]
    assert res.context["loss_size"] == 200 and len(res.context["loss_subset_sha256"]) == 64
    fin, dis = res.records["finetuned"][0], res.records["displaced"][0]
    assert fin["dist2"] == pytest.approx(dis["dist2"], rel=1e-12)  # the same displacement d at two points
    assert all(len(r["checkpoints"]) == 2 for r in res.records["trajectory"])
    scan = {(r["point"], r["p"]): r for r in res.records["scan"]}
    at_p = scan["w_p", 0.6]  # the scan at the measured p repeats the finetuned point's numbers
    assert at_p["mc"] == pytest.approx(fin["mc"], rel=1e-12) and at_p["second_order"] == pytest.approx(
        fin["second_order"], rel=1e-10
    )
    assert scan["w_pre", 0.2]["second_order"] == pytest.approx(
        dis["second_order"] * (0.2 / 0.8) / (0.6 / 0.4), rel=1e-10
    )

    layers = {(r["point"], r["mixed"]): r for r in res.records["layers"]}
    assert layers["w_p", "fc3"]["kink"] == 0.0 and layers["w_p", "fc3"]["flips"] == 0.0  # no ReLU after fc3
    assert layers["w_p", "both"]["second_order"] == pytest.approx(fin["second_order"], rel=1e-12)
    scale = {(r["point"], r["t"]): r for r in res.records["scale"]}
    assert scale["w_pre", 1.0]["mc"] == pytest.approx(layers["w_pre", "both"]["mc"], rel=1e-9)  # t = 1
    assert scale["w_pre", 0.5]["second_order"] == pytest.approx(0.25 * dis["second_order"], rel=1e-12)

    # a rerun measures nothing again
    def no_work(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("a stored measurement was recomputed")

    monkeypatch.setattr(theorem1, "measure_point", no_work)
    monkeypatch.setattr(beyond_second_order, "penalty_parts", no_work)
    again = theorem1.run_theorem1(ctx, **kw)
    assert again.records == res.records

    # the kept weights are verified before use
    path = res.store.weights / f"{fin['sweep_run']}.pt"
    assert path.is_file() and path.with_suffix(".sha256").is_file()
    assert res.store.load_weights(fin["sweep_run"])["fc2.weight"].shape == (100, 300)
    blob = bytearray(path.read_bytes())
    blob[-200] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=f"{path.name}.*delete it and rerun"):
        res.store.load_weights(fin["sweep_run"])

    # tables, figures from the tables, and the loader that checks them
    out = tmp_path / "export"
    written = exports.export_theorem1(theorem1.load_stored(tmp_path / "results")[0], out)
    for name in (
        "network_penalty.csv",
        "trajectory.csv",
        "meta.json",
        "theorem1_network.png",
        "theorem1_network.pdf",
        "theorem1_trajectory.png",
        "beyond_second_order.csv",
        "scale_scan.csv",
        "beyond_second_order.png",
    ):
        assert written[name].is_file() and written[name].stat().st_size > 0, name
    assert written["theorem1_network.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points, traj, layer_rows, scale_rows, meta = theorem1.load_tables(out)
    assert [(r["point"], r["mixed"]) for r in layer_rows] == [
        (pt, m) for pt in ("w_p", "w_pre") for m in ("fc2", "fc3", "both")
    ]
    assert [r["t"] for r in scale_rows] == [0.5, 1.0, 0.5, 1.0] and "sha256" in meta
    assert set(meta["sha256"]) == set(theorem1.TABLES) and meta["claims"]["beyond"]["fc3_kink_max"] == 0.0
    assert [r["part"] for r in points] == ["w_pre", "finetuned", "displaced"] + ["scan"] * 4 and len(
        traj
    ) == 4
    assert points[1]["second_order"] == pytest.approx(fin["second_order"], rel=1e-9)
    assert meta["claims"]["finetuned"]["ps"] == [0.6] and meta["store_key"] == res.config.key()
    # compare reads the store (exported on the fly) and its export as the same numbers
    from_store, from_export = compare.read(res.store.dir), compare.read(out)
    assert from_store.study == from_export.study == "theorem1" and from_store.numbers == from_export.numbers
    ok, lines = compare.compare_folders(res.store.dir, out)
    assert ok and lines[-1].startswith("claims: 3 of 3 within noise")  # ratio at both points, Cor. 1.1
    table = out / "trajectory.csv"
    table.write_text(table.read_text().replace("0.5,", "0.6,", 1))
    with pytest.raises(ValueError, match="trajectory.csv.*altered"):
        theorem1.load_tables(out)
    assert json.loads((out / "meta.json").read_text())["context"]["source_name"] == "synthetic test task"


def test_bad_parts_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown parts"):
        theorem1.run_theorem1(
            Context("smoke", results=tmp_path, options=CPU), parts=("finetuned", "everything")
        )
    assert not any(tmp_path.iterdir())


def test_ps_outside_the_sweep_are_refused_before_any_work(exp, tmp_path):
    with pytest.raises(ValueError, match=r"ps \[0.5\] are not mixout runs of the smoke sweep"):
        theorem1.run_theorem1(Context("smoke", results=tmp_path, options=CPU), exp=exp, ps=(0.3, 0.5))
    assert not any(tmp_path.iterdir())


def test_scale_ps_outside_the_studys_ps_are_refused_before_any_work(exp, tmp_path):
    with pytest.raises(ValueError, match=r"scale_ps \[0.6\] are not among the study's ps \[0.3\]"):
        theorem1.run_theorem1(
            Context("smoke", results=tmp_path, options=CPU), exp=exp, ps=(0.3,), scale_ps=(0.6,)
        )
    assert not any(tmp_path.iterdir())

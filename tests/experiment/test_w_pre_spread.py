"""The spread across w_pre (reproduce --pretrain-seeds) and the machine every run records."""

import json
import math

import numpy as np
import pytest

from mixout_theory.cli import main
from mixout_theory.experiment import machine, pretraining, sweep, w_pre_spread
from mixout_theory.experiment.engine import RunOptions

CPU = RunOptions(device="cpu", progress=False)


def _shifted(records, by):
    """The records with every level moved by ``by`` (another w_pre's numbers)."""
    return [dict(r, **{m: r[m] + by for m in w_pre_spread.SPREAD_METRICS}) for r in records]


def test_spread_rows_follow_their_formulas(sweep_records):
    # seeds 0, 1, 2 of w_pre: the same restarts moved by 0, +0.03, -0.03 (levels) -> m_k = m + (0, .03, -.03)
    by_seed = {0: sweep_records, 1: _shifted(sweep_records, 0.03), 2: _shifted(sweep_records, -0.03)}
    rows = {(r["method"], r["p"], r["quantity"]): r for r in w_pre_spread.spread_rows(by_seed)}
    r = rows["mixout", 0.8, "source_val_acc"]  # restarts 0.96, 0.95, 0.94: mean 0.95, std 0.01
    assert r["w_pre_seeds"] == 3 and r["restarts"] == 3
    assert r["mean"] == pytest.approx(0.95, abs=1e-12)
    assert r["sd_restarts"] == pytest.approx(0.01, abs=1e-12)
    assert r["sd_w_pre"] == pytest.approx(0.03, abs=1e-12)  # std of (0, 0.03, -0.03), ddof 1
    assert r["tau"] == pytest.approx(math.sqrt(0.03**2 - 0.01**2 / 3), abs=1e-12)
    assert r["ratio"] == pytest.approx(0.03 / (0.01 / math.sqrt(3)), rel=1e-9)
    assert (r["min_seed_mean"], r["max_seed_mean"]) == pytest.approx((0.92, 0.98), abs=1e-12)
    # the gap mixout - dropout is paired restart by restart and unchanged by a shift of both methods
    gap = rows["gap", 0.8, "source_acc_gap"]
    assert gap["mean"] == pytest.approx(0.03, abs=1e-12) and gap["sd_w_pre"] == pytest.approx(0.0, abs=1e-12)
    assert gap["tau"] == 0.0  # the w_pre spread is below the restarts' noise: no w_pre component


def test_claims_per_w_pre_and_for_every_w_pre(sweep_records):
    bad = [
        dict(r, source_val_acc=r["source_val_acc"] - 0.5) if r["method"] == "mixout" else r
        for r in sweep_records
    ]
    rows = w_pre_spread.claim_rows({0: sweep_records, 1: bad}, {0: {"acc": 0.97, "epoch": 9}})
    assert [r["source_acc_mixout_ge_dropout"] for r in rows] == [True, False]
    assert rows[0]["w_pre_source_acc"] == 0.97 and rows[1]["w_pre_source_acc"] is None
    every = w_pre_spread.claims_for_every_w_pre(rows)
    assert every["source_acc_mixout_ge_dropout"] == {"held": 1, "of": 2, "every_w_pre": False}
    assert every["mixed_distance_decreasing_every_restart"]["every_w_pre"]


@pytest.fixture(scope="module")
def two_seeds(make_exp, tmp_path_factory):
    """The tiny sweep from w_pre of pretraining seeds 0 and 1 (one results root), and its spread export."""
    exp = make_exp(source=(400, 200, 200), target=(160, 200, 200))
    root = tmp_path_factory.mktemp("results")
    stores = {}
    for seed in (0, 1):
        cfg = sweep.profile_config(
            "smoke",
            source="stand-in",
            data=sweep.data_fingerprint(exp),
            source_train=None,
            target_train=None,
            eval_size=None,
            pretrain_epochs=2,
            ps=(0.0, 0.5),
            restarts=3,
            pretrain_seed=seed,
        )
        tensors = pretraining.experiment_tensors(exp, cfg)
        w_pre = pretraining.pretrain(root, cfg, tensors, CPU)
        cfg = sweep.dataclasses.replace(cfg, w_pre=sweep.tensors_sha256(w_pre)[:16])
        stores[seed] = sweep.run_sweep(root, cfg, tensors, w_pre, CPU)
    out = tmp_path_factory.mktemp("figures")
    paths = w_pre_spread.render_spreads(root, out)
    return root, stores, out / f"{w_pre_spread.STUDY}-smoke-stand-in", paths


def test_pretrain_seeds_make_separate_w_pre_and_stores_and_one_spread(two_seeds):
    root, stores, folder, paths = two_seeds
    assert stores[0].dir != stores[1].dir and len(list((root / "pretrain").glob("*.pt"))) == 2
    # Figure 2 is seed 0's store; seed 1's is the spread's only
    assert sweep.is_figure2_store(stores[0].dir) and not sweep.is_figure2_store(stores[1].dir)
    assert {p.name for p in paths} >= {
        "w_pre_spread.csv",
        "w_pre_claims.csv",
        "figure2_w_pre.png",
        "meta.json",
    }
    rows, claims, meta = w_pre_spread.load_spread(folder)
    assert [c["pretrain_seed"] for c in claims] == [0, 1] and meta["stores"] == {
        "0": stores[0].dir.name,
        "1": stores[1].dir.name,
    }
    # the tables are the formulas on the stored records (recomputed here from the stores)
    recs = {s: st.records() for s, st in stores.items()}
    m = [np.mean([r["target_val_acc"] for r in recs[s] if r["method"] == "mixout"]) for s in (0, 1)]
    row = next(r for r in rows if (r["method"], r["p"], r["quantity"]) == ("mixout", 0.5, "target_val_acc"))
    assert row["mean"] == pytest.approx(np.mean(m), abs=1e-12)
    assert row["sd_w_pre"] == pytest.approx(abs(m[0] - m[1]) / math.sqrt(2), abs=1e-12)
    assert meta["machines"] and meta["machines"][0]["cpu"] == machine.cpu_model()


def test_every_record_and_export_names_the_machine(two_seeds):
    _, stores, folder, _ = two_seeds
    rec = stores[0].records()[0]
    for field in machine.MACHINE_FIELDS[:-1]:  # gpu only on a CUDA device
        assert rec[field] not in (None, ""), field
    assert rec["cpu_capability"] == machine.machine("cpu")["cpu_capability"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["env"]["cores"] >= 1 and meta["env"]["blas"]
    # another machine: other kernels than this run's (which are DEFAULT under ATEN_CPU_CAPABILITY=default)
    other = dict(rec, cpu_capability="AVX2" if rec["cpu_capability"] == "DEFAULT" else "DEFAULT")
    assert machine.machines_of([rec, rec, other]) == [
        {k: rec[k] for k in machine.MACHINE_FIELDS if k in rec},
        {k: v for k, v in other.items() if k in machine.MACHINE_FIELDS},
    ]
    assert "kernels" in machine.describe(machine.machine("cpu"))


def test_compare_two_w_pre_with_and_without_their_spread(two_seeds, capsys):
    _, stores, folder, _ = two_seeds
    assert main(["compare", str(stores[0].dir), str(stores[0].dir)]) == 0
    out = capsys.readouterr().out
    assert "claims:" in out and "sigma^2 = se_a^2 + se_b^2" in out
    main(["compare", str(stores[0].dir), str(stores[1].dir), "--spread", str(folder)])
    out = capsys.readouterr().out.strip().splitlines()
    assert "+ 2 tau_w_pre^2" in out[-1]  # the w_pre spread counted as noise, and said so
    main(["compare", str(stores[0].dir), str(stores[1].dir), "--spread", "none"])
    assert "tau_w_pre" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["--pretrain-seeds", "0"], ["--pretrain-seeds", "x"], ["--pretrain-seeds", "2", "--pretrain-search"]],
)
def test_bad_pretrain_seeds_exit_2_before_any_work(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--profile", "smoke", "--results", str(tmp_path), *argv])
    assert e.value.code == 2 and not any(tmp_path.iterdir())
    assert "pretrain" in capsys.readouterr().err

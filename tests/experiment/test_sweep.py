"""The sweep: runs, records, the resumable store (summaries: tests/experiment/test_report.py)."""

import json

import pytest
import torch

from mixout_theory.experiment import ablations, engine, mlp, pretraining, sweep
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.store import TMP_MARK, atomic_write
from mixout_theory.experiment.studies import REGISTRY
from mixout_theory.experiment.study import profile_sizes

CPU = RunOptions(device="cpu", progress=False)


@pytest.fixture(scope="module")
def exp(make_exp):
    return make_exp(source=(400, 200, 200), target=(160, 200, 200))


def _config(exp, **kw):
    base = dict(
        source_train=None, target_train=None, eval_size=None, pretrain_epochs=2, ps=(0.0, 0.5), restarts=2
    )
    return sweep.profile_config(
        "smoke", source="stand-in", data=sweep.data_fingerprint(exp), **{**base, **kw}
    )


def test_members_cover_the_grid_with_shared_p0():
    cfg = sweep.profile_config("paper")
    runs = sweep.sweep_members(cfg)
    assert len(runs) == 10 * (1 + 2 * 8) == 170
    assert len({r[0] for r in runs}) == 170
    none = [r for r in runs if r[1]["method"] == "none"]
    assert len(none) == 10 and all(r[1]["p"] == 0 and r[2].dropout == r[2].mixout == (0.0, 0.0) for r in none)
    # restarts are paired: the data order depends on the restart only
    by_seed = {}
    for _, f, m in runs:
        by_seed.setdefault(f["seed"], set()).add(m.data_seed)
    assert all(v == {k} for k, v in by_seed.items())
    assert len({m.mask_seed for _, _, m in runs}) == 170


def test_config_key_changes_with_what_changes_numbers():
    a = sweep.profile_config("paper")
    assert a.key() == sweep.profile_config("paper").key()
    assert a.key() != sweep.profile_config("paper", lr_finetune=1e-4).key()
    assert a.key() != sweep.profile_config("paper", data="other data").key()
    assert a.pretrain_key() == sweep.profile_config("paper", lr_finetune=1e-4).pretrain_key()
    with pytest.raises(ValueError, match="profile must be one of"):
        sweep.profile_config("huge")


def test_sweep_records_resume_and_interrupt(exp, tmp_path, monkeypatch):
    cfg = _config(exp)
    tensors = pretraining.experiment_tensors(exp, cfg)
    w_pre = pretraining.pretrain(tmp_path, cfg, tensors, CPU)
    # cached: a second call loads the same tensors without training
    calls = []
    monkeypatch.setattr(engine, "train_ensemble", lambda *a, **k: calls.append(1))
    again = pretraining.pretrain(tmp_path, cfg, tensors, CPU)
    assert not calls and all(torch.equal(w_pre[k], again[k]) for k in w_pre)
    monkeypatch.undo()

    # interrupt after the first chunk: what finished is kept, the rest is done on the rerun
    real = engine.train_ensemble
    n_calls = {"n": 0}

    def flaky(*a, **k):
        n_calls["n"] += 1
        if n_calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "train_ensemble", flaky)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(tmp_path, cfg, tensors, w_pre, RunOptions(device="cpu", chunk=3, progress=False))
    store = sweep.SweepStore(tmp_path, cfg)
    assert len(store.done()) == 3
    assert not list(store.runs.glob("*.tmp"))
    assert not list(store.runs.glob(f".*{TMP_MARK}*"))  # the temporaries' real names (store.tmp_name)
    first = {r["run_id"]: r for r in store.records()}
    monkeypatch.undo()

    store = sweep.run_sweep(tmp_path, cfg, tensors, w_pre, RunOptions(device="cpu", chunk=3, progress=False))
    recs = store.records()
    assert len(recs) == 2 * 3
    assert all(first[r["run_id"]] == r for r in recs if r["run_id"] in first)  # untouched
    r = recs[0]
    for field in (
        "method",
        "p",
        "seed",
        "source",
        "profile",
        "dist_all",
        "dist_mixed",
        "dist_fc1",
        "dist_fc2",
        "dist_fc3",
        "target_val_acc",
        "target_test_acc",
        "source_val_acc",
        "train_loss",
        "chunk_seconds",
        "torch",
        "mixout_theory",
    ):
        assert field in r, field
    # every record's distance is the distance of an actual finetuned network (sum of its layers)
    assert r["dist_all"] == pytest.approx(
        r["dist_fc1"] + r["dist_fc2"] + r["dist_fc3"] + r["dist_ln1"] + r["dist_ln2"]
    )
    csv_lines = (store.dir / "runs.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("run_id,method,p,seed,source,profile")
    assert json.loads((store.dir / "config.json").read_text())["ps"] == [0.0, 0.5]

    # a changed configuration goes to a different folder and never sees these records
    other = sweep.SweepStore(tmp_path, _config(exp, lr_finetune=1e-3))
    assert other.dir != store.dir and other.done() == set()


def test_sweep_record_matches_a_solo_run(exp, tmp_path):
    """The numbers in a record are those of the member trained alone with the same seeds."""
    cfg = _config(exp, ps=(0.0, 0.6), restarts=1)
    tensors = pretraining.experiment_tensors(exp, cfg)
    w_pre = mlp.init_params(None, 4)
    store = sweep.run_sweep(tmp_path, cfg, tensors, w_pre, CPU)
    rec = next(r for r in store.records() if r["method"] == "mixout")
    member = next(m for rid, _, m in sweep.sweep_members(cfg) if rid == rec["run_id"])
    solo = engine.train_ensemble(
        w_pre, [member], *tensors["target_train"], epochs=5, lr=cfg.lr_finetune, target=w_pre, device="cpu"
    )
    d = mlp.squared_distances(solo.params, w_pre)
    assert rec["dist_mixed"] == pytest.approx(float(d["mixed"][0]), rel=1e-4)
    acc = engine.evaluate(solo.params, *tensors["source_val"])["acc"][0]
    assert rec["source_val_acc"] == pytest.approx(float(acc), abs=1 / 200 + 1e-9)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write(target, "old")
    with pytest.raises(TypeError):
        atomic_write(target, 12345)  # not bytes / str: fails while writing
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_workers_give_the_same_records(exp, tmp_path):
    """Two worker processes write exactly the records one process writes (timings aside)."""
    cfg = _config(exp, ps=(0.0, 0.5), restarts=2)
    tensors = pretraining.experiment_tensors(exp, cfg)
    w_pre = mlp.init_params(None, 2)
    one = sweep.run_sweep(
        tmp_path / "a", cfg, tensors, w_pre, RunOptions(device="cpu", chunk=2, workers=1, progress=False)
    )
    two = sweep.run_sweep(
        tmp_path / "b", cfg, tensors, w_pre, RunOptions(device="cpu", chunk=2, workers=2, progress=False)
    )
    drop = ("chunk_seconds",)
    a = [{k: v for k, v in r.items() if k not in drop} for r in one.records()]
    b = [{k: v for k, v in r.items() if k not in drop} for r in two.records()]
    assert len(a) == 6 and [r["run_id"] for r in a] == [r["run_id"] for r in b]
    for ra, rb in zip(a, b, strict=False):  # equal up to float32 summation order (thread counts differ)
        assert ra == {
            k: pytest.approx(v, rel=1e-4, abs=1e-6) if isinstance(v, float) else v for k, v in rb.items()
        }


def test_pretrain_search_keeps_the_best_final_validation_run(exp, tmp_path, monkeypatch):
    """The paper's search: each (seed, budget) is its own run and only its final epoch competes."""
    monkeypatch.setattr(pretraining, "SEARCH_BUDGETS", range(1, 3))
    monkeypatch.setattr(pretraining, "SEARCH_SEEDS", range(2))
    cfg = _config(exp, pretrain_search=True)
    tensors = pretraining.experiment_tensors(exp, cfg)
    w_pre = pretraining.pretrain(tmp_path, cfg, tensors, CPU)
    meta = json.loads(next((tmp_path / "pretrain").glob("*.json")).read_text())
    assert meta["budget"] in (1, 2) and meta["seed"] in (0, 1) and meta["epoch"] == meta["budget"]
    # reproduce every candidate alone: the kept one has the best final validation accuracy
    accs = {}
    for budget in (1, 2):
        for seed in (0, 1):
            m = engine.Member(
                dropout=cfg.dropout_pretrain,
                wdecay=cfg.weight_decay_pretrain,
                data_seed=seed,
                mask_seed=10_000 + seed,
            )
            init = {k: v[seed] for k, v in mlp.init_params(2, seed=0).items()}
            r = engine.train_ensemble(
                init, [m], *tensors["source_train"], epochs=budget, lr=cfg.lr_pretrain, device="cpu"
            )
            accs[budget, seed] = float(engine.evaluate(r.params, *tensors["source_val"])["acc"][0])
    assert meta["acc"] == pytest.approx(max(accs.values()))
    assert accs[meta["budget"], meta["seed"]] == pytest.approx(meta["acc"])
    assert set(w_pre) == set(mlp.PARAM_NAMES)


def test_profile_sizes_are_one_table():
    from mixout_theory.profiles import PROFILES

    for study in REGISTRY.values():  # each study's sizes beside it, one entry per profile
        assert set(study.sizes) == set(PROFILES) and study.sizes["paper"] == {}
        for profile in PROFILES:
            got = profile_sizes(study.sizes, profile)
            assert got == study.sizes[profile] and got is not study.sizes[profile]
    got["restarts"] = 99  # a copy: the table itself never changes
    assert REGISTRY["figure2"].sizes is sweep.SIZES and REGISTRY["ablations"].sizes is ablations.SIZES
    assert sweep.profile_config("smoke").restarts == sweep.SIZES["smoke"]["restarts"] == 4
    assert sweep.profile_config("smoke").ps == (0.0, 0.3, 0.6, 0.8)
    assert sweep.profile_config("paper") == sweep.SweepConfig()  # paper: the dataclass defaults
    with pytest.raises(ValueError, match="profile must be one of"):
        profile_sizes(sweep.SIZES, "huge")


def test_run_sweep_takes_its_ensemble_size_and_workers_from_run_options(tmp_path, monkeypatch):
    """``RunOptions.chunk`` runs per ensemble (default ``CHUNK`` = one restart's 17 runs of the paper's
    sweep), ``RunOptions.workers`` and ``device`` passed on to the engine."""
    assert sweep.CHUNK == 17 == len(sweep.sweep_members(sweep.profile_config("paper"))) // 10
    cfg = sweep.profile_config("smoke", data="synthetic")
    assert len(sweep.sweep_members(cfg)) == 4 * (1 + 2 * 3) == 28
    seen = []

    def stop(init, members, *args, **kwargs):
        seen.append((len(members), kwargs["workers"], kwargs["device"]))
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train_ensemble", stop)
    tensors = {"target_train": (torch.zeros(64, 784), torch.zeros(64, dtype=torch.long))}
    cases = (
        (CPU, (17, engine.default_workers(), "cpu")),
        (RunOptions(device="cpu", chunk=5, workers=1, progress=False), (5, 1, "cpu")),
    )
    for options, want in cases:
        with pytest.raises(KeyboardInterrupt):
            sweep.run_sweep(tmp_path / str(want[0]), cfg, tensors, {}, options)  # a store per chunk size
        assert seen[-1] == want

"""Ablations: wdecay as a penalty (coupled, exact gradient), the studies' pairing, subsets, step
budget and resumable store, the stores reloaded by load_stored. (The effective L2 estimator:
tests/experiment/test_effective_l2.py; failure rule, summaries, tables: tests/experiment/test_report.py.)
"""

import dataclasses
import math
import types

import pytest
import torch
import torch.nn.functional as F

from mixout_theory import penalty
from mixout_theory.experiment import ablations as A
from mixout_theory.experiment import compare, engine, mlp, report
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.study import Context

CPU = RunOptions(device="cpu", progress=False)


# ---------------------------------------------------------------- wdecay(u, lambda) as a penalty


def test_wdecay_value_and_gradient_tensor():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(4, 5, generator=g, dtype=torch.float64)
    val = penalty.wdecay(w, u, 0.3)
    assert val.item() == pytest.approx(0.15 * ((w - u) ** 2).sum().item(), rel=1e-12)
    (grad,) = torch.autograd.grad(val, w)
    assert torch.allclose(grad, 0.3 * (w - u).detach(), rtol=0, atol=1e-14)
    # u = None is the origin: ordinary weight decay
    assert penalty.wdecay(w, None, 2.0).item() == pytest.approx((w**2).sum().item(), rel=1e-12)
    assert penalty.wdecay(w, u, 0.0).item() == 0.0


def test_wdecay_state_dicts_and_keys():
    w = mlp.init_params(None, seed=1)
    u = {k: v + 0.1 for k, v in mlp.init_params(None, seed=2).items()}  # biases, LayerNorm differ too
    names = ("fc1.weight", "fc2.weight", "fc3.weight")
    full = penalty.wdecay(w, u, 0.5)
    some = penalty.wdecay(w, u, 0.5, keys=names)
    assert full.item() == pytest.approx(0.25 * sum(((w[k] - u[k]) ** 2).sum().item() for k in w), rel=1e-5)
    assert some.item() == pytest.approx(
        0.25 * sum(((w[k] - u[k]) ** 2).sum().item() for k in names), rel=1e-5
    )
    assert some.item() < full.item()
    # u may be a bigger dict than the selected keys
    sub = {k: w[k] for k in names}
    assert penalty.wdecay(sub, u, 0.5).item() == pytest.approx(some.item(), rel=1e-6)


def test_wdecay_bad_input():
    w = torch.zeros(3)
    for lam in (-1.0, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="lam"):
            penalty.wdecay(w, None, lam)
    with pytest.raises(ValueError, match="shape mismatch"):
        penalty.wdecay(w, torch.zeros(4), 0.1)
    with pytest.raises(TypeError, match="keys"):
        penalty.wdecay(w, None, 0.1, keys=["a"])
    with pytest.raises(ValueError, match="not in w"):
        penalty.wdecay({"a": w}, None, 0.1, keys=["b"])
    with pytest.raises(ValueError, match="u lacks"):
        penalty.wdecay({"a": w, "b": w}, {"a": w}, 0.1)


def test_engine_wdecay_is_the_coupled_gradient_of_the_penalty(blob_task):
    """train_ensemble(wdecay=lambda, wdecay_target=u) == Adam on L(w) + penalty.wdecay(w, u, lambda)
    over the Linear weights (full-batch steps, so the data order cannot matter), and differs clearly
    from decoupled (AdamW-style) decay of the same lambda. In float64, so that the two summation
    orders (the engine's hand-written gradient, autograd's) agree far below the tolerance."""
    x, y = blob_task()
    x = x.double()
    u = {k: v.double() for k, v in mlp.init_params(None, seed=3).items()}
    w0 = {
        k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        for k, v in u.items()
    }
    lam, lr, epochs = 0.5, 3e-3, 4
    res = engine.train_ensemble(
        w0,
        [engine.Member(wdecay=lam)],
        x,
        y,
        epochs=epochs,
        lr=lr,
        batch_size=x.shape[0],
        warmup=0.0,
        wdecay_target=u,
        device="cpu",
    )

    def manual(decoupled):
        params = {k: v.clone().requires_grad_(True) for k, v in w0.items()}
        opt = torch.optim.Adam(list(params.values()), lr=lr, betas=engine.BETAS, eps=engine.EPS)
        for step in range(epochs):
            for group in opt.param_groups:
                group["lr"] = lr * engine.lr_factor(step, epochs, 0.0)
            loss = F.cross_entropy(mlp.forward(params, x), y)
            if not decoupled:
                loss = loss + penalty.wdecay(params, u, lam, keys=engine.DECAYED)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if decoupled:
                with torch.no_grad():
                    for k in engine.DECAYED:
                        params[k] -= opt.param_groups[0]["lr"] * lam * (params[k] - u[k])
        return {k: v.detach() for k, v in params.items()}

    coupled, decoupled = manual(False), manual(True)
    for k in mlp.PARAM_NAMES:
        assert torch.allclose(res.params[k][0], coupled[k], rtol=0, atol=1e-9), k
    gap = max((coupled[k] - decoupled[k]).abs().max().item() for k in engine.DECAYED)
    assert gap > 1e-3  # the two conventions are far apart at this lambda


# ---------------------------------------------------------------- subsets, step budget, settings


def test_nested_subsets_are_fixed_and_nested():
    idx = A.nested_subsets(5000, (100, 300, 1000, 3000), seed=11)
    assert idx.shape == (3000,) and len(set(idx.tolist())) == 3000
    assert torch.equal(idx, A.nested_subsets(5000, (3000, 100), seed=11))  # order of sizes irrelevant
    assert torch.equal(idx[:100], A.nested_subsets(5000, (100,), seed=11))  # prefixes: nested
    assert not torch.equal(idx, A.nested_subsets(5000, (3000,), seed=12))
    with pytest.raises(ValueError, match="exceeds the pool"):
        A.nested_subsets(200, (300,))
    with pytest.raises(ValueError, match="positive"):
        A.nested_subsets(200, (0,))


def test_step_budget_is_the_same_for_every_size():
    cfg = A.ablation_config("paper")
    budget = A.steps_budget(cfg)
    assert budget == 5 * math.ceil(3000 / 32) == 470
    assert A.epochs_for(3000, cfg) == 5  # the reference size gets the paper's 5 epochs
    for n, epochs in ((100, 118), (300, 47), (1000, 15)):
        assert A.epochs_for(n, cfg) == epochs
        steps = epochs * math.ceil(n / 32)
        assert abs(steps - budget) <= math.ceil(n / 32) / 2 + 1e-9  # within half an epoch of the budget
    with pytest.raises(ValueError, match="size"):
        A.epochs_for(0, cfg)


def test_settings_are_paired_and_grouped():
    names = [s.name for s in A.SMALL_DATA_SETTINGS]
    assert len(names) == 9 == len(set(names))
    for r in (0, 7):
        ms = [s.member(r) for s in A.SMALL_DATA_SETTINGS + A.HEAD_SETTINGS]
        assert {m.data_seed for m in ms} == {r} and {m.mask_seed for m in ms} == {A.MASK_SEED0 + r}
    groups = {s.name: s.group for s in A.SMALL_DATA_SETTINGS}
    assert groups["dropout0.1+wd0.01"] == "origin" and groups["l2sp1"] == "w_pre"
    assert groups["mixout0.8"] == "any" and groups["mixout0.8+l2sp0.01"] == "w_pre"
    head = {s.name: s.member(0) for s in A.HEAD_SETTINGS}
    assert head["head-none"].mixout == (0.7, 0.0) and head["head-none"].dropout == (0.0, 0.0)
    assert head["head-dropout0.7"].dropout == (0.0, 0.7) and head["head-mixout-w0-0.7"].mixout == (0.7, 0.7)
    with pytest.raises(ValueError, match="wdecay_to"):
        A.Setting("x", "x", wdecay_to="elsewhere")


def test_head_init_is_seeded_with_the_papers_scale():
    a, b = A.head_init(0), A.head_init(1)
    assert torch.equal(a["fc3.weight"], A.head_init(0)["fc3.weight"])
    assert not torch.equal(a["fc3.weight"], b["fc3.weight"])
    assert a["fc3.weight"].shape == (10, 100) and torch.count_nonzero(a["fc3.bias"]) == 0
    # 1,000 draws of N(0, 0.02^2): the sample sd is within 10% of 0.02 (about 4.5 standard errors)
    assert a["fc3.weight"].std().item() == pytest.approx(0.02, rel=0.1)


def test_config_key_and_profiles():
    a = A.ablation_config("paper")
    assert a.key("small_data") == A.ablation_config("paper").key("small_data")
    assert a.key("small_data") != A.ablation_config("paper", restarts=3).key("small_data")
    # a change that concerns only the trajectory leaves the other studies' stores alone
    t = A.ablation_config("paper", trajectory_samples=64)
    assert t.key("small_data") == a.key("small_data") and t.key("trajectory") != a.key("trajectory")
    assert A.ablation_config("smoke").restarts < a.restarts == 20
    with pytest.raises(ValueError, match="profile"):
        A.ablation_config("huge")
    with pytest.raises(ValueError, match="study"):
        a.key("nope")


# ---------------------------------------------------------------- the studies, end to end on a toy task


@pytest.fixture(scope="module")
def toy(blob_task):
    x, y = blob_task(120, 11)
    xt, yt = blob_task(200, 12)
    S = types.SimpleNamespace
    exp = S(target=S(train=S(x=x, y=y), test=S(x=xt, y=yt)))
    cfg = A.ablation_config(
        "smoke",
        sizes=(20, 40),
        restarts=2,
        reference_size=40,
        reference_epochs=1,
        test_size=None,
        head_sizes=(40,),
        head_restarts=2,
        trajectory_size=40,
        trajectory_ps=(0.5, 0.8),
        trajectory_restarts=1,
        trajectory_every=1,
        trajectory_samples=16,
    )
    w_pre = mlp.init_params(None, seed=21)
    return exp, cfg, A.ablation_tensors(exp, cfg), w_pre


def test_small_data_study_is_paired_resumable_and_equals_solo_runs(toy, tmp_path, monkeypatch):
    exp, cfg, tensors, w_pre = toy
    store = A.run_small_data(tmp_path, cfg, tensors, w_pre, CPU)
    recs = store.records()
    assert len(recs) == 2 * 9 * 2
    assert {(r["data_seed"], r["mask_seed"]) for r in recs if r["restart"] == 1} == {(1, A.MASK_SEED0 + 1)}
    assert {r["steps"] for r in recs} == {A.epochs_for(20, cfg) * 1, A.epochs_for(40, cfg) * 2}
    # one stored run equals the same member trained alone (grouping into ensembles changes nothing)
    rec = next(
        r for r in recs if r["size"] == 20 and r["setting"] == "mixout0.8+l2sp0.01" and r["restart"] == 1
    )
    s = {x.name: x for x in A.SMALL_DATA_SETTINGS}["mixout0.8+l2sp0.01"]
    x, y = A._subset(tensors, 20)
    solo = engine.train_ensemble(
        w_pre,
        [s.member(1)],
        x,
        y,
        epochs=A.epochs_for(20, cfg),
        lr=cfg.lr,
        target=w_pre,
        wdecay_target=w_pre,
        device="cpu",
    )
    assert engine.evaluate(solo.params, *tensors["test"])["acc"][0].item() == pytest.approx(
        rec["test_acc"], abs=1e-9
    )
    # resuming trains nothing once every run is stored
    monkeypatch.setattr(engine, "train_ensemble", lambda *a, **k: pytest.fail("retrained a stored run"))
    assert len(A.run_small_data(tmp_path, cfg, tensors, w_pre, CPU).records()) == len(recs)


def test_new_head_study_starts_from_the_restarts_own_head(toy, tmp_path):
    exp, cfg, tensors, w_pre = toy
    recs = A.run_new_head(tmp_path, cfg, tensors, w_pre, CPU).records()
    assert len(recs) == 3 * 2 and {r["head_seed"] for r in recs} == {A.HEAD_SEED0, A.HEAD_SEED0 + 1}
    rec = next(r for r in recs if r["setting"] == "head-mixout-w0-0.7" and r["restart"] == 1)
    init = dict(w_pre, **A.head_init(1))
    x, y = A._subset(tensors, 40)
    solo = engine.train_ensemble(
        init,
        [A.HEAD_SETTINGS[2].member(1)],
        x,
        y,
        epochs=A.epochs_for(40, cfg),
        lr=cfg.lr,
        target={"fc2.weight": w_pre["fc2.weight"], "fc3.weight": init["fc3.weight"]},
        device="cpu",
    )
    d = (solo.params["fc3.weight"][0] - init["fc3.weight"]).double().pow(2).sum().item()
    assert d == pytest.approx(rec["dist_fc3_w0"], rel=1e-6)


def test_trajectory_study_records_every_checkpoint(toy, tmp_path):
    exp, cfg, tensors, w_pre = toy
    recs = A.run_trajectory(tmp_path, cfg, tensors, w_pre, CPU).records()
    epochs = A.epochs_for(40, cfg)
    assert sorted(r["p"] for r in recs) == [0.5, 0.8]
    for r in recs:
        steps = [c["step"] for c in r["checkpoints"]]
        assert steps == [2 * (e + 1) for e in range(epochs)]
        assert all(math.isfinite(c["m"]) and c["dist2"] > 0 for c in r["checkpoints"])
    rows = report.trajectory_rows(recs)
    assert len(rows) == 2 * epochs and {"p", "step", "m", "lam", "dist2"} <= set(rows[0])


def test_load_stored_rebuilds_the_results_from_the_stores(toy, tmp_path):
    """What run_ablations stores (the studies' records and each store's context.json) is enough to
    rebuild AblationResults without data or training; a subset checksum that does not match is refused."""
    import json

    exp, cfg, tensors, w_pre = toy
    assert A.load_stored(tmp_path) == []  # nothing stored
    stores = {
        "small_data": A.run_small_data(tmp_path, cfg, tensors, w_pre, CPU),
        "trajectory": A.run_trajectory(tmp_path, cfg, tensors, w_pre, CPU),
    }
    assert A.load_stored(tmp_path) == []  # no context.json yet: not a finished run_ablations
    context = {
        "w_pre_test_acc": 0.5,
        "source_name": "synthetic source",
        "target_train_size": 120,
        "subset_sha256": A.subset_sha256(tensors["index"]),
    }
    for store in stores.values():
        (store.dir / A.CONTEXT).write_text(json.dumps(context))
    (res,) = A.load_stored(tmp_path)
    assert isinstance(res, A.AblationResults) and res.config == cfg
    got = compare.read(stores["small_data"].dir)  # a store of the ablations, compared through its export
    assert got.study == "ablations" and (got.profile, got.source) == (cfg.profile, cfg.source)
    assert (
        any(k[0] == "small_data" for k in got.numbers)
        and compare.compare_folders(stores["trajectory"].dir, stores["small_data"].dir)[0]
    )
    assert (res.w_pre_acc, res.source_name, res.seconds) == (0.5, "synthetic source", {})
    assert torch.equal(res.subset_index, tensors["index"])
    assert set(res.records) == set(res.stores) == {"small_data", "trajectory"}
    for study, store in stores.items():
        assert res.stores[study].dir == store.dir and res.records[study] == store.records()
    context["subset_sha256"] = "0" * 64
    (stores["trajectory"].dir / A.CONTEXT).write_text(json.dumps(context))
    with pytest.raises(ValueError, match="nested subsets do not match"):
        A.load_stored(tmp_path)


def test_run_ablations_checks_the_studies_and_chunks_by_run_options(toy, tmp_path, monkeypatch):
    exp, cfg, tensors, w_pre = toy
    with pytest.raises(ValueError, match="unknown studies"):
        A.run_ablations(Context("smoke", results=tmp_path, options=CPU), ("small_data", "big_data"))
    assert A.CHUNK == 16 and A.STUDIES == ("small_data", "new_head", "trajectory")
    sizes = []

    def stop(init, members, *args, **kwargs):
        sizes.append(len(members))
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train_ensemble", stop)
    many = dataclasses.replace(cfg, restarts=20)  # 20 runs of the first ensemble's one setting (wdecay to 0)
    for options, want in ((CPU, 16), (RunOptions(device="cpu", chunk=5, progress=False), 5)):
        with pytest.raises(KeyboardInterrupt):
            A.run_small_data(tmp_path / str(want), many, tensors, w_pre, options)  # a store per size
        assert sizes[-1] == want

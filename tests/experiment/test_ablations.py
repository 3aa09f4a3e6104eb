"""Ablations: wdecay as a penalty (coupled, exact gradient), the effective L2 estimator, the studies'
pairing, subsets, step budget, failure rule and resumable store.

Monte Carlo checks use fixed seeds and a 4-standard-error tolerance (two-sided normal test, about
6e-5 false-alarm rate per check; deterministic given the seeds).
"""

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixout_theory import ablations as A
from mixout_theory import models, penalty, training


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
    w = models.init_params(None, seed=1)
    u = {k: v + 0.1 for k, v in models.init_params(None, seed=2).items()}  # biases, LayerNorm differ too
    names = ("fc1.weight", "fc2.weight", "fc3.weight")
    full = penalty.wdecay(w, u, 0.5)
    some = penalty.wdecay(w, u, 0.5, keys=names)
    assert full.item() == pytest.approx(0.25 * sum(((w[k] - u[k]) ** 2).sum().item() for k in w), rel=1e-5)
    assert some.item() == pytest.approx(0.25 * sum(((w[k] - u[k]) ** 2).sum().item() for k in names), rel=1e-5)
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


def _task(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    means = torch.randn(10, 784, generator=g)
    return means[y] * 0.5 + torch.randn(n, 784, generator=g), y


def test_engine_wdecay_is_the_coupled_gradient_of_the_penalty():
    """train_ensemble(wdecay=lambda, wdecay_target=u) == Adam on L(w) + penalty.wdecay(w, u, lambda)
    over the Linear weights (full-batch steps, so the data order cannot matter), and differs clearly
    from decoupled (AdamW-style) decay of the same lambda."""
    x, y = _task()
    u = models.init_params(None, seed=3)
    w0 = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(9)) for k, v in u.items()}
    lam, lr, epochs = 0.5, 3e-3, 4
    res = training.train_ensemble(w0, [training.Member(wdecay=lam)], x, y, epochs=epochs, lr=lr,
                                  batch_size=x.shape[0], warmup=0.0, wdecay_target=u, device="cpu")  # fmt: skip

    def manual(decoupled):
        params = {k: v.clone().requires_grad_(True) for k, v in w0.items()}
        opt = torch.optim.Adam(list(params.values()), lr=lr, betas=training.BETAS, eps=training.EPS)
        for step in range(epochs):
            for group in opt.param_groups:
                group["lr"] = lr * training.lr_factor(step, epochs, 0.0)
            loss = F.cross_entropy(models.forward(params, x), y)
            if not decoupled:
                loss = loss + penalty.wdecay(params, u, lam, keys=training.DECAYED)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if decoupled:
                with torch.no_grad():
                    for k in training.DECAYED:
                        params[k] -= opt.param_groups[0]["lr"] * lam * (params[k] - u[k])
        return {k: v.detach() for k, v in params.items()}

    coupled, decoupled = manual(False), manual(True)
    for k in models.PARAM_NAMES:
        assert torch.allclose(res.params[k][0], coupled[k], rtol=0, atol=2e-6), k
    gap = max((coupled[k] - decoupled[k]).abs().max().item() for k in training.DECAYED)
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


# ---------------------------------------------------------------- the effective L2 coefficient


def _net(seed=0, dtype=torch.float32):
    return {k: v.to(dtype) for k, v in models.init_params(None, seed=seed).items()}


def test_tail_losses_match_the_model_forward():
    params = _net(0)
    x, y = _task(40, 1)
    g = torch.Generator().manual_seed(2)
    w2 = params["fc2.weight"] + 0.05 * torch.randn(3, 100, 300, generator=g)
    w3 = params["fc3.weight"] + 0.05 * torch.randn(3, 10, 100, generator=g)
    got = A._tail_losses(params, A._hidden1(params, x), y, w2, w3)
    for s in range(3):
        p = dict(params, **{"fc2.weight": w2[s], "fc3.weight": w3[s]})
        want = F.cross_entropy(models.forward(p, x), y)
        assert got[s].item() == pytest.approx(want.item(), rel=1e-5)


def _moved(params, scale, seed, names=models.MIXED):
    g = torch.Generator().manual_seed(seed)
    return {k: (v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) if k in names else v.clone())
            for k, v in params.items()}  # fmt: skip


def test_effective_l2_control_variate_is_unbiased():
    u = _net(0)
    w = _moved(u, 0.003, 1)  # a finetuning-sized step: first-order noise dominates the plain estimate
    x, y = _task(64, 2)
    plain = A.effective_l2(w, u, 0.6, x, y, n_samples=2000, generator=3, control_variate=False)
    cv = A.effective_l2(w, u, 0.6, x, y, n_samples=2000, generator=4, control_variate=True)
    assert cv.penalty.se < plain.penalty.se / 3  # the control variate removes most of the noise
    diff = plain.penalty.mean - cv.penalty.mean
    assert abs(diff) < 4 * math.hypot(plain.penalty.se, cv.penalty.se)
    assert cv.dist2 == pytest.approx(sum(((w[k] - u[k]).double() ** 2).sum().item() for k in models.MIXED))
    k = 0.6 / 0.4
    assert cv.m == pytest.approx(2 * cv.penalty.mean / (k * cv.dist2)) and cv.lam == pytest.approx(cv.m * k)
    assert cv.m_lo < cv.m < cv.m_hi


def test_effective_l2_is_the_grouped_hessian_quotient_to_second_order():
    """For a small step d = w - u on fc3 only, E L(Phi) - L(w) = (k/2) sum_g d_g^T H_gg d_g + O(|d|^3)
    (H the Hessian of L in fc3's weight, groups = its input columns): the Monte Carlo coefficient
    must match the quotient from the exact Hessian."""
    u = _net(0, torch.float64)
    w = _moved(u, 2e-3, 5, names=("fc3.weight",))
    x, y = _task(64, 6)
    x = x.double()
    p = 0.5
    est = A.effective_l2(w, u, p, x, y, n_samples=3000, generator=7)
    h1 = A._hidden1(w, x)

    def loss_fc3(w3):
        return A._tail_losses(w, h1, y, w["fc2.weight"].unsqueeze(0), w3.reshape(1, 10, 100))[0]

    H = torch.autograd.functional.hessian(loss_fc3, w["fc3.weight"].reshape(-1))
    d = (w["fc3.weight"] - u["fc3.weight"]).reshape(-1)
    exact = penalty.quadratic_penalty(H, d, torch.zeros_like(d), p, penalty.neuron_groups((10, 100)))
    assert est.penalty.se < 0.05 * exact
    assert abs(est.penalty.mean - exact) < 4 * est.penalty.se + 0.02 * exact  # 2%: third-order terms


def test_effective_l2_bad_input():
    u = _net(0)
    x, y = _task(16, 1)
    with pytest.raises(ValueError, match="0/0"):
        A.effective_l2(u, u, 0.5, x, y, n_samples=8)
    with pytest.raises(ValueError, match="p must be in"):
        A.effective_l2(_moved(u, 0.1, 1), u, 0.0, x, y, n_samples=8)


# ---------------------------------------------------------------- failure rule, summaries, tables


def _rec(size, setting, restart, acc, order=0):
    return {"size": size, "setting": setting, "label": setting, "restart": restart, "order": order,
            "test_acc": acc, "dist_mixed": 1.0, "dist_all": 2.0}  # fmt: skip


def test_failure_rule_and_summary():
    good = [0.90, 0.91, 0.92, 0.91]
    bad = [0.91, 0.50, 0.88, 0.90]
    recs = [_rec(100, "a", r, v, 0) for r, v in enumerate(good)] + [_rec(100, "b", r, v, 1) for r, v in enumerate(bad)]
    th = A.failure_thresholds(recs, w_pre_acc=0.8)
    sd = float(np.std(good, ddof=1))
    assert th["best_setting"] == "a" and th["best_median"] == pytest.approx(0.91)
    assert th["outlier_below"] == pytest.approx(0.91 - 3 * sd) and th["failed_below"] == 0.8
    rows = {r["setting"]: r for r in A.summarise_runs(recs, 0.8)}
    assert rows["a"]["failed"] == 0 and rows["b"]["failed"] == 1  # only the 0.50 run is below w_pre
    assert rows["b"]["outliers"] == 2  # 0.50 and 0.88 are more than 3 sd (0.0245) below 0.91
    assert rows["b"]["mean"] == pytest.approx(np.mean(bad)) and rows["b"]["max"] == 0.91
    assert rows["b"]["std"] == pytest.approx(np.std(bad, ddof=1))
    table = A.markdown_table(list(rows.values()), [("setting", "setting"), ("mean", "mean")], digits=3)
    assert table.splitlines()[2] == "| a | 0.910 |"


# ---------------------------------------------------------------- the studies, end to end on a toy task


@pytest.fixture(scope="module")
def toy():
    x, y = _task(120, 11)
    xt, yt = _task(200, 12)
    S = types.SimpleNamespace
    exp = S(target=S(train=S(x=x, y=y), test=S(x=xt, y=yt)))
    cfg = A.ablation_config("smoke", sizes=(20, 40), restarts=2, reference_size=40, reference_epochs=1,
                            test_size=None, head_sizes=(40,), head_restarts=2, trajectory_size=40,
                            trajectory_ps=(0.5, 0.8), trajectory_restarts=1, trajectory_every=1,
                            trajectory_samples=16)  # fmt: skip
    w_pre = models.init_params(None, seed=21)
    return exp, cfg, A.ablation_tensors(exp, cfg), w_pre


def test_small_data_study_is_paired_resumable_and_equals_solo_runs(toy, tmp_path, monkeypatch):
    exp, cfg, tensors, w_pre = toy
    store = A.run_small_data(tmp_path, cfg, tensors, w_pre, device="cpu")
    recs = store.records()
    assert len(recs) == 2 * 9 * 2
    assert {(r["data_seed"], r["mask_seed"]) for r in recs if r["restart"] == 1} == {(1, A.MASK_SEED0 + 1)}
    assert {r["steps"] for r in recs} == {A.epochs_for(20, cfg) * 1, A.epochs_for(40, cfg) * 2}
    # one stored run equals the same member trained alone (grouping into ensembles changes nothing)
    rec = next(r for r in recs if r["size"] == 20 and r["setting"] == "mixout0.8+l2sp0.01" and r["restart"] == 1)
    s = {x.name: x for x in A.SMALL_DATA_SETTINGS}["mixout0.8+l2sp0.01"]
    x, y = A._subset(tensors, 20)
    solo = training.train_ensemble(w_pre, [s.member(1)], x, y, epochs=A.epochs_for(20, cfg), lr=cfg.lr,
                                   target=w_pre, wdecay_target=w_pre, device="cpu")  # fmt: skip
    assert training.evaluate(solo.params, *tensors["test"])["acc"][0].item() == pytest.approx(rec["test_acc"], abs=1e-9)
    # resuming trains nothing once every run is stored
    monkeypatch.setattr(training, "train_ensemble", lambda *a, **k: pytest.fail("retrained a stored run"))
    assert len(A.run_small_data(tmp_path, cfg, tensors, w_pre, device="cpu").records()) == len(recs)


def test_new_head_study_starts_from_the_restarts_own_head(toy, tmp_path):
    exp, cfg, tensors, w_pre = toy
    recs = A.run_new_head(tmp_path, cfg, tensors, w_pre, device="cpu").records()
    assert len(recs) == 3 * 2 and {r["head_seed"] for r in recs} == {A.HEAD_SEED0, A.HEAD_SEED0 + 1}
    rec = next(r for r in recs if r["setting"] == "head-mixout-w0-0.7" and r["restart"] == 1)
    init = dict(w_pre, **A.head_init(1))
    x, y = A._subset(tensors, 40)
    solo = training.train_ensemble(init, [A.HEAD_SETTINGS[2].member(1)], x, y, epochs=A.epochs_for(40, cfg),
                                   lr=cfg.lr, target={"fc2.weight": w_pre["fc2.weight"],
                                                      "fc3.weight": init["fc3.weight"]}, device="cpu")  # fmt: skip
    d = (solo.params["fc3.weight"][0] - init["fc3.weight"]).double().pow(2).sum().item()
    assert d == pytest.approx(rec["dist_fc3_w0"], rel=1e-6)


def test_trajectory_study_records_every_checkpoint(toy, tmp_path):
    exp, cfg, tensors, w_pre = toy
    recs = A.run_trajectory(tmp_path, cfg, tensors, w_pre, device="cpu").records()
    epochs = A.epochs_for(40, cfg)
    assert sorted(r["p"] for r in recs) == [0.5, 0.8]
    for r in recs:
        steps = [c["step"] for c in r["checkpoints"]]
        assert steps == [2 * (e + 1) for e in range(epochs)]
        assert all(math.isfinite(c["m"]) and c["dist2"] > 0 for c in r["checkpoints"])
    rows = A.trajectory_rows(recs)
    assert len(rows) == 2 * epochs and {"p", "step", "m", "lam", "dist2"} <= set(rows[0])


def test_paired_differences_and_trajectory_summary():
    recs = [_rec(10, "a", k, 0.9 + 0.01 * k) for k in range(3)] + [_rec(10, "b", k, 0.9 + 0.02 * k) for k in range(3)]
    (row,) = A.paired_differences(recs, pairs=(("a", "b"),))
    assert row["n"] == 3 and row["mean_diff"] == pytest.approx(-0.01)
    assert (row["a_wins"], row["ties"], row["b_wins"]) == (0, 1, 2)

    def run(p, restart, ms):
        cps = [{"step": 10 * (i + 1), "m": m, "m_lo": m - 0.01, "m_hi": m + 0.01, "loss": 1.0 / (i + 1),
                "dist2": 0.1, "lam": m * p / (1 - p), "epoch": i + 1} for i, m in enumerate(ms)]  # fmt: skip
        return {"p": p, "restart": restart, "size": 30, "eval_size": 30, "mc_samples": 8, "test_acc": 0.9,
                "checkpoints": cps}

    (t,) = A.trajectory_summary([run(0.8, 0, [0.1, 0.5, 0.2]), run(0.8, 1, [0.3, 0.7, 0.2])])
    assert t["m_first"] == pytest.approx(0.2) and t["m_peak"] == pytest.approx(0.6) and t["peak_step"] == 20
    assert t["m_last"] == pytest.approx(0.2) and t["peak_over_last"] == pytest.approx(3.0)
    assert t["lam_peak"] == pytest.approx(0.6 * 4) and t["loss_last"] == pytest.approx(1 / 3)

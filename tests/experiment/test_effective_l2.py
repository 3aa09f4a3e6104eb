"""The effective L2 coefficient mixout implies on the paper's MLP (mixout_theory.experiment.effective_l2):
the tail losses against the model's forward, the control variate, the grouped-Hessian quotient.

Monte Carlo checks use fixed seeds and a 4-standard-error tolerance (two-sided normal test, about
6e-5 false-alarm rate per check; deterministic given the seeds).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from mixout_theory import penalty
from mixout_theory.experiment import effective_l2 as el2
from mixout_theory.experiment import mlp


def _net(seed=0, dtype=torch.float32):
    return {k: v.to(dtype) for k, v in mlp.init_params(None, seed=seed).items()}


def test_tail_losses_match_the_model_forward(blob_task):
    params = _net(0)
    x, y = blob_task(40, 1)
    g = torch.Generator().manual_seed(2)
    w2 = params["fc2.weight"] + 0.05 * torch.randn(3, 100, 300, generator=g)
    w3 = params["fc3.weight"] + 0.05 * torch.randn(3, 10, 100, generator=g)
    got = el2._tail_losses(params, mlp.hidden1(params, x), y, w2, w3)
    for s in range(3):
        p = dict(params, **{"fc2.weight": w2[s], "fc3.weight": w3[s]})
        want = F.cross_entropy(mlp.forward(p, x), y)
        assert got[s].item() == pytest.approx(want.item(), rel=1e-5)


def _moved(params, scale, seed, names=mlp.MIXED):
    g = torch.Generator().manual_seed(seed)
    return {
        k: (v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) if k in names else v.clone())
        for k, v in params.items()
    }


def test_effective_l2_control_variate_is_unbiased(blob_task):
    u = _net(0)
    w = _moved(u, 0.003, 1)  # a finetuning-sized step: first-order noise dominates the plain estimate
    x, y = blob_task(64, 2)
    plain = el2.effective_l2(w, u, 0.6, x, y, n_samples=2000, generator=3, control_variate=False)
    cv = el2.effective_l2(w, u, 0.6, x, y, n_samples=2000, generator=4, control_variate=True)
    assert cv.penalty.se < plain.penalty.se / 3  # the control variate removes most of the noise
    diff = plain.penalty.mean - cv.penalty.mean
    assert abs(diff) < 4 * math.hypot(plain.penalty.se, cv.penalty.se)
    assert cv.dist2 == pytest.approx(sum(((w[k] - u[k]).double() ** 2).sum().item() for k in mlp.MIXED))
    k = 0.6 / 0.4
    assert cv.m == pytest.approx(2 * cv.penalty.mean / (k * cv.dist2)) and cv.lam == pytest.approx(cv.m * k)
    assert cv.m_lo < cv.m < cv.m_hi


@pytest.mark.slow  # ~20-30 s
def test_effective_l2_is_the_grouped_hessian_quotient_to_second_order(blob_task):
    """For a small step d = w - u on fc3 only, E L(Phi) - L(w) = (k/2) sum_g d_g^T H_gg d_g + O(|d|^3)
    (H the Hessian of L in fc3's weight, groups = its input columns): the Monte Carlo coefficient
    must match the quotient from the exact Hessian."""
    u = _net(0, torch.float64)
    w = _moved(u, 2e-3, 5, names=("fc3.weight",))
    x, y = blob_task(64, 6)
    x = x.double()
    p = 0.5
    est = el2.effective_l2(w, u, p, x, y, n_samples=3000, generator=7)
    h1 = mlp.hidden1(w, x)

    def loss_fc3(w3):
        return el2._tail_losses(w, h1, y, w["fc2.weight"].unsqueeze(0), w3.reshape(1, 10, 100))[0]

    H = torch.autograd.functional.hessian(loss_fc3, w["fc3.weight"].reshape(-1))
    d = (w["fc3.weight"] - u["fc3.weight"]).reshape(-1)
    exact = penalty.quadratic_penalty(H, d, torch.zeros_like(d), p, penalty.neuron_groups((10, 100)))
    assert est.penalty.se < 0.05 * exact
    assert abs(est.penalty.mean - exact) < 4 * est.penalty.se + 0.02 * exact  # 2%: third-order terms


def test_effective_l2_bad_input(blob_task):
    u = _net(0)
    x, y = blob_task(16, 1)
    with pytest.raises(ValueError, match="0/0"):
        el2.effective_l2(u, u, 0.5, x, y, n_samples=8)
    with pytest.raises(ValueError, match="p must be in"):
        el2.effective_l2(_moved(u, 0.1, 1), u, 0.0, x, y, n_samples=8)


def test_effective_l2_uses_the_mlps_own_layers():
    assert not hasattr(el2, "_hidden1")  # the first hidden layer is mlp.hidden1, one implementation
    assert el2.__all__ == ["EffectiveL2", "effective_l2"]

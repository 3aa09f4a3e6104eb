"""The mixout penalty of the MLP split into second order, smooth higher order and kinks
(mixout_theory.experiment.penalty_parts), against independent computations.

Exact parts (the same masks, the same network) are compared to float64 rounding; Monte Carlo
agreement is checked within 4 standard errors (a two-sided normal test at about 6e-5 false-alarm rate
per check; every seed fixed, so the outcome is deterministic).
"""

import pytest
import torch
import torch.nn.functional as F

from mixout_theory import second_order
from mixout_theory.experiment import beyond_second_order, effective_l2, mlp, penalty_parts, theorem1


def _net(seed=0, shift=0.3):
    """An MLP with non-trivial LayerNorm gains and biases (so that every term of the formulas counts)."""
    g = torch.Generator().manual_seed(seed)
    net = {k: v.double() for k, v in mlp.init_params(None, seed=seed).items()}
    for k in ("ln2.weight", "ln2.bias", "fc2.bias", "fc3.bias", "fc2.weight", "fc3.weight"):
        scale = shift if "weight" not in k or k.startswith("ln") else 0.05
        net[k] = net[k] + scale * torch.randn(net[k].shape, generator=g, dtype=torch.float64)
    return net


def _target(net, seed=1, scale=0.03):
    g = torch.Generator().manual_seed(seed)
    return {
        k: net[k] + scale * torch.randn(net[k].shape, generator=g, dtype=torch.float64) for k in mlp.MIXED
    }


def _frozen_loss(net, x, y, w2, w3):
    """The network with the ReLU after fc2 held at its pattern at ``net``, written out by hand."""
    h1 = F.layer_norm(torch.relu(x @ net["fc1.weight"].T + net["fc1.bias"]), (300,), eps=mlp.LN_EPS)
    h1 = h1 * net["ln1.weight"] + net["ln1.bias"]
    on = (h1 @ net["fc2.weight"].T + net["fc2.bias"]) > 0
    a = (h1 @ w2.T + net["fc2.bias"]) * on
    h2 = F.layer_norm(a, (100,), eps=mlp.LN_EPS) * net["ln2.weight"] + net["ln2.bias"]
    return F.cross_entropy(h2 @ w3.T + net["fc3.bias"], y)


@pytest.mark.parametrize("layer", ["both", "fc2"])
def test_every_column_equals_its_independent_computation(blob_task, layer):
    """With the masks (here: any mixed weights) fixed: L - g.v, L_0 - g.v and L_0 - g.v - v^T H v / 2
    against the network's forward, a hand-written frozen network, autograd's gradient and its second
    directional derivative (double backward); fc2 alone leaves fc3 at w."""
    net = _net()
    x, y = blob_task(40, 1)
    x = x.double()
    loss_fn, w = penalty_parts.parts_loss(net, x, y, penalty_parts.LAYERS[layer])
    v = _target(net, 2, 0.05)
    v = {k: (v[k] - net[k]) * (k in penalty_parts.LAYERS[layer]) for k in mlp.MIXED}
    out = loss_fn({k: torch.stack([w[k] + v[k], w[k] - 0.5 * v[k]]) for k in mlp.MIXED})
    assert out.shape == (2, 4)
    for i, s in enumerate((1.0, -0.5)):
        phi = {k: w[k] + s * v[k] for k in mlp.MIXED}
        real = F.cross_entropy(mlp.forward(dict(net, **phi), x), y)
        frozen = _frozen_loss(net, x, y, phi["fc2.weight"], phi["fc3.weight"])
        t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        line = _frozen_loss(net, x, y, *(w[k] + t * s * v[k] for k in mlp.MIXED))
        first = torch.autograd.grad(line, t, create_graph=True)[0]
        second = torch.autograd.grad(first, t)[0]
        assert out[i, 0].item() == pytest.approx((real - first).item(), abs=1e-13)
        assert out[i, 1].item() == pytest.approx((frozen - first).item(), abs=1e-13)
        assert out[i, 2].item() == pytest.approx((frozen - first - second / 2).item(), abs=1e-13)
        h1 = mlp.hidden1(net, x)
        flipped = ((mlp.pre2(net, h1, phi["fc2.weight"]) > 0) != (mlp.pre2(net, h1) > 0)).double().mean()
        assert out[i, 3].item() == pytest.approx(flipped.item(), abs=1e-12) and flipped > 0
    # the gradient along v is the network's own (autograd through the ReLU, not the frozen copy)
    leaves = {k: w[k].clone().requires_grad_(True) for k in mlp.MIXED}
    grad = torch.autograd.grad(F.cross_entropy(mlp.forward(dict(net, **leaves), x), y), list(leaves.values()))
    g_v = sum((gk * v[k]).sum() for gk, k in zip(grad, mlp.MIXED, strict=True))
    base = loss_fn({k: w[k].unsqueeze(0) for k in mlp.MIXED})[0, 0]
    real = F.cross_entropy(mlp.forward(dict(net, **{k: w[k] + v[k] for k in mlp.MIXED}), x), y)
    assert (real - out[0, 0]).item() == pytest.approx(g_v.item(), rel=1e-10) and base.item() == pytest.approx(
        F.cross_entropy(mlp.forward(net, x), y).item(), rel=1e-13
    )


def test_fc3_alone_has_no_kink_part(blob_task):
    """No ReLU follows fc3: mixing it alone, the network and its frozen copy are the same function."""
    net, (x, y) = _net(), blob_task(60, 2)
    parts = penalty_parts.penalty_parts(net, _target(net), 0.5, x, y, layer="fc3", n_samples=64, seed=1)
    assert parts.mc == parts.mc_frozen and parts.kink.mean == 0.0 and parts.kink.std == 0.0
    assert parts.flips == 0.0 and parts.mc.mean > 0


def test_a_network_without_kinks_has_no_kink_part(blob_task):
    """fc2's biases so large that no mask moves a unit across 0: the kink part vanishes, its interval
    holds 0, and the rest of the penalty is unchanged in kind (the smooth control)."""
    net, (x, y) = _net(), blob_task(60, 3)
    net["fc2.bias"] = net["fc2.bias"] + 50.0
    parts = penalty_parts.penalty_parts(net, _target(net), 0.6, x, y, n_samples=128, seed=2)
    assert parts.flips == 0.0 and parts.kink.lo <= 0.0 <= parts.kink.hi and parts.kink.mean == 0.0
    assert parts.mc.mean > 10 * parts.mc.se  # a penalty there is, all of it smooth


def test_the_quadratic_is_theorem1s(blob_task):
    """The Monte Carlo mean of v^T H v / 2 agrees with the exact second-order value from Hessian-vector
    products (so ``smooth`` estimates ``mc_frozen - second order``); the network has kinks masks cross."""
    net, (x, y) = _net(), blob_task(80, 4)
    u, p = _target(net), 0.4
    parts = penalty_parts.penalty_parts(net, u, p, x, y, n_samples=2000, seed=3, batch_size=250)
    loss_fn, w = theorem1.network_loss(net, x, y)
    exact = second_order.second_order_terms(loss_fn, w, u).penalty(p)
    assert parts.quadratic.within(exact, 4.0) and parts.quadratic.se < 0.05 * exact
    assert parts.flips > 0 and not parts.kink.lo <= 0.0 <= parts.kink.hi  # kinks are crossed and count


def test_the_penalty_is_the_studys_monte_carlo(blob_task):
    """On the same masks (the same seed and batch), the first column is effective_l2's estimate."""
    net, (x, y) = _net(), blob_task(50, 5)
    u = _target(net)
    parts = penalty_parts.penalty_parts(net, u, 0.3, x, y, n_samples=128, seed=9, batch_size=64)
    est = effective_l2.effective_l2(net, u, 0.3, x.double(), y, n_samples=128, generator=9, batch_size=64)
    assert parts.mc.mean == pytest.approx(est.penalty.mean, rel=1e-9, abs=1e-15)
    assert parts.mc.se == pytest.approx(est.penalty.se, rel=1e-6)


def _row(point, mixed, p, so, smooth, kink, half=1e-5, **kw):
    row = dict(point=point, mixed=mixed, p=p, second_order=so, smooth=smooth, kink=kink, flips=0.01, **kw)
    for k, v in (("smooth", smooth), ("kink", kink), ("beyond", smooth + kink)):
        row.update({k: v, f"{k}_lo": v - half, f"{k}_hi": v + half})
    return row


def test_the_claims_read_the_tables_without_tripping():
    """Shares of ``second order + beyond`` add up to 1; a total or a second-order value that is not
    positive gives None, not a huge ratio; a kink part that changes sign across the scan, or too few
    scales for the fit, are reported, not raised."""
    layers = [
        _row("w_pre", "both", 0.5, 2e-3, 1e-4, 4e-4),
        _row("w_pre", "both", 0.8, 1e-7, 1e-7, -5e-7),  # total < 0
        _row("w_pre", "fc2", 0.5, -1e-4, 1e-5, 2e-4),  # an indefinite Hessian: second order < 0
        _row("w_pre", "fc3", 0.5, 1e-3, 1e-6, 0.0),
    ]
    out = beyond_second_order.claims(layers, [])
    shares = out["shares"]["w_pre"]
    assert shares["second_order"][0] + shares["smooth"][0] + shares["kink"][0] == pytest.approx(
        1.0, rel=1e-12
    )
    assert shares["kink"][1] is None and shares["ratio"][0] == pytest.approx(1.25)
    assert out["layers"]["w_pre"]["fc2"] == [None] and out["fc3_kink_max"] == 0.0
    assert shares["smooth_in_ci"] == shares["kink_in_ci"] == [0.8]  # the tiny parts of p = 0.8
    scan = [
        _row("w_pre", "both", 0.8, 1e-3 * t**2, 2e-4 * t**3, 1e-4 * t**2 - 2e-4 * t**3, t=t)
        for t in (0.25, 0.5, 1.0)
    ]
    fit = beyond_second_order.claims([], scan)["scale"]["w_pre p=0.8"]
    assert fit["kink_fit"][2] == pytest.approx(1e-4, rel=1e-6) and fit["kink_fit"][3] == pytest.approx(
        -2e-4, rel=1e-6
    )
    assert fit["smooth_fit"][2] == pytest.approx(0.0, abs=1e-12) and fit[
        "second_order_coef"
    ] == pytest.approx(1e-3)
    assert fit["kink_over_second_order"] == pytest.approx([0.1 - 0.2 * t for t in (0.25, 0.5, 1.0)])
    assert beyond_second_order.claims([], scan[:2])["scale"]["w_pre p=0.8"]["kink_fit"] is None

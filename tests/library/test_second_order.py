"""The second-order mixout penalty and the curvature it sees (mixout_theory.second_order).

Exact checks: on a quadratic the second-order value is the closed form of ``penalty.quadratic_penalty``
to 1e-10; Hessian-vector products equal central differences of the gradient; Lanczos extremes equal
the dense eigenvalues. Monte Carlo checks use fixed seeds: the 99% interval (z = 2.576) where the
statement is about a confidence interval, 4 standard errors (two-sided false-alarm rate 6e-5) elsewhere.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from mixout_theory import penalty, second_order
from mixout_theory.mixing import parameter_mask

D = torch.float64


def _quadratic(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n, generator=g, dtype=D)
    A = B @ B.T / n + 0.1 * torch.eye(n, dtype=D)
    w_star = torch.randn(n, generator=g, dtype=D)
    return A, w_star


def test_quadratic_equals_the_closed_form_for_both_group_levels():
    A, w_star = _quadratic(12)
    g = torch.Generator().manual_seed(1)
    w, u = torch.randn(3, 4, generator=g, dtype=D), torch.randn(3, 4, generator=g, dtype=D)
    loss = lambda z: 0.5 * (z.reshape(-1) - w_star) @ A @ (z.reshape(-1) - w_star) + 3.0  # noqa: E731
    for p in (0.1, 0.5, 0.9):
        got = second_order.second_order_penalty(loss, w, u, p, level="neuron")
        want = penalty.quadratic_penalty(A, w, u, p, groups=penalty.neuron_groups((3, 4)))
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12)
        got = second_order.second_order_penalty(loss, w, u, p, level="parameter")
        assert got == pytest.approx(penalty.quadratic_penalty(A, w, u, p), rel=1e-10, abs=1e-12)
    assert second_order.second_order_penalty(loss, w, u, 0.0) == 0.0


def test_quadratic_over_a_dict_with_a_partly_mixed_entry():
    """Two entries; entry "b" is mixed on 3 of its 5 coordinates (Supplement B), groups per element."""
    A, w_star = _quadratic(17, 2)
    g = torch.Generator().manual_seed(3)
    w = {"a": torch.randn(3, 4, generator=g, dtype=D), "b": torch.randn(5, generator=g, dtype=D)}
    u = {"a": torch.randn(3, 4, generator=g, dtype=D), "b": torch.randn(5, generator=g, dtype=D)}
    sel = torch.tensor([True, False, True, True, False])

    def loss(t):
        z = torch.cat([t["a"].reshape(-1), t["b"]]) - w_star
        return 0.5 * z @ A @ z

    terms = second_order.second_order_terms(loss, w, u, mixed={"a": True, "b": sel})
    # the closed form with the unmixed coordinates' displacement set to zero (they are never mixed)
    u_b = torch.where(sel, u["b"], w["b"])
    ids = torch.cat([penalty.neuron_groups((3, 4)), 4 + torch.arange(5)])
    want = penalty.quadratic_penalty(
        A, torch.cat([w["a"].reshape(-1), w["b"]]), torch.cat([u["a"].reshape(-1), u_b]), 0.4, groups=ids
    )
    assert terms.penalty(0.4) == pytest.approx(want, rel=1e-10)
    assert terms.n_groups == 4 + 3
    assert sum(terms.by_entry.values()) == pytest.approx(terms.quad, rel=1e-12)
    assert terms.dist2 == pytest.approx(
        float((w["a"] - u["a"]).pow(2).sum() + (w["b"] - u["b"])[sel].pow(2).sum())
    )
    assert terms.m_eff == pytest.approx(terms.quad / terms.dist2)


def _small_mlp(seed=0, sizes=(20, 16, 12, 5), n=64, device="cpu"):
    """A float64 Linear-tanh-LayerNorm-Linear-tanh-LayerNorm-Linear net; its last two weights are mixed.

    tanh, not ReLU: Taylor's theorem needs a twice-differentiable loss. Through a ReLU, a mixed
    weight that moves a pre-activation across 0 adds a term of second order in ``d`` that the
    (almost-everywhere) Hessian does not contain; the study on the paper's MLP measures its size.
    """
    g = torch.Generator().manual_seed(seed)
    d0, d1, d2, d3 = sizes
    net = {
        "w1": torch.randn(d1, d0, generator=g, dtype=D) / math.sqrt(d0),
        "w2": torch.randn(d2, d1, generator=g, dtype=D) / math.sqrt(d1),
        "w3": torch.randn(d3, d2, generator=g, dtype=D) / math.sqrt(d2),
    }
    x = torch.randn(n, d0, generator=g, dtype=D)
    y = torch.randint(0, d3, (n,), generator=g)
    net, x, y = {k: v.to(device) for k, v in net.items()}, x.to(device), y.to(device)
    h1 = F.layer_norm(torch.tanh(x @ net["w1"].T), (d1,))

    def loss(m):
        h2 = F.layer_norm(torch.tanh(h1 @ m["w2"].T), (d2,))
        return F.cross_entropy(h2 @ m["w3"].T, y)

    w = {"w2": net["w2"], "w3": net["w3"]}
    u = {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=D).to(device) for k, v in w.items()}
    return loss, w, u


def test_hvp_equals_central_differences_of_the_gradient():
    loss, w, _ = _small_mlp()
    op = second_order.MixedHessian(loss, w)
    V = torch.randn(4, op.n, generator=torch.Generator().manual_seed(5), dtype=D)
    hv = op.matvec(V)
    grad = torch.func.grad(op._loss)
    eps = 1e-5  # error O(eps^2 |L'''|), about 2e-8 of |Hv| here (ReLU kinks are crossed for eps >= 1e-3)
    fd = torch.stack([(grad(op.point + eps * v) - grad(op.point - eps * v)) / (2 * eps) for v in V])
    assert (hv - fd).abs().max() <= 1e-6 * hv.abs().max()
    assert torch.allclose(op.matvec(V[0]), hv[0], rtol=1e-12, atol=1e-14)  # one vector = one row of a batch


@pytest.mark.slow  # ~18 s (timed on a busy 2-core machine)
def test_lanczos_extremes_equal_the_dense_eigenvalues():
    loss, w, _ = _small_mlp(1)
    op = second_order.MixedHessian(loss, w)
    H = op.dense()
    assert op.n == 16 * 12 + 12 * 5 and H.shape == (op.n, op.n)
    eig = torch.linalg.eigvalsh(H)
    c = second_order.curvature(loss, w, method="lanczos", tol=1e-10)
    assert c.method == "lanczos" and c.n == op.n
    assert c.m_min == pytest.approx(eig[0].item(), abs=1e-6) and c.m_max == pytest.approx(
        eig[-1].item(), abs=1e-6
    )
    assert not c.convex  # the cross-entropy of a network is not convex in its hidden weights here
    d = second_order.curvature(loss, w, method="dense")
    assert d.m_min == pytest.approx(eig[0].item(), rel=1e-12) and d.n_hvp == op.n


def test_neuron_formula_is_the_mean_quadratic_form_over_sampled_masks():
    """(k/2) sum_g d_g^T H_gg d_g = E 1/2 (Phi - w)^T H (Phi - w) for neuron-shared Bernoulli masks."""
    loss, w, u = _small_mlp(2)
    op = second_order.MixedHessian(loss, w)
    H = op.dense()
    p, S = 0.3, 20000
    g = torch.Generator().manual_seed(6)
    parts = []
    for name in ("w2", "w3"):
        d = (w[name] - u[name]).expand(S, *w[name].shape)
        m = parameter_mask(d.new_empty(S, 1, d.shape[-1]), p, g)  # one value per sample and input neuron
        parts.append(((m / (1 - p) - 1) * d).reshape(S, -1))
    delta = torch.cat(parts, 1)  # Phi - w, flattened as the operator flattens
    q = 0.5 * ((delta @ H) * delta).sum(1)
    want = second_order.second_order_penalty(loss, w, u, p)
    se = q.std().item() / math.sqrt(S)
    assert abs(q.mean().item() - want) < 4 * se


def test_second_order_is_inside_the_99pct_interval_of_monte_carlo_at_small_p():
    """p = 0.02 and a small displacement (||d|| about 0.3 of unit-scale weights): the third-order
    remainder is far below the Monte Carlo resolution. The estimate subtracts the first-order term
    g^T (Phi - w) (mean exactly 0), which leaves it unbiased and removes its O(||d||) noise."""
    loss, w, u = _small_mlp(3)
    u = {k: w[k] + 0.2 * (u[k] - w[k]) for k in w}
    p = 0.02
    op = second_order.MixedHessian(loss, w)
    flat = torch.split(op.gradient(), [w[k].numel() for k in w])  # the operator flattens entry by entry
    g = {k: v.reshape(w[k].shape) for k, v in zip(w, flat, strict=True)}

    def centred(b):  # one parameter sample -> L(Phi) - g^T (Phi - w)
        return loss(b) - sum(((b[k] - w[k]) * g[k]).sum() for k in w)

    est = penalty.empirical_penalty(centred, w, u, p, 40000, generator=7, batched=False, batch_size=4000)
    want = second_order.second_order_penalty(loss, w, u, p)
    assert abs(est.mean - want) < 2.576 * est.se
    assert est.se < 0.1 * want  # the interval is tight: the agreement is not vacuous


def test_fallback_for_a_loss_torch_func_cannot_transform():
    class Cube(torch.autograd.Function):  # no jvp / vmap rule: torch.func refuses it
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x**3

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 3 * x**2  # differentiable: double backward works

    w, u = torch.tensor([0.5, -1.0, 2.0], dtype=D), torch.zeros(3, dtype=D)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = second_order.second_order_penalty(lambda z: Cube.apply(z).sum(), w, u, 0.5)
    assert any(issubclass(c.category, RuntimeWarning) and "double backward" in str(c.message) for c in caught)
    assert got == pytest.approx(0.5 * (6 * w * w * w).sum().item(), rel=1e-12)  # H = diag(6 w), d = w, k = 1


def test_bad_input_is_named():
    loss = lambda t: (t["a"] ** 2).sum()  # noqa: E731
    w, u = {"a": torch.ones(2, 3, dtype=D)}, {"a": torch.zeros(2, 3, dtype=D)}
    with pytest.raises(ValueError, match=r"\['b'\]"):
        second_order.second_order_penalty(loss, w, u, 0.5, mixed=["b"])
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="p"):
            second_order.second_order_penalty(loss, w, u, p)
    with pytest.raises(ValueError, match=r"scalar.*\(2, 3\)"):
        second_order.second_order_penalty(lambda t: t["a"] ** 2, w, u, 0.5)
    with pytest.raises(ValueError, match="only in w"):
        second_order.second_order_penalty(loss, w, {"b": u["a"]}, 0.5)
    with pytest.raises(ValueError, match=r"shape mismatch at entry 'a'"):
        second_order.second_order_penalty(loss, w, {"a": torch.zeros(3, 2, dtype=D)}, 0.5)
    with pytest.raises(TypeError, match="floating point"):
        second_order.second_order_penalty(loss, {"a": torch.ones(2, 3, dtype=torch.int64)}, None, 0.5)
    with pytest.raises(ValueError, match="level must be one of 'neuron', 'parameter'"):
        second_order.second_order_penalty(loss, w, u, 0.5, level="column")
    with pytest.raises(ValueError, match="not finite"):
        second_order.second_order_penalty(lambda t: t["a"].sum() * float("nan"), w, u, 0.5)
    with pytest.raises(ValueError, match="0/0"):
        _ = second_order.second_order_terms(loss, w, w).m_eff
    with pytest.raises(ValueError, match="method"):
        second_order.curvature(loss, w, method="power")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_numbers():
    loss, w, u = _small_mlp(4)
    want = second_order.second_order_terms(loss, w, u)
    loss_gpu, w_gpu, u_gpu = _small_mlp(4, device="cuda")
    got = second_order.second_order_terms(loss_gpu, w_gpu, u_gpu)
    assert got.quad == pytest.approx(want.quad, rel=1e-9) and got.n_groups == want.n_groups
    c = second_order.curvature(loss_gpu, w_gpu, method="lanczos", tol=1e-10)
    assert c.m_min == pytest.approx(second_order.curvature(loss, w, method="dense").m_min, abs=1e-6)

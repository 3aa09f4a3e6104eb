"""Theorem 1 / Corollary 1.1 formulas (eq. 7, 9, Supplement B) and the strong-convexity moduli.

Every modulus is checked against a brute-force Hessian (torch.autograd.functional.hessian) at
random points: the smallest eigenvalue is >= the modulus, and equal where the theory says so.
"""

import math

import pytest
import torch

from mixout_theory import bounds as B


def _min_eig(H):
    return torch.linalg.eigvalsh((H + H.T) / 2)[0].item()


# ---------------------------------------------------------------- moments and p checks


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_bernoulli_moments_match_sampled_mask(gen, p):
    mu, sigma2 = B.bernoulli_moments(p)
    assert mu == pytest.approx(1 - p) and sigma2 == pytest.approx(p * (1 - p))
    # the empirical moments of a Bernoulli(1-p) mask agree within 5 standard errors (n = 200k)
    m = torch.empty(200_000, dtype=torch.float64).bernoulli_(1 - p, generator=gen(0))
    assert abs(m.mean().item() - mu) <= 5 * math.sqrt(sigma2 / m.numel()) + 1e-12
    assert abs(m.var().item() - sigma2) <= 0.01 * max(sigma2, 1e-3)
    assert sigma2 / mu**2 == pytest.approx(p / (1 - p))


@pytest.mark.parametrize("p", [1.0, 1.5, -0.1, float("nan")])
def test_bad_p_raises_value_error_naming_p(p):
    for call in (
        lambda: B.bernoulli_moments(p),
        lambda: B.corollary11_penalty(torch.ones(3), torch.zeros(3), 1.0, p),
    ):
        with pytest.raises(ValueError, match="p"):
            call()


def test_non_number_p_raises_type_error():
    with pytest.raises(TypeError):
        B.bernoulli_moments("0.5")


# ---------------------------------------------------------------- the bounds


def test_corollary_is_theorem1_with_bernoulli_moments_and_matches_formula(gen):
    g = gen(1)
    w, u = (
        torch.randn(5, 7, generator=g, dtype=torch.float64),
        torch.randn(5, 7, generator=g, dtype=torch.float64),
    )
    dist = ((w - u) ** 2).sum().item()
    for p in (0.0, 0.2, 0.5, 0.8, 0.95):
        mu, s2 = B.bernoulli_moments(p)
        c = B.corollary11_penalty(w, u, 2.5, p)
        t = B.theorem1_penalty(w, u, 2.5, mu, s2)
        assert c.item() == pytest.approx(2.5 * p / (2 * (1 - p)) * dist, rel=1e-12)
        assert t.item() == pytest.approx(c.item(), rel=1e-12)
    # a non-Bernoulli mask: mu = 2, sigma2 = 3
    assert B.theorem1_penalty(w, u, 0.5, 2.0, 3.0).item() == pytest.approx(0.5 * 3 / 8 * dist, rel=1e-12)


def test_theorem1_equality_for_gaussian_masks_on_isotropic_quadratic(gen):
    # Theorem 1 needs only E M = mu, Var M = sigma2: check with a Gaussian mask and A = m I, where
    # the bound is the exact penalty. Monte Carlo with 200k masks, agreement within 4 SE.
    g = gen(2)
    m, mu, s2 = 1.7, 0.8, 0.3
    w, u = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    w_star = torch.randn(4, generator=g, dtype=torch.float64)
    M = mu + math.sqrt(s2) * torch.randn(200_000, 4, generator=g, dtype=torch.float64)
    phi = u + M * (w - u) / mu
    loss = lambda v: 0.5 * m * ((v - w_star) ** 2).sum(-1)  # noqa: E731
    d = loss(phi) - loss(w)
    se = d.std().item() / math.sqrt(d.numel())
    bound = B.theorem1_penalty(w, u, m, mu, s2).item()
    assert se < 0.01 * bound
    assert abs(d.mean().item() - bound) <= 4 * se


def test_bound_is_differentiable_with_the_l2_gradient():
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, 4, dtype=torch.float64)
    B.corollary11_penalty(w, u, 2.0, 0.6).backward()
    torch.testing.assert_close(w.grad, 2.0 * 0.6 / 0.4 * (w - u).detach())


def test_collections_equal_the_concatenated_tensor(gen):
    g = gen(3)
    ws = [torch.randn(3, 2, generator=g), torch.randn(5, generator=g), torch.randn(2, 2, 2, generator=g)]
    us = [torch.randn_like(x) for x in ws]
    flat_w = torch.cat([x.flatten() for x in ws])
    flat_u = torch.cat([x.flatten() for x in us])
    ref = B.corollary11_penalty(flat_w, flat_u, 1.3, 0.4).item()
    as_dict = B.corollary11_penalty(
        dict(a=ws[0], b=ws[1], c=ws[2]), dict(c=us[2], a=us[0], b=us[1]), 1.3, 0.4
    )
    assert as_dict.item() == pytest.approx(ref, rel=1e-6)
    assert B.corollary11_penalty(ws, us, 1.3, 0.4).item() == pytest.approx(ref, rel=1e-6)
    assert B.corollary11_penalty(tuple(ws), tuple(us), 1.3, 0.4).item() == pytest.approx(ref, rel=1e-6)
    # u = None is the origin (dropout)
    assert B.squared_distance(ws, None).item() == pytest.approx((flat_w**2).sum().item(), rel=1e-6)


def test_mismatched_collections_raise_naming_the_mismatch():
    a, b = torch.zeros(3), torch.zeros(4)
    with pytest.raises(ValueError, match=r"only in w \['y'\].*only in u \['z'\]"):
        B.corollary11_penalty({"x": a, "y": a}, {"x": a, "z": a}, 1.0, 0.5)
    with pytest.raises(ValueError, match="length mismatch: w has 2 entries, u has 1"):
        B.corollary11_penalty([a, a], [a], 1.0, 0.5)
    with pytest.raises(ValueError, match=r"entry 'x'.*\(3,\).*\(4,\)"):
        B.corollary11_penalty({"x": a}, {"x": b}, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"shape mismatch.*\(3,\).*\(4,\)"):
        B.corollary11_penalty(a, b, 1.0, 0.5)
    with pytest.raises(TypeError, match="same structure"):
        B.corollary11_penalty({"x": a}, [a], 1.0, 0.5)
    with pytest.raises(ValueError, match="empty"):
        B.corollary11_penalty({}, {}, 1.0, 0.5)


@pytest.mark.parametrize("m", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_modulus_raises(m):
    with pytest.raises(ValueError, match="m"):
        B.corollary11_penalty(torch.ones(2), torch.zeros(2), m, 0.5)


def test_bad_mask_moments_raise():
    w, u = torch.ones(2), torch.zeros(2)
    with pytest.raises(ValueError, match="mu"):
        B.theorem1_penalty(w, u, 1.0, 0.0, 0.1)
    with pytest.raises(ValueError, match="sigma2"):
        B.theorem1_penalty(w, u, 1.0, 0.5, -0.1)


# ---------------------------------------------------------------- Supplement B (restricted norm)


def _state_dicts():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    w = {k: v.detach().clone() for k, v in net.state_dict().items()}
    u = {k: v + torch.randn_like(v) for k, v in w.items()}
    return w, u


def test_restricted_bound_uses_only_the_mixed_entries():
    w, u = _state_dicts()
    mixed = {"0.weight", "2.weight"}
    by_hand = sum(((w[k] - u[k]) ** 2).sum().item() for k in mixed)
    expected = 2.0 * 0.7 / (2 * 0.3) * by_hand
    assert B.restricted_corollary11_penalty(w, u, 2.0, 0.7, mixed).item() == pytest.approx(expected, rel=1e-6)
    pred = lambda name: name.endswith("weight")  # noqa: E731
    assert B.restricted_corollary11_penalty(w, u, 2.0, 0.7, pred).item() == pytest.approx(expected, rel=1e-6)
    as_masks = {"0.weight": True, "2.weight": torch.ones(2, 3, dtype=torch.bool)}
    assert B.restricted_corollary11_penalty(w, u, 2.0, 0.7, as_masks).item() == pytest.approx(
        expected, rel=1e-6
    )
    # restricted <= unrestricted, strictly here (biases differ too)
    assert B.restricted_corollary11_penalty(w, u, 2.0, 0.7, mixed) < B.corollary11_penalty(w, u, 2.0, 0.7)


def test_restricted_bound_with_coordinate_masks(gen):
    g = gen(4)
    w, u = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    cols = torch.tensor([True, False, True, False, False])[None, :]  # columns 0 and 2 mixed
    expected = 1.0 * 0.5 / (2 * 0.5) * ((w - u)[:, [0, 2]] ** 2).sum().item()
    assert B.restricted_corollary11_penalty(w, u, 1.0, 0.5, cols).item() == pytest.approx(expected, rel=1e-6)
    ws, us = [w, w], [u, u]
    got = B.restricted_corollary11_penalty(ws, us, 1.0, 0.5, [cols, False]).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert B.restricted_corollary11_penalty(ws, us, 1.0, 0.5, [1]).item() == pytest.approx(
        B.corollary11_penalty(w, u, 1.0, 0.5).item(), rel=1e-6
    )


def test_restricted_bad_selections_raise():
    w, u = _state_dicts()
    with pytest.raises(ValueError, match="nope"):
        B.restricted_corollary11_penalty(w, u, 1.0, 0.5, {"0.weight", "nope"})
    with pytest.raises(ValueError, match="needs mixed"):
        B.restricted_corollary11_penalty(w, u, 1.0, 0.5, None)
    with pytest.raises(ValueError, match=r"\(3,\).*\(3, 4\)"):
        B.restricted_corollary11_penalty(w, u, 1.0, 0.5, {"0.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool tensor"):
        B.restricted_corollary11_penalty(torch.ones(3), torch.zeros(3), 1.0, 0.5, torch.ones(3))
    with pytest.raises(TypeError, match="single string"):
        B.restricted_corollary11_penalty(w, u, 1.0, 0.5, "0.weight")
    with pytest.raises(ValueError, match="length mismatch"):
        B.restricted_corollary11_penalty([torch.ones(2)] * 2, [torch.zeros(2)] * 2, 1.0, 0.5, [True])


# ---------------------------------------------------------------- moduli vs brute-force Hessians


def _random_spd(d, g, cond=10.0):
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    e = 0.3 * cond ** torch.linspace(0, 1, d, dtype=torch.float64)
    return (Q * e) @ Q.T


def test_quadratic_modulus_equals_hessian_min_eigenvalue(gen):
    g = gen(5)
    A = _random_spd(6, g)
    A = (A + A.T) / 2
    w_star = torch.randn(6, generator=g, dtype=torch.float64)
    m = B.quadratic_modulus(A)
    assert m == pytest.approx(0.3, rel=1e-10)
    for _ in range(3):
        x = torch.randn(6, generator=g, dtype=torch.float64)
        H = torch.autograd.functional.hessian(lambda v: B.quadratic_loss(v, A, w_star), x)
        torch.testing.assert_close(H, A)
        assert _min_eig(H) == pytest.approx(m, rel=1e-10)


def test_quadratic_modulus_rejects_bad_matrices():
    with pytest.raises(ValueError, match="positive definite"):
        B.quadratic_modulus(torch.diag(torch.tensor([1.0, 0.0, 2.0])))
    with pytest.raises(ValueError, match="positive definite"):
        B.quadratic_modulus(torch.diag(torch.tensor([1.0, -1.0])))
    with pytest.raises(ValueError, match="symmetric"):
        B.quadratic_modulus(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        B.quadratic_modulus(torch.ones(2, 3))


def test_least_squares_modulus_equals_hessian_min_eigenvalue(gen):
    g = gen(6)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randn(30, generator=g, dtype=torch.float64)
    m = B.least_squares_modulus(X)
    H = torch.autograd.functional.hessian(
        lambda v: B.least_squares_loss(v, X, y), torch.zeros(4, dtype=torch.float64)
    )
    torch.testing.assert_close(H, X.T @ X / 30)
    assert _min_eig(H) == pytest.approx(m, rel=1e-10)
    # an intercept column is the caller's: add_intercept appends ones
    Xi = B.add_intercept(X[:, 0])
    assert Xi.shape == (30, 2) and torch.all(Xi[:, 1] == 1)
    assert B.least_squares_modulus(Xi) > 0


def test_least_squares_modulus_rejects_rank_deficient_design(gen):
    X = torch.randn(3, 5, dtype=torch.float64, generator=gen(7))  # n < d
    with pytest.raises(ValueError, match="rank 3"):
        B.least_squares_modulus(X)
    Xdup = torch.randn(10, 2, dtype=torch.float64, generator=gen(8))
    with pytest.raises(ValueError, match="not strongly convex"):
        B.least_squares_modulus(torch.cat([Xdup, Xdup[:, :1]], 1))


def test_logistic_modulus_lower_bounds_hessian_and_is_tight_when_d_exceeds_n(gen):
    g = gen(9)
    lam = 0.07
    assert B.logistic_modulus(lam) == lam
    for n, d, tight in ((50, 4, False), (3, 6, True)):
        X = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.randint(0, 2, (n,), generator=g).to(torch.float64)
        for _ in range(3):
            x = 2 * torch.randn(d, generator=g, dtype=torch.float64)
            H = torch.autograd.functional.hessian(lambda v, X=X, y=y: B.logistic_loss(v, X, y, lam), x)
            e = _min_eig(H)
            assert e >= lam - 1e-12
            if tight:
                assert e == pytest.approx(lam, rel=1e-9)


def test_softmax_modulus_equals_hessian_min_eigenvalue(gen):
    # the data term is flat along W -> W + 1 v^T, so the smallest eigenvalue is exactly lam
    g = gen(10)
    lam, n, k, d = 0.05, 40, 3, 4
    assert B.softmax_modulus(lam) == lam
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    for _ in range(3):
        W = torch.randn(k, d, generator=g, dtype=torch.float64)
        H = torch.autograd.functional.hessian(
            lambda v: B.softmax_loss(v.reshape(k, d), X, y, lam), W.reshape(-1)
        )
        eig = torch.linalg.eigvalsh(H)
        assert _min_eig(H) == pytest.approx(lam, rel=1e-8)
        # exactly the d shift directions (v in R^d) are flat for the data term; the rest curve
        torch.testing.assert_close(eig[:d], torch.full((d,), lam, dtype=torch.float64), rtol=1e-8, atol=1e-12)
        assert eig[d].item() > lam + 1e-3


@pytest.mark.parametrize("lam", [0.0, -0.1, float("nan")])
def test_regularised_moduli_reject_non_positive_lambda(lam):
    for fn in (B.logistic_modulus, B.softmax_modulus):
        with pytest.raises(ValueError, match="lam"):
            fn(lam)


def test_strong_convexity_inequality_eq1_at_random_pairs(gen):
    # f(y) >= f(x) + grad f(x)^T (y - x) + m/2 ||y - x||^2 for the three non-trivial losses
    g = gen(11)
    X = torch.randn(60, 3, generator=g, dtype=torch.float64)
    yr = torch.randn(60, generator=g, dtype=torch.float64)
    yb = torch.randint(0, 2, (60,), generator=g).to(torch.float64)
    yc = torch.randint(0, 4, (60,), generator=g)
    cases = [
        (lambda v: B.least_squares_loss(v, X, yr), B.least_squares_modulus(X), (3,)),
        (lambda v: B.logistic_loss(v, X, yb, 0.1), B.logistic_modulus(0.1), (3,)),
        (lambda v: B.softmax_loss(v, X, yc, 0.1), B.softmax_modulus(0.1), (4, 3)),
    ]
    for f, m, shape in cases:
        for _ in range(20):
            x = (2 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
            yv = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
            fx = f(x)
            (grad,) = torch.autograd.grad(fx, x)
            rhs = (
                fx.item()
                + (grad * (yv - x.detach())).sum().item()
                + m / 2 * ((yv - x.detach()) ** 2).sum().item()
            )
            assert f(yv).item() >= rhs - 1e-10


def test_losses_are_batched_and_match_torch_references(gen):
    g = gen(12)
    X = torch.randn(20, 3, generator=g, dtype=torch.float64)
    yb = torch.randint(0, 2, (20,), generator=g).to(torch.float64)
    yc = torch.randint(0, 4, (20,), generator=g)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    W = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    F = torch.nn.functional
    ref_log = torch.stack([F.binary_cross_entropy_with_logits(X @ v, yb) + 0.05 * (v**2).sum() for v in w])
    torch.testing.assert_close(B.logistic_loss(w, X, yb, 0.1), ref_log)
    ref_soft = torch.stack([F.cross_entropy(X @ v.T, yc) + 0.05 * (v**2).sum() for v in W])
    torch.testing.assert_close(B.softmax_loss(W, X, yc, 0.1), ref_soft)
    ref_ls = torch.stack([((X @ v - yb) ** 2).sum() / 40 for v in w])
    torch.testing.assert_close(B.least_squares_loss(w, X, yb), ref_ls)
    A = torch.eye(3, dtype=torch.float64) * 2
    torch.testing.assert_close(
        B.quadratic_loss(w, A, torch.zeros(3, dtype=torch.float64), 1.0), (w**2).sum(-1) + 1.0
    )

"""Monte Carlo mixout penalty vs closed forms and Corollary 1.1; the exact least-squares solver.

Monte Carlo agreement is checked within 4 standard errors (a two-sided normal test at about
6e-5 false-alarm rate per check; all seeds fixed, so the outcome is deterministic), and each such
test also asserts that the standard error is small relative to the quantity, so that agreement
means something.
"""

import pytest
import torch

from mixout_theory import bounds as B
from mixout_theory import cases as C
from mixout_theory import mixing
from mixout_theory import penalty as P

# ---------------------------------------------------------------- closed form vs Monte Carlo


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_quadratic_independent_masks_closed_form_matches_monte_carlo(p):
    case = C.quadratic_case(shape=(6,), seed=1, level="parameter")
    exact = case.exact(p)
    est = P.empirical_penalty(case.loss, case.w, case.u, p, 40_000, level="parameter", generator=3)
    assert est.se < 0.03 * exact
    assert est.within(exact, 4.0), (est, exact)
    assert est.lo < est.mean < est.hi and est.hi - est.lo == pytest.approx(2 * P.Z95 * est.se)


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_quadratic_neuron_groups_closed_form_matches_monte_carlo(p):
    # an SPD A with strong coupling inside each column group (+ 2 G, G the same-group indicator,
    # which is PSD), so that neuron-shared masks change the penalty visibly
    case = C.quadratic_case(shape=(3, 4), seed=2, level="neuron")
    groups = P.neuron_groups((3, 4))
    A = case.data["A"] + 2.0 * (groups[:, None] == groups[None, :]).to(torch.float64)
    loss = lambda v: B.quadratic_loss(v, A, case.data["w_star"])  # noqa: E731
    grouped = P.quadratic_penalty(A, case.w, case.u, p, groups)
    independent = P.quadratic_penalty(A, case.w, case.u, p)
    est = P.empirical_penalty(loss, case.w, case.u, p, 40_000, level="neuron", generator=4)
    assert est.se < 0.03 * grouped
    assert est.within(grouped, 4.0), (est, grouped)
    # the test can tell the two formulas apart: the independent one is far outside 4 SE
    assert abs(independent - grouped) > 10 * est.se
    # and mixconnect (parameter masks) on the same weight matches the independent formula
    est_par = P.empirical_penalty(loss, case.w, case.u, p, 40_000, level="parameter", generator=5)
    assert est_par.within(independent, 4.0), (est_par, independent)


def test_quadratic_penalty_is_the_covariance_formula(gen):
    # 1/2 sum_ij A_ij Cov(Phi_i, Phi_j), with Cov from the mask's covariance, by brute force
    g = gen(6)
    shape, p = (2, 3), 0.4
    Q = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = Q @ Q.T + 0.1 * torch.eye(6, dtype=torch.float64)
    w, u = (
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64),
    )
    d = (w - u).reshape(-1)
    groups = P.neuron_groups(shape)
    same = (groups[:, None] == groups[None, :]).to(torch.float64)
    cov_mask = p * (1 - p) * same  # Cov(M_i, M_j) = sigma^2 within a group, 0 across
    cov_phi = cov_mask * torch.outer(d, d) / (1 - p) ** 2
    brute = 0.5 * (A * cov_phi).sum().item()
    assert P.quadratic_penalty(A, w, u, p, groups) == pytest.approx(brute, rel=1e-12)
    eye = torch.eye(6, dtype=torch.float64)
    brute_ind = 0.5 * (A * eye * p * (1 - p) * torch.outer(d, d) / (1 - p) ** 2).sum().item()
    assert P.quadratic_penalty(A, w, u, p) == pytest.approx(brute_ind, rel=1e-12)
    # a partition gives the same as the id vector
    parts = [[0, 3], [1, 4], [2, 5]]
    assert P.quadratic_penalty(A, w, u, p, parts) == pytest.approx(brute, rel=1e-12)


def test_restricted_penalty_on_a_state_dict_equals_the_restricted_bound():
    # Supplement B: mix only the weight matrices; for L = m/2 ||theta - theta*||^2 the penalty is
    # exactly m p / (2(1-p)) times the squared distance over the mixed entries
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    w = {k: v.detach().clone() for k, v in net.state_dict().items()}
    u = {k: v + torch.randn_like(v) for k, v in w.items()}
    star = {k: torch.randn_like(v) for k, v in w.items()}
    m, p, mixed = 0.8, 0.6, ["0.weight", "2.weight"]

    def loss(theta):  # batched: every entry has a leading sample dim
        return sum(0.5 * m * (theta[k] - star[k]).pow(2).flatten(1).sum(1) for k in theta)

    est = P.empirical_penalty(loss, w, u, p, 20_000, level="neuron", generator=11, mixed=mixed)
    restricted = B.restricted_corollary11_penalty(w, u, m, p, mixed).item()
    assert est.se < 0.03 * restricted
    assert est.within(restricted, 4.0), (est, restricted)
    assert B.corollary11_penalty(w, u, m, p).item() > est.hi  # the whole-vector bound would be wrong


# ---------------------------------------------------------------- the estimator itself


def test_batched_vmap_and_loop_give_identical_estimates():
    case = C.softmax_case(n=30, seed=4)
    X, y, lam = case.data["X"], case.data["y"], case.data["lam"]
    per_sample = lambda W: B.softmax_loss(W, X, y, lam)  # noqa: E731 - works for one W too
    kw = dict(p=0.4, n_samples=300, level="neuron", batch_size=64)
    a = P.empirical_penalty(case.loss, case.w, case.u, generator=12, **kw)
    b = P.empirical_penalty(per_sample, case.w, case.u, generator=12, batched=False, **kw)
    c = P.empirical_penalty(per_sample, case.w, case.u, generator=12, batched=False, vectorize="loop", **kw)
    assert a.n_samples == b.n_samples == c.n_samples == 300
    for other in (b, c):
        assert other.mean == pytest.approx(a.mean, rel=1e-12, abs=1e-15)
        assert other.se == pytest.approx(a.se, rel=1e-9)


def test_unvectorisable_loss_falls_back_to_a_loop_with_a_warning():
    case = C.quadratic_case(seed=5)
    A, w_star = case.data["A"], case.data["w_star"]

    def python_loss(v):  # .item() cannot run under vmap
        return torch.tensor(B.quadratic_loss(v, A, w_star).item(), dtype=torch.float64)

    ref = P.empirical_penalty(case.loss, case.w, case.u, 0.5, 200, level="parameter", generator=13)
    with pytest.warns(RuntimeWarning, match="vmap"):
        got = P.empirical_penalty(
            python_loss, case.w, case.u, 0.5, 200, level="parameter", generator=13, batched=False
        )
    assert got.mean == pytest.approx(ref.mean, rel=1e-12)


def test_seeded_and_masks_follow_the_mask_levels(gen):
    case = C.quadratic_case(shape=(3, 4), seed=6, level="neuron")
    run = lambda gen: P.empirical_penalty(case.loss, case.w, case.u, 0.5, 500, generator=gen)  # noqa: E731
    assert run(14) == run(14)
    assert run(14).mean != run(15).mean
    # level="neuron" keeps or mixes whole columns: every sample of Phi has each column either
    # exactly u[:, j] or u[:, j] + (w - u)[:, j] / (1 - p)
    seen = []

    def spy(phi):
        seen.append(phi.clone())
        return torch.zeros(phi.shape[0], dtype=phi.dtype)

    P.empirical_penalty(spy, case.w, case.u, 0.5, 50, generator=16)
    phis = seen[-1]
    mixed_col = torch.isclose(phis, case.u.expand_as(phis)).all(1)  # (S, in)
    kept_col = torch.isclose(phis, (case.u + 2 * (case.w - case.u)).expand_as(phis)).all(1)
    assert torch.all(mixed_col ^ kept_col)
    assert 0.2 < mixed_col.double().mean().item() < 0.8


def test_p_zero_is_exactly_zero_and_bad_inputs_raise():
    case = C.quadratic_case(seed=7)
    est = P.empirical_penalty(case.loss, case.w, case.u, 0.0, 10)
    assert (est.mean, est.se, est.lo, est.hi) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="p=1.0"):
        P.empirical_penalty(case.loss, case.w, case.u, 1.0, 10)
    with pytest.raises(ValueError, match="p"):
        P.empirical_penalty(case.loss, case.w, case.u, -0.2, 10)
    with pytest.raises(ValueError, match="n_samples"):
        P.empirical_penalty(case.loss, case.w, case.u, 0.5, 1)
    with pytest.raises(TypeError, match="n_samples"):
        P.empirical_penalty(case.loss, case.w, case.u, 0.5, 10.0)
    with pytest.raises(ValueError, match="level must be one of 'neuron', 'parameter'"):
        P.empirical_penalty(case.loss, case.w, case.u, 0.5, 10, level="layer")
    with pytest.raises(ValueError, match=r"batched loss_fn must map a batch of 1 .* shape \(1,\), got \(\)"):
        P.empirical_penalty(lambda v: v.sum(), case.w, case.u, 0.5, 10, batch_size=5)
    with pytest.raises(ValueError, match=r"batch of 5 .* got \(5, 6\)"):
        P.empirical_penalty(
            lambda v: v if v.shape[0] == 5 else v.sum(1), case.w, case.u, 0.5, 10, batch_size=5
        )
    with pytest.raises(ValueError, match="shape mismatch"):
        P.empirical_penalty(case.loss, case.w, case.u[:3], 0.5, 10)
    with pytest.raises(ValueError, match="only in w"):
        P.empirical_penalty(lambda d: d["a"].sum(1), {"a": case.w}, {"b": case.u}, 0.5, 10)
    with pytest.raises(ValueError, match="group"):
        P.quadratic_penalty(case.data["A"], case.w, case.u, 0.5, [[0, 1], [1, 2, 3, 4, 5]])
    with pytest.raises(ValueError, match="in no group"):
        P.quadratic_penalty(case.data["A"], case.w, case.u, 0.5, [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="6 coordinates"):
        P.quadratic_penalty(torch.eye(5), case.w, case.u, 0.5)
    with pytest.raises(ValueError, match="symmetric"):
        P.quadratic_penalty(torch.triu(torch.ones(6, 6)), case.w, case.u, 0.5)


def test_neuron_groups_match_neuron_mask(gen):
    shape = (2, 3)
    assert P.neuron_groups(shape).tolist() == [0, 1, 2, 0, 1, 2]
    assert P.neuron_groups((4,)).tolist() == [0, 1, 2, 3]
    assert P.neuron_groups((2, 2, 2)).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    w = torch.zeros(5, 4, 3)
    mask = mixing.neuron_mask(w, 0.5, generator=gen(17)).expand_as(w).reshape(-1)
    groups = P.neuron_groups(w.shape)
    for gid in range(4):
        assert mask[groups == gid].unique().numel() == 1


# ---------------------------------------------------------------- Supplement D: exact least squares


def _line_problem():
    fit = C.line_fit_experiment()
    return B.add_intercept(fit.x), fit.y, fit.u, fit


def test_mixout_least_squares_limits():
    X, y, u, _ = _line_problem()
    ols = torch.linalg.lstsq(X, y[:, None]).solution.squeeze(1)
    torch.testing.assert_close(P.mixout_least_squares(X, y, u, 0.0), ols)
    torch.testing.assert_close(P.mixout_least_squares(X, y, u, 1 - 1e-9), u, atol=1e-6, rtol=0)


@pytest.mark.parametrize("groups", [None, [[0, 1], [2]]])
def test_mixout_least_squares_zeroes_the_gradient_of_the_expected_loss(gen, groups):
    g = gen(18)
    X = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.randn(30, generator=g, dtype=torch.float64)
    u = torch.randn(3, generator=g, dtype=torch.float64)
    p = 0.6
    w = P.mixout_least_squares(X, y, u, p, groups).requires_grad_()
    H = X.T @ X / 30
    ids = torch.tensor([0, 1, 2]) if groups is None else torch.tensor([0, 0, 1])
    HG = H * (ids[:, None] == ids[None, :])
    objective = B.least_squares_loss(w, X, y) + p / (2 * (1 - p)) * (w - u) @ HG @ (w - u)
    (grad,) = torch.autograd.grad(objective, w)
    assert grad.abs().max().item() < 1e-12
    # the objective is the Monte Carlo expectation (checked within 4 SE), with the matching masks
    w0 = torch.randn(3, generator=g, dtype=torch.float64)
    exp_loss = P.expected_mixout_least_squares_loss(w0, X, y, u, p, groups)
    if groups is None:
        est = P.empirical_penalty(lambda v: B.least_squares_loss(v, X, y), w0, u, p, 40_000, generator=19)
        base = B.least_squares_loss(w0, X, y).item()
        assert est.se < 0.03 * (exp_loss - base)
        assert est.within(exp_loss - base, 4.0)


@pytest.mark.slow  # ~15 s per p
@pytest.mark.parametrize("p", [0.3, 0.9])
def test_mixout_least_squares_matches_sgd_with_exact_mixout_gradients(gen, p):
    # SGD on E L(Phi(w)) through mixing.mixconnect (for a 1-D parameter the same law as mixout),
    # 16 fresh masks per step, iterate averaging over the second half; the exact solution is
    # ~1 away from ordinary least squares, SGD lands within 0.01 of it.
    X, y, u, _ = _line_problem()
    exact = P.mixout_least_squares(X, y, u, p)
    assert (exact - P.mixout_least_squares(X, y, u, 0.0)).norm() > 0.5
    g = gen(20)
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    avg, steps = torch.zeros(2, dtype=torch.float64), 1500
    for t in range(steps):
        phi = mixing.mixconnect(w.expand(16, 2), u.expand(16, 2), p, generator=g)
        (grad,) = torch.autograd.grad(B.least_squares_loss(phi, X, y).mean(), w)
        with torch.no_grad():
            w -= 0.2 * (1 - p) / (1 + t / 100) ** 0.6 * grad
        if t >= steps // 2:
            avg += w.detach()
    avg /= steps - steps // 2
    assert (avg - exact).norm().item() < 0.01, (avg, exact)

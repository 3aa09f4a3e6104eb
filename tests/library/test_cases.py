"""The theory's worked cases (mixout_theory.cases): Theorem 1 / Corollary 1.1 on quadratics, least
squares, L2 logistic and softmax regression, the penalty-vs-p curves, Supplement D's line fit.

Monte Carlo agreement is checked within 4 standard errors (a two-sided normal test at about
6e-5 false-alarm rate per check; all seeds fixed, so the outcome is deterministic), and each such
test also asserts that the standard error is small relative to the quantity, so that agreement
means something.
"""

import numpy as np
import pytest
import torch

from mixout_theory import bounds as B
from mixout_theory import cases as C
from mixout_theory import penalty as P


def test_theorem1_equality_for_isotropic_quadratic():
    for level, shape in (("parameter", (7,)), ("neuron", (3, 4))):
        case = C.quadratic_case(shape=shape, seed=7, isotropic=True, m=1.5, level=level)
        for p in (0.1, 0.5, 0.9):
            assert case.exact(p) == pytest.approx(case.bound(p), rel=1e-12)
        est = P.empirical_penalty(case.loss, case.w, case.u, 0.5, 40_000, level=level, generator=8)
        assert est.se < 0.03 * case.bound(0.5)
        assert est.within(case.bound(0.5), 4.0), (est, case.bound(0.5))


def test_bound_below_exact_for_general_spd_quadratics():
    for seed in range(5):
        for level, shape in (("parameter", (6,)), ("neuron", (3, 4))):
            case = C.quadratic_case(shape=shape, seed=seed, level=level, condition=5.0)
            for p in (0.05, 0.3, 0.6, 0.95):
                exact, bound = case.exact(p), case.bound(p)
                assert bound < exact * (1 - 1e-6), (seed, level, p, bound, exact)


@pytest.mark.parametrize("maker", [C.least_squares_case, C.logistic_case, C.softmax_case])
def test_monte_carlo_never_below_bound_on_strongly_convex_losses(gen, maker):
    case = maker(seed=3)
    g = gen(9)
    for p in (0.1, 0.3, 0.5, 0.7, 0.9):
        est = P.empirical_penalty(case.loss, case.w, case.u, p, 4000, level=case.level, generator=g)
        assert est.hi >= case.bound(p), (case.name, p, est, case.bound(p))
        if case.exact is not None:
            assert est.within(case.exact(p), 4.0)


def test_logistic_penalty_is_strictly_above_the_bound():
    # non-quadratic data term: the Jensen gap of the cross entropy is positive, and visible
    case = C.logistic_case(seed=0)
    for p in (0.3, 0.6):
        est = P.empirical_penalty(case.loss, case.w, case.u, p, 4000, level=case.level, generator=10)
        assert est.lo > case.bound(p)


def test_line_fit_moves_from_the_data_line_towards_u():
    fit = C.line_fit_experiment(ps=(0.0, 0.3, 0.6, 0.9))
    X = B.add_intercept(fit.x)
    D = torch.diag(torch.diagonal(X.T @ X / X.shape[0]))
    # the penalty norm ||w_p - u||_D is non-increasing in p (minimisers of L + k g, k increasing)
    dist_D = [((w - fit.u) @ D @ (w - fit.u)).item() for w in fit.fits]
    dist = [(w - fit.u).norm().item() for w in fit.fits]
    assert all(a > b for a, b in zip(dist_D, dist_D[1:], strict=False))
    assert all(a > b for a, b in zip(dist, dist[1:], strict=False))
    # p = 0 is the data's own least-squares line, close to the true line (noise 0.3, n = 40)
    assert (fit.fits[0] - fit.w_star).norm().item() < 0.3
    assert dist[-1] < 0.2 * dist[0]
    assert fit.m == pytest.approx(B.least_squares_modulus(X))


def test_penalty_curve_collects_estimates_and_bounds():
    case = C.least_squares_case(seed=8)
    ps = [0.0, 0.25, 0.5]
    curve = C.penalty_curve(case, ps, 1000, seed=21)
    assert curve.ps.tolist() == ps and curve.n_samples == 1000
    np.testing.assert_allclose(curve.bound, [case.bound(p) for p in ps])
    np.testing.assert_allclose(curve.exact, [case.exact(p) for p in ps])
    assert curve.mean[0] == 0.0 and np.all(curve.lo <= curve.mean) and np.all(curve.mean <= curve.hi)
    assert np.all(np.abs(curve.mean - curve.exact) <= 4 * curve.se + 1e-15)
    with pytest.raises(ValueError, match="p"):
        C.penalty_curve(case, [0.5, 1.0], 10)


def test_theory_cases_are_the_four_of_the_figure_and_seeded():
    cases = C.theory_cases(seed=0)
    assert [c.name for c in cases] == ["quadratic", "least_squares", "logistic", "softmax"]
    again = C.theory_cases(seed=0)
    for a, b in zip(cases, again, strict=True):
        assert torch.equal(a.w, b.w) and torch.equal(a.u, b.u) and a.m == b.m > 0
        assert a.bound(0.0) == 0.0  # no mixing, no penalty
        # Corollary 1.1 (eq. 9): m p / (2 (1 - p)) ||w - u||^2
        d2 = float(((a.w - a.u) ** 2).sum())
        assert a.bound(0.5) == pytest.approx(a.m * 0.5 / (2 * 0.5) * d2, rel=1e-12)
    assert not torch.equal(cases[0].w, C.theory_cases(seed=1)[0].w)

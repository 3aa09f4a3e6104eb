"""The scale scan (mixout_theory.scale) and the per-mask samples behind it (penalty_samples).

Monte Carlo agreement is checked within 4 standard errors (a two-sided normal test at about 6e-5
false-alarm rate per check; every seed fixed, so the outcome is deterministic). Where the scan is exact
(a polynomial loss on the same masks at every scale) it is checked to float64 precision.
"""

import math

import pytest
import torch

from mixout_theory import masks
from mixout_theory import penalty as P
from mixout_theory import scale as S


def test_scale_fit_recovers_a_polynomial_exactly():
    ts = [0.05, 0.1, 0.2, 0.4, 0.7, 1.0]
    values = [3e-3 * t**2 - 4e-4 * t**3 + 2e-5 * t**4 for t in ts]
    fit = S.scale_fit(ts, values, (2, 3, 4))
    assert fit[2] == pytest.approx(3e-3, rel=1e-10) and fit[3] == pytest.approx(-4e-4, rel=1e-9)
    assert fit[4] == pytest.approx(2e-5, rel=1e-7)
    for ts, vals, orders, match in (
        ([0.0, 1.0], [0.0, 1.0], (2, 3), "positive scales"),
        ([0.5, 1.0], [1.0, 2.0], (2, 3, 4), "at least 3 distinct"),
        ([0.5, 0.5], [1.0, 2.0], (2, 3), "at least 2 distinct"),  # rank-deficient: refused, not min-norm
        ([0.5, 1.0], [1.0], (2,), "one value per scale"),
        ([0.5, 1.0], [1.0, 2.0], (2, 2), "distinct non-negative integers"),
        ([0.5, 1.0], [1.0, 2.0], (2.5,), "distinct non-negative integers"),
        ([0.5, 1.0], [1.0, 2.0], (), "distinct non-negative integers"),
    ):
        with pytest.raises(ValueError, match=match):
            S.scale_fit(ts, vals, orders)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_mask_moment_is_the_masks_central_moment(p, gen):
    assert S.mask_moment(p, 1) == pytest.approx(0.0, abs=1e-15)
    assert S.mask_moment(p, 2) == pytest.approx(p / (1 - p), rel=1e-14)
    assert S.mask_moment(p, 3) == pytest.approx(p * (2 * p - 1) / (1 - p) ** 2, rel=1e-12, abs=1e-15)
    x = masks.bernoulli_mask(torch.empty(0, dtype=torch.float64), p, (400_000,), gen(0)) / (1 - p) - 1
    for k in (2, 3):
        se = x.pow(k).std().item() / math.sqrt(x.numel())
        assert abs(x.pow(k).mean().item() - S.mask_moment(p, k)) <= 4 * se + 1e-15  # X^2 = 1 at p = 0.5


def test_mask_moment_refuses_a_non_integer_order():
    for k in (0.5, -1, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            S.mask_moment(0.5, k)


def test_scaled_target_scales_the_displacement():
    w = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    u = {"a": torch.tensor([0.0, 4.0]), "b": torch.tensor([[1.0]])}
    ut = S.scaled_target(w, u, 0.25)
    assert torch.equal(w["a"] - ut["a"], 0.25 * (w["a"] - u["a"])) and ut["b"].item() == 2.5
    assert torch.equal(S.scaled_target(torch.ones(2), None, 1.0), torch.zeros(2))


@pytest.mark.parametrize("p", [0.2, 0.8])
def test_the_scale_scan_recovers_a_known_cubic(p):
    """L(w) = sum a w^2 + b w^3: with Phi_t - w = t X o d, mask by mask
    L(Phi_t) - L(w) = t [sum (2 a w + 3 b w^2) X d] + t^2 [sum (a + 3 b w) X^2 d^2] + t^3 [sum b X^3 d^3],
    so on the same masks the scan is a cubic polynomial in t, and its coefficients' means are
    E X^2 sum (a + 3 b w) d^2 and E X^3 sum b d^3 (E X = 0)."""
    g = torch.Generator().manual_seed(1)
    w, u = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    a, b = (
        torch.rand(5, generator=g, dtype=torch.float64) + 0.5,
        torch.randn(5, generator=g, dtype=torch.float64),
    )
    grad = 2 * a * w + 3 * b * w**2

    def loss(W):  # minus the first-order term, whose mean is 0 (a control variate, as the study uses)
        return (a * W**2 + b * W**3).sum(-1) - ((W - w) * grad).sum(-1)

    ts, n = [0.1, 0.25, 0.5, 1.0], 20_000
    scan = S.scale_scan(loss, w, u, p, ts, n, seed=7, level="parameter")
    assert scan.shape == (len(ts), n)
    d = w - u
    c2, c3 = S.mask_moment(p, 2) * ((a + 3 * b * w) * d**2).sum(), S.mask_moment(p, 3) * (b * d**3).sum()
    fit = S.scale_fit(ts, scan.mean(1).tolist(), (2, 3))
    # mask by mask: the two coefficients from two scales, then their means and standard errors
    t1, t2 = 0.5, 1.0
    k3 = (scan[3] / t2**2 - scan[2] / t1**2) / (t2 - t1)
    k2 = scan[3] / t2**2 - k3 * t2
    assert fit[2] == pytest.approx(k2.mean().item(), rel=1e-9) and fit[3] == pytest.approx(
        k3.mean().item(), rel=1e-9
    )
    for est, exact in ((k2, c2), (k3, c3)):
        se = est.std().item() / math.sqrt(n)
        assert abs(est.mean().item() - exact.item()) < 4 * se and se < 0.05 * abs(exact.item())


def test_penalty_samples_columns_are_paired_and_empirical_penalty_is_their_estimate():
    loss2 = lambda W: torch.stack([W.pow(2).sum(-1), W.pow(2).sum(-1) + W.sum(-1)], -1)  # noqa: E731
    w, u = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    d = P.penalty_samples(loss2, w, u, 0.3, 500, level="parameter", generator=4, batch_size=64)
    square = lambda W: W.pow(2).sum(-1)  # noqa: E731
    kw = dict(level="parameter", generator=4, batch_size=64)
    one = P.penalty_samples(square, w, u, 0.3, 500, **kw)
    assert d.shape == (500, 2) and torch.equal(d[:, 0], one)  # the same masks, the same numbers
    assert P.empirical_penalty(square, w, u, 0.3, 500, **kw) == P.PenaltyEstimate.of(one)
    # the columns differ by sum(Phi - w) on the same mask: exactly, mask by mask
    phi_sum = d[:, 1] - d[:, 0]
    assert P.PenaltyEstimate.of(phi_sum).within(0.0) and phi_sum.abs().max() > 0
    with pytest.raises(ValueError, match=r"shape \(1,\), got \(1, 2\)"):
        P.empirical_penalty(loss2, w, u, 0.3, 500, level="parameter", generator=4, batch_size=64)
    with pytest.raises(TypeError, match="seed must be an int"):
        S.scale_scan(loss2, w, u, 0.3, [1.0], 10, seed=torch.Generator())
    with pytest.raises(ValueError, match=r"1-D tensor of >= 2 samples, got shape \(500, 2\)"):
        P.PenaltyEstimate.of(d)  # the columns are estimated one by one
    shifty = lambda W: loss2(W) if W.shape[0] == 1 else loss2(W)[:, :1]  # noqa: E731
    with pytest.raises(ValueError, match=r"returned \(1,\) values per sample, \(2,\) at w"):
        P.penalty_samples(shifty, w, u, 0.3, 10, level="parameter")
    zero = P.penalty_samples(loss2, w, u, 0.0, 10, level="parameter")
    assert zero.shape == (10, 2) and not zero.any()

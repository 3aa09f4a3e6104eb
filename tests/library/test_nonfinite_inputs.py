"""Non-finite values: where they enter a penalty or a bound, the result is NaN / inf or an error, never a
finite number; where they do not (coordinates or entries left unmixed, Supplement B), the result is
bit for bit the one with finite values there."""

import math

import pytest
import torch

from mixout_theory import bounds, mixing, penalty, second_order

D = torch.float64
NAN, INF = float("nan"), float("inf")


def _bits(t) -> bytes:
    return torch.as_tensor(t).detach().numpy().tobytes()


def _least_squares_problem():
    """A tiny linear model ``x -> W x``, ``W`` of shape (2, 3), fitted by least squares."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, generator=g, dtype=D)
    Y = torch.randn(20, 2, generator=g, dtype=D)
    W = torch.randn(2, 3, generator=g, dtype=D)
    U = torch.randn(2, 3, generator=g, dtype=D)
    return (lambda w: 0.5 * ((X @ w.T - Y) ** 2).mean()), W, U


# ------------------------------------------------------- (b) non-finite inputs never give a finite result


@pytest.mark.parametrize("level", ["neuron", "parameter"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_second_order_penalty_of_a_target_with_a_non_finite_column_is_not_finite(level, bad):
    """The reported case: a NaN column in the target used to drop its group (``NaN > 0`` is False), so the
    penalty came out finite while its own ``dist2`` was NaN."""
    loss, W, U = _least_squares_problem()
    clean = second_order.second_order_penalty(loss, W, U, 0.5, level=level)
    assert math.isfinite(clean) and clean > 0
    U[:, 1] = bad
    terms = second_order.second_order_terms(loss, W, U, level=level)
    assert not math.isfinite(terms.dist2)
    assert not math.isfinite(terms.quad) and not math.isfinite(terms.penalty(0.5))
    assert not math.isfinite(second_order.second_order_penalty(loss, W, U, 0.5, level=level))
    assert terms.n_groups == (3 if level == "neuron" else 6)  # the non-finite group is counted, not dropped


def _point(bad, where):
    """``(w, u)`` of 3 coordinates with ``bad`` in ``where`` ("w" or "u") at coordinate 1."""
    w, u = torch.tensor([1.0, 2.0, -1.0], dtype=D), torch.tensor([0.5, -0.5, 0.0], dtype=D)
    (w if where == "w" else u)[1] = bad
    return w, u


_QUAD = lambda W: 0.5 * (W * W).sum(-1)  # noqa: E731 - batched and per-sample
_X, _Y = torch.eye(3, dtype=D) + 0.1, torch.tensor([1.0, 0.0, 2.0], dtype=D)  # least squares' data

ESTIMATORS = {
    "squared_distance": lambda w, u: bounds.squared_distance(w, u),
    "theorem1_penalty": lambda w, u: bounds.theorem1_penalty(w, u, 1.0, 0.5, 0.25),
    "corollary11_penalty": lambda w, u: bounds.corollary11_penalty(w, u, 1.0, 0.5),
    "corollary11_penalty p=0": lambda w, u: bounds.corollary11_penalty(w, u, 1.0, 0.0),
    "restricted_corollary11_penalty": lambda w, u: bounds.restricted_corollary11_penalty(
        w, u, 1.0, 0.5, torch.tensor([False, True, True])
    ),
    "empirical_penalty": lambda w, u: penalty.empirical_penalty(_QUAD, w, u, 0.5, 64, generator=0).mean,
    "empirical_penalty p=0": lambda w, u: penalty.empirical_penalty(_QUAD, w, u, 0.0, 64, generator=0).mean,
    "empirical_penalty p=0 se": lambda w, u: penalty.empirical_penalty(_QUAD, w, u, 0.0, 64, generator=0).se,
    "quadratic_penalty": lambda w, u: penalty.quadratic_penalty(torch.eye(3), w, u, 0.5),
    "quadratic_penalty groups": lambda w, u: penalty.quadratic_penalty(
        torch.eye(3), w, u, 0.5, [[0, 1], [2]]
    ),
    "wdecay": lambda w, u: penalty.wdecay(w, u, 0.1),
    "mixout_least_squares (y, u)": lambda y, u: penalty.mixout_least_squares(_X, y, u, 0.5),
    "expected_mixout_least_squares_loss": lambda w, u: penalty.expected_mixout_least_squares_loss(
        w, _X, _Y, u, 0.5
    ),
    "second_order_penalty": lambda w, u: second_order.second_order_penalty(
        lambda t: 0.5 * (t * t).sum() + t[0] * t[2], w, u, 0.5
    ),
    "mixture_variance": lambda w, u: mixing.mixture_variance(w, u, 0.5),
}


@pytest.mark.parametrize("where", ["w", "u"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_a_non_finite_input_never_gives_a_finite_result(name, bad, where):
    fn = ESTIMATORS[name]
    assert torch.isfinite(torch.as_tensor(fn(*_point(0.25, where)))).all(), "finite inputs: a finite result"
    try:
        result = torch.as_tensor(fn(*_point(bad, where)))
    except ValueError:
        return  # an error is a fine answer
    assert not torch.isfinite(result).all(), f"{name}: {bad} in {where} gave the finite {result}"


@pytest.mark.parametrize("bad", [NAN, INF])
@pytest.mark.parametrize("groups", [None, [[0, 1], [2]]])
def test_quadratic_penalty_refuses_a_non_finite_hessian(bad, groups):
    """Off the group blocks ``A`` does not enter the formula, but a non-finite ``A`` is no Hessian: with
    ``groups=None`` its off-diagonal NaN was dropped (a finite result), with groups it gave NaN."""
    A = torch.eye(3, dtype=D)
    A[0, 2] = A[2, 0] = bad
    with pytest.raises(ValueError, match=r"^A must be finite"):
        penalty.quadratic_penalty(A, torch.ones(3), None, 0.5, groups)


def test_mixture_variance_at_p1_of_a_nan_is_nan():
    """``p = 1``: ``inf`` where ``w != u``, 0 where equal; a NaN is neither (it was 0)."""
    w, u = torch.tensor([1.0, 2.0, 3.0, NAN], dtype=D), torch.tensor([1.0, NAN, 0.0, 0.0], dtype=D)
    got = mixing.mixture_variance(w, u, 1.0)
    assert got[0] == 0.0 and got[2] == INF and got[1].isnan() and got[3].isnan()


def test_empirical_penalty_at_p0_is_an_exact_zero_for_finite_inputs():
    est = penalty.empirical_penalty(_QUAD, *_point(0.25, "u"), 0.0, 64, generator=0)
    assert (est.mean, est.se, est.lo, est.hi, est.std) == (0.0, 0.0, 0.0, 0.0, 0.0)


# ------------------------------------------------------- (c) unmixed entries do not enter the result

RESTRICTED = {
    "squared_distance": lambda w, u, mixed: bounds.squared_distance(w, u, mixed),
    "theorem1_penalty": lambda w, u, mixed: bounds.theorem1_penalty(w, u, 1.5, 0.7, 0.21, mixed),
    "corollary11_penalty": lambda w, u, mixed: bounds.corollary11_penalty(w, u, 1.5, 0.3, mixed),
    "restricted_corollary11_penalty": lambda w, u, mixed: bounds.restricted_corollary11_penalty(
        w, u, 1.5, 0.3, mixed
    ),
}


def _restricted_point(bad, where):
    """A state dict with one entry left unmixed whole (``"b"``) and one partly mixed (``"a"``, by a mask);
    ``bad`` fills every unmixed coordinate of ``where`` ("w", "u" or "both")."""
    g = torch.Generator().manual_seed(1)
    w = {"a": torch.randn(4, 5, generator=g, dtype=D), "b": torch.randn(3, generator=g, dtype=D)}
    u = {"a": torch.randn(4, 5, generator=g, dtype=D), "b": torch.randn(3, generator=g, dtype=D)}
    mask = torch.rand(4, 5, generator=g) < 0.5
    for name, t in (("w", w), ("u", u)):
        if where in (name, "both"):
            t["a"] = torch.where(mask, t["a"], bad)
            t["b"] = torch.full_like(t["b"], bad)
    return w, u, {"a": mask}


@pytest.mark.parametrize("where", ["w", "u", "both"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("name", list(RESTRICTED))
def test_unmixed_non_finite_entries_leave_the_restricted_penalty_bit_for_bit(name, bad, where):
    fn = RESTRICTED[name]
    w0, u0, mixed = _restricted_point(0.0, where)
    w1, u1, _ = _restricted_point(bad, where)
    w0 = {k: v.requires_grad_(True) for k, v in w0.items()}
    w1 = {k: v.requires_grad_(True) for k, v in w1.items()}
    clean, dirty = fn(w0, u0, mixed), fn(w1, u1, mixed)
    assert math.isfinite(clean.item()) and clean.item() > 0
    assert _bits(dirty) == _bits(clean), f"{name}: {dirty.item()} != {clean.item()}"
    clean.backward(), dirty.backward()
    for k in w0:  # nor do they enter the gradient: zero there, identical on the mixed coordinates
        assert _bits(w1[k].grad) == _bits(w0[k].grad), k
    assert not w1["b"].grad.any() and not w1["a"].grad[~mixed["a"]].any()


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_an_unmixed_tensor_mask_and_a_whole_entry_with_non_finite_values(bad):
    """The single-tensor form (a bool mask) and a list with an entry left out, on w and u at once."""
    w, u = torch.tensor([3.0, 4.0, 1.0]), torch.tensor([0.0, 0.0, 1.0])
    mask = torch.tensor([True, True, False])
    w_bad, u_bad = w.clone(), u.clone()
    w_bad[2], u_bad[2] = bad, -bad
    assert _bits(bounds.squared_distance(w_bad, u_bad, mask)) == _bits(torch.tensor(25.0))
    got = bounds.restricted_corollary11_penalty([w, w_bad], [u, u_bad], 1.0, 0.5, [0])
    assert _bits(got) == _bits(bounds.corollary11_penalty(w, u, 1.0, 0.5))


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_unmixed_non_finite_targets_leave_the_other_estimators_bit_for_bit(bad):
    """``empirical_penalty`` and ``second_order_penalty`` read ``u`` only where they mix (``w`` everywhere:
    the loss is evaluated there)."""
    loss, W, U = _least_squares_problem()
    mask = torch.tensor([[True, False, True]]).expand(2, 3)
    U_bad = torch.where(mask, U, bad)
    for level in ("neuron", "parameter"):
        assert second_order.second_order_penalty(loss, W, U_bad, 0.3, mask, level) == (
            second_order.second_order_penalty(loss, W, U, 0.3, mask, level)
        )
    batched = lambda Ws: torch.stack([loss(x) for x in Ws])  # noqa: E731
    for p in (0.0, 0.3):
        est = penalty.empirical_penalty(batched, W, U_bad, p, 64, generator=0, mixed=mask)
        assert est == penalty.empirical_penalty(batched, W, U, p, 64, generator=0, mixed=mask)

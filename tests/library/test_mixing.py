"""Tests of the functional mixout operator (mixout_theory.mixing), eq. 4, 5 and 8 of Lee, Cho, Kang
(ICLR 2020). Monte Carlo checks use fixed seeds and a 4.5-standard-error band computed from the exact
variance ``p / (1 - p) (w - u)^2`` (two-sided normal tail 6.8e-6 per coordinate)."""

from __future__ import annotations

import math

import pytest
import torch

from mixout_theory import mixing
from mixout_theory.mixing import (
    check_p,
    mixconnect,
    mixout,
    mixout_authors,
    mixout_sgd,
    mixture,
    mixture_variance,
    neuron_mask,
    parameter_mask,
    sample_mixtures,
)

Z = 4.5  # standard errors allowed for a Monte Carlo mean
# A kept coordinate, lerp(u, w, 1/q) (mixing.mixed_weight) against u + (w - u) / q: two float64 formulas,
# each 2-3 roundings of intermediates up to |u| + |w - u| / q ~ 20 for these N(0, 1) draws
# (ulp(16) = 3.6e-15), and 2w - u can cancel, so the error is absolute: a few ulp of the operands, not of
# the result.
KEPT_ATOL = 1e-14
OPS = [mixout, mixconnect, mixout_authors]


@pytest.fixture
def wu(gen):
    """``wu(shape=(6, 8), seed=0, dtype=float64)``: a seeded weight ``w`` and target ``u``."""

    def make(shape=(6, 8), seed=0, dtype=torch.float64):
        g = gen(seed)
        w = torch.randn(shape, generator=g, dtype=dtype)
        u = torch.randn(shape, generator=g, dtype=dtype)
        return w, u

    return make


# --------------------------------------------------------------------------- unbiasedness, E Phi = w


def var_tolerance(p: float, n: int) -> float:
    """Band for |s^2 / Var - 1| of n scaled-Bernoulli draws: Z first-order standard errors,
    sqrt((kurt - 1) / n) with kurt = (1 - 3pq) / (pq), q = 1 - p, plus the second-order term
    ((Xbar - mu)^2 / Var <= Z^2 / n, and the n / (n - 1) factor) that remains at p = 1/2."""
    pq = p * (1 - p)
    return Z * math.sqrt(max((1 - 3 * pq) / pq - 1, 0.0) / n) + (Z**2 + 1) / n


@pytest.mark.parametrize("op", [mixout, mixconnect], ids=["mixout", "mixconnect"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_unbiased_monte_carlo(gen, wu, op, p):
    w, u = wu()
    w[0, 0] = u[0, 0]  # a coordinate with w == u has zero variance: the mean is exact there
    n = 6000
    g = gen(1)
    draws = torch.stack([op(w, u, p, generator=g) for _ in range(n)])
    se = (mixing.mixture_variance(w, u, p) / n).sqrt()
    err = (draws.mean(0) - w).abs()
    assert torch.all(err <= Z * se + 1e-12), (err / se).max()
    assert err[0, 0] < 1e-12
    var = draws.var(0)[1:, 1:]
    exact = mixture_variance(w, u, p)[1:, 1:]
    assert torch.all((var / exact - 1).abs() <= var_tolerance(p, n))


@pytest.mark.parametrize("level", ["neuron", "parameter"])
def test_sample_mixtures_unbiased_and_right_variance(gen, wu, level):
    w, u = wu((5, 7, 2), seed=3)
    p, n = 0.6, 40000
    draws = sample_mixtures(w, u, p, n, level=level, generator=gen(2))
    assert draws.shape == (n, 5, 7, 2)
    se = (mixture_variance(w, u, p) / n).sqrt()
    assert torch.all((draws.mean(0) - w).abs() <= Z * se)
    assert torch.all((draws.var(0) / mixture_variance(w, u, p) - 1).abs() <= var_tolerance(p, n))
    # every draw is an eq. 4 mixture: each coordinate is u or u + (w-u)/(1-p)
    mixed = draws == u
    kept = torch.isclose(draws, u + (w - u) / (1 - p), rtol=1e-12, atol=1e-12)
    assert torch.all(mixed ^ kept)
    if level == "neuron":  # mixed as whole columns (dims 0 and 2 share the mask)
        assert torch.all(mixed.all(dim=(1, 3)) | kept.all(dim=(1, 3)))


def test_sample_mixtures_edges_and_errors(wu):
    w, u = wu()
    assert torch.equal(sample_mixtures(w, u, 0.0, 3), w.expand(3, *w.shape))
    assert torch.equal(sample_mixtures(w, u, 1.0, 3), u.expand(3, *w.shape))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must"):
            sample_mixtures(w, u, 0.5, bad)
    with pytest.raises(ValueError, match="level"):
        sample_mixtures(w, u, 0.5, 2, level="column")


def test_mixture_variance_closed_form(wu):
    w, u = wu()
    p = 0.3
    assert torch.allclose(mixture_variance(w, u, p), (w - u) ** 2 * p / (1 - p), rtol=1e-15)
    assert torch.equal(mixture_variance(w, None, 0.0), torch.zeros_like(w))
    v1 = mixture_variance(w, u, 1.0)
    assert torch.isinf(v1).all()
    w2 = w.clone()
    w2[0] = u[0]
    assert torch.all(mixture_variance(w2, u, 1.0)[0] == 0)


def test_mixture_generic_mask_and_bad_mu(gen, wu):
    w, u = wu()
    m = torch.rand(w.shape, generator=gen(0), dtype=w.dtype)
    assert torch.allclose(mixture(w, u, m, 0.7), ((1 - m) * u + m * w - 0.3 * u) / 0.7, rtol=1e-12)
    for bad in (0.0, -0.5):
        with pytest.raises(ValueError, match="mu"):
            mixture(w, u, m, bad)


# ------------------------------------------------------------------------------------ mask structure


@pytest.mark.parametrize("shape", [(5, 9), (4, 9, 3), (4, 9, 2, 2)])
def test_mixout_whole_columns_are_u_or_kept(gen, wu, shape):
    w, u = wu(shape, seed=4)
    p = 0.5
    q = 1 - p
    other = tuple(d for d in range(len(shape)) if d != 1)
    seen_mixed = seen_kept = 0
    for s in range(20):
        phi = mixout(w, u, p, generator=gen(s))
        mixed = (phi == u).all(dim=other)  # exactly u, bit for bit
        kept = torch.isclose(phi, u + (w - u) / q, rtol=1e-13, atol=KEPT_ATOL).all(dim=other)
        assert torch.all(mixed ^ kept)
        seen_mixed += int(mixed.sum())
        seen_kept += int(kept.sum())
    assert seen_mixed > 0 and seen_kept > 0


def test_one_dimensional_weight_one_value_per_element(gen, wu):
    w, u = wu((4000,), seed=5)
    p = 0.3
    phi = mixout(w, u, p, generator=gen(0))
    mixed = phi == u
    kept = torch.isclose(phi, u + (w - u) / (1 - p), rtol=1e-13, atol=KEPT_ATOL)
    assert torch.all(mixed ^ kept)
    se = math.sqrt(p * (1 - p) / w.numel())
    assert abs(mixed.double().mean().item() - p) <= Z * se
    assert neuron_mask(w, p).shape == (4000,)
    assert neuron_mask(torch.tensor(1.0), p).shape == ()


def test_mixconnect_masks_are_independent_per_parameter(gen, wu):
    w, u = wu((60, 6), seed=6)
    p = 0.5
    phi = mixconnect(w, u, p, generator=gen(0))
    mixed = phi == u
    assert torch.all(mixed | torch.isclose(phi, u + (w - u) / (1 - p), rtol=1e-13, atol=KEPT_ATOL))
    partly = mixed.any(0) & ~mixed.all(0)
    assert partly.all()  # P(a 60-entry column is all kept or all mixed) = 2^-59
    assert parameter_mask(w, p).shape == w.shape


@pytest.mark.parametrize("p", [0.1, 0.45, 0.9])
def test_empirical_keep_rate(gen, p):
    w = torch.zeros(3, 500, dtype=torch.float64)
    g = gen(7)
    masks = torch.stack([neuron_mask(w, p, g) for _ in range(40)])
    assert masks.shape == (40, 1, 500)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    n = masks.numel()
    assert abs(masks.mean().item() - (1 - p)) <= Z * math.sqrt(p * (1 - p) / n)
    pm = torch.stack([parameter_mask(w, p, g) for _ in range(20)])
    n = pm.numel()
    assert abs(pm.mean().item() - (1 - p)) <= Z * math.sqrt(p * (1 - p) / n)


def test_mixout_mask_matches_neuron_mask_with_same_seed(gen, wu):
    w, u = wu()
    p = 0.4
    mask = neuron_mask(w, p, gen(11))
    assert torch.equal(mixout(w, u, p, generator=gen(11)), mixture(w, u, mask, 1 - p))
    pmask = parameter_mask(w, p, gen(11))
    assert torch.equal(mixconnect(w, u, p, generator=gen(11)), mixture(w, u, pmask, 1 - p))


# -------------------------------------------------------------------------------- dropout = mixout(0,p)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_is_mixout_towards_zero(gen, wu, p):
    w, _ = wu((7, 10), seed=8)
    mask = neuron_mask(w, p, gen(3))
    phi = mixout(w, None, p, generator=gen(3))
    # inverted dropout of the input columns: w times the scaled mask s = mask / (1 - p), bit for bit
    # (mixing.mixed_weight with u = None is w * s) ...
    assert torch.equal(phi, w * (mask / (1 - p)))
    assert torch.equal(phi, mixing.mixed_weight(w, None, mask / (1 - p)))
    # ... which is the textbook (w * mask) / (1 - p) up to the rounding of 1 / (1 - p)
    torch.testing.assert_close(phi, w * mask / (1 - p), rtol=1e-15, atol=0)
    # mixout towards an explicit zero target is lerp(0, w, s), another formula than w * s: float64, one
    # rounding (w * s, or lerp with an FMA) vs two (w + (s - 1) w without one: ATEN_CPU_CAPABILITY=default,
    # a CPU without FMA); same signs, no cancellation, zeros stay exactly zero => <= 2 ulp: rtol 1e-15
    # (4.5 ulp)
    torch.testing.assert_close(phi, mixout(w, torch.zeros_like(w), p, generator=gen(3)), rtol=1e-15, atol=0)
    # on a batch: linear(x, Phi) == linear(inverted-dropout(x) with the same mask, w)
    x = torch.randn(5, 10, generator=gen(4), dtype=w.dtype)
    y1 = torch.nn.functional.linear(x, phi)
    y2 = torch.nn.functional.linear(x * mask / (1 - p), w)
    assert torch.allclose(y1, y2, rtol=1e-12, atol=1e-12)
    # dropconnect(p) = mixconnect(0, p)
    pmask = parameter_mask(w, p, gen(3))
    assert torch.equal(mixconnect(w, None, p, generator=gen(3)), w * (pmask / (1 - p)))
    torch.testing.assert_close(
        mixconnect(w, None, p, generator=gen(3)), w * pmask / (1 - p), rtol=1e-15, atol=0
    )


# ------------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("op", [mixout, mixconnect], ids=["mixout", "mixconnect"])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.7, 1.0])
def test_gradcheck(gen, wu, op, p):
    w, u = wu((4, 5), seed=9)
    w.requires_grad_(True)
    x = torch.randn(3, 5, generator=gen(1), dtype=torch.float64)

    def f(weight):  # a fresh, identically seeded generator: the same mask at every evaluation
        return torch.tanh(x @ op(weight, u, p, generator=gen(5)).T)

    assert torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradgradcheck(f, (w,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_authors_backward_is_not_the_derivative(gen, wu):
    w, u = wu((4, 5), seed=9)
    w.requires_grad_(True)

    def f(weight):
        return mixout_authors(weight, u, 0.5, generator=gen(5))

    assert not torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-8, rtol=1e-6, raise_exception=False)


@pytest.mark.parametrize("op", [mixout, mixconnect], ids=["mixout", "mixconnect"])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_gradient_is_mask_over_one_minus_p_exactly(gen, wu, op, p):
    w, u = wu((6, 9), seed=10)
    w.requires_grad_(True)
    u.requires_grad_(True)  # a target that asks for a gradient never gets one
    make = neuron_mask if op is mixout else parameter_mask
    mask = make(w, p, gen(12))
    grad_out = torch.randn(w.shape, generator=gen(13), dtype=w.dtype)
    op(w, u, p, generator=gen(12)).backward(grad_out)
    # exactly the incoming gradient times the scaled mask s = mask / (1 - p) the operator mixes with
    assert torch.equal(w.grad, grad_out * (mask / (1 - p)))
    torch.testing.assert_close(w.grad, grad_out * mask / (1 - p), rtol=1e-15, atol=0)
    assert u.grad is None


def test_authors_forward_equal_backward_is_mask(gen, wu):
    w, u = wu((6, 9), seed=10)
    p = 0.6
    w1 = w.clone().requires_grad_(True)
    w2 = w.clone().requires_grad_(True)
    grad_out = torch.randn(w.shape, generator=gen(13), dtype=w.dtype)
    y1 = mixout(w1, u, p, generator=gen(3))
    y2 = mixout_authors(w2, u, p, generator=gen(3))
    assert torch.equal(y1, y2)
    y1.backward(grad_out)
    y2.backward(grad_out)
    mask = neuron_mask(w, p, gen(3))
    assert torch.equal(w2.grad, grad_out * mask)
    assert torch.allclose(w2.grad, (1 - p) * w1.grad, rtol=1e-15, atol=0)


@pytest.mark.parametrize("op", OPS)
def test_no_gradient_into_target(gen, wu, op):
    for p in (0.0, 0.5, 1.0):
        w, u = wu(seed=14)
        w.requires_grad_(True)
        u.requires_grad_(True)
        op(w, u, p, generator=gen(0)).sum().backward()
        assert u.grad is None
        assert w.grad is not None


# ----------------------------------------------------------------------------------- p == 0, 1; eval


@pytest.mark.parametrize("op", OPS)
def test_identity_when_p_zero_or_eval(wu, op):
    w, u = wu(seed=15)
    assert op(w, u, 0.0) is w
    assert op(w, u, 0.7, training=False) is w
    assert op(w, None, 0.7, False) is w
    state = torch.random.get_rng_state()
    op(w, u, 0.0)
    op(w, u, 0.7, training=False)
    assert torch.equal(state, torch.random.get_rng_state())  # no mask drawn


@pytest.mark.parametrize("op", OPS)
def test_p_one_gives_target_and_zero_gradient(wu, op):
    w, u = wu(seed=16)
    w[0, 0] = float("inf")  # even a non-finite weight leaves no trace
    w.requires_grad_(True)
    out = op(w, u, 1.0)
    assert torch.equal(out, u)
    out.backward(torch.ones_like(out))
    assert torch.equal(w.grad, torch.zeros_like(w))
    assert torch.equal(op(w, None, 1.0), torch.zeros_like(w))


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), -float("inf")])
def test_bad_p_value(wu, op, bad):
    w, u = wu()
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\], got p=" + repr(bad)):
        op(w, u, bad)
    with pytest.raises(ValueError):
        op(w, u, bad, training=False)  # validated even when nothing is mixed


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad", ["0.5", None, True, [0.3], torch.tensor([0.1, 0.2]), 1j])
def test_bad_p_type(wu, op, bad):
    w, u = wu()
    with pytest.raises(TypeError, match="p must be"):
        op(w, u, bad)


def test_check_p_accepts_numbers():
    import numpy as np

    assert check_p(0) == 0.0 and check_p(1) == 1.0
    assert check_p(np.float32(0.25)) == 0.25
    assert check_p(torch.tensor(0.5)) == 0.5
    assert isinstance(check_p(torch.tensor([0.5])), float)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("tshape", [(8, 6), (1, 8), (6,), (6, 8, 1)])
def test_target_shape_mismatch_never_broadcast(op, tshape):
    w = torch.randn(6, 8)
    with pytest.raises(ValueError) as e:
        op(w, torch.zeros(tshape), 0.5)
    assert str(tuple(tshape)) in str(e.value) and "(6, 8)" in str(e.value)


def test_weight_must_be_tensor():
    with pytest.raises(TypeError, match="weight"):
        mixout([[1.0, 2.0]], None, 0.5)


def test_weight_must_be_tensor_with_a_target():
    with pytest.raises(TypeError, match="weight"):
        mixout([[1.0, 2.0]], torch.zeros(1, 2), 0.5)


# ------------------------------------------------------------------------------------- mixout_linear


@pytest.mark.parametrize("target_kind", ["w_pre", "origin"])
def test_mixout_linear_equals_the_composition(gen, target_kind):
    """What MixLinear runs: bit for bit ``F.linear(x, mixing.mixout(w, u, p), b)`` (the same mask, the
    same mixed weight, so the same output and the same exact gradient), a mixed column exactly
    ``u``; first and second derivatives in ``x``, ``w`` and ``b`` pass gradcheck, for 2-D and 3-D inputs."""
    DT = torch.float64
    F = torch.nn.functional
    g = gen(3)
    w = torch.randn(7, 11, generator=g, dtype=DT)
    u = None if target_kind == "origin" else torch.randn(7, 11, generator=g, dtype=DT)
    b = torch.randn(7, generator=g, dtype=DT)
    for x in (torch.randn(5, 11, generator=g, dtype=DT), torch.randn(2, 3, 11, generator=g, dtype=DT)):
        for p in (0.1, 0.3, 0.7):
            w1, w2 = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
            x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            fused = mixing.mixout_linear(x1, w1, b, u, p, generator=gen(9))
            ref = F.linear(x2, mixing.mixout(w2, u, p, generator=gen(9)), b)
            torch.testing.assert_close(fused, ref, rtol=1e-14, atol=1e-14)
            assert torch.equal(fused, ref)  # bit for bit: one implementation (mixing.mixed_weight)
            fused.pow(2).sum().backward()
            ref.pow(2).sum().backward()
            torch.testing.assert_close(w1.grad, w2.grad, rtol=0, atol=1e-12)
            torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-12)
            assert torch.equal(w1.grad, w2.grad) and torch.equal(x1.grad, x2.grad)
            mask = mixing.neuron_mask(w, p, generator=gen(9))[0]
            assert torch.equal(w1.grad[:, mask == 0], torch.zeros(7, int((mask == 0).sum()), dtype=DT))
            # one-hot inputs read the mixed weight's columns: a mixed column is exactly u's
            phi_t = mixing.mixout_linear(torch.eye(11, dtype=DT), w, None, u, p, generator=gen(9))
            assert torch.equal(phi_t[mask == 0], (torch.zeros_like(w) if u is None else u).t()[mask == 0])
            if p == 0.7:  # P(no column mixed) = 0.3^11: some column gets no gradient at all
                assert (mask == 0).any()
        args = (
            x.clone().requires_grad_(True),
            w.clone().requires_grad_(True),
            b.clone().requires_grad_(True),
        )

        def f(xv, wv, bv):
            return mixing.mixout_linear(xv, wv, bv, u, 0.4, generator=gen(1)).tanh()

        assert torch.autograd.gradcheck(f, args)
        assert torch.autograd.gradgradcheck(f, args)
    from mixout_theory.modules import MixLinear

    lin = MixLinear(11, 7, p=0.4, target=u).double()
    lin.generator = gen(2)
    out = lin(x)
    ref = mixing.mixout(lin.weight, lin.target, 0.4, generator=gen(2))
    torch.testing.assert_close(out, F.linear(x, ref, lin.bias), rtol=1e-14, atol=1e-14)
    assert torch.equal(out, F.linear(x, ref, lin.bias))


# ------------------------------------------------------------------------------ dtype, device, seeds


@pytest.mark.parametrize("op", OPS)
def test_target_cast_to_weight_dtype(gen, op):
    w = torch.randn(5, 6, generator=gen(0), dtype=torch.float64)
    u32 = torch.randn(5, 6, generator=gen(1), dtype=torch.float32)
    phi = op(w, u32, 0.5, generator=gen(2))
    assert phi.dtype == torch.float64
    mask = neuron_mask(w, 0.5, gen(2)) if op is not mixconnect else parameter_mask(w, 0.5, gen(2))
    assert torch.equal(phi, mixture(w, u32.double(), mask, 0.5))
    assert torch.equal(op(w, u32, 1.0), u32.double())
    # float16 weight, float64 target
    h = w.half()
    assert op(h, u32.double(), 0.5, generator=gen(2)).dtype == torch.float16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("op", OPS)
def test_target_moved_to_weight_device(op):
    w = torch.randn(5, 6, device="cuda", dtype=torch.float64)
    u = torch.randn(5, 6, dtype=torch.float32)  # CPU
    g = torch.Generator(device="cuda").manual_seed(0)
    phi = op(w, u, 0.5, generator=g)
    assert phi.device == w.device and phi.dtype == w.dtype
    assert torch.equal(op(w, u, 1.0), u.to("cuda", torch.float64))
    mixed = phi == u.to("cuda", torch.float64)
    kept = torch.isclose(phi, u.to("cuda", torch.float64) + (w - u.to("cuda", torch.float64)) / 0.5)
    assert torch.all(mixed | kept)


@pytest.mark.parametrize("op", OPS)
def test_determinism_with_seeded_generator(gen, wu, op):
    w, u = wu((10, 30), seed=17)
    a = op(w, u, 0.5, generator=gen(123))
    b = op(w, u, 0.5, generator=gen(123))
    c = op(w, u, 0.5, generator=gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # P(equal masks) = 2^-30 for mixout
    torch.manual_seed(5)
    d = op(w, u, 0.5)
    torch.manual_seed(5)
    assert torch.equal(d, op(w, u, 0.5))  # the global generator is used when none is given


# ------------------------------------------------------------------------------------ SGD comparison


def _least_squares(gen, seed=0, n=40, d_in=6, d_out=3):
    g = gen(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    w_true = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    y = x @ w_true.T + 0.1 * torch.randn(n, d_out, generator=g, dtype=torch.float64)
    u = w_true + 0.5 * torch.randn(d_out, d_in, generator=g, dtype=torch.float64)

    def loss(weight):
        return 0.5 * ((x @ weight.T - y) ** 2).sum(1).mean()

    return loss, u


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_authors_sgd_equals_exact_sgd_with_scaled_lr(gen, p):
    loss, u = _least_squares(gen)
    lr, steps = 0.05, 60
    a = mixout_sgd(loss, u, u, p, lr, steps, backward="authors", seed=3)
    e = mixout_sgd(loss, u, u, p, lr * (1 - p), steps, backward="exact", seed=3)
    e_full = mixout_sgd(loss, u, u, p, lr, steps, backward="exact", seed=3)
    assert torch.equal(a.masks, e.masks) and torch.equal(a.masks, e_full.masks)
    assert a.weights.shape == (steps + 1, 3, 6) and a.losses.shape == (steps,)
    assert torch.allclose(a.weights, e.weights, rtol=1e-10, atol=1e-12)
    assert torch.allclose(a.losses, e.losses, rtol=1e-10, atol=1e-12)
    # first step: the updates differ exactly by the factor (1 - p)
    da = a.weights[1] - a.weights[0]
    de = e_full.weights[1] - e_full.weights[0]
    assert torch.allclose(da, (1 - p) * de, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(a.weights[-1], e_full.weights[-1], rtol=1e-3)


def test_mixout_sgd_matches_hand_written_update(gen):
    loss, u = _least_squares(gen, seed=1)
    p, lr = 0.4, 0.1
    w0 = u + 0.3
    path = mixout_sgd(loss, w0, u, p, lr, 2, seed=9)
    g = gen(9)
    w = w0.clone()
    for k in range(2):
        mask = neuron_mask(w, p, g)
        assert torch.equal(mask, path.masks[k])
        w = w.clone().requires_grad_(True)
        phi = u + mask * (w - u) / (1 - p)
        loss(phi).backward()
        w = (w - lr * w.grad).detach()
        assert torch.allclose(path.weights[k + 1], w, rtol=1e-14, atol=1e-15)
    # p = 0 is plain gradient descent, both backwards alike
    a = mixout_sgd(loss, w0, u, 0.0, lr, 5, backward="authors")
    e = mixout_sgd(loss, w0, u, 0.0, lr, 5, backward="exact")
    assert torch.equal(a.weights, e.weights)
    assert torch.all(a.masks == 1)


def test_mixout_sgd_bad_arguments(gen):
    loss, u = _least_squares(gen)
    with pytest.raises(ValueError, match="backward"):
        mixout_sgd(loss, u, u, 0.5, backward="adam")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr"):
            mixout_sgd(loss, u, u, 0.5, lr=bad)
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="steps"):
            mixout_sgd(loss, u, u, 0.5, steps=bad)
    with pytest.raises(ValueError, match="p must lie"):
        mixout_sgd(loss, u, u, 1.2)
    empty = mixout_sgd(loss, u, u, 0.5, steps=0)
    assert empty.weights.shape == (1, 3, 6) and empty.losses.numel() == 0

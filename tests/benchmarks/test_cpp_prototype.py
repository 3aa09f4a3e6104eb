"""Tests of the optional C++ mixout operator (mixout_theory.kernels, ``MixLinear(kernel="cpp")``):
the same mask as mixing.neuron_mask, the output and gradients of the PyTorch path to rounding,
exact first and second derivatives. Skipped where the operator cannot be built (no C++ compiler
or ninja); the error path is tested everywhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixout_theory import kernels, mixing
from mixout_theory.modules import MixLinear

needs_build = pytest.mark.skipif(not kernels.available(), reason="the C++ operator cannot be built here")
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@needs_build
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("target_kind", ["w_pre", "origin"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_cpp_operator_equals_the_torch_path(dtype, target_kind, with_bias):
    g = gen(0)
    w = torch.randn(7, 11, generator=g, dtype=dtype)
    u = None if target_kind == "origin" else torch.randn(7, 11, generator=g, dtype=dtype)
    b = torch.randn(7, generator=g, dtype=dtype) if with_bias else None
    for x in (torch.randn(5, 11, generator=g, dtype=dtype), torch.randn(2, 3, 11, generator=g, dtype=dtype)):
        for p in (0.1, 0.5, 0.9):
            w1, w2 = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
            x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            out = kernels.mixout_linear(x1, w1, b, u, p, gen(7))
            ref = F.linear(x2, mixing.mixout(w2, u, p, generator=gen(7)), b)
            assert out.shape == ref.shape
            torch.testing.assert_close(out, ref, **TOL[dtype])
            (out.pow(2).sum()).backward()
            (ref.pow(2).sum()).backward()
            torch.testing.assert_close(w1.grad, w2.grad, **TOL[dtype])
            torch.testing.assert_close(x1.grad, x2.grad, **TOL[dtype])
            # the same mask: one-hot inputs read the mixed weight, a mixed column exactly u
            mask = mixing.neuron_mask(w, p, generator=gen(7))[0]
            phi_t = kernels.mixout_linear(torch.eye(11, dtype=dtype), w, None, u, p, gen(7))
            expect = mixing.mixout(w, u, p, generator=gen(7)).t()
            torch.testing.assert_close(phi_t, expect, **TOL[dtype])
            assert torch.equal(phi_t[mask == 0], (torch.zeros_like(w) if u is None else u).t()[mask == 0])
            assert torch.equal(w1.grad[:, mask == 0], torch.zeros_like(w1.grad[:, mask == 0]))


@needs_build
@pytest.mark.parametrize("target_kind", ["w_pre", "origin"])
def test_cpp_operator_first_and_second_derivatives(target_kind):
    g = gen(1)
    u = None if target_kind == "origin" else torch.randn(4, 6, generator=g, dtype=torch.float64)
    args = tuple(torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True) for s in ((3, 6), (4, 6), (4,)))

    def f(x, w, b):
        return kernels.mixout_linear(x, w, b, u, 0.4, gen(2)).tanh()

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@needs_build
def test_mixlinear_cpp_kernel_trains_like_the_torch_kernel():
    """Same generator seed, same masks: a few SGD steps of both kernels end at the same weights (to
    rounding); eval mode and other dtypes take the PyTorch path."""
    torch.manual_seed(0)
    a = MixLinear(20, 5, p=0.3, target=torch.randn(5, 20)).double()
    c = MixLinear(20, 5, p=0.3, target=a.target.clone(), kernel="cpp").double()
    c.load_state_dict(a.state_dict())
    a.generator, c.generator = gen(3), gen(3)
    x = torch.randn(8, 20, dtype=torch.float64)
    for layer in (a, c):
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        for _ in range(5):
            opt.zero_grad()
            layer(x).pow(2).mean().backward()
            opt.step()
    torch.testing.assert_close(c.weight, a.weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c.bias, a.bias, rtol=1e-12, atol=1e-12)
    assert "kernel=cpp" in repr(c)
    c.eval()
    assert torch.equal(c(x), F.linear(x, c.weight, c.bias))
    half = MixLinear(20, 5, p=0.3, kernel="cpp").bfloat16()
    assert half(x.bfloat16()).dtype == torch.bfloat16


def test_kernel_choice_is_checked_and_a_failed_build_is_reported(monkeypatch):
    with pytest.raises(ValueError, match="kernel must be one of"):
        MixLinear(4, 3, p=0.5, kernel="cuda")
    m = MixLinear(4, 3, p=0.5)
    with pytest.raises(ValueError, match="kernel must be one of"):
        m.kernel = "fast"
    assert m.kernel == "torch"
    monkeypatch.setattr(kernels, "_state", {"error": OSError("no C++ compiler")})
    assert not kernels.available()
    with pytest.raises(RuntimeError, match="could not be built here: no C\\+\\+ compiler"):
        MixLinear(4, 3, p=0.5, kernel="cpp")
    with pytest.raises(RuntimeError, match="could not be built"):
        m.kernel = "cpp"
    assert m.kernel == "torch"


@needs_build
def test_cpp_operator_rejects_bad_input_instead_of_reading_out_of_bounds():
    w = torch.randn(4, 6)
    with pytest.raises(RuntimeError, match="target must have the weight's shape"):
        kernels.mixout_linear(torch.randn(3, 6), w, None, torch.randn(6, 4), 0.5)
    with pytest.raises(RuntimeError, match="x must be a CPU tensor"):
        kernels.mixout_linear(torch.randn(3, 5), w, None, None, 0.5)
    with pytest.raises(RuntimeError, match="x must be a CPU tensor"):
        kernels.mixout_linear(torch.randn(3, 6, dtype=torch.float64), w, None, None, 0.5)
    with pytest.raises(RuntimeError, match="p must be in"):
        kernels.mixout_linear(torch.randn(3, 6), w, None, None, 1.0)

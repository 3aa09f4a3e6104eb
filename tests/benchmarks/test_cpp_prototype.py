"""Tests of the measured C++ prototype of the mixout linear layer (``benchmarks/cpp_prototype``, not
part of the package): the same mask as mixing.neuron_mask, the output and gradients of the library's
:func:`mixout_theory.mixing.mixout_linear` to rounding, exact first and second derivatives, and its
benchmark layer ``CppMixLinear``. Skipped where the operator cannot be built (no C++ compiler or
ninja); the error path is tested everywhere.

The prototype is imported by its path (it is no package of the project), under a name of its own.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixout_theory import mixing
from mixout_theory.modules import MixLinear

PROTOTYPE = Path(__file__).resolve().parents[2] / "benchmarks" / "cpp_prototype"


def _import_prototype():
    name = "mixout_cpp_prototype_kernels"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PROTOTYPE / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


kernels = _import_prototype()
needs_build = pytest.mark.skipif(not kernels.available(), reason="the C++ operator cannot be built here")
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def test_prototype_builds_from_the_source_beside_it():
    assert kernels.SOURCE == PROTOTYPE / "mixout_linear.cpp" and kernels.SOURCE.is_file()
    assert not hasattr(mixing, "_mixout_linear")  # the library has one mixout_linear, the composition


@needs_build
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("target_kind", ["w_pre", "origin"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_cpp_operator_equals_the_torch_path(gen, dtype, target_kind, with_bias):
    g = gen(0)
    w = torch.randn(7, 11, generator=g, dtype=dtype)
    u = None if target_kind == "origin" else torch.randn(7, 11, generator=g, dtype=dtype)
    b = torch.randn(7, generator=g, dtype=dtype) if with_bias else None
    for x in (torch.randn(5, 11, generator=g, dtype=dtype), torch.randn(2, 3, 11, generator=g, dtype=dtype)):
        for p in (0.1, 0.5, 0.9):
            w1, w2, w3 = (w.clone().requires_grad_(True) for _ in range(3))
            x1, x2, x3 = (x.clone().requires_grad_(True) for _ in range(3))
            out = kernels.mixout_linear(x1, w1, b, u, p, gen(7))
            ref = mixing.mixout_linear(x2, w2, b, u, p, generator=gen(7))
            assert torch.equal(ref, F.linear(x2, mixing.mixout(w2, u, p, generator=gen(7)), b))
            # the prototype's own formula, Phi = u + s (w - u) with s = B / (1 - p) (the library's
            # mixed_weight computes the same Phi as lerp(u, w, s): equal to rounding, not bit for bit)
            s_mask = mixing.neuron_mask(w, p, generator=gen(7)) / (1 - p)
            own = F.linear(x3, w3 * s_mask if u is None else u + s_mask * (w3 - u), b)
            assert out.shape == ref.shape
            torch.testing.assert_close(out, ref, **TOL[dtype])
            assert torch.equal(out, own)
            (out.pow(2).sum()).backward()
            (ref.pow(2).sum()).backward()
            (own.pow(2).sum()).backward()
            torch.testing.assert_close(w1.grad, w2.grad, **TOL[dtype])
            torch.testing.assert_close(w1.grad, w3.grad, **TOL[dtype])
            assert torch.equal(x1.grad, x3.grad)
            if dtype == torch.float64:
                torch.testing.assert_close(x1.grad, x2.grad, **TOL[dtype])
            else:  # float32: an ulp of Phi times |dL/dy| can exceed 1e-5 relative in this gradient
                torch.testing.assert_close(x1.grad.double(), x2.grad.double(), rtol=1e-4, atol=1e-4)
            # the same mask: one-hot inputs read the mixed weight, a mixed column exactly u
            mask = mixing.neuron_mask(w, p, generator=gen(7))[0]
            phi_t = kernels.mixout_linear(torch.eye(11, dtype=dtype), w, None, u, p, gen(7))
            expect = mixing.mixout(w, u, p, generator=gen(7)).t()
            torch.testing.assert_close(phi_t, expect, **TOL[dtype])
            assert torch.equal(phi_t[mask == 0], (torch.zeros_like(w) if u is None else u).t()[mask == 0])
            assert torch.equal(w1.grad[:, mask == 0], torch.zeros_like(w1.grad[:, mask == 0]))


@needs_build
@pytest.mark.parametrize("target_kind", ["w_pre", "origin"])
def test_cpp_operator_first_and_second_derivatives(gen, target_kind):
    g = gen(1)
    u = None if target_kind == "origin" else torch.randn(4, 6, generator=g, dtype=torch.float64)
    args = tuple(torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True) for s in ((3, 6), (4, 6), (4,)))

    def f(x, w, b):
        return kernels.mixout_linear(x, w, b, u, 0.4, gen(2)).tanh()

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@needs_build
def test_cpp_layer_trains_like_mixlinear(gen):
    """Same generator seed, same masks: a few SGD steps of the prototype's layer and of the library's
    MixLinear end at the same weights (to rounding); eval mode and other dtypes take MixLinear's path."""
    torch.manual_seed(0)
    a = MixLinear(20, 5, p=0.3, target=torch.randn(5, 20)).double()
    c = kernels.CppMixLinear(20, 5, p=0.3, target=a.target.clone()).double()
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
    assert repr(c).startswith("CppMixLinear(") and "p=0.3" in repr(c)
    c.eval()
    assert torch.equal(c(x), F.linear(x, c.weight, c.bias))
    half = kernels.CppMixLinear(20, 5, p=0.3).bfloat16()
    assert half(x.bfloat16()).dtype == torch.bfloat16


def test_a_failed_build_is_reported(monkeypatch):
    monkeypatch.setattr(kernels, "_state", {"error": OSError("no C++ compiler")})
    assert not kernels.available()
    with pytest.raises(RuntimeError, match="could not be built here: no C\\+\\+ compiler"):
        kernels.load()
    with pytest.raises(RuntimeError, match="could not be built"):
        kernels.mixout_linear(torch.randn(3, 4), torch.randn(2, 4), None, None, 0.5)
    layer = kernels.CppMixLinear(4, 2, p=0.5)
    with pytest.raises(RuntimeError, match="could not be built"):
        layer(torch.randn(3, 4))
    layer.eval()  # eval mode never needs the operator
    assert layer(torch.randn(3, 4)).shape == (3, 2)


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

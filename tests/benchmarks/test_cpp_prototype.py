"""Tests of the measured C++ prototype of the mixout linear layer (``benchmarks/cpp_prototype``, not
part of the package): the same mask as mixing.neuron_mask, the output and gradients of the library's
:func:`mixout_theory.mixing.mixout_linear` to rounding, exact first and second derivatives, and its
benchmark layer ``CppMixLinear``. Skipped where the operator cannot be built (no C++ compiler or
ninja); the error path is tested everywhere. The tests that need the operator are marked ``slow``: the
first build takes about 40 s (then torch's cache under ``~/.cache/torch_extensions``), and it happens
when the first of them runs, never at collection, so ``-m "not slow"`` builds nothing.

The prototype computes ``Phi = u + s (w - u)`` in a compiled loop (target clones for AVX-512 / AVX2 /
baseline: the compiler may contract it into an FMA), torch's path as ``lerp`` or as separate kernels:
outputs and gradients agree to rounding (:func:`assert_rounding_close`), never assumed bit for bit.
Only what is exact by construction is compared exactly: a mixed column is ``u`` and gets no gradient.

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


@pytest.fixture(scope="module")
def built():
    """The operator built (about 40 s the first time), or the test skipped where it cannot be built."""
    if not kernels.available():
        pytest.skip("the C++ operator cannot be built here")


def needs_build(test):
    """A test of the compiled operator: ``slow`` (it may have to build it) and skipped where it cannot be
    built."""
    return pytest.mark.slow(pytest.mark.usefixtures("built")(test))


#: Ulps of the largest entry allowed between the prototype and torch's path (see assert_rounding_close).
ULPS = 32


def assert_rounding_close(actual, expected, ulps=ULPS):
    """Equal up to rounding, for two implementations of one computation. Each entry of Phi differs by at
    most a rounding or two (lerp, u + s (w - u) with or without an FMA); the output, dL/dw and dL/dx are
    sums of at most 11 products of such entries, so an entry's error is a few ulp of the tensor's largest
    entry, not of itself (sums cancel). Measured: <= 2.1 eps * max|expected| (float32 and float64, AVX2
    and ATEN_CPU_CAPABILITY=default); allowed: ``ulps`` eps of that scale, relative and absolute. A wrong
    mask changes entries by O(1) of the scale."""
    eps = torch.finfo(expected.dtype).eps
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(actual, expected, rtol=ulps * eps, atol=ulps * eps * scale)


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
            # bit for bit: mixing.mixout_linear is this very composition (same kernels, same inputs)
            assert torch.equal(ref, F.linear(x2, mixing.mixout(w2, u, p, generator=gen(7)), b))
            # the prototype's own formula, Phi = u + s (w - u) with s = B / (1 - p) (the library's
            # mixed_weight computes the same Phi as lerp(u, w, s): equal to rounding, not bit for bit)
            s_mask = mixing.neuron_mask(w, p, generator=gen(7)) / (1 - p)
            own = F.linear(x3, w3 * s_mask if u is None else u + s_mask * (w3 - u), b)
            assert out.shape == ref.shape
            # the prototype against the library's lerp and against its own formula run by torch's kernels
            # (not bit for bit either: the compiled loop may use an FMA where torch rounds twice)
            assert_rounding_close(out, ref)
            assert_rounding_close(out, own)
            (out.pow(2).sum()).backward()
            (ref.pow(2).sum()).backward()
            (own.pow(2).sum()).backward()
            assert_rounding_close(w1.grad, w2.grad)
            assert_rounding_close(w1.grad, w3.grad)
            assert_rounding_close(x1.grad, x3.grad)
            assert_rounding_close(x1.grad, x2.grad)
            # the same mask: one-hot inputs read the mixed weight, a mixed column exactly u
            mask = mixing.neuron_mask(w, p, generator=gen(7))[0]
            phi_t = kernels.mixout_linear(torch.eye(11, dtype=dtype), w, None, u, p, gen(7))
            expect = mixing.mixout(w, u, p, generator=gen(7)).t()
            assert_rounding_close(phi_t, expect)
            # exact by construction on any CPU: s = 0 there, so Phi = u + 0 (w - u) = u (FMA or not), the
            # identity's product reads it unchanged, and dL/dw = g^T (x * 0) = 0
            assert torch.equal(phi_t[mask == 0], (torch.zeros_like(w) if u is None else u).t()[mask == 0])
            assert torch.equal(w1.grad[:, mask == 0], torch.zeros_like(w1.grad[:, mask == 0]))


@needs_build
@pytest.mark.parametrize("target_kind", ["w_pre", "origin"])
def test_cpp_operator_first_and_second_derivatives(gen, target_kind):
    g = gen(1)
    u = None if target_kind == "origin" else torch.randn(4, 6, generator=g, dtype=torch.float64)
    args = tuple(
        torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True) for s in ((3, 6), (4, 6), (4,))
    )

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
    assert torch.equal(c(x), F.linear(x, c.weight, c.bias))  # eval: MixLinear's own F.linear, the same call
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

"""Tests of the mixout layers (mixout_theory.layers): every kind of layer, the same properties.

For each kind (Linear, GPT-2's Conv1D layout, Conv1d / grouped Conv2d / Conv3d, Embedding,
MultiheadAttention packed and with separate key / value sizes): evaluation and p = 0 are the plain
layer; a training forward is the plain layer run on the mixed weights (eq. 4); a neuron-level mask is
constant over each input unit's weights (eq. 8) and a parameter-level one is not; the mixed weights are
unbiased (5 sigma, exact variance); gradients are exact (gradcheck, float64); p and the level survive
state_dict / .half() / older checkpoints; torch.utils.checkpoint (both kinds) gives the gradients of the
plain run with the layer's own generator; and to_plain gives back the plain layer.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from mixout_theory.layers import (
    MixConv1D,
    MixConv1d,
    MixConv2d,
    MixConv3d,
    MixEmbedding,
    MixLinear,
    MixMultiheadAttention,
    may_be_recomputed,
)


class Conv1DLayout(nn.Module):
    """transformers' Conv1D as a plain module (weight ``(in, out)``), without transformers."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, self.nx), self.weight).view(*x.shape[:-1], self.nf)


def _conv1d_layout(plain):
    new = MixConv1D(plain.nf, plain.nx)
    new.weight, new.bias = plain.weight, plain.bias
    return new


# name: (plain layer, mixout class or converter, inputs, parameter paths)
CASES = {
    "linear": (lambda: nn.Linear(6, 4), MixLinear, lambda g: (torch.randn(5, 6, generator=g),), ["weight"]),
    "conv1D": (lambda: Conv1DLayout(4, 6), None, lambda g: (torch.randn(2, 3, 6, generator=g),), ["weight"]),
    "conv1d": (
        lambda: nn.Conv1d(3, 4, 3),
        MixConv1d,
        lambda g: (torch.randn(2, 3, 8, generator=g),),
        ["weight"],
    ),
    "conv2d-groups": (
        lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1),
        MixConv2d,
        lambda g: (torch.randn(2, 4, 5, 5, generator=g),),
        ["weight"],
    ),
    "conv3d": (
        lambda: nn.Conv3d(2, 3, 2),
        MixConv3d,
        lambda g: (torch.randn(1, 2, 3, 3, 3, generator=g),),
        ["weight"],
    ),
    "embedding": (
        lambda: nn.Embedding(7, 4, padding_idx=0),
        MixEmbedding,
        lambda g: (torch.randint(0, 7, (3, 5), generator=g),),
        ["weight"],
    ),
    "mha": (
        lambda: nn.MultiheadAttention(8, 2, batch_first=True),
        MixMultiheadAttention,
        lambda g: (torch.randn(2, 5, 8, generator=g),) * 3,
        ["in_proj_weight", "out_proj.weight"],
    ),
    "mha-kdim": (
        lambda: nn.MultiheadAttention(8, 2, kdim=6, vdim=5),
        MixMultiheadAttention,
        lambda g: (
            torch.randn(5, 2, 8, generator=g),
            torch.randn(4, 2, 6, generator=g),
            torch.randn(4, 2, 5, generator=g),
        ),
        ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"],
    ),
}


def make(name, p=0.5, level="neuron", dtype=torch.float32):
    """(plain layer, its mixout layer with w != u, inputs, parameter paths), all seeded."""
    torch.manual_seed(0)
    factory, cls, inputs, paths = CASES[name]
    plain = factory().to(dtype)
    mixed = _conv1d_layout(copy.deepcopy(plain)) if cls is None else cls.from_module(plain, p, level=level)
    if cls is None:
        mixed.p, mixed.level = p, level
        mixed.set_target(plain.weight.detach().clone())
    with torch.no_grad():
        for path in paths:
            mixed.get_parameter(path).add_(torch.randn_like(mixed.get_parameter(path)) * 0.2 + 0.05)
    x = tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs(torch.Generator().manual_seed(1)))
    return plain, mixed, x, paths


def out(y):
    return y[0] if isinstance(y, tuple) else y


def run_plain_with(plain, paths, weights, x):
    """The plain layer with ``weights`` in place of its parameters at ``paths``."""
    return out(functional_call(plain, dict(zip(paths, weights, strict=True)), x))


@pytest.mark.parametrize("name", CASES)
def test_eval_and_p0_are_the_plain_layer(name):
    plain, mixed, x, paths = make(name)
    trained = [mixed.get_parameter(q) for q in paths]
    state = torch.random.get_rng_state()
    assert torch.equal(out(mixed.eval()(*x)), run_plain_with(plain.eval(), paths, trained, x))
    mixed.train().p = 0.0
    assert torch.equal(out(mixed(*x)), run_plain_with(plain.train(), paths, trained, x))
    assert torch.equal(state, torch.random.get_rng_state())  # nothing drawn


@pytest.mark.parametrize("name", CASES)
def test_train_forward_is_the_plain_layer_on_mixed_weights(name):
    plain, mixed, x, paths = make(name, p=0.4)
    mixed.generator = torch.Generator().manual_seed(3)
    weights = mixed.mixed_weights()
    mixed.generator.manual_seed(3)
    y = out(mixed(*x))
    assert torch.allclose(y, run_plain_with(plain.train(), paths, weights, x), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(y, out(mixed.eval()(*x)), atol=1e-3)  # really mixed
    if isinstance(mixed, MixMultiheadAttention):  # the parameters are back after the call
        assert all(isinstance(mixed.get_parameter(q), nn.Parameter) for q in paths)


def _per_unit(mixed, level):
    """For each mixed weight: (which entries equal the target, the neuron mask shape, the view)."""
    mixed.level = level
    mixed.generator = torch.Generator().manual_seed(5)
    for (_, target, view, unit), eff in zip(mixed._specs(), mixed.mixed_weights(), strict=True):
        yield eff.reshape(view) == getattr(mixed, target).reshape(view), unit


@pytest.mark.parametrize("name", CASES)
def test_neuron_masks_are_one_value_per_input_unit(name):
    _, mixed, _, _ = make(name, p=0.5)
    for is_u, unit in _per_unit(mixed, "neuron"):
        shared = tuple(d for d, n in enumerate(unit) if n == 1 and is_u.shape[d] > 1)
        assert torch.equal(is_u.all(dim=shared, keepdim=True), is_u.any(dim=shared, keepdim=True))
        assert 0 < is_u.float().mean() < 1  # some units mixed, some kept (seeded)
    for is_u, unit in _per_unit(mixed, "parameter"):
        shared = tuple(d for d, n in enumerate(unit) if n == 1 and is_u.shape[d] > 1)
        assert not torch.equal(is_u.all(dim=shared, keepdim=True), is_u.any(dim=shared, keepdim=True))


@pytest.mark.parametrize("name", CASES)
def test_mixed_weights_are_unbiased_with_the_exact_variance(name):
    n, p = 4000, 0.3
    _, mixed, _, paths = make(name, p=p)
    mixed.generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        draws = [torch.stack(ws) for ws in zip(*(mixed.mixed_weights() for _ in range(n)), strict=True)]
    for path, (_, target, *_), d in zip(paths, mixed._specs(), draws, strict=True):
        w, u = mixed.get_parameter(path), getattr(mixed, target)
        sd = (p / (1 - p) * (w - u) ** 2 / n).sqrt()
        assert ((d.mean(0) - w).abs() <= 5 * sd + 1e-6).all()  # 5 sigma per coordinate
        assert torch.allclose(d.var(0), p / (1 - p) * (w - u) ** 2, rtol=0.25, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_gradients_are_exact(name):
    _, mixed, x, paths = make(name, p=0.4, dtype=torch.float64)
    mixed.generator = torch.Generator().manual_seed(2)

    def f(*weights):
        mixed.generator.manual_seed(2)  # the same masks at every evaluation
        return out(functional_call(mixed, dict(zip(paths, weights, strict=True)), x))

    weights = tuple(mixed.get_parameter(q).detach().clone().requires_grad_() for q in paths)
    assert torch.autograd.gradcheck(f, weights, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_p_and_level_travel_with_the_state_dict(name):
    _, mixed, x, _ = make(name, p=0.3, level="parameter")
    sd = mixed.state_dict()
    assert sd["_extra_state"].dtype == torch.float64 and sd["_extra_state"].tolist() == [1.0, 0.3, 1.0]
    _, other, _, _ = make(name, p=0.7)
    other.load_state_dict(sd)
    assert other.p == 0.3 and other.level == "parameter"
    assert "level=parameter" in repr(other) and "p=0.3" in repr(other)
    assert mixed.half().state_dict()["_extra_state"].tolist() == [1.0, 0.3, 1.0]  # casts never touch p
    old = {k: v for k, v in sd.items() if k != "_extra_state"}  # a checkpoint from before p was stored
    other.p = 0.9
    assert not other.load_state_dict(old, strict=True).missing_keys and other.p == 0.9
    with pytest.raises(ValueError, match="not a mixout layer's state"):
        other.load_state_dict({**sd, "_extra_state": torch.tensor([7.0, 0.3, 0.0])})


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("name", CASES)
def test_checkpointing_uses_the_forward_masks_with_any_generator(name, reentrant):
    _, mixed, x, paths = make(name, p=0.5)
    x = tuple(t.requires_grad_() if t.is_floating_point() else t for t in x)
    if reentrant and not any(t.requires_grad for t in x):
        pytest.skip("reentrant checkpointing needs an input that requires grad (torch's own limitation)")

    def grads(checkpointed, seed=None):
        mixed.zero_grad()
        mixed.generator = None if seed is None else torch.Generator().manual_seed(seed)
        torch.manual_seed(4)
        y = checkpoint(mixed, *x, use_reentrant=reentrant) if checkpointed else mixed(*x)
        out(y).pow(2).sum().backward()
        return [mixed.get_parameter(q).grad.clone() for q in paths]

    for seed in (7, None):  # the layer's own generator, and torch's global one
        for a, b in zip(grads(True, seed), grads(False, seed), strict=True):
            # The same masks: equal up to rounding. Not the same operations, though: reentrant checkpointing
            # hands attention three detached copies of x, so it projects q, k, v separately instead of in one
            # packed in_proj (and the kernels may differ). A float32 gradient entry is a sum over the batch,
            # its rounding error a few ulp of the largest terms, not of itself (0.036 next to 17 in mha):
            # atol = 1e-5 of the gradient's scale (~80 ulp); a wrong mask changes entries by O(scale).
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    assert len(mixed._replay) == 0  # every stored mask was used by its recomputation


def test_may_be_recomputed_tells_plain_training_from_checkpointing():
    seen = []

    def probe(t):
        seen.append(may_be_recomputed())
        return t * t  # saves t: the non-reentrant kind recomputes it

    x = torch.ones(2, requires_grad=True)
    probe(x).sum().backward()
    checkpoint(probe, x, use_reentrant=False).sum().backward()
    assert seen == [False, True, True]  # plain, checkpointed forward, its recomputation
    with torch.no_grad():
        assert may_be_recomputed()


@pytest.mark.parametrize("name", [n for n in CASES if n != "conv1D"])
def test_to_plain_gives_back_the_plain_layer(name):
    plain, mixed, x, paths = make(name)
    back = mixed.to_plain()
    assert type(back) is type(plain) and not any("target" in k for k in back.state_dict())
    for q in paths:
        assert torch.equal(back.get_parameter(q), mixed.get_parameter(q))
        assert back.get_parameter(q) is not mixed.get_parameter(q)
    assert mixed.to_plain(share_parameters=True).get_parameter(paths[0]) is mixed.get_parameter(paths[0])
    assert torch.equal(out(back.eval()(*x)), out(mixed.eval()(*x)))


def test_embedding_mixes_looked_up_rows_and_keeps_padding_gradient_zero():
    plain, mixed, (ids,), _ = make("embedding", p=0.5)
    mixed.generator = torch.Generator().manual_seed(0)
    (table,) = mixed.mixed_weights()
    mixed.generator.manual_seed(0)
    y = mixed(ids)
    # the looked-up rows of the mixed table, bit for bit on any CPU although lerp runs on other lanes here
    # (rows vs table, SIMD body vs scalar tail): at p = 0.5, s is 0 or 2, and lerp(u, w, 2) = w + (w - u)
    # is one subtraction and one addition on every path (FMA or not), lerp(u, w, 0) exactly u
    assert torch.equal(y, F.embedding(ids, table))
    y.sum().backward()
    assert torch.equal(mixed.weight.grad[0], torch.zeros(4)) and (ids == 0).any()
    with pytest.raises(ValueError, match="max_norm"):
        MixEmbedding(5, 3, max_norm=1.0)
    assert not MixEmbedding.supports(nn.Embedding(5, 3, max_norm=1.0))


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="level must be one of 'neuron', 'parameter'"):
        MixConv2d(2, 3, 1, level="unit")
    with pytest.raises(ValueError, match="p must lie"):
        MixMultiheadAttention(4, 2, p=1.5)
    with pytest.raises(TypeError, match="MixConv2d converts a plain Conv2d, got Conv1d"):
        MixConv2d.from_module(nn.Conv1d(1, 1, 1), 0.1)
    with pytest.raises(ValueError, match="several targets"):
        MixMultiheadAttention(4, 2).set_target(None)
    m = MixConv1d(2, 3, 1, p=1.0)  # p = 1: exactly the target, here zero
    assert torch.equal(m.mixed_weights()[0], torch.zeros(3, 2, 1)) and math.isclose(m.p, 1.0)


def test_without_the_replay_checkpointing_would_use_other_masks(monkeypatch):
    """The control for the test above: with the replay switched off, a layer with its own generator
    draws a new mask in the recomputation and the checkpointed gradient is wrong."""
    import mixout_theory.mixout_layer as mixout_layer

    monkeypatch.setattr(mixout_layer, "may_be_recomputed", lambda: False)
    _, mixed, x, _ = make("linear", p=0.5)
    runs = []
    for checkpointed in (True, False):
        mixed.zero_grad()
        mixed.generator = torch.Generator().manual_seed(7)
        y = checkpoint(mixed, *x, use_reentrant=False) if checkpointed else mixed(*x)
        y.pow(2).sum().backward()
        runs.append(mixed.weight.grad.clone())
    assert not torch.allclose(*runs, atol=1e-3)

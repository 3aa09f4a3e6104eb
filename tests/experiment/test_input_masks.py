"""The engine with masks on the input pixels too (the "every Linear" reading of the protocol):
dropout per example and pixel, mixout on fc1.weight per pixel and mini-batch. Exact as the hidden
layers' masks: the hand-written backward equals autograd, the functional forward equals the module
with the same masks, ensembles equal solo runs, and members without input masks draw what they always did."""

import math

import torch
import torch.nn.functional as F

from mixout_theory import mixing
from mixout_theory.experiment import engine, mlp

DT = torch.float64


def _task(n=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    means = torch.randn(10, 784, generator=torch.Generator().manual_seed(99), dtype=DT)
    return means[y] * 0.3 + torch.randn(n, 784, generator=g, dtype=DT), y


def _masks(shape_rows, p, g, E):
    return tuple(
        torch.bernoulli(torch.full((E, shape_rows, w), 1 - p, dtype=DT), generator=g) / (1 - p)
        for w in (784, 300, 100)
    )


def test_loss_and_grad_with_input_masks_equals_autograd():
    E, B = 4, 6
    g = torch.Generator().manual_seed(0)
    params = {
        k: v.to(DT) + 0.05 * torch.randn(v.shape, generator=g, dtype=DT)
        for k, v in mlp.init_params(E, 0).items()
    }
    target = {k: v[0] + 0.03 * torch.randn(v[0].shape, generator=g, dtype=DT) for k, v in params.items()}
    y = torch.randint(0, 10, (E, B), generator=g)
    drop, mix = _masks(B, 0.3, g, E), _masks(1, 0.4, g, E)
    x = torch.randn(2, B, 784, dtype=DT, generator=g)
    per_member = torch.cat([x[0].expand(2, B, 784), x[1].expand(2, B, 784)])
    cases = [
        (per_member, None, drop, mix),
        (x, [(0, 2), (2, 4)], drop, mix),  # shared batches
        (x, [(0, 2), (2, 4)], (drop[0], None, None), None),
        (x[0], None, None, (mix[0], None, None)),
    ]
    for xin, groups, d, m in cases:
        x_each = per_member if xin.dim() == 3 else xin
        leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        logits = mlp.forward(leaf, x_each, drop=d, mix=m, target=target)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(E, B).mean(1)
        losses.sum().backward()
        got, grads = mlp.loss_and_grad(params, xin, y, d, m, target, groups=groups)
        torch.testing.assert_close(got, losses.detach(), rtol=0, atol=1e-13)
        for k in mlp.PARAM_NAMES:
            torch.testing.assert_close(grads[k], leaf[k].grad, rtol=0, atol=1e-13)


def test_forward_with_input_masks_is_the_module_with_those_masks():
    """Dropout on the pixels = the module's input dropout with that mask; mixout on fc1 = eq. 4 on fc1."""
    torch.manual_seed(0)
    params = {k: v.to(DT) for k, v in mlp.init_params(None, 1).items()}
    target = {k: v + 0.05 * torch.randn_like(v) for k, v in params.items()}
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 784, dtype=DT, generator=g)
    d0 = torch.bernoulli(torch.full((5, 784), 0.8, dtype=DT), generator=g) / 0.8
    b1 = torch.bernoulli(torch.full((1, 784), 0.6, dtype=DT), generator=g)
    out = mlp.forward(params, x, drop=(d0, None, None), mix=(b1 / 0.6, None, None), target=target)
    ref = dict(params, **{"fc1.weight": mixing.mixture(params["fc1.weight"], target["fc1.weight"], b1, 0.6)})
    net = mlp.MLP(input_dropout=0.2).double().eval()
    net.load_state_dict(ref)
    torch.testing.assert_close(out, net(x * d0), rtol=0, atol=1e-12)
    assert isinstance(net.drop0, torch.nn.Dropout) and net.drop0.p == 0.2


MEMBERS = [
    engine.Member(dropout=0.3, data_seed=0, mask_seed=1),
    engine.Member(dropout=0.3, input_dropout=0.3, data_seed=0, mask_seed=2),
    engine.Member(mixout=0.5, input_mixout=0.5, data_seed=0, mask_seed=3),
    engine.Member(mixout=0.5, data_seed=1, mask_seed=4),
    engine.Member(data_seed=1, mask_seed=5),
]


def test_ensembles_with_input_masks_equal_solo_runs():
    x, y = _task()
    w0 = {k: v.to(DT) for k, v in mlp.init_params(None, 0).items()}
    target = {k: v + 0.01 for k, v in w0.items()}
    kw = dict(epochs=2, lr=1e-3, target=target, device="cpu")
    for workers in (1, 2):
        ens = engine.train_ensemble(w0, MEMBERS, x, y, workers=workers, **kw)
        for e, m in enumerate(MEMBERS):
            solo = engine.train_ensemble(w0, [m], x, y, **kw)
            for k in mlp.PARAM_NAMES:
                torch.testing.assert_close(ens.params[k][e], solo.params[k][0], rtol=0, atol=1e-11)
    assert not torch.equal(ens.params["fc1.weight"][1], ens.params["fc1.weight"][0])  # the input masks act


def test_members_without_input_masks_draw_what_they_always_did():
    """The input masks are drawn after the hidden ones, member by member: a hidden-only member's
    masks are the same in an ensemble with input-masked members as alone."""
    for e in (0, 3):
        ens = engine._MaskStreams(MEMBERS, 32, 40)  # steps are asked for in order, once
        alone = engine._MaskStreams([MEMBERS[e]], 32, 40)
        for t in range(40):
            (d0, d1, d2), (m1, m2, m3) = ens.masks(t, 32, DT)
            a_drop, a_mix = alone.masks(t, 32, DT)
            own = (d1, d2) if MEMBERS[e].uses_dropout else (m2, m3)
            for a, b in zip(own, a_drop if MEMBERS[e].uses_dropout else a_mix, strict=False):
                assert torch.equal(a[e], b[0])
            assert (d0[e] == 1).all() and (m1[e] == 1).all()


def test_input_mask_rates_per_example_and_per_batch():
    s = engine._MaskStreams([MEMBERS[1], MEMBERS[2]], 32, 100)
    d0 = torch.stack([s.masks(t, 32)[0][0][0] for t in range(100)])  # (T, B, 784) of the dropout member
    m1 = torch.stack([s.masks(t, 32)[1][0][1] for t in range(100)])  # (T, 1, 784) of the mixout member
    for mask, keep in ((d0, 0.7), (m1, 0.5)):
        rate = (mask > 0).double().mean().item()
        assert abs(rate - keep) < 5 * math.sqrt(keep * (1 - keep) / mask.numel())
        assert torch.allclose(mask[mask > 0], torch.tensor(1 / keep))
    assert (d0[0, 0] != d0[0, 1]).any()  # dropout: per example

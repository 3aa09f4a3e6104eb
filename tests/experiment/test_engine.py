"""The MLP, the batched ensemble engine and its exactness against solo and plain-PyTorch runs."""

import math

import pytest
import torch
import torch.nn.functional as F

from mixout_theory import mixing, models, training
from mixout_theory.modules import MixLinear

DT = torch.float64  # exactness tests run in float64 so that agreement is to ~1e-12, not chaos


def _task(n=480, seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    means = torch.randn(10, 784, generator=torch.Generator().manual_seed(99), dtype=dtype)
    return means[y] * 0.3 + torch.randn(n, 784, generator=g, dtype=dtype), y


def _params(seed=0, dtype=DT):
    return {k: v.to(dtype) for k, v in models.init_params(None, seed).items()}


def test_init_matches_paper():
    p = models.init_params(None, seed=0)
    assert [tuple(p[k].shape) for k in ("fc1.weight", "fc2.weight", "fc3.weight")] == [(300, 784), (100, 300), (10, 100)]
    w = torch.cat([p[k].flatten() for k in ("fc1.weight", "fc2.weight", "fc3.weight")])
    # std of 266,200 N(0, 0.02^2) draws: relative standard error ~ 1/sqrt(2n) = 0.14%; allow 1%
    assert abs(w.std().item() / 0.02 - 1) < 0.01
    assert all(p[k].abs().max() == 0 for k in ("fc1.bias", "fc2.bias", "fc3.bias", "ln1.bias", "ln2.bias"))
    assert all((p[k] == 1).all() for k in ("ln1.weight", "ln2.weight"))
    stacked = models.init_params(3, seed=5)
    assert torch.equal(stacked["fc2.weight"][2], models.init_params(None, seed=7)["fc2.weight"])


def test_forward_matches_module_and_mixlinear():
    """The functional forward equals nn.Module MLP; with a mix mask it equals MixLinear's eq. 4."""
    torch.manual_seed(0)
    net = models.MLP().double().eval()
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    x = torch.randn(7, 784, dtype=DT)
    torch.testing.assert_close(models.forward(params, x), net(x), rtol=0, atol=1e-12)
    stacked = models.stack(params, 2)
    torch.testing.assert_close(models.forward(stacked, x)[1], net(x), rtol=0, atol=1e-12)

    # mixing fc2 / fc3 towards a target with column masks = mixing.mixture with the same mask
    target = {k: v + 0.05 * torch.randn_like(v) for k, v in params.items()}
    p = 0.3
    b2 = torch.bernoulli(torch.full((1, 300), 1 - p, dtype=DT))
    b3 = torch.bernoulli(torch.full((1, 100), 1 - p, dtype=DT))
    out = models.forward(params, x, mix=(b2 / (1 - p), b3 / (1 - p)), target=target)
    ref = dict(params)
    ref["fc2.weight"] = mixing.mixture(params["fc2.weight"], target["fc2.weight"], b2, 1 - p)
    ref["fc3.weight"] = mixing.mixture(params["fc3.weight"], target["fc3.weight"], b3, 1 - p)
    torch.testing.assert_close(out, models.forward(ref, x), rtol=0, atol=1e-12)


def test_ensemble_linear_gradcheck():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 4, 5, dtype=DT, generator=g, requires_grad=True)
    w = torch.randn(3, 2, 5, dtype=DT, generator=g, requires_grad=True)
    b = torch.randn(3, 2, dtype=DT, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(models.EnsembleLinear.apply, (h, w, b))


def test_lr_schedule():
    total = 100
    f = [training.lr_factor(s, total, 0.1) for s in range(total)]
    assert f[0] == 0 and f[5] == 0.5 and f[10] == 1.0 and f[55] == pytest.approx(0.5) and f[-1] == pytest.approx(1 / 90)
    assert all(a <= b for a, b in zip(f[:10], f[1:11])) and all(a >= b for a, b in zip(f[10:], f[11:]))


MEMBERS = [
    training.Member(data_seed=0, mask_seed=1),
    training.Member(dropout=0.3, data_seed=1, mask_seed=2),
    training.Member(dropout=0.6, wdecay=0.01, data_seed=0, mask_seed=3),
    training.Member(mixout=0.3, data_seed=1, mask_seed=4),
    training.Member(mixout=0.7, wdecay=0.1, data_seed=2, mask_seed=5),
    training.Member(dropout=(0.0, 0.7), mixout=(0.5, 0.0), data_seed=3, mask_seed=6),
]


def test_ensemble_equals_solo_runs():
    """Training E members at once is the same computation as training each alone (float64)."""
    x, y = _task()
    w0 = _params()
    target = {k: v + 0.01 for k, v in w0.items()}
    kw = dict(epochs=2, lr=1e-3, batch_size=32, target=target, wdecay_target=target, device="cpu")
    ens = training.train_ensemble(w0, MEMBERS, x, y, **kw)
    assert ens.steps == 2 * math.ceil(480 / 32)
    for e, m in enumerate(MEMBERS):
        solo = training.train_ensemble(w0, [m], x, y, **kw)
        for k in models.PARAM_NAMES:
            torch.testing.assert_close(ens.params[k][e], solo.params[k][0], rtol=0, atol=1e-11)
        torch.testing.assert_close(ens.train_loss[e], solo.train_loss[0], rtol=0, atol=1e-11)
    # and the members really differ from each other
    assert (ens.params["fc2.weight"][1] - ens.params["fc2.weight"][2]).abs().max() > 1e-4


def test_deterministic_same_seed_same_numbers():
    x, y = _task(dtype=torch.float32)
    w0 = models.init_params(None, 0)
    runs = [training.train_ensemble(w0, MEMBERS[:4], x, y, epochs=1, lr=1e-3, target=w0, device="cpu") for _ in range(2)]
    for k in models.PARAM_NAMES:
        assert torch.equal(runs[0].params[k], runs[1].params[k])


@pytest.mark.parametrize("towards", ["origin", "w_pre"])
def test_engine_equals_plain_pytorch_loop(towards):
    """Dropout-free member with wdecay(u, 0.05): the engine equals nn.Module + torch.optim.Adam on
    ``L(w) + (0.05/2) ||w - u||^2`` over the Linear weights, with the same schedule and batches."""
    x, y = _task()
    w0 = _params(seed=3)
    u = None if towards == "origin" else {k: v + 0.01 for k, v in _params(seed=4).items()}
    lam = 0.05
    eng = training.train_ensemble(w0, [training.Member(wdecay=lam, data_seed=7)], x, y, epochs=2, lr=2e-3,
                                  batch_size=32, warmup=0.1, wdecay_target=u, device="cpu")  # fmt: skip

    net = models.MLP().double()
    net.load_state_dict(w0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-8)
    g = torch.Generator().manual_seed(7)
    total, step = 2 * math.ceil(480 / 32), 0
    for _ in range(2):
        order = torch.randperm(480, generator=g)
        for s in range(0, 480, 32):
            idx = order[s : s + 32]
            for group in opt.param_groups:
                group["lr"] = 2e-3 * training.lr_factor(step, total, 0.1)
            opt.zero_grad()
            loss = F.cross_entropy(net(x[idx]), y[idx])
            for name in ("fc1", "fc2", "fc3"):
                w = getattr(net, name).weight
                loss = loss + lam / 2 * (w - (0 if u is None else u[f"{name}.weight"])).pow(2).sum()
            loss.backward()
            opt.step()
            step += 1
    for k, v in net.state_dict().items():
        torch.testing.assert_close(eng.params[k][0], v, rtol=0, atol=1e-10)


def test_mixout_gradient_is_exact():
    """One engine step's gradient for a mixout member = autograd through MixLinear with that mask."""
    x, y = _task(n=32)
    w0 = _params(seed=1)
    target = {k: v + 0.02 * torch.randn_like(v) for k, v in w0.items()}
    m = training.Member(mixout=0.4, mask_seed=11)
    streams = training._MaskStreams([m], 32, 1)
    _, mix = streams.masks(0, 32, DT)
    params = {k: v.unsqueeze(0).clone().requires_grad_(True) for k, v in w0.items()}
    F.cross_entropy(models.forward(params, x.unsqueeze(0), mix=mix, target=target)[0], y).backward()

    net = models.MLP().double()
    net.load_state_dict(w0)
    for name, cols in (("fc2", mix[0]), ("fc3", mix[1])):
        lin = MixLinear.from_linear(getattr(net, name), p=0.4, target=target[f"{name}.weight"])
        keep = cols.view(-1) > 0  # the engine's mask, fed to the module through a fixed generator
        lin.forward = (lambda lin, keep: lambda h: F.linear(
            h, mixing.mixture(lin.weight, lin.target, keep.to(DT).view(1, -1), 0.6), lin.bias))(lin, keep)  # fmt: skip
        setattr(net, name, lin)
    F.cross_entropy(net(x), y).backward()
    for k, v in net.named_parameters():
        torch.testing.assert_close(params[k].grad[0], v.grad, rtol=0, atol=1e-12)
    # d Phi / d w = mask / (1 - p): a mixed column gets no gradient, kept ones are scaled by 1/(1-p)
    mixed = mix[0].view(-1) == 0
    assert mixed.any() and params["fc2.weight"].grad[0][:, mixed].abs().max() == 0


def test_mask_rates_and_scaling():
    """Dropout masks are per example, mixout masks per batch; keep rates match 1 - p (5 sigma)."""
    members = [training.Member(dropout=0.3, mask_seed=1), training.Member(mixout=0.6, mask_seed=2)]
    s = training._MaskStreams(members, 32, 200)
    drops, mixes = zip(*(s.masks(t, 32) for t in range(200)))
    d1 = torch.stack([d[0] for d in drops])  # (T, E, B, 300)
    m1 = torch.stack([m[0] for m in mixes])  # (T, E, 1, 300)
    keep_d = (d1[:, 0] > 0).double().mean().item()
    n = d1[:, 0].numel()
    assert abs(keep_d - 0.7) < 5 * math.sqrt(0.21 / n)
    assert torch.allclose(d1[:, 0][d1[:, 0] > 0], torch.tensor(1 / 0.7))
    keep_m = (m1[:, 1] > 0).double().mean().item()
    assert abs(keep_m - 0.4) < 5 * math.sqrt(0.24 / m1[:, 1].numel())
    assert torch.allclose(m1[:, 1][m1[:, 1] > 0], torch.tensor(1 / 0.4))
    assert (d1[:, 1] == 1).all() and (m1[:, 0] == 1).all()  # each member gets only its own regulariser
    # per-example dropout: rows of one batch differ
    assert (d1[0, 0, 0] != d1[0, 0, 1]).any()


def test_bad_input():
    x, y = _task(n=64)
    w0 = _params()
    with pytest.raises(ValueError, match="members is empty"):
        training.train_ensemble(w0, [], x, y, epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="no target"):
        training.train_ensemble(w0, [training.Member(mixout=0.5)], x, y, epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="64 rows but y has 63"):
        training.train_ensemble(w0, [training.Member()], x, y[:63], epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        training.Member(dropout=1.5)
    with pytest.raises(ValueError, match="drop every unit"):
        training.Member(mixout=1.0)
    with pytest.raises(ValueError, match="one p or a pair"):
        training.Member(dropout=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="wdecay must be"):
        training.Member(wdecay=-1)


def test_evaluate_and_distances():
    x, y = _task(n=100)
    w0 = _params()
    stacked = models.stack(w0, 2)
    stacked["fc2.weight"][1] += 0.1
    ev = training.evaluate(stacked, x, y, chunk=33)
    logits = models.forward(w0, x)
    assert ev["acc"][0] == (logits.argmax(1) == y).double().mean()
    torch.testing.assert_close(ev["loss"][0], F.cross_entropy(logits, y).double(), rtol=0, atol=1e-12)
    d = models.squared_distances(stacked, w0)
    assert d["all"][0] == 0 and d["fc2"][1] == pytest.approx(0.01 * 300 * 100) and d["mixed"][1] == d["all"][1]


def test_loss_and_grad_equals_autograd():
    """The engine's hand-written backward = autograd through ``models.forward`` (float64), with
    dropout and mixout masks, a mixed target, and batches shared by groups of members."""
    E, B = 5, 7
    g = torch.Generator().manual_seed(0)
    params = {k: v.to(DT) + 0.05 * torch.randn(v.shape, generator=g, dtype=DT)
              for k, v in models.init_params(E, 0).items()}  # fmt: skip
    target = {k: v[0] + 0.03 * torch.randn(v[0].shape, generator=g, dtype=DT) for k, v in params.items()}
    y = torch.randint(0, 10, (E, B), generator=g)
    drop = tuple(torch.bernoulli(torch.full((E, B, w), 0.7, dtype=DT), generator=g) / 0.7 for w in (300, 100))
    mix = tuple(torch.bernoulli(torch.full((E, 1, w), 0.6, dtype=DT), generator=g) / 0.6 for w in (300, 100))
    x = torch.randn(E, B, 784, dtype=DT, generator=g)
    shared = x[:2]  # members [0, 3) see shared[0], [3, 5) see shared[1]
    per_member = torch.cat([shared[0].expand(3, B, 784), shared[1].expand(2, B, 784)])
    cases = [(x, None, x, drop, mix), (x[0], None, x[0], None, None), (shared, [(0, 3), (3, 5)], per_member, drop, mix)]
    for xin, groups, x_each, d, m in cases:
        leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        logits = models.forward(leaf, x_each, drop=d, mix=m, target=target)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(E, B).mean(1)
        losses.sum().backward()
        out = {k: torch.full_like(v, float("nan")) for k, v in params.items()}  # every entry overwritten
        got, grads = models.loss_and_grad(params, xin, y, d, m, target, groups=groups, out=out)
        assert grads is out
        torch.testing.assert_close(got, losses.detach(), rtol=0, atol=1e-13)
        for k in models.PARAM_NAMES:
            torch.testing.assert_close(grads[k], leaf[k].grad, rtol=0, atol=1e-13)


def test_workers_give_the_same_numbers():
    """Members split over two worker threads train exactly as in one ensemble (float64), and the
    caller sees them in its own order, also at every epoch end."""
    x, y = _task()
    w0 = _params()
    target = {k: v + 0.01 for k, v in w0.items()}
    kw = dict(epochs=2, lr=1e-3, target=target, device="cpu")
    seen = {}
    one = training.train_ensemble(w0, MEMBERS, x, y, **kw)
    threads = torch.get_num_threads()
    two = training.train_ensemble(w0, MEMBERS, x, y, workers=2, **kw,
                                  on_epoch_end=lambda ep, p: seen.update({ep: {k: v.clone() for k, v in p.items()}}))
    assert torch.get_num_threads() == threads  # restored
    for k in models.PARAM_NAMES:
        torch.testing.assert_close(two.params[k], one.params[k], rtol=0, atol=1e-11)
        assert torch.equal(seen[1][k], two.params[k])
    torch.testing.assert_close(two.train_loss, one.train_loss, rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="workers must be"):
        training.train_ensemble(w0, MEMBERS, x, y, workers=0, **kw)


def test_mask_streams_do_not_depend_on_the_ensemble():
    """A member's masks are the same alone and inside any ensemble, block after block."""
    ens = training._MaskStreams(MEMBERS, 32, 40)
    alone = [training._MaskStreams([m], 32, 40) for m in MEMBERS]
    for t in range(40):
        rows = 32 if t % 20 else 17  # a short batch takes the first rows' masks
        drop, mix = ens.masks(t, rows, DT)
        for e, s in enumerate(alone):
            d1, m1 = s.masks(t, rows, DT)
            for a, b in zip(drop, d1 if d1 is not None else [torch.ones(1, rows, w, dtype=DT) for w in (300, 100)]):
                assert torch.equal(a[e], b[0])
            for a, b in zip(mix, m1 if m1 is not None else [torch.ones(1, 1, w, dtype=DT) for w in (300, 100)]):
                assert torch.equal(a[e], b[0])


@pytest.mark.parametrize("target_kind", ["w_pre", "origin"])
def test_mixout_linear_equals_the_composition(target_kind):
    """MixLinear's fused path: the same mask, the same output and the same exact gradient (to
    rounding) as ``F.linear(x, mixing.mixout(w, u, p), b)``, a mixed column exactly ``u``; first and
    second derivatives in ``x``, ``w`` and ``b`` pass gradcheck, for 2-D and 3-D inputs."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(7, 11, generator=g, dtype=DT)
    u = None if target_kind == "origin" else torch.randn(7, 11, generator=g, dtype=DT)
    b = torch.randn(7, generator=g, dtype=DT)
    for x in (torch.randn(5, 11, generator=g, dtype=DT), torch.randn(2, 3, 11, generator=g, dtype=DT)):
        for p in (0.1, 0.3, 0.7):
            w1, w2 = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
            x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            fused = mixing.mixout_linear(x1, w1, b, u, p, generator=torch.Generator().manual_seed(9))
            ref = F.linear(x2, mixing.mixout(w2, u, p, generator=torch.Generator().manual_seed(9)), b)
            torch.testing.assert_close(fused, ref, rtol=1e-14, atol=1e-14)
            fused.pow(2).sum().backward()
            ref.pow(2).sum().backward()
            torch.testing.assert_close(w1.grad, w2.grad, rtol=0, atol=1e-12)
            torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-12)
            mask = mixing.neuron_mask(w, p, generator=torch.Generator().manual_seed(9))[0]
            assert torch.equal(w1.grad[:, mask == 0], torch.zeros(7, int((mask == 0).sum()), dtype=DT))
            # one-hot inputs read the mixed weight's columns: a mixed column is exactly u's
            eye, g9 = torch.eye(11, dtype=DT), torch.Generator().manual_seed(9)
            phi_t = mixing.mixout_linear(eye, w, None, u, p, generator=g9)
            assert torch.equal(phi_t[mask == 0], (torch.zeros_like(w) if u is None else u).t()[mask == 0])
            if p == 0.7:  # P(no column mixed) = 0.3^11: some column gets no gradient at all
                assert (mask == 0).any()
        args = (x.clone().requires_grad_(True), w.clone().requires_grad_(True), b.clone().requires_grad_(True))

        def f(xv, wv, bv):
            return mixing.mixout_linear(xv, wv, bv, u, 0.4, generator=torch.Generator().manual_seed(1)).tanh()

        assert torch.autograd.gradcheck(f, args)
        assert torch.autograd.gradgradcheck(f, args)
    lin = MixLinear(11, 7, p=0.4, target=u).double()
    lin.generator = torch.Generator().manual_seed(2)
    out = lin(x)
    ref = mixing.mixout(lin.weight, lin.target, 0.4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, F.linear(x, ref, lin.bias), rtol=1e-14, atol=1e-14)


def test_stacked_init_targets_and_workers_equal_solo_runs():
    """Per-member (stacked) init, mixout target and wdecay target, members whose data seeds
    interleave, two workers: each member still trains exactly as alone (float64)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(160, 784, dtype=DT, generator=g), torch.randint(0, 10, (160,), generator=g)
    members = [training.Member(mixout=0.3, wdecay=0.1, data_seed=1, mask_seed=1),
               training.Member(dropout=0.2, data_seed=0, mask_seed=2),
               training.Member(mixout=0.5, data_seed=1, mask_seed=3),
               training.Member(wdecay=0.05, data_seed=2, mask_seed=4)]  # fmt: skip
    init = {k: v.to(DT) for k, v in models.init_params(4, 0).items()}
    tgt = {k: v + 0.01 for k, v in init.items()}
    wdt = {k: v - 0.02 for k, v in init.items()}
    ens = training.train_ensemble(init, members, x, y, epochs=2, lr=1e-3, target=tgt, wdecay_target=wdt,
                                  device="cpu", workers=2)  # fmt: skip
    for e, m in enumerate(members):
        one = {k: v[e : e + 1] for k, v in init.items()}
        solo = training.train_ensemble(one, [m], x, y, epochs=2, lr=1e-3, device="cpu",
                                       target={k: v[e : e + 1] for k, v in tgt.items()},
                                       wdecay_target={k: v[e : e + 1] for k, v in wdt.items()})  # fmt: skip
        for k in models.PARAM_NAMES:
            torch.testing.assert_close(ens.params[k][e], solo.params[k][0], rtol=0, atol=1e-11)


def test_adam_fallback_without_fused_kernel_is_the_same_update(monkeypatch):
    """Where torch has no fused Adam kernel (older torch on the CPU), the foreach path is used and
    gives the same training run."""
    x, y = _task(n=96)
    w0 = _params()
    kw = dict(epochs=1, lr=1e-3, target=w0, device="cpu")
    fused = training.train_ensemble(w0, MEMBERS[:3], x, y, **kw)

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("no fused Adam here")

    monkeypatch.setattr(torch, "_fused_adam_", no_kernel)
    plain = training.train_ensemble(w0, MEMBERS[:3], x, y, **kw)
    for k in models.PARAM_NAMES:
        torch.testing.assert_close(plain.params[k], fused.params[k], rtol=0, atol=1e-12)

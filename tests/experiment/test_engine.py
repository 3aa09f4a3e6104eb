"""The MLP, the batched ensemble engine and its exactness against solo and plain-PyTorch runs."""

import math

import pytest
import torch
import torch.nn.functional as F

from mixout_theory import mixing
from mixout_theory.experiment import engine, mlp
from mixout_theory.modules import MixLinear

DT = torch.float64  # exactness tests run in float64 so that agreement is to ~1e-12, not chaos


def _task(n=480, seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    means = torch.randn(10, 784, generator=torch.Generator().manual_seed(99), dtype=dtype)
    return means[y] * 0.3 + torch.randn(n, 784, generator=g, dtype=dtype), y


def _params(seed=0, dtype=DT):
    return {k: v.to(dtype) for k, v in mlp.init_params(None, seed).items()}


def test_init_matches_paper():
    p = mlp.init_params(None, seed=0)
    assert [tuple(p[k].shape) for k in ("fc1.weight", "fc2.weight", "fc3.weight")] == [
        (300, 784),
        (100, 300),
        (10, 100),
    ]
    w = torch.cat([p[k].flatten() for k in ("fc1.weight", "fc2.weight", "fc3.weight")])
    # std of 266,200 N(0, 0.02^2) draws: relative standard error ~ 1/sqrt(2n) = 0.14%; allow 1%
    assert abs(w.std().item() / 0.02 - 1) < 0.01
    assert all(p[k].abs().max() == 0 for k in ("fc1.bias", "fc2.bias", "fc3.bias", "ln1.bias", "ln2.bias"))
    assert all((p[k] == 1).all() for k in ("ln1.weight", "ln2.weight"))
    stacked = mlp.init_params(3, seed=5)
    assert torch.equal(stacked["fc2.weight"][2], mlp.init_params(None, seed=7)["fc2.weight"])


def test_forward_matches_module_and_mixlinear():
    """The functional forward equals nn.Module MLP; with a mix mask it equals MixLinear's eq. 4."""
    torch.manual_seed(0)
    net = mlp.MLP().double().eval()
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    x = torch.randn(7, 784, dtype=DT)
    torch.testing.assert_close(mlp.forward(params, x), net(x), rtol=0, atol=1e-12)
    stacked = mlp.stack(params, 2)
    torch.testing.assert_close(mlp.forward(stacked, x)[1], net(x), rtol=0, atol=1e-12)

    # mixing fc2 / fc3 towards a target with column masks = mixing.mixture with the same mask
    target = {k: v + 0.05 * torch.randn_like(v) for k, v in params.items()}
    p = 0.3
    b2 = torch.bernoulli(torch.full((1, 300), 1 - p, dtype=DT))
    b3 = torch.bernoulli(torch.full((1, 100), 1 - p, dtype=DT))
    out = mlp.forward(params, x, mix=(b2 / (1 - p), b3 / (1 - p)), target=target)
    ref = dict(params)
    ref["fc2.weight"] = mixing.mixture(params["fc2.weight"], target["fc2.weight"], b2, 1 - p)
    ref["fc3.weight"] = mixing.mixture(params["fc3.weight"], target["fc3.weight"], b3, 1 - p)
    torch.testing.assert_close(out, mlp.forward(ref, x), rtol=0, atol=1e-12)


def test_forward_is_tail_of_hidden1():
    """``mlp.forward`` = ``tail(params, hidden1(params, x) * d1, Phi_2, Phi_3, dropout=* d2)``, bit for bit,
    with the mixed weights from the library's ``mixing.mixed_weight``."""
    g = torch.Generator().manual_seed(4)
    params = {k: v + 0.01 * torch.randn(v.shape, generator=g, dtype=DT) for k, v in _params(seed=2).items()}
    target = _params(seed=3)
    x = torch.randn(6, 784, generator=g, dtype=DT)
    assert torch.equal(mlp.forward(params, x), mlp.tail(params, mlp.hidden1(params, x)))
    d = tuple(torch.bernoulli(torch.full((6, n), 0.7, dtype=DT), generator=g) / 0.7 for n in (300, 100))
    m = tuple(torch.bernoulli(torch.full((1, n), 0.6, dtype=DT), generator=g) / 0.6 for n in (300, 100))
    w2 = mixing.mixed_weight(params["fc2.weight"], target["fc2.weight"], m[0])
    w3 = mixing.mixed_weight(params["fc3.weight"], target["fc3.weight"], m[1])
    want = mlp.tail(params, mlp.hidden1(params, x) * d[0], w2, w3, dropout=lambda h: h * d[1])
    assert torch.equal(mlp.forward(params, x, drop=d, mix=m, target=target), want)
    assert not hasattr(mlp, "LAYERS")


def test_mlp_module_runs_its_submodules():
    from mixout_theory.modules import mixout_model

    torch.manual_seed(0)
    net = mixout_model(
        mlp.MLP().double(), p=0.9, dropouts="all"
    )  # every Linear mixed towards its weights at conversion
    with torch.no_grad():
        for fc in (net.fc1, net.fc2, net.fc3):
            fc.weight.add_(0.1 * torch.randn_like(fc.weight))  # now w != w_pre: training mode must mix
    calls = []
    net.fc2.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(4, 784, dtype=DT)
    train_out = net.train()(x)
    assert calls, "MLP.forward never called its fc2 submodule"
    assert not torch.equal(train_out, net.eval()(x))


def test_ensemble_linear_gradcheck():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 4, 5, dtype=DT, generator=g, requires_grad=True)
    w = torch.randn(3, 2, 5, dtype=DT, generator=g, requires_grad=True)
    b = torch.randn(3, 2, dtype=DT, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(mlp.EnsembleLinear.apply, (h, w, b))


def test_lr_schedule():
    total = 100
    f = [engine.lr_factor(s, total, 0.1) for s in range(total)]
    assert (
        f[0] == 0
        and f[5] == 0.5
        and f[10] == 1.0
        and f[55] == pytest.approx(0.5)
        and f[-1] == pytest.approx(1 / 90)
    )
    assert all(a <= b for a, b in zip(f[:10], f[1:11], strict=False)) and all(
        a >= b for a, b in zip(f[10:], f[11:], strict=False)
    )


MEMBERS = [
    engine.Member(data_seed=0, mask_seed=1),
    engine.Member(dropout=0.3, data_seed=1, mask_seed=2),
    engine.Member(dropout=0.6, wdecay=0.01, data_seed=0, mask_seed=3),
    engine.Member(mixout=0.3, data_seed=1, mask_seed=4),
    engine.Member(mixout=0.7, wdecay=0.1, data_seed=2, mask_seed=5),
    engine.Member(dropout=(0.0, 0.7), mixout=(0.5, 0.0), data_seed=3, mask_seed=6),
]


@pytest.mark.slow  # ~15 s: six solo runs beside the ensemble
def test_ensemble_equals_solo_runs():
    """Training E members at once is the same computation as training each alone (float64)."""
    x, y = _task()
    w0 = _params()
    target = {k: v + 0.01 for k, v in w0.items()}
    kw = dict(epochs=2, lr=1e-3, batch_size=32, target=target, wdecay_target=target, device="cpu")
    ens = engine.train_ensemble(w0, MEMBERS, x, y, **kw)
    assert ens.steps == 2 * math.ceil(480 / 32)
    for e, m in enumerate(MEMBERS):
        solo = engine.train_ensemble(w0, [m], x, y, **kw)
        for k in mlp.PARAM_NAMES:
            torch.testing.assert_close(ens.params[k][e], solo.params[k][0], rtol=0, atol=1e-11)
        torch.testing.assert_close(ens.train_loss[e], solo.train_loss[0], rtol=0, atol=1e-11)
    # and the members really differ from each other
    assert (ens.params["fc2.weight"][1] - ens.params["fc2.weight"][2]).abs().max() > 1e-4


def test_deterministic_same_seed_same_numbers():
    x, y = _task(dtype=torch.float32)
    w0 = mlp.init_params(None, 0)
    runs = [
        engine.train_ensemble(w0, MEMBERS[:4], x, y, epochs=1, lr=1e-3, target=w0, device="cpu")
        for _ in range(2)
    ]
    for k in mlp.PARAM_NAMES:
        assert torch.equal(runs[0].params[k], runs[1].params[k])


@pytest.mark.parametrize("towards", ["origin", "w_pre"])
def test_engine_equals_plain_pytorch_loop(towards):
    """Dropout-free member with wdecay(u, 0.05): the engine equals nn.Module + torch.optim.Adam on
    ``L(w) + (0.05/2) ||w - u||^2`` over the Linear weights, with the same schedule and batches."""
    x, y = _task()
    w0 = _params(seed=3)
    u = None if towards == "origin" else {k: v + 0.01 for k, v in _params(seed=4).items()}
    lam = 0.05
    eng = engine.train_ensemble(
        w0,
        [engine.Member(wdecay=lam, data_seed=7)],
        x,
        y,
        epochs=2,
        lr=2e-3,
        batch_size=32,
        warmup=0.1,
        wdecay_target=u,
        device="cpu",
    )

    net = mlp.MLP().double()
    net.load_state_dict(w0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-8)
    g = torch.Generator().manual_seed(7)
    total, step = 2 * math.ceil(480 / 32), 0
    for _ in range(2):
        order = torch.randperm(480, generator=g)
        for s in range(0, 480, 32):
            idx = order[s : s + 32]
            for group in opt.param_groups:
                group["lr"] = 2e-3 * engine.lr_factor(step, total, 0.1)
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
    m = engine.Member(mixout=0.4, mask_seed=11)
    streams = engine._MaskStreams([m], 32, 1)
    _, mix = streams.masks(0, 32, DT)
    params = {k: v.unsqueeze(0).clone().requires_grad_(True) for k, v in w0.items()}
    F.cross_entropy(mlp.forward(params, x.unsqueeze(0), mix=mix, target=target)[0], y).backward()

    net = mlp.MLP().double()
    net.load_state_dict(w0)
    for name, cols in (("fc2", mix[0]), ("fc3", mix[1])):
        lin = MixLinear.from_linear(getattr(net, name), p=0.4, target=target[f"{name}.weight"])
        keep = cols.view(-1) > 0  # the engine's mask, fed to the module through a fixed generator
        lin.forward = _forward_with_mask(lin, keep)
        setattr(net, name, lin)
    F.cross_entropy(net(x), y).backward()
    for k, v in net.named_parameters():
        torch.testing.assert_close(params[k].grad[0], v.grad, rtol=0, atol=1e-12)
    # d Phi / d w = mask / (1 - p): a mixed column gets no gradient, kept ones are scaled by 1/(1-p)
    mixed = mix[0].view(-1) == 0
    assert mixed.any() and params["fc2.weight"].grad[0][:, mixed].abs().max() == 0


def test_mask_rates_and_scaling():
    """Dropout masks are per example, mixout masks per batch; keep rates match 1 - p (5 sigma)."""
    members = [engine.Member(dropout=0.3, mask_seed=1), engine.Member(mixout=0.6, mask_seed=2)]
    s = engine._MaskStreams(members, 32, 200)
    drops, mixes = zip(*(s.masks(t, 32) for t in range(200)), strict=False)
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
        engine.train_ensemble(w0, [], x, y, epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="no target"):
        engine.train_ensemble(w0, [engine.Member(mixout=0.5)], x, y, epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="64 rows but y has 63"):
        engine.train_ensemble(w0, [engine.Member()], x, y[:63], epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        engine.Member(dropout=1.5)
    with pytest.raises(ValueError, match="drop every unit"):
        engine.Member(mixout=1.0)
    with pytest.raises(ValueError, match="one p or a pair"):
        engine.Member(dropout=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="wdecay must be"):
        engine.Member(wdecay=-1)


def test_evaluate_and_distances():
    x, y = _task(n=100)
    w0 = _params()
    stacked = mlp.stack(w0, 2)
    stacked["fc2.weight"][1] += 0.1
    ev = engine.evaluate(stacked, x, y, chunk=33)
    logits = mlp.forward(w0, x)
    assert ev["acc"][0] == (logits.argmax(1) == y).double().mean()
    torch.testing.assert_close(ev["loss"][0], F.cross_entropy(logits, y).double(), rtol=0, atol=1e-12)
    d = mlp.squared_distances(stacked, w0)
    assert (
        d["all"][0] == 0 and d["fc2"][1] == pytest.approx(0.01 * 300 * 100) and d["mixed"][1] == d["all"][1]
    )


def test_loss_and_grad_equals_autograd():
    """The engine's hand-written backward = autograd through ``mlp.forward`` (float64), with
    dropout and mixout masks, a mixed target, and batches shared by groups of members."""
    E, B = 5, 7
    g = torch.Generator().manual_seed(0)
    params = {
        k: v.to(DT) + 0.05 * torch.randn(v.shape, generator=g, dtype=DT)
        for k, v in mlp.init_params(E, 0).items()
    }
    target = {k: v[0] + 0.03 * torch.randn(v[0].shape, generator=g, dtype=DT) for k, v in params.items()}
    y = torch.randint(0, 10, (E, B), generator=g)
    drop = tuple(torch.bernoulli(torch.full((E, B, w), 0.7, dtype=DT), generator=g) / 0.7 for w in (300, 100))
    mix = tuple(torch.bernoulli(torch.full((E, 1, w), 0.6, dtype=DT), generator=g) / 0.6 for w in (300, 100))
    x = torch.randn(E, B, 784, dtype=DT, generator=g)
    shared = x[:2]  # members [0, 3) see shared[0], [3, 5) see shared[1]
    per_member = torch.cat([shared[0].expand(3, B, 784), shared[1].expand(2, B, 784)])
    cases = [
        (x, None, x, drop, mix),
        (x[0], None, x[0], None, None),
        (shared, [(0, 3), (3, 5)], per_member, drop, mix),
    ]
    for xin, groups, x_each, d, m in cases:
        leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        logits = mlp.forward(leaf, x_each, drop=d, mix=m, target=target)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(E, B).mean(1)
        losses.sum().backward()
        out = {k: torch.full_like(v, float("nan")) for k, v in params.items()}  # every entry overwritten
        got, grads = mlp.loss_and_grad(params, xin, y, d, m, target, groups=groups, out=out)
        assert grads is out
        torch.testing.assert_close(got, losses.detach(), rtol=0, atol=1e-13)
        for k in mlp.PARAM_NAMES:
            torch.testing.assert_close(grads[k], leaf[k].grad, rtol=0, atol=1e-13)


def test_workers_give_the_same_numbers():
    """Members split over two worker threads train exactly as in one ensemble (float64), and the
    caller sees them in its own order, also at every epoch end."""
    x, y = _task()
    w0 = _params()
    target = {k: v + 0.01 for k, v in w0.items()}
    kw = dict(epochs=2, lr=1e-3, target=target, device="cpu")
    seen = {}
    one = engine.train_ensemble(w0, MEMBERS, x, y, **kw)
    threads = torch.get_num_threads()
    two = engine.train_ensemble(
        w0,
        MEMBERS,
        x,
        y,
        workers=2,
        **kw,
        on_epoch_end=lambda ep, p: seen.update({ep: {k: v.clone() for k, v in p.items()}}),
    )
    assert torch.get_num_threads() == threads  # restored
    for k in mlp.PARAM_NAMES:
        torch.testing.assert_close(two.params[k], one.params[k], rtol=0, atol=1e-11)
        assert torch.equal(seen[1][k], two.params[k])
    torch.testing.assert_close(two.train_loss, one.train_loss, rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="workers must be"):
        engine.train_ensemble(w0, MEMBERS, x, y, workers=0, **kw)


def test_mask_streams_do_not_depend_on_the_ensemble():
    """A member's masks are the same alone and inside any ensemble, block after block."""
    ens = engine._MaskStreams(MEMBERS, 32, 40)
    alone = [engine._MaskStreams([m], 32, 40) for m in MEMBERS]
    for t in range(40):
        rows = 32 if t % 20 else 17  # a short batch takes the first rows' masks
        drop, mix = ens.masks(t, rows, DT)
        for e, s in enumerate(alone):
            d1, m1 = s.masks(t, rows, DT)
            for a, b in zip(
                drop,
                d1 if d1 is not None else [torch.ones(1, rows, w, dtype=DT) for w in (300, 100)],
                strict=False,
            ):
                assert torch.equal(a[e], b[0])
            for a, b in zip(
                mix,
                m1 if m1 is not None else [torch.ones(1, 1, w, dtype=DT) for w in (300, 100)],
                strict=False,
            ):
                assert torch.equal(a[e], b[0])


def test_stacked_init_targets_and_workers_equal_solo_runs():
    """Per-member (stacked) init, mixout target and wdecay target, members whose data seeds
    interleave, two workers: each member still trains exactly as alone (float64)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(160, 784, dtype=DT, generator=g), torch.randint(0, 10, (160,), generator=g)
    members = [
        engine.Member(mixout=0.3, wdecay=0.1, data_seed=1, mask_seed=1),
        engine.Member(dropout=0.2, data_seed=0, mask_seed=2),
        engine.Member(mixout=0.5, data_seed=1, mask_seed=3),
        engine.Member(wdecay=0.05, data_seed=2, mask_seed=4),
    ]
    init = {k: v.to(DT) for k, v in mlp.init_params(4, 0).items()}
    tgt = {k: v + 0.01 for k, v in init.items()}
    wdt = {k: v - 0.02 for k, v in init.items()}
    ens = engine.train_ensemble(
        init, members, x, y, epochs=2, lr=1e-3, target=tgt, wdecay_target=wdt, device="cpu", workers=2
    )
    for e, m in enumerate(members):
        one = {k: v[e : e + 1] for k, v in init.items()}
        solo = engine.train_ensemble(
            one,
            [m],
            x,
            y,
            epochs=2,
            lr=1e-3,
            device="cpu",
            target={k: v[e : e + 1] for k, v in tgt.items()},
            wdecay_target={k: v[e : e + 1] for k, v in wdt.items()},
        )
        for k in mlp.PARAM_NAMES:
            torch.testing.assert_close(ens.params[k][e], solo.params[k][0], rtol=0, atol=1e-11)


def test_adam_fallback_without_fused_kernel_is_the_same_update(monkeypatch):
    """Where torch has no fused Adam kernel (older torch on the CPU), the foreach path is used and
    gives the same training run."""
    x, y = _task(n=96)
    w0 = _params()
    kw = dict(epochs=1, lr=1e-3, target=w0, device="cpu")
    fused = engine.train_ensemble(w0, MEMBERS[:3], x, y, **kw)

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("no fused Adam here")

    monkeypatch.setattr(torch, "_fused_adam_", no_kernel)
    plain = engine.train_ensemble(w0, MEMBERS[:3], x, y, **kw)
    for k in mlp.PARAM_NAMES:
        torch.testing.assert_close(plain.params[k], fused.params[k], rtol=0, atol=1e-12)


def test_run_options_validate_and_default():
    import dataclasses
    import os

    o = engine.RunOptions()
    assert (o.device, o.workers, o.chunk, o.progress) == ("auto", None, None, True)
    assert o.n_workers == engine.default_workers() == min(2, os.cpu_count() or 1)
    assert o.chunk_or(17) == 17 and engine.RunOptions(chunk=3).chunk_or(17) == 3
    assert engine.RunOptions(workers=3).n_workers == 3
    for name in ("workers", "chunk"):
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ValueError, match=f"{name} must be a positive integer or None"):
                engine.RunOptions(**{name: bad})
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.chunk = 2


def _forward_with_mask(lin, keep):
    """``lin``'s forward with the mixed weight of a fixed mask ``keep`` (the engine's)."""
    return lambda h: F.linear(
        h, mixing.mixture(lin.weight, lin.target, keep.to(DT).view(1, -1), 0.6), lin.bias
    )

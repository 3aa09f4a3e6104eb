"""Tests of mixout as modules (mixout_theory.modules): MixLinear (eq. 8 of Lee, Cho, Kang, ICLR 2020,
on an nn.Linear weight), the model converter mixout_model and its inverse unmix_model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixout_theory import mixing
from mixout_theory.modules import MixLinear, mixed_layer_names, mixout_model, unmix_model


@pytest.fixture
def x_batch(gen):
    """``x_batch(n=5, d=4, seed=0, dtype=float32)``: a seeded standard-normal batch of inputs."""

    def make(n=5, d=4, seed=0, dtype=torch.float32):
        return torch.randn(n, d, generator=gen(seed), dtype=dtype)

    return make


# ----------------------------------------------------------------------------------------- MixLinear


def test_mixlinear_is_a_linear_with_same_init_and_names():
    torch.manual_seed(0)
    ref = nn.Linear(4, 3)
    torch.manual_seed(0)
    m = MixLinear(4, 3, p=0.3)
    assert isinstance(m, nn.Linear)
    assert torch.equal(m.weight, ref.weight) and torch.equal(m.bias, ref.bias)
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert m.target is None and "target" not in m.state_dict()
    assert "target=zero" in repr(m) and "p=0.3" in repr(m)
    assert MixLinear(4, 3, bias=False).bias is None


def test_mixlinear_p_validated_at_construction_and_assignment():
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="p must lie"):
            MixLinear(4, 3, p=bad)
    with pytest.raises(TypeError, match="p must be"):
        MixLinear(4, 3, p="0.5")
    m = MixLinear(4, 3, p=0.5)
    with pytest.raises(ValueError, match="p must lie"):
        m.p = 2.0
    assert m.p == 0.5
    m.p = 1
    assert m.p == 1.0 and isinstance(m.p, float)


def test_mixlinear_target_buffer_state_dict_and_casts(gen):
    u = torch.randn(3, 4, generator=gen(1), dtype=torch.float64)
    m = MixLinear(4, 3, p=0.5, target=u)  # float64 target cast to the float32 weight
    assert m.target.dtype == torch.float32 and torch.equal(m.target, u.float())
    assert "target" in dict(m.named_buffers())
    sd = m.state_dict()
    assert set(sd) == {"weight", "bias", "target", "_extra_state"} and torch.equal(sd["target"], u.float())
    assert "target=given" in repr(m)
    m2 = MixLinear(4, 3, p=0.5, target=torch.zeros(3, 4))
    m2.load_state_dict(sd)
    assert torch.equal(m2.target, m.target) and torch.equal(m2.weight, m.weight)
    for cast, dtype in ((nn.Module.half, torch.float16), (nn.Module.double, torch.float64)):
        c = cast(copy.deepcopy(m))
        assert c.target.dtype == dtype and c.weight.dtype == dtype
        assert torch.equal(c.target, u.float().to(dtype))
    assert m.to(torch.float64).target.dtype == torch.float64
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 4\)"):
        MixLinear(4, 3, p=0.5, target=torch.zeros(4, 3))
    u.add_(1.0)  # the stored target is a copy
    assert not torch.equal(m.target, u)


def test_eval_mode_is_plain_linear(gen, x_batch):
    u = torch.randn(3, 4, generator=gen(2))
    m = MixLinear(4, 3, p=0.9, target=u).eval()
    x = x_batch()
    state = torch.random.get_rng_state()
    assert torch.equal(m(x), F.linear(x, m.weight, m.bias))
    assert torch.equal(state, torch.random.get_rng_state())


def test_train_forward_is_mixout_of_weight_bias_never_mixed(gen, x_batch):
    u = torch.randn(3, 4, generator=gen(2))
    m = MixLinear(4, 3, p=0.5, target=u)
    x = x_batch()
    m.generator = gen(7)
    y = m(x)
    assert torch.equal(y, F.linear(x, mixing.mixout(m.weight, u, 0.5, generator=gen(7)), m.bias))
    # p = 1: the weight is exactly the target, the bias is untouched and gets its full gradient
    m.p = 1.0
    y = m(x)
    assert torch.equal(y, F.linear(x, u, m.bias))
    y.sum().backward()
    assert torch.equal(m.bias.grad, torch.full((3,), float(x.shape[0])))
    assert torch.equal(m.weight.grad, torch.zeros_like(m.weight))
    assert m.target.grad is None and not m.target.requires_grad
    # target None = dropout(p) on the input neurons, with one mask for the whole batch
    d = MixLinear(4, 3, p=0.5)
    d.generator = gen(3)
    mask = mixing.neuron_mask(d.weight, 0.5, gen(3))
    assert torch.allclose(d(x), F.linear(x * mask / 0.5, d.weight, d.bias), rtol=1e-6, atol=1e-6)


def test_fresh_mask_each_call_and_seeded_determinism(gen, x_batch):
    m = MixLinear(40, 3, p=0.5, target=torch.zeros(3, 40))
    x = x_batch(d=40)
    m.generator = gen(0)
    y1, y2 = m(x), m(x)
    assert not torch.equal(y1, y2)  # P(same mask) = 2^-40
    m.generator = gen(0)
    assert torch.equal(m(x), y1) and torch.equal(m(x), y2)


def test_exact_gradient_through_module(gen, x_batch):
    m = MixLinear(6, 2, p=0.25, target=torch.randn(2, 6, generator=gen(4))).double()
    x = x_batch(d=6, dtype=torch.float64)
    m.generator = gen(9)
    mask = mixing.neuron_mask(m.weight, 0.25, gen(9))
    m(x).pow(2).sum().backward()
    w_eff = mixing.mixture(m.weight.detach(), m.target, mask, 0.75)
    g_eff = 2 * (F.linear(x, w_eff, m.bias.detach())).T @ x  # dL/dW_eff
    assert torch.allclose(m.weight.grad, g_eff * mask / 0.75, rtol=1e-12, atol=1e-12)


def test_mixlinear_forward_is_one_mixout_linear_call_and_has_no_kernel_choice(gen, x_batch):
    """The C++ operator left the package (benchmarks/cpp_prototype): MixLinear takes no ``kernel``,
    has no such attribute, and its training forward is :func:`mixing.mixout_linear`, bit for bit."""
    with pytest.raises(TypeError, match="kernel"):
        MixLinear(4, 3, p=0.5, kernel="cpp")
    with pytest.raises(TypeError, match="kernel"):
        MixLinear.from_linear(nn.Linear(4, 3), p=0.5, kernel="cpp")
    for target in (None, torch.randn(3, 4, generator=gen(6))):
        m = MixLinear(4, 3, p=0.5, target=target)
        assert not hasattr(m, "kernel") and "kernel" not in repr(m)
        x = x_batch()
        m.generator = gen(5)
        y = m(x)
        assert torch.equal(y, mixing.mixout_linear(x, m.weight, m.bias, m.target, 0.5, True, gen(5)))


# --------------------------------------------------------------------------------------- from_linear


def test_from_linear_keeps_values_dtype_flags_and_rng(x_batch):
    torch.manual_seed(1)
    lin = nn.Linear(5, 4, dtype=torch.float64)
    lin.bias.requires_grad_(False)
    lin.eval()
    state = torch.random.get_rng_state()
    m = MixLinear.from_linear(lin, 0.6)
    assert torch.equal(state, torch.random.get_rng_state())  # no random initialisation
    assert type(m) is MixLinear and m.p == 0.6 and not m.training
    assert m.weight.dtype == torch.float64 and m.weight.device == lin.weight.device
    assert torch.equal(m.weight, lin.weight) and torch.equal(m.bias, lin.bias)
    assert m.weight is not lin.weight and m.weight.requires_grad and not m.bias.requires_grad
    assert torch.equal(m.target, lin.weight) and m.target.data_ptr() != lin.weight.data_ptr()
    assert "target=w_pre" in repr(m)
    x = x_batch(d=5, dtype=torch.float64)
    assert torch.equal(m(x), lin(x))  # eval mode: same outputs
    with torch.no_grad():
        m.weight.add_(1.0)
    assert torch.equal(m.target, lin.weight)  # the target is a snapshot, the copy independent
    shared = MixLinear.from_linear(lin, 0.6, share_parameters=True)
    assert shared.weight is lin.weight and shared.bias is lin.bias
    custom = MixLinear.from_linear(lin, 0.2, target=torch.zeros(4, 5))
    assert torch.equal(custom.target, torch.zeros(4, 5, dtype=torch.float64))
    assert "target=given" in repr(custom)
    nobias = MixLinear.from_linear(nn.Linear(5, 4, bias=False), 0.1)
    assert nobias.bias is None
    with pytest.raises(TypeError, match="nn.Linear"):
        MixLinear.from_linear(nn.Conv1d(1, 1, 1), 0.1)
    with pytest.raises(ValueError, match="p must lie"):
        MixLinear.from_linear(lin, 1.5)


def test_to_linear_round_trip():
    m = MixLinear(4, 3, p=0.5, target=torch.zeros(3, 4))
    lin = m.to_linear()
    assert type(lin) is nn.Linear
    assert torch.equal(lin.weight, m.weight) and lin.weight is not m.weight
    assert m.to_linear(share_parameters=True).weight is m.weight


# ----------------------------------------------------------------------------------------- converter


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.drop = nn.Dropout(0.3)
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        return self.norm(x + self.drop(torch.relu(self.proj(x))))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.heads = nn.ModuleDict(
            {"a": nn.Sequential(nn.Linear(6, 3), nn.Dropout(0.1)), "b": nn.Linear(6, 2)}
        )
        self.attn = nn.MultiheadAttention(6, 2)  # its out_proj is never called as a module

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return torch.cat([self.heads["a"](h), self.heads["b"](h)], dim=-1)


NESTED_LINEARS = ["inp", "blocks.0.proj", "blocks.1.proj", "heads.a.0", "heads.b"]
NESTED_MIXED = NESTED_LINEARS + ["attn"]  # the attention's in_proj_weight and out_proj, as one layer


class SelfAttention(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        a = self.dropout(torch.softmax(self.query(x) @ self.key(x).transpose(-1, -2), dim=-1))
        return a @ self.value(x)


class DenseOut(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.dense = nn.Linear(i, o)
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(o)

    def forward(self, h, res):
        return self.LayerNorm(self.dropout(self.dense(h)) + res)


class Attention(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.self = SelfAttention(h)  # HuggingFace names this submodule "self"
        self.output = DenseOut(h, h)

    def forward(self, x):
        return self.output(self.self(x), x)


class Layer(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.attention = Attention(h)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(h, 2 * h)
        self.output = DenseOut(2 * h, h)

    def forward(self, x):
        a = self.attention(x)
        return self.output(torch.nn.functional.gelu(self.intermediate.dense(a)), a)


class TinyBert(nn.Module):
    def __init__(self, h=8, n_layers=2, n_labels=2):
        super().__init__()
        self.embeddings = nn.Embedding(20, h)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([Layer(h) for _ in range(n_layers)])
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(h, h)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(h, n_labels)

    def forward(self, ids):
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.classifier(self.dropout(torch.tanh(self.pooler.dense(x[:, 0]))))


def linear_names(model):
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def dropout_ps(model):
    return [m.p for m in model.modules() if isinstance(m, nn.Dropout)]


def test_convert_nested_model_all_linears():
    torch.manual_seed(0)
    model = Nested().eval()
    x = torch.randn(3, 4)
    y0 = model(x)
    with pytest.warns(UserWarning, match="all 3 dropout modules get p=0"):  # no example_inputs
        mixed = mixout_model(model, 0.7)
    assert mixed is not model and linear_names(model) == NESTED_LINEARS
    assert mixed_layer_names(mixed) == NESTED_MIXED
    assert mixed_layer_names(model) == []  # original untouched (inplace=False)
    assert dropout_ps(mixed) == [0.0, 0.0, 0.0] and dropout_ps(model) == [0.3, 0.3, 0.1]
    assert type(mixed.attn.out_proj) is not MixLinear  # mixed by the attention, which never calls it
    for name in NESTED_LINEARS:
        layer = mixed.get_submodule(name)
        assert layer.p == 0.7 and torch.equal(layer.target, model.get_submodule(name).weight)
    assert torch.equal(mixed.attn.out_proj_target, model.attn.out_proj.weight)
    assert torch.equal(mixed(x), y0)  # eval mode: the same function
    mixed.train()
    assert torch.allclose(mixed(x), y0, rtol=0, atol=1e-6)  # w = u = w_pre: Phi = w_pre, no noise yet
    with torch.no_grad():
        mixed.heads.b.weight.add_(0.5)
    assert not torch.allclose(mixed(x)[:, 3:], y0[:, 3:], atol=0.1)


def test_convert_inplace_keeps_optimizer_and_dropout_options():
    torch.manual_seed(0)
    model = Nested()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = mixout_model(model, 0.5, ["blocks.1.proj"], dropout_p=None, inplace=True)
    assert out is model and mixed_layer_names(model) == ["blocks.1.proj"]
    assert dropout_ps(model) == [0.3, 0.3, 0.1]  # None keeps the dropouts
    w_pre = model.blocks[1].proj.target.clone()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()  # the optimizer built before the conversion still owns the weights
    assert not torch.equal(model.blocks[1].proj.weight, w_pre)
    assert torch.equal(model.blocks[1].proj.target, w_pre)  # the target never trains
    again = mixout_model(model, 0.2, "heads.b", dropout_p=0.05, dropouts="all")
    assert dropout_ps(again) == [0.05, 0.05, 0.05]
    assert mixed_layer_names(again) == ["blocks.1.proj", "heads.b"]
    with pytest.raises(ValueError, match="p must lie"):
        mixout_model(model, 0.5, dropout_p=1.5)
    with pytest.raises(ValueError, match="p must lie"):
        mixout_model(model, -0.5)


def test_convert_hf_like_model_by_names_and_predicate(gen):
    torch.manual_seed(0)
    model = TinyBert().eval()
    ids = torch.randint(0, 20, (4, 5), generator=gen(0))
    y0 = model(ids)
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.1.output.dense", "classifier"]
    m1 = mixout_model(model, 0.8, names, dropouts="all")
    assert mixed_layer_names(m1) == names
    assert isinstance(m1.encoder.layer[0].attention.get_submodule("self").query, MixLinear)
    assert torch.equal(m1(ids), y0)
    assert all(p == 0.0 for p in dropout_ps(m1))

    def pred(name, module):
        return ".attention.self." in name and module.out_features == 8

    m2 = mixout_model(model, 0.9, pred, dropouts="all")
    expected = [f"encoder.layer.{i}.attention.self.{k}" for i in range(2) for k in ("query", "key", "value")]
    assert mixed_layer_names(m2) == expected
    calls = []
    m_gen = mixout_model(model, 0.5, (n for n in names), dropout_p=None)  # any iterable of names
    mixout_model(model, 0.5, lambda n, m: calls.append(n) or True, dropouts="all")
    assert mixed_layer_names(m_gen) == names
    assert calls == ["embeddings"] + linear_names(model)  # one call per convertible layer
    m3 = mixout_model(model, 0.1, dropouts="all")  # None: every layer but the (opt-in) embeddings
    assert len(mixed_layer_names(m3)) == len(linear_names(model)) == 2 * 6 + 2
    assert torch.equal(m3(ids), y0)


def test_wrong_names_and_empty_selection():
    model = TinyBert()
    with pytest.raises(ValueError) as e:
        mixout_model(model, 0.5, ["encoder.layer.0.attention.self.qury", "classifier"])
    msg = str(e.value)
    assert "qury" in msg and "'encoder.layer.0.attention.self.query'" in msg
    with pytest.raises(ValueError, match=r"'encoder.layer.0.attention' \(Attention\)"):
        mixout_model(model, 0.5, ["encoder.layer.0.attention"])
    with pytest.raises(ValueError, match="LayerNorm"):
        mixout_model(model, 0.5, "encoder.layer.1.output.LayerNorm")
    with pytest.raises(ValueError, match="no layer selected.*'classifier'"):
        mixout_model(model, 0.5, [])
    with pytest.raises(ValueError, match="no layer selected"):
        mixout_model(model, 0.5, lambda n, m: False)
    with pytest.raises(ValueError, match=r"selected to mix. Mixable layers: \(none\)"):
        mixout_model(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(TypeError, match="strings"):
        mixout_model(model, 0.5, [3])
    with pytest.raises(TypeError, match="nn.Module"):
        mixout_model("model", 0.5)
    mixed = mixout_model(model, 0.5, ["classifier"], dropouts="all")
    with pytest.raises(ValueError, match=r"'classifier' \(MixLinear\)"):  # already mixed
        mixout_model(mixed, 0.5, ["classifier"])
    with pytest.raises(
        ValueError,
        match=r"'attn.out_proj' \(NonDynamicallyQuantizableLinear, part of the "
        r"MultiheadAttention 'attn'\)",
    ):
        mixout_model(Nested(), 0.5, ["attn.out_proj"])
    with pytest.raises(TypeError, match="needs p"):
        mixout_model(model)
    assert mixed_layer_names(model) == []  # failed calls change nothing


def test_shared_and_tied_layers_stay_shared():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    tied = nn.Linear(4, 4)
    tied.weight = model[0].weight
    model.append(tied)
    mixed = mixout_model(model, 0.5)
    assert mixed[0] is mixed[2] and isinstance(mixed[0], MixLinear)
    assert mixed[3].weight is mixed[0].weight  # deepcopy and conversion keep the tie
    assert mixed_layer_names(mixed) == ["0", "3"]
    by_alias = mixout_model(model, 0.5, ["2"])
    assert by_alias[0] is by_alias[2] and isinstance(by_alias[0], MixLinear)


def test_root_linear_and_unmix_root():
    lin = nn.Linear(3, 2)
    m = mixout_model(lin, 0.4)
    assert type(m) is MixLinear and torch.equal(m.target, lin.weight)
    back = unmix_model(m)
    assert type(back) is nn.Linear and torch.equal(back.weight, lin.weight)


def test_unmix_round_trip_keeps_trained_weights(gen):
    torch.manual_seed(0)
    model = TinyBert()
    mixed = mixout_model(model, 0.6, dropouts="all")
    opt = torch.optim.SGD(mixed.parameters(), lr=0.5)
    ids = torch.randint(0, 20, (4, 5), generator=gen(1))
    for _ in range(3):
        opt.zero_grad()
        mixed(ids).pow(2).sum().backward()
        opt.step()
    mixed.eval()
    y = mixed(ids)
    plain = unmix_model(mixed)
    assert mixed_layer_names(plain) == [] and mixed_layer_names(mixed) != []
    assert not any(isinstance(m, MixLinear) for m in plain.modules())
    assert linear_names(plain) == linear_names(model)
    assert all(type(plain.get_submodule(n)) is nn.Linear for n in linear_names(model))
    assert "target" not in "".join(plain.state_dict())
    trained = mixed.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, trained[k])
    q0 = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(plain.state_dict()[q0], model.state_dict()[q0])  # really trained
    assert torch.equal(plain(ids), y)
    inplace = unmix_model(mixed, inplace=True)
    assert inplace is mixed and mixed_layer_names(mixed) == []
    with pytest.raises(TypeError, match="nn.Module"):
        unmix_model(None)

"""mixout_model on real models: a small CNN, ``nn.TransformerEncoderLayer``, and (with the ``models``
extra installed) BERT and GPT-2 built from tiny ``transformers`` configs (nothing is downloaded).

For each model: evaluation equals the plain model; one Adam step moves the trained weights and leaves
the targets, frozen parameters and the original model alone; gradients are exact (gradcheck in float64
on one mixed weight); the state dict carries p and rebuilds the mixed model (``from_state_dict``);
checkpointed gradients equal plain ones with the layers' own generators; and unmix + save / load gives
the same outputs. Then what is specific: which dropouts are set, which layers are listed as skipped.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from mixout_theory.layers import MixConv1D, MixEmbedding, MixLinear, MixMultiheadAttention, MixoutLayer
from mixout_theory.modules import UnmixedLayerWarning, mixed_layer_names, mixout_model, unmix_model


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.ReLU(),
            nn.Dropout2d(0.2),
            nn.Conv2d(4, 6, 3, groups=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


class Model:
    """A plain model, its inputs, its loss, how to checkpoint it, and how to save / load it plainly."""

    def __init__(self, name):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        self.hf = name in ("bert", "gpt2")
        if name == "cnn":
            self.plain, self.inputs = CNN(), (torch.randn(2, 3, 8, 8, generator=g),)
        elif name == "encoder-layer":
            self.plain = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1, batch_first=True)
            self.inputs = (torch.randn(2, 5, 8, generator=g),)
        else:
            transformers = pytest.importorskip("transformers")
            ids = torch.randint(1, 20, (2, 5), generator=g)
            if name == "bert":
                config = transformers.BertConfig(
                    vocab_size=20,
                    hidden_size=8,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    intermediate_size=16,
                    max_position_embeddings=16,
                    num_labels=3,
                )
                self.plain = transformers.BertForSequenceClassification(config)
            else:
                config = transformers.GPT2Config(
                    vocab_size=20,
                    n_embd=8,
                    n_layer=2,
                    n_head=2,
                    n_positions=16,
                    bos_token_id=0,
                    eos_token_id=0,
                )
                self.plain = transformers.GPT2LMHeadModel(config)
            self.inputs = {"input_ids": ids}

    def out(self, model, inputs=None):
        inputs = self.inputs if inputs is None else inputs
        y = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
        return y.logits if self.hf else y

    def loss(self, model):
        return self.out(model).double().pow(2).mean()

    def checkpointed_loss(self, model, reentrant):
        kwargs = {"use_reentrant": reentrant}
        if self.hf:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            try:
                return self.loss(model)
            finally:
                getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
        x = tuple(t.clone().requires_grad_(reentrant) for t in self.inputs)  # reentrant: an input with grad
        return checkpoint(lambda *x: self.out(model, x), *x, **kwargs).double().pow(2).mean()

    def save_load(self, plain, folder):
        if self.hf:
            plain.save_pretrained(folder)
            return type(plain).from_pretrained(folder)
        torch.save(plain.state_dict(), folder / "model.pt")
        fresh = copy.deepcopy(self.plain)
        fresh.load_state_dict(torch.load(folder / "model.pt"))
        return fresh


MODELS = ["cnn", "encoder-layer", "bert", "gpt2"]
#: What layers=None mixes in each (the first few names and their classes).
EXPECTED = {
    "cnn": {"features.0": "MixConv2d", "features.3": "MixConv2d", "head": "MixLinear"},
    "encoder-layer": {"self_attn": "MixMultiheadAttention", "linear1": "MixLinear", "linear2": "MixLinear"},
    "bert": {"bert.encoder.layer.0.attention.self.query": "MixLinear", "classifier": "MixLinear"},
    "gpt2": {
        "transformer.h.0.attn.c_attn": "MixConv1D",
        "transformer.h.1.mlp.c_proj": "MixConv1D",
        "lm_head": "MixLinear",
    },
}


def mix(m: Model, p=0.3, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnmixedLayerWarning)  # nothing in these models is left unmixed
        return mixout_model(m.plain, p, example_inputs=m.inputs, **kw)


def seed_layers(model, seed):
    """Every mixout layer its own generator, seeded ``seed + i``; and torch's global one."""
    torch.manual_seed(seed)
    for i, layer in enumerate(x for x in model.modules() if isinstance(x, MixoutLayer)):
        layer.generator = torch.Generator().manual_seed(seed + i)


@pytest.fixture(params=MODELS)
def model(request):
    return Model(request.param), request.param


def test_layers_none_mixes_every_convertible_layer_and_eval_is_the_plain_model(model):
    m, name = model
    mixed = mix(m)
    types = {n: type(x).__name__ for n, x in mixed.named_modules()}
    assert {n: types[n] for n in EXPECTED[name]} == EXPECTED[name]
    assert not any(isinstance(x, MixEmbedding) for x in mixed.modules())  # embeddings are opt-in
    assert torch.equal(m.out(mixed.eval()), m.out(m.plain.eval()))
    if name == "gpt2":  # the tied head stays tied
        assert mixed.lm_head.weight is mixed.transformer.wte.weight


def test_one_adam_step_moves_what_it_should(model):
    """Exactly the entries with a gradient move: a unit mixed to its target this step gets none and
    stays; the targets, a frozen parameter and the original model never move."""
    m, name = model
    frozen = next(n for n, p in m.plain.named_parameters() if p.dim() == 1)
    m.plain.get_parameter(frozen).requires_grad_(False)
    before = copy.deepcopy(m.plain.state_dict())
    mixed = mix(m).train()
    opt = torch.optim.Adam([p for p in mixed.parameters() if p.requires_grad], lr=1e-2)
    targets = {k: v.clone() for k, v in mixed.state_dict().items() if k.endswith("target")}
    seed_layers(mixed, 0)
    m.loss(mixed).backward()
    has_grad = {k: p.grad != 0 for k, p in mixed.named_parameters() if p.grad is not None}
    opt.step()
    after = mixed.state_dict()
    assert targets and all(torch.equal(after[k], v) for k, v in targets.items())  # targets never train
    assert torch.equal(after[frozen], before[frozen]) and frozen not in has_grad
    for k, g in has_grad.items():
        assert torch.equal(after[k] != before[k], g), k
    mixed_weights = [k for k in has_grad if any(k.startswith(n + ".") for n in EXPECTED[name])]
    assert mixed_weights and all(has_grad[k].any() for k in mixed_weights)
    assert all(
        torch.equal(v, before[k]) for k, v in m.plain.state_dict().items()
    )  # the original is untouched


@pytest.mark.slow  # gradcheck through a whole model: ~8 s (cnn) to ~44 s (gpt2)
def test_gradients_are_exact_on_one_mixed_weight(model):
    m, name = model
    mixed = mix(m, p=0.4).double().train()
    layer = next(iter(EXPECTED[name]))
    path = next(n for n, _ in mixed.get_submodule(layer).named_parameters() if n.endswith("weight"))
    key = f"{layer}.{path}"
    inputs = m.inputs if m.hf else tuple(x.double() for x in m.inputs)

    def f(w):
        seed_layers(mixed, 3)  # the same masks (and the same attention dropout) at every evaluation
        if m.hf:
            return functional_call(mixed, {key: w}, (), inputs).logits[..., :2]
        return functional_call(mixed, {key: w}, inputs)[..., :2]

    w = mixed.get_parameter(key).detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-6)


def test_state_dict_rebuilds_the_mixed_model_with_its_p(model, tmp_path):
    m, name = model
    mixed = mix(m, p=0.3)
    mixed.get_submodule(next(iter(EXPECTED[name]))).p = 0.6  # one layer with its own p
    sd = mixed.state_dict()
    rebuilt = mixout_model(
        copy.deepcopy(m.plain), from_state_dict=sd, example_inputs=m.inputs
    )  # same dropouts
    assert mixed_layer_names(rebuilt) == mixed_layer_names(mixed)
    assert [x.p for x in rebuilt.modules() if isinstance(x, MixoutLayer)] == [
        x.p for x in mixed.modules() if isinstance(x, MixoutLayer)
    ]
    mixed.train(), rebuilt.train()
    seed_layers(mixed, 5)
    y1 = m.out(mixed)
    seed_layers(rebuilt, 5)
    assert torch.equal(m.out(rebuilt), y1)  # the same function in training too
    with pytest.raises(ValueError, match="holds no mixed layer"):
        mixout_model(m.plain, from_state_dict=m.plain.state_dict())
    with pytest.raises(ValueError, match="layers must be None"):
        mixout_model(m.plain, from_state_dict=sd, layers=["x"])
    legacy = {k: v for k, v in sd.items() if not k.endswith("_extra_state")}
    with pytest.raises(ValueError, match="without its p"):
        mixout_model(m.plain, from_state_dict=legacy, dropouts="all")
    assert {
        x.p
        for x in mixout_model(m.plain, 0.2, from_state_dict=legacy, dropouts="all").modules()
        if isinstance(x, MixoutLayer)
    } == {0.2}
    if m.hf:  # safetensors takes the mixed state dict as it is (tensors only)
        mixed.save_pretrained(tmp_path / "mixed")
        assert (tmp_path / "mixed" / "model.safetensors").exists()


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_gradients_equal_plain_ones_with_own_generators(model, reentrant):
    m, name = model
    mixed = mix(m, p=0.5).train()
    grads = []
    for run in (lambda x: m.checkpointed_loss(x, reentrant), m.loss):
        mixed.zero_grad()
        seed_layers(mixed, 11)
        run(mixed).backward()
        grads.append({k: p.grad.clone() for k, p in mixed.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-7), k


def test_unmix_then_save_and_load_gives_the_same_outputs(model, tmp_path):
    m, name = model
    mixed = mix(m, p=0.5).train()
    opt = torch.optim.SGD(mixed.parameters(), lr=0.1)
    seed_layers(mixed, 0)
    m.loss(mixed).backward()
    opt.step()
    plain = unmix_model(mixed).eval()
    assert not any(isinstance(x, MixoutLayer) for x in plain.modules())
    assert [type(x) for x in plain.modules()] == [type(x) for x in m.plain.modules()]
    loaded = m.save_load(plain, tmp_path).eval()
    assert torch.equal(m.out(loaded), m.out(mixed.eval()))


def test_only_the_dropouts_feeding_mixed_layers_are_set():
    m = Model("cnn")
    head_only = mixout_model(m.plain, 0.5, ["head"], example_inputs=m.inputs)
    assert [head_only.features[2].p, head_only.dropout.p] == [0.0, 0.0]  # both reach the head
    first = mixout_model(m.plain, 0.5, ["features.0"], example_inputs=m.inputs)
    assert [first.features[2].p, first.dropout.p] == [0.2, 0.3]  # after the only mixed layer
    enc = Model("encoder-layer")
    mixed = mix(enc)
    assert [mixed.dropout.p, mixed.dropout1.p, mixed.dropout2.p] == [
        0.0,
        0.0,
        0.1,
    ]  # dropout2 feeds the output
    assert mixed.self_attn.dropout == 0.1  # a float applied functionally: out of reach
    picked = mixout_model(enc.plain, 0.5, dropouts=lambda n, d: n == "dropout2")
    assert [picked.dropout.p, picked.dropout1.p, picked.dropout2.p] == [0.1, 0.1, 0.0]
    with pytest.warns(UserWarning, match="cannot be told without example_inputs, so all 3"):
        mixout_model(enc.plain, 0.5)
    with pytest.raises(ValueError, match="dropouts must be None, 'all' or a predicate"):
        mixout_model(enc.plain, 0.5, dropouts="some")
    state = torch.random.get_rng_state()
    mixout_model(enc.plain, 0.5, example_inputs=enc.inputs)
    assert torch.equal(state, torch.random.get_rng_state()) and enc.plain.training  # nothing consumed


def test_hf_dropouts_classifier_and_attention_probabilities_keep_their_p():
    m = Model("bert")
    mixed = mixout_model(m.plain, 0.5, lambda n, x: "classifier" not in n, example_inputs=m.inputs)
    assert mixed.dropout.p == 0.1  # feeds only the classifier, which is not mixed
    assert mixed.bert.embeddings.dropout.p == 0.0 and mixed.bert.encoder.layer[1].output.dropout.p == 0.0
    assert mixed.bert.encoder.layer[0].attention.self.dropout.p == 0.1  # read and applied functionally


def test_layers_that_cannot_be_mixed_are_listed():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.rnn = nn.LSTM(4, 4)
            self.bil = nn.Bilinear(4, 4, 2)
            self.norm = nn.LayerNorm(4)  # 1-D weights: not a layer to list
            self.emb = nn.Embedding(5, 4, max_norm=1.0)

    with pytest.warns(
        UnmixedLayerWarning, match=r"3 layer\(s\).*'rnn' \(LSTM\), 'bil' \(Bilinear\), 'emb' \(Embedding\)"
    ):
        mixed = mixout_model(Odd(), 0.5, dropouts="all")
    assert mixed_layer_names(mixed) == ["lin"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixout_model(Odd(), 0.5, ["lin"], dropouts="all")  # named: nothing to warn about
    with pytest.raises(ValueError, match=r"'rnn' \(LSTM\)"):
        mixout_model(Odd(), 0.5, ["rnn"])


def test_embeddings_are_mixed_when_chosen():
    m = Model("encoder-layer")
    model = nn.Sequential(nn.Embedding(10, 8), copy.deepcopy(m.plain))
    mixed = mixout_model(model, 0.5, lambda n, x: True, dropouts="all")
    assert isinstance(mixed[0], MixEmbedding) and isinstance(mixed[1].self_attn, MixMultiheadAttention)
    assert isinstance(MixConv1D(3, 2), MixoutLayer) and issubclass(MixLinear, nn.Linear)


def test_the_readme_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- readme-example:", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # it writes mixed.pt and finetuned/
    torch.manual_seed(0)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    transformers = pytest.importorskip("transformers")
    loaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "finetuned").eval()
    ids = scope["ids"]
    assert torch.equal(loaded(input_ids=ids).logits, scope["model"].eval()(input_ids=ids).logits)

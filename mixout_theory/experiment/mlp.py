"""The paper's 784-300-100-10 MLP (Section 4 / Supplement C.1), as a module and as a pure function.

Each hidden layer is ``Linear -> ReLU -> LayerNorm -> Dropout``; weights ~ N(0, 0.02^2), biases 0,
LayerNorm gain 1 and shift 0. The paper does not say whether dropout comes before or after
LayerNorm; we put it *after*, so that dropping a hidden unit is exactly dropping an input column of
the next Linear, and dropout(p) = mixout(0, p) on ``fc2`` / ``fc3`` up to when masks are drawn
(per example for dropout, per mini-batch for mixout). Mixout mixes ``fc2.weight`` (300->100) and
``fc3.weight`` (100->10), the weights leaving hidden neurons; ``fc1`` (784->300) only under the other
reading of the protocol, "every Linear" (:data:`MIXED_BY_LAYERS`), with dropout then on the inputs too.

:func:`forward` works on a dict of parameters with an optional leading *member* dimension, so the
same code runs one network or a stacked ensemble (:mod:`mixout_theory.experiment.engine`); it is
:func:`hidden1` followed by :func:`tail` (the part mixout changes, also used on its own to evaluate
many mixed weights at once). :func:`loss_and_grad` is the same function with a hand-written
backward, for the engine. The mixed weights of both come from :func:`mixout_theory.mixing.mixed_weight`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixout_theory.mixing import mixed_weight

SIZES = (784, 300, 100, 10)
INIT_STD = 0.02
LN_EPS = 1e-5
#: Parameter names in forward order (the ``state_dict`` keys of :class:`MLP`).
PARAM_NAMES = (
    "fc1.weight",
    "fc1.bias",
    "ln1.weight",
    "ln1.bias",
    "fc2.weight",
    "fc2.bias",
    "ln2.weight",
    "ln2.bias",
    "fc3.weight",
    "fc3.bias",
)
#: The weights that mixout mixes: those leaving the two hidden layers.
MIXED = ("fc2.weight", "fc3.weight")
#: Which weights each reading of "the layers mixout acts on" mixes: the hidden layers' outgoing
#: weights (the paper's description), or every Linear layer (fc1 too: mixout on the input pixels).
MIXED_BY_LAYERS = {"hidden": MIXED, "all": ("fc1.weight", *MIXED)}


class MLP(nn.Module):
    """The paper's MLP as an ordinary ``nn.Module`` (dropout on the two hidden layers; on the input
    pixels too with ``input_dropout``)."""

    def __init__(self, dropout: float = 0.0, sizes=SIZES, input_dropout: float = 0.0):
        super().__init__()
        d0, d1, d2, d3 = sizes
        self.drop0 = nn.Dropout(input_dropout)
        self.fc1, self.ln1, self.drop1 = nn.Linear(d0, d1), nn.LayerNorm(d1, eps=LN_EPS), nn.Dropout(dropout)
        self.fc2, self.ln2, self.drop2 = nn.Linear(d1, d2), nn.LayerNorm(d2, eps=LN_EPS), nn.Dropout(dropout)
        self.fc3 = nn.Linear(d2, d3)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Weights ~ N(0, 0.02^2), biases 0 (LayerNorm: gain 1, shift 0)."""
        with torch.no_grad():
            for fc in (self.fc1, self.fc2, self.fc3):
                fc.weight.normal_(0.0, INIT_STD, generator=generator)
                fc.bias.zero_()
            for ln in (self.ln1, self.ln2):
                ln.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # through its own submodules, so that mixout_model can swap fc2 / fc3 for MixLinear layers
        h = self.drop1(self.ln1(F.relu(self.fc1(self.drop0(x)))))
        h = self.drop2(self.ln2(F.relu(self.fc2(h))))
        return self.fc3(h)


def init_params(n_members: int | None = None, seed: int = 0, sizes=SIZES, device=None) -> dict:
    """Fresh parameters, stacked along a leading member dim when ``n_members`` is given.

    Member ``k`` of ``init_params(n, seed)`` equals ``init_params(None, seed + k)``.
    """
    if n_members is not None:
        members = [init_params(None, seed + k, sizes, device) for k in range(n_members)]
        return {k: torch.stack([m[k] for m in members]) for k in PARAM_NAMES}
    g = torch.Generator().manual_seed(seed)
    model = MLP(sizes=sizes)
    model.reset_parameters(generator=g)
    return {k: v.detach().clone().to(device) for k, v in model.state_dict().items()}


def stack(params: dict, n_members: int) -> dict:
    """Repeat one network's parameters ``n_members`` times along a new leading dim."""
    return {k: v.unsqueeze(0).expand(n_members, *v.shape).clone() for k, v in params.items()}


class EnsembleLinear(torch.autograd.Function):
    """``y[e] = h[e] W[e]^T + b[e]`` for every member ``e`` at once: one ``bmm`` each way.

    Autograd's own ``bmm`` backward would produce ``dW`` as ``(E, in, out)`` and copy it into the
    ``(E, out, in)`` layout of the weight; here ``dW = dy^T h`` is computed in place, in that layout.
    """

    @staticmethod
    def forward(ctx, h, weight, bias):  # h (E, B, in), weight (E, out, in), bias (E, out)
        ctx.save_for_backward(h, weight)
        return torch.baddbmm(bias.unsqueeze(-2), h, weight.transpose(-1, -2))

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        grad_h = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(-1, -2), h) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(-2) if ctx.needs_input_grad[2] else None
        if grad_w is not None and grad_w.shape != weight.shape:  # a target broadcast over members
            grad_w = grad_w.sum_to_size(weight.shape)
        return grad_h, grad_w, grad_b


def _linear(h, weight, bias):
    # h: (E, B, in) with weight (E, out, in), bias (E, out); or one network: h (B, in).
    return EnsembleLinear.apply(h, weight, bias) if h.dim() == 3 else F.linear(h, weight, bias)


def _layer_norm(h, gain, shift):
    return F.layer_norm(h, h.shape[-1:], eps=LN_EPS) * gain.unsqueeze(-2) + shift.unsqueeze(-2)


def hidden1(params: dict, x: torch.Tensor, w1: torch.Tensor | None = None) -> torch.Tensor:
    """The first hidden layer, ``LayerNorm(ReLU(fc1(x)))`` (before its dropout); ``w1`` replaces
    ``fc1.weight`` (a mixed one).

    ``x`` is ``(B, 784)`` or ``(E, B, 784)``; a 2-D ``x`` with stacked parameters is shared by every member.
    """
    w1 = params["fc1.weight"] if w1 is None else w1
    if x.dim() == 2 and w1.dim() == 3:
        x = x.unsqueeze(0).expand(w1.shape[0], *x.shape)
    a = F.relu(_linear(x, w1, params["fc1.bias"]))
    return _layer_norm(a, params["ln1.weight"], params["ln1.bias"])


def tail(
    params: dict,
    h1: torch.Tensor,
    w2: torch.Tensor | None = None,
    w3: torch.Tensor | None = None,
    dropout=None,
) -> torch.Tensor:
    """Logits from the first hidden layer's output on: ``fc3(dropout(LayerNorm(ReLU(fc2(h1)))))``.

    ``w2`` / ``w3`` replace ``fc2.weight`` / ``fc3.weight`` (e.g. mixed weights); stacked ``(S, ...)``
    weights with an ``(S, B, 300)`` ``h1`` evaluate ``S`` networks that share everything else.
    ``dropout``: a function applied to the second hidden layer (``None``: none).
    """
    w2 = params["fc2.weight"] if w2 is None else w2
    w3 = params["fc3.weight"] if w3 is None else w3
    h = _layer_norm(F.relu(_linear(h1, w2, params["fc2.bias"])), params["ln2.weight"], params["ln2.bias"])
    if dropout is not None:
        h = dropout(h)
    return _linear(h, w3, params["fc3.bias"])


def forward(
    params: dict,
    x: torch.Tensor,
    drop: tuple | None = None,
    mix: tuple | None = None,
    target: dict | None = None,
) -> torch.Tensor:
    """Logits of the MLP for parameters ``params`` (optionally stacked: every tensor ``(E, ...)``).

    ``x`` is ``(B, 784)`` or ``(E, B, 784)``. ``drop = (d1, d2)``: scaled activation masks for the
    two hidden layers (entries ``Bernoulli(1-p)/(1-p)``, shape ``(E, B, 300)`` / ``(E, B, 100)``).
    ``mix = (m2, m3)``: scaled column masks ``B/(1-p)`` of shape ``(E, 1, 300)`` / ``(E, 1, 100)`` for
    ``fc2.weight`` / ``fc3.weight``, mixed towards ``target`` by eq. 4: ``W_eff = u + m (W - u)``.
    ``None`` means no dropout / no mixing (evaluation). Equal to ``tail(params, hidden1(params, x) * d1,
    Phi_2, Phi_3, dropout=lambda h: h * d2)``; :class:`MLP` is the same network as modules
    (``tests/experiment/test_engine.py`` checks that they agree). Triples ``(d0, d1, d2)`` /
    ``(m1, m2, m3)`` also mask the input pixels (``(E, B, 784)``) / mix ``fc1.weight`` (``(E, 1, 784)``);
    any entry may be None.
    """
    (d0, d1, d2), (m1, m2, m3) = _masks(drop), _masks(mix)
    # eq. 4, Phi = u + (M / mu) (w - u), for each mixed weight
    w1, w2, w3 = (
        None if m is None else mixed_weight(params[n], target[n], m)
        for n, m in (("fc1.weight", m1), ("fc2.weight", m2), ("fc3.weight", m3))
    )
    if d0 is not None:
        x = x * d0
    h = hidden1(params, x, w1)
    if d1 is not None:
        h = h * d1
    return tail(params, h, w2, w3, None if d2 is None else (lambda h2: h2 * d2))


def _masks(masks) -> tuple:
    """``(input, hidden 1, hidden 2)`` masks from None, a pair (hidden layers) or a triple."""
    if masks is None:
        return None, None, None
    return tuple(masks) if len(masks) == 3 else (None, *masks)


def _groups_of(x: torch.Tensor, n_members: int, groups):
    """``[(start, stop, x_g)]``: member ranges and the ``(B, in)`` input they share, or None if
    every member has its own rows (``x`` of shape ``(E, B, in)``)."""
    if groups is not None:
        if x.dim() != 3 or len(groups) != x.shape[0]:
            raise ValueError(f"groups: {len(groups)} member ranges for inputs of shape {tuple(x.shape)}")
        return [(a, b, x[g]) for g, (a, b) in enumerate(groups)]
    if x.dim() == 2:
        return [(0, n_members, x)]
    return None


def reused_buffer(work: dict | None, name: str, shape: tuple, dtype, device) -> torch.Tensor:
    """An uninitialised tensor kept in ``work`` under ``(name, shape)`` and handed out again on the
    next call (a fresh one when ``work`` is None): step after step, no new memory."""
    if work is None:
        return torch.empty(shape, dtype=dtype, device=device)
    key = (name, shape)
    if key not in work:
        work[key] = torch.empty(shape, dtype=dtype, device=device)
    return work[key]


def loss_and_grad(
    params: dict,
    x: torch.Tensor,
    y: torch.Tensor,
    drop: tuple | None = None,
    mix: tuple | None = None,
    target: dict | None = None,
    *,
    groups=None,
    out: dict | None = None,
    work: dict | None = None,
):
    """Every member's mean cross-entropy and its exact gradient, by hand (no autograd graph).

    The same computation as ``F.cross_entropy(forward(params, x, drop, mix, target)[e], y[e])``
    differentiated by autograd (``tests/experiment/test_engine.py`` checks it), written for speed: the
    gradient of eq. 4's mixed weight ``Phi = u + M (w - u)`` is ``dL/dPhi * M`` column by column,
    i.e. ``dy^T (h * M)`` (one ``bmm`` on the ``(E, B, in)`` input scaled by the column mask);
    ``fc1``'s product is computed as ``W x^T`` (``(E, 300, B)``), BLAS's faster shape for this layer.

    ``params`` stacked ``(E, ...)``. ``x``: ``(B, 784)`` shared by every member, ``(E, B, 784)`` one
    batch per member, or ``(G, B, 784)`` with ``groups = [(start, stop), ...]`` (``G`` ranges of
    members, in order, that share a batch). ``y``: ``(E, B)`` labels. ``drop`` / ``mix`` / ``target``
    as in :func:`forward`. Returns ``(losses, grads)``: the ``(E,)`` losses and the gradients by
    parameter name, written into ``out`` (preallocated ``(E, ...)`` tensors, overwritten) when given.
    ``work``: a dict kept by the caller between calls, where the activations' buffers are kept and
    reused (no fresh memory, hence no page faults, at each step).
    """
    w1 = params["fc1.weight"]
    E, d1, d_in = w1.shape
    rows = x.shape[-2]
    dt, dev = w1.dtype, w1.device

    def buf(name, *shape):
        return reused_buffer(work, name, shape, dt, dev)

    if out is None:
        out = {k: torch.empty_like(v) for k, v in params.items()}
    b1 = params["fc1.bias"]
    g1, s1 = params["ln1.weight"].unsqueeze(1), params["ln1.bias"].unsqueeze(1)
    g2, s2 = params["ln2.weight"].unsqueeze(1), params["ln2.bias"].unsqueeze(1)
    w2, w3 = params["fc2.weight"], params["fc3.weight"]
    d2, d3 = w2.shape[1], w3.shape[1]
    (k0, k1, k2), (m1, m2, m3) = _masks(drop), _masks(mix)
    # eq. 4, Phi = u + (M / mu) (w - u)
    if m1 is not None:
        w1 = mixed_weight(w1, target["fc1.weight"], m1, out=buf("w1", E, d1, d_in))
    if m2 is not None:
        w2 = mixed_weight(w2, target["fc2.weight"], m2, out=buf("w2", E, d2, d1))
    if m3 is not None:
        w3 = mixed_weight(w3, target["fc3.weight"], m3, out=buf("w3", E, d3, d2))
    split = _groups_of(x, E, groups)
    if k0 is not None or m1 is not None:  # masked inputs: every member its own (E, B, 784) copy
        xe = buf("xe", E, rows, d_in)
        for a, b, xg in split or [(0, E, x)]:
            xe[a:b] = xg
        x, split = (xe if k0 is None else xe.mul_(k0)), None

    # forward: fc1 as (E, 300, B) = W x^T + b, then ReLU while transposing back to (E, B, 300)
    a1t = buf("a1t", E, d1, rows)
    if split is None:
        torch.baddbmm(b1.unsqueeze(2), w1, x.transpose(1, 2), out=a1t)
    else:
        for a, b, xg in split:
            torch.baddbmm(b1[a:b].unsqueeze(2), w1[a:b], xg.t().expand(b - a, d_in, rows), out=a1t[a:b])
    r1 = torch.clamp_min(a1t.transpose(1, 2), 0, out=buf("r1", E, rows, d1))
    # normalise without affine (the gain and shift are per member, below); CPU's kernel is about
    # twice as fast given a weight, and n * 1 + 0 is n exactly
    n1, mean1, rstd1 = torch.native_layer_norm(
        r1, [d1], buf("one1", d1).fill_(1), buf("zero1", d1).zero_(), LN_EPS
    )
    h1 = torch.addcmul(s1, n1, g1, out=buf("h1", E, rows, d1))
    if k1 is not None:
        h1.mul_(k1)
    r2 = torch.baddbmm(params["fc2.bias"].unsqueeze(1), h1, w2.transpose(1, 2), out=buf("r2", E, rows, d2))
    r2.clamp_min_(0)
    n2, mean2, rstd2 = torch.native_layer_norm(
        r2, [d2], buf("one2", d2).fill_(1), buf("zero2", d2).zero_(), LN_EPS
    )
    h2 = torch.addcmul(s2, n2, g2, out=buf("h2", E, rows, d2))
    if k2 is not None:
        h2.mul_(k2)
    z = torch.baddbmm(params["fc3.bias"].unsqueeze(1), h2, w3.transpose(1, 2), out=buf("z", E, rows, d3))

    # loss and dL/dz = (softmax - onehot) / B for each member's mean loss
    lse = torch.logsumexp(z, -1, keepdim=True, out=buf("lse", E, rows, 1))
    yi = y.unsqueeze(-1)
    loss = (lse - z.gather(-1, yi)).squeeze(-1).mean(1)
    dz = z.sub_(lse).exp_()
    dz.scatter_add_(-1, yi, buf("minus1", E, rows, 1).fill_(-1.0))
    dz.mul_(1.0 / rows)

    # backward, layer by layer, into out[...]
    torch.sum(dz, 1, out=out["fc3.bias"])
    torch.bmm(
        dz.transpose(1, 2),
        h2 if m3 is None else torch.mul(h2, m3, out=buf("hm2", E, rows, d2)),
        out=out["fc3.weight"],
    )

    def hidden_backward(i, dh, k, n, g, r, mean, rstd):
        """Hidden layer ``i`` (Linear -> ReLU -> LayerNorm -> dropout ``k``), from ``dL/dh`` (consumed
        in place): write the gradients of ``ln{i}`` and ``fc{i}.bias``, return ``dL/d(fc{i} output)``."""
        if k is not None:
            dh.mul_(k)
        torch.sum(torch.mul(dh, n, out=buf(f"t{i}", *dh.shape)), 1, out=out[f"ln{i}.weight"])
        torch.sum(dh, 1, out=out[f"ln{i}.bias"])
        da = torch.ops.aten.native_layer_norm_backward(
            dh.mul_(g), r, [dh.shape[-1]], mean, rstd, None, None, [True, False, False]
        )[0]
        torch.ops.aten.threshold_backward.grad_input(da, r, 0, grad_input=da)
        torch.sum(da, 1, out=out[f"fc{i}.bias"])
        return da

    da2 = hidden_backward(2, torch.bmm(dz, w3, out=buf("dh2", E, rows, d2)), k2, n2, g2, r2, mean2, rstd2)
    torch.bmm(
        da2.transpose(1, 2),
        h1 if m2 is None else torch.mul(h1, m2, out=buf("hm1", E, rows, d1)),
        out=out["fc2.weight"],
    )
    da1 = hidden_backward(1, torch.bmm(da2, w2, out=buf("dh1", E, rows, d1)), k1, n1, g1, r1, mean1, rstd1)
    gw1 = out["fc1.weight"]
    if split is None:
        torch.bmm(
            da1.transpose(1, 2), x if m1 is None else torch.mul(x, m1, out=buf("xm", E, rows, d_in)), out=gw1
        )
    else:
        for a, b, xg in split:
            torch.bmm(da1[a:b].transpose(1, 2), xg.expand(b - a, rows, d_in), out=gw1[a:b])
    return loss, out


def squared_distances(params: dict, reference: dict, mixed: tuple = MIXED) -> dict:
    """``||w - u||^2`` per parameter tensor (per member when stacked), plus per layer and totals.

    Keys: each parameter name, ``fc1`` / ``fc2`` / ``fc3`` / ``ln1`` / ``ln2`` (weight + bias),
    ``mixed`` (the ``mixed`` weights only, the norm in the layer-restricted Corollary 1.1) and ``all``
    (the whole parameter vector). Values are tensors of shape ``(E,)`` (or scalars).
    """
    out = {}
    for name in PARAM_NAMES:
        d = (params[name] - reference[name]).double().pow(2)
        out[name] = d.sum(dim=(-2, -1) if name.startswith("fc") and name.endswith("weight") else -1)
    for layer in ("fc1", "ln1", "fc2", "ln2", "fc3"):
        out[layer] = out[f"{layer}.weight"] + out[f"{layer}.bias"]
    out["mixed"] = sum(out[n] for n in mixed)
    out["all"] = sum(out[n] for n in PARAM_NAMES)
    return out

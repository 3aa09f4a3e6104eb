"""The paper's 784-300-100-10 MLP (Section 4 / Supplement C.1), as a module and as a pure function.

Each hidden layer is ``Linear -> ReLU -> LayerNorm -> Dropout``; weights ~ N(0, 0.02^2), biases 0,
LayerNorm gain 1 and shift 0. The paper does not say whether dropout comes before or after
LayerNorm; we put it *after*, so that dropping a hidden unit is exactly dropping an input column of
the next Linear, and dropout(p) = mixout(0, p) on ``fc2`` / ``fc3`` up to when masks are drawn
(per example for dropout, per mini-batch for mixout). Mixout mixes ``fc2.weight`` (300->100) and
``fc3.weight`` (100->10), the weights leaving hidden neurons; ``fc1`` (784->300) only under the other
reading of the protocol, "every Linear" (:data:`MIXED_BY_LAYERS`), with dropout then on the inputs too.

:func:`forward` takes a dict of parameters with an optional leading *member* dim (one network or a
stacked ensemble); it is :func:`hidden1` then :func:`tail` (the part mixout changes).
:func:`loss_and_grad` is the same function with a hand-written backward, for the engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixout_theory.mixing import mixed_weight

SIZES = (784, 300, 100, 10)
INIT_STD = 0.02
LN_EPS = 1e-5
#: Parameter names in forward order (the ``state_dict`` keys of :class:`MLP`).
PARAM_NAMES = tuple(
    f"{layer}.{p}" for layer in ("fc1", "ln1", "fc2", "ln2", "fc3") for p in ("weight", "bias")
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

    def forward(self, x: Tensor) -> Tensor:
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


def hidden1(params: dict, x: Tensor, w1: Tensor | None = None) -> Tensor:
    """The first hidden layer, ``LayerNorm(ReLU(fc1(x)))`` (before its dropout); ``w1`` replaces
    ``fc1.weight`` (a mixed one). ``x`` is ``(B, 784)`` (with stacked parameters: shared by every
    member) or ``(E, B, 784)``."""
    w1 = params["fc1.weight"] if w1 is None else w1
    if x.dim() == 2 and w1.dim() == 3:
        x = x.unsqueeze(0).expand(w1.shape[0], *x.shape)
    a = F.relu(_linear(x, w1, params["fc1.bias"]))
    return _layer_norm(a, params["ln1.weight"], params["ln1.bias"])


def tail(
    params: dict, h1: Tensor, w2: Tensor | None = None, w3: Tensor | None = None, dropout=None
) -> Tensor:
    """Logits from the first hidden layer's output on: ``fc3(dropout(LayerNorm(ReLU(fc2(h1)))))``, that is
    :func:`head` of ``ReLU(`` :func:`pre2` ``)``.

    ``w2`` / ``w3`` replace ``fc2.weight`` / ``fc3.weight`` (e.g. mixed weights); stacked ``(S, ...)``
    weights with an ``(S, B, 300)`` ``h1`` evaluate ``S`` networks that share everything else.
    ``dropout``: a function applied to the second hidden layer (``None``: none).
    """
    return head(params, F.relu(pre2(params, h1, w2)), w3, dropout)


def pre2(params: dict, h1: Tensor, w2: Tensor | None = None) -> Tensor:
    """``fc2``'s output ``z = h1 W2^T + b2``, the pre-activation of the second hidden layer's ReLU."""
    return _linear(h1, params["fc2.weight"] if w2 is None else w2, params["fc2.bias"])


def head(params: dict, a2: Tensor, w3: Tensor | None = None, dropout=None) -> Tensor:
    """Logits from the second hidden layer's activation ``a2`` on: ``fc3(dropout(LayerNorm(a2)))``."""
    h = _layer_norm(a2, params["ln2.weight"], params["ln2.bias"])
    if dropout is not None:
        h = dropout(h)
    return _linear(h, params["fc3.weight"] if w3 is None else w3, params["fc3.bias"])


def forward(
    params: dict, x: Tensor, drop: tuple | None = None, mix: tuple | None = None, target: dict | None = None
) -> Tensor:
    """Logits of the MLP for parameters ``params`` (optionally stacked: every tensor ``(E, ...)``).

    ``x`` is ``(B, 784)`` or ``(E, B, 784)``. ``drop = (d1, d2)``: scaled activation masks for the
    two hidden layers (entries ``Bernoulli(1-p)/(1-p)``, shape ``(E, B, 300)`` / ``(E, B, 100)``).
    ``mix = (m2, m3)``: scaled column masks ``B/(1-p)`` of shape ``(E, 1, 300)`` / ``(E, 1, 100)`` for
    ``fc2.weight`` / ``fc3.weight``, mixed towards ``target`` by eq. 4: ``W_eff = u + m (W - u)``.
    ``None`` means no dropout / no mixing (evaluation). Equal to ``tail(params, hidden1(params, x) * d1,
    Phi_2, Phi_3, dropout=lambda h: h * d2)``; :class:`MLP` is the same network as modules. Triples
    ``(d0, d1, d2)`` / ``(m1, m2, m3)`` also mask the input pixels (``(E, B, 784)``) / mix ``fc1.weight``
    (``(E, 1, 784)``); any entry may be None.
    """
    d0, d1, d2 = _masks(drop)
    w1, w2, w3 = _mixed_weights(params, mix, target)
    h = hidden1(params, x if d0 is None else x * d0, w1)
    return tail(params, h if d1 is None else h * d1, w2, w3, None if d2 is None else (lambda h2: h2 * d2))


def _masks(masks) -> tuple:
    """``(input, hidden 1, hidden 2)`` masks from None, a pair (hidden layers) or a triple."""
    if masks is None:
        return None, None, None
    return tuple(masks) if len(masks) == 3 else (None, *masks)


def _mixed_weights(params: dict, mix, target: dict | None, buf=None) -> list:
    """eq. 4, ``Phi = u + (M / mu) (w - u)``, for ``fc1`` / ``fc2`` / ``fc3.weight`` (``w`` itself where
    unmixed), written into ``buf(name, *shape)`` when given."""
    ws = []
    for n, m in zip(MIXED_BY_LAYERS["all"], _masks(mix), strict=True):
        out = None if m is None or buf is None else buf(n, *params[n].shape)
        ws.append(params[n] if m is None else mixed_weight(params[n], target[n], m, out=out))
    return ws


def reused_buffer(work: dict | None, name: str, shape: tuple, dtype, device) -> Tensor:
    """An uninitialised tensor kept in ``work`` under ``(name, shape)`` and handed out again on the
    next call (a fresh one when ``work`` is None): step after step, no new memory."""
    if work is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if (name, shape) not in work:
        work[name, shape] = torch.empty(shape, dtype=dtype, device=device)
    return work[name, shape]


def loss_and_grad(
    params: dict,
    x: Tensor,
    y: Tensor,
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
    differentiated by autograd, written for speed: the gradient of eq. 4's mixed weight
    ``Phi = u + M (w - u)`` is ``dL/dPhi * M`` column by column, i.e. ``dy^T (h * M)``.

    ``params`` stacked ``(E, ...)``. ``x``: ``(B, 784)`` shared by every member, ``(E, B, 784)`` one
    batch per member, or ``(G, B, 784)`` with ``groups = [(start, stop), ...]`` (``G`` ranges of
    members, in order, that share a batch). ``y``: ``(E, B)`` labels. ``drop`` / ``mix`` / ``target``
    as in :func:`forward`. Returns ``(losses, grads)``: the ``(E,)`` losses and the gradients by
    parameter name, written into ``out`` (preallocated ``(E, ...)`` tensors, overwritten) when given.
    ``work``: a dict kept by the caller between calls, where the activations' buffers are reused.
    """
    E, d1, d_in = params["fc1.weight"].shape
    rows, dt, dev = x.shape[-2], params["fc1.weight"].dtype, params["fc1.weight"].device

    def buf(name, *shape):
        return reused_buffer(work, name, shape, dt, dev)

    if out is None:
        out = {k: torch.empty_like(v) for k, v in params.items()}
    (k0, k1, k2), (m1, m2, m3) = _masks(drop), _masks(mix)
    w1, w2, w3 = _mixed_weights(params, mix, target, buf)
    # [(start, stop, x_g)]: member ranges and the (B, in) input they share; None: (E, B, in), one each
    if groups is not None:
        if x.dim() != 3 or len(groups) != x.shape[0]:
            raise ValueError(f"groups: {len(groups)} member ranges for inputs of shape {tuple(x.shape)}")
        split = [(a, b, x[g]) for g, (a, b) in enumerate(groups)]
    else:
        split = [(0, E, x)] if x.dim() == 2 else None
    if k0 is not None or m1 is not None:  # masked inputs: every member its own (E, B, 784) copy
        xe = buf("xe", E, rows, d_in)
        for a, b, xg in split or [(0, E, x)]:
            xe[a:b] = xg
        x, split = (xe if k0 is None else xe.mul_(k0)), None

    def hidden_forward(i, r, k):
        """LayerNorm and dropout ``k`` of hidden layer ``i`` from its ReLU output ``r``: ``(h, saved)``."""
        # normalise without affine (the gain and shift are per member, below); CPU's kernel is about
        # twice as fast given a weight, and n * 1 + 0 is n exactly
        d, g = r.shape[-1], params[f"ln{i}.weight"].unsqueeze(1)
        ones, zeros = buf(f"one{i}", d).fill_(1), buf(f"zero{i}", d).zero_()
        n, mean, rstd = torch.native_layer_norm(r, [d], ones, zeros, LN_EPS)
        h = torch.addcmul(params[f"ln{i}.bias"].unsqueeze(1), n, g, out=buf(f"h{i}", E, rows, d))
        if k is not None:
            h.mul_(k)
        return h, (k, n, g, r, mean, rstd)

    # forward: fc1 as (E, 300, B) = W x^T + b (BLAS's faster shape), ReLU'd back to (E, B, 300)
    a1t, b1 = buf("a1t", E, d1, rows), params["fc1.bias"]
    if split is None:
        torch.baddbmm(b1.unsqueeze(2), w1, x.transpose(1, 2), out=a1t)
    else:
        for a, b, xg in split:
            torch.baddbmm(b1[a:b].unsqueeze(2), w1[a:b], xg.t().expand(b - a, d_in, rows), out=a1t[a:b])
    h1, saved1 = hidden_forward(1, torch.clamp_min(a1t.transpose(1, 2), 0, out=buf("r1", E, rows, d1)), k1)
    d2, d3 = w2.shape[1], w3.shape[1]
    r2 = torch.baddbmm(params["fc2.bias"].unsqueeze(1), h1, w2.transpose(1, 2), out=buf("r2", E, rows, d2))
    h2, saved2 = hidden_forward(2, r2.clamp_min_(0), k2)
    z = torch.baddbmm(params["fc3.bias"].unsqueeze(1), h2, w3.transpose(1, 2), out=buf("z", E, rows, d3))

    # loss and dL/dz = (softmax - onehot) / B for each member's mean loss
    lse = torch.logsumexp(z, -1, keepdim=True, out=buf("lse", E, rows, 1))
    yi = y.unsqueeze(-1)
    loss = (lse - z.gather(-1, yi)).squeeze(-1).mean(1)
    dz = z.sub_(lse).exp_()
    dz.scatter_add_(-1, yi, buf("minus1", E, rows, 1).fill_(-1.0))
    dz.mul_(1.0 / rows)

    # backward, layer by layer, into out[...]
    def weight_grad(i, da, h, m):
        """``dL/dW_i = da^T (h * M)`` (``h`` when unmixed) into ``out["fc{i}.weight"]``."""
        hm = h if m is None else torch.mul(h, m, out=buf(f"hm{i}", *h.shape))
        torch.bmm(da.transpose(1, 2), hm, out=out[f"fc{i}.weight"])

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

    torch.sum(dz, 1, out=out["fc3.bias"])
    weight_grad(3, dz, h2, m3)
    da2 = hidden_backward(2, torch.bmm(dz, w3, out=buf("dh2", E, rows, d2)), *saved2)
    weight_grad(2, da2, h1, m2)
    da1 = hidden_backward(1, torch.bmm(da2, w2, out=buf("dh1", E, rows, d1)), *saved1)
    if split is None:
        weight_grad(1, da1, x, m1)
    else:
        for a, b, xg in split:
            torch.bmm(da1[a:b].transpose(1, 2), xg.expand(b - a, rows, d_in), out=out["fc1.weight"][a:b])
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

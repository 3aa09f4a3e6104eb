"""Mixout as ``nn.Module``: :class:`MixLinear` and a one-call converter for whole models.

Reference: C. Lee, K. Cho, W. Kang, "Mixout", ICLR 2020 (arXiv:1909.11299). A :class:`MixLinear`
applies mixout(u, p) (eq. 8) to its weight at every training forward call,
``W_eff = u + B (W - u) / (1 - p)`` with one ``B_j ~ Bernoulli(1 - p)`` per input neuron ``j``, drawn
afresh per call (so shared by the whole mini-batch, as in the authors' code); the bias is never mixed
and evaluation mode is a plain linear layer.

* :class:`MixLinear` -- a subclass of ``nn.Linear`` (``weight`` / ``bias`` names unchanged) with the
  target ``u`` as a buffer named ``target`` (``None`` = the origin, i.e. dropout(p) on the inputs).
* :func:`mixout_model` -- replace chosen ``nn.Linear`` layers of any module tree by
  ``MixLinear.from_linear(layer, p)`` (target = ``w_pre``, the layer's current weight) and set the
  model's dropout probabilities (mixout takes dropout's place).
* :func:`unmix_model` -- the inverse: every ``MixLinear`` back to a plain ``nn.Linear`` holding the
  trained weights. :func:`mixed_layer_names` lists the ``MixLinear`` layers of a model.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn

from mixout_theory import mixing

__all__ = ["MixLinear", "mixout_model", "unmix_model", "mixed_layer_names", "DROPOUT_TYPES"]

#: The dropout modules whose probability :func:`mixout_model` sets (all of torch's dropout family).
DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


class MixLinear(nn.Linear):
    """``nn.Linear`` whose weight is mixout(u, p)-ed (eq. 8) in training mode; the bias never is.

    ``y = x W_eff^T + b`` with ``W_eff = mixing.mixout(W, u, p, self.training, self.generator)``.
    ``target`` (``u``) is a registered buffer, so ``state_dict()``, ``.to()``, ``.half()`` carry it; it
    is never trained. ``target=None`` stores no tensor and means ``u = 0``: dropout(p) on the inputs,
    with one mask per forward call. ``p`` is validated (``mixing.check_p``) at construction and on
    assignment. ``generator`` (default ``None``: torch's global one) may be set to a
    ``torch.Generator`` on the weight's device for reproducible masks. The forward pass is one call,
    :func:`mixing.mixout_linear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        p: float = 0.0,
        target: torch.Tensor | None = None,
        device=None,
        dtype=None,
    ) -> None:
        p = mixing.check_p(p)  # before the (random) initialisation, so bad input consumes nothing
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.p = p
        self.generator: torch.Generator | None = None
        self.register_buffer("target", None)
        self.set_target(target)
        self._target_is_w_pre = False

    @property
    def p(self) -> float:
        """The mixing probability (the chance that an input neuron's column is replaced by ``u``)."""
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = mixing.check_p(value)

    def set_target(self, target: torch.Tensor | None) -> None:
        """Store ``target`` (detached copy, cast to the weight's device / dtype) or ``None`` (zero)."""
        if target is None:
            self.target = None
        else:
            self.target = mixing.check_target(self.weight, target).clone()
        self._target_is_w_pre = False

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return mixing.mixout_linear(input, self.weight, self.bias, self.target, self._p, self.training, self.generator)

    def extra_repr(self) -> str:
        if self.target is None:
            target = "zero (dropout)"
        elif self._target_is_w_pre:
            target = "w_pre"
        else:
            target = "given"
        return f"{super().extra_repr()}, p={self.p:g}, target={target}"

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        p: float,
        target: torch.Tensor | None = None,
        *,
        share_parameters: bool = False,
    ) -> "MixLinear":
        """A :class:`MixLinear` with ``linear``'s weight, bias, device, dtype and ``requires_grad``.

        ``target`` defaults to a detached copy of ``linear.weight`` as it is now (``w_pre``). The
        weight and bias are copied unless ``share_parameters`` is True, in which case the new module
        holds the very same ``nn.Parameter`` objects (tied weights stay tied, an optimizer built
        earlier keeps working). The global random state is not touched; the training mode is kept.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        p = mixing.check_p(p)
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, p=p,
                  device="meta", dtype=w.dtype)  # meta: no random initialisation, no memory
        if share_parameters:
            new.weight = w
            new.bias = linear.bias
        else:
            new.weight = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
            if linear.bias is not None:
                b = linear.bias
                new.bias = nn.Parameter(b.detach().clone(), requires_grad=b.requires_grad)
        if target is None:
            new.target = w.detach().clone()
            new._target_is_w_pre = True
        else:
            new.set_target(target)
        new.train(linear.training)
        return new

    def to_linear(self, *, share_parameters: bool = False) -> nn.Linear:
        """A plain ``nn.Linear`` with this layer's current (trained) weight and bias; no target."""
        new = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device="meta", dtype=self.weight.dtype)
        if share_parameters:
            new.weight = self.weight
            new.bias = self.bias
        else:
            new.weight = nn.Parameter(self.weight.detach().clone(),
                                      requires_grad=self.weight.requires_grad)
            if self.bias is not None:
                new.bias = nn.Parameter(self.bias.detach().clone(),
                                        requires_grad=self.bias.requires_grad)
        new.train(self.training)
        return new


def _candidates(model: nn.Module) -> dict[str, nn.Linear]:
    """Every name (aliases included) of a module of type exactly ``nn.Linear``.

    Subclasses (``MixLinear``, ``MultiheadAttention``'s ``out_proj``, whose ``forward`` is never called,
    quantised or LoRA layers, ...) are left out: replacing them would drop their own behaviour.
    """
    return {name: m for name, m in model.named_modules(remove_duplicate=False)
            if type(m) is nn.Linear}


def _select(model: nn.Module, layers) -> dict[str, nn.Linear]:
    cands = _candidates(model)
    available = ", ".join(repr(n) for n in cands) or "(none)"
    if layers is None:
        chosen = dict(cands)
    elif callable(layers):
        chosen = {n: m for n, m in cands.items() if layers(n, m)}
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"layer names must be strings, got {bad!r}")
        everything = dict(model.named_modules(remove_duplicate=False))
        missing = [n for n in names if n not in everything]
        wrong = [f"{n!r} ({type(everything[n]).__name__})" for n in names
                 if n in everything and n not in cands]
        problems = []
        if missing:
            problems.append(f"not found: {missing!r}")
        if wrong:
            problems.append("not a plain nn.Linear: " + ", ".join(wrong))
        if problems:
            raise ValueError(f"bad layer names, {'; '.join(problems)}. Linear layers: {available}")
        chosen = {n: cands[n] for n in names}
    if not chosen:
        raise ValueError(f"no nn.Linear layer selected to mix. Linear layers: {available}")
    return chosen


def _replace(model: nn.Module, mapping: dict[int, nn.Module]) -> nn.Module:
    """Swap modules by identity everywhere they are referenced; return the (possibly new) root."""
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in mapping:
                setattr(parent, child_name, mapping[id(child)])
    return mapping.get(id(model), model)


def _set_dropout(model: nn.Module, dropout_p) -> None:
    if dropout_p is None:
        return
    dropout_p = mixing.check_p(dropout_p)
    for m in model.modules():
        if isinstance(m, DROPOUT_TYPES):
            m.p = dropout_p


def mixout_model(
    model: nn.Module,
    p: float,
    layers: Iterable[str] | str | Callable[[str, nn.Module], bool] | None = None,
    *,
    dropout_p: float | None = 0.0,
    inplace: bool = False,
) -> nn.Module:
    """Turn chosen ``nn.Linear`` layers of ``model`` into mixout(w_pre, p) layers (eq. 8).

    ``layers`` picks the layers among the modules of type exactly ``nn.Linear``: ``None`` = all of
    them; a list of fully qualified names as in ``model.named_modules()`` (e.g.
    ``"encoder.layer.0.attention.self.query"``, a single string is one name); or a predicate
    ``f(name, module) -> bool`` called on every such layer. Each chosen layer becomes
    ``MixLinear.from_linear(layer, p, share_parameters=True)``: target = its current weight, same
    ``Parameter`` objects (a layer reachable under several names is replaced everywhere by one module).
    Every dropout module (:data:`DROPOUT_TYPES`) anywhere in the model gets probability ``dropout_p``
    (default 0: mixout replaces dropout; ``None`` leaves them as they are). Dropout applied
    functionally inside a ``forward`` is out of reach.

    With ``inplace=False`` (default) the model is deep-copied first and the original is untouched (it
    stays as ``w_pre``); with ``inplace=True`` the model is changed in place. Either way the converted
    model is returned (a new object when ``model`` itself is an ``nn.Linear``); use
    :func:`mixed_layer_names` to list what was converted. Raises ``ValueError`` for unknown names,
    names of non-``nn.Linear`` modules, or an empty selection, listing the available Linear names.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    p = mixing.check_p(p)
    if dropout_p is not None:
        mixing.check_p(dropout_p)
    names = list(_select(model, layers))  # validate (and call a predicate) once, before copying
    if not inplace:
        model = copy.deepcopy(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    chosen = {id(modules[n]): modules[n] for n in names}
    mapping = {i: MixLinear.from_linear(m, p, share_parameters=True) for i, m in chosen.items()}
    model = _replace(model, mapping)
    _set_dropout(model, dropout_p)
    return model


def unmix_model(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Turn every :class:`MixLinear` of ``model`` back into a plain ``nn.Linear`` (trained weights).

    The new layers hold the same ``Parameter`` objects as the mixed ones (of the copy when
    ``inplace=False``, the default); targets are dropped. Dropout probabilities are not restored.
    Returns the model (a new object when ``model`` itself is a ``MixLinear``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    mapping = {id(m): m.to_linear(share_parameters=True)
               for m in model.modules() if isinstance(m, MixLinear)}
    return _replace(model, mapping)


def mixed_layer_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the :class:`MixLinear` layers of ``model`` (first name of each)."""
    return [name for name, m in model.named_modules() if isinstance(m, MixLinear)]

"""Mixout in whole models: convert a model's layers to mixout layers, back, and from a checkpoint.

Reference: C. Lee, K. Cho, W. Kang, "Mixout", ICLR 2020 (arXiv:1909.11299). The layers themselves
(:class:`MixLinear`, :class:`MixConv1D`, :class:`MixConv2d`, :class:`MixEmbedding`,
:class:`MixMultiheadAttention`, ...) live in :mod:`mixout_theory.layers`; this module puts them in:

* :func:`mixout_model` -- replace chosen layers of any module tree by mixout(w_pre, p) layers (eq. 8;
  the target is each layer's current weight), set the dropouts that feed them, or rebuild a mixed
  model from a checkpoint of one (``from_state_dict=``).
* :func:`unmix_model` -- every mixout layer back to its plain layer, holding the trained weights.
* :func:`mixed_layer_names`, :func:`mixable_layer_names` -- what is mixed, what could be.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

from mixout_theory import mixing
from mixout_theory.layers import (
    MixConv1D,
    MixConv1d,
    MixConv2d,
    MixConv3d,
    MixEmbedding,
    MixLinear,
    MixMultiheadAttention,
)
from mixout_theory.masks import check_level
from mixout_theory.mixout_layer import MixoutLayer, decode_state

__all__ = [
    "mixout_model",
    "unmix_model",
    "mixed_layer_names",
    "mixable_layer_names",
    "feeding_dropouts",
    "DROPOUT_TYPES",
    "LAYER_TYPES",
    "UnmixedLayerWarning",
]

#: The dropout modules :func:`mixout_model` may set (all of torch's dropout family).
DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

#: The mixout layer for each kind of plain layer, in the order they are tried.
LAYER_TYPES = (MixLinear, MixConv1D, MixMultiheadAttention, MixConv1d, MixConv2d, MixConv3d, MixEmbedding)
#: Kinds that ``layers=None`` leaves out (name them, or pick them with a predicate, to mix them).
OPT_IN = (MixEmbedding,)


class UnmixedLayerWarning(UserWarning):
    """Warned by ``mixout_model(..., layers=None)`` for layers with weights it cannot convert (left plain).

    Example:
        >>> import warnings
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 4))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = mixout_model(net, 0.1)
        >>> [w.category.__name__ for w in caught]
        ['UnmixedLayerWarning']
    """


def _kind(module: nn.Module):
    return next((cls for cls in LAYER_TYPES if cls.supports(module)), None)


def _inside_attention(model: nn.Module) -> dict[str, str]:
    """Names of modules held by an ``nn.MultiheadAttention`` (its ``out_proj``) -> the attention's name."""
    return {
        f"{name}.{child}" if name else child: name
        for name, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, nn.MultiheadAttention)
        for child, _ in m.named_modules()
        if child
    }


def mixable_layer_names(model: nn.Module) -> dict[str, str]:
    """Every name (aliases too) of a layer :func:`mixout_model` can convert (eq. 8), with its mixout class.

    Args:
        model (nn.Module): the model.

    Returns:
        dict[str, str]: layer name -> the name of the mixout class that would replace it.

    Example:
        >>> mixable_layer_names(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Embedding(5, 2)))
        {'0': 'MixLinear', '2': 'MixEmbedding'}
    """
    inner = _inside_attention(model)
    return {
        n: k.__name__
        for n, m in model.named_modules(remove_duplicate=False)
        if n not in inner and (k := _kind(m)) is not None
    }


def _unhandled(model: nn.Module) -> list[str]:
    """Modules holding a weight of 2 or more dims that no mixout class converts (and are not mixed)."""
    inner = _inside_attention(model)
    return [
        f"{n!r} ({type(m).__name__})"
        for n, m in model.named_modules()
        if n not in inner
        and _kind(m) is None
        and not isinstance(m, MixoutLayer)
        and any(w.dim() >= 2 for w in m.parameters(recurse=False))
    ]


def _select(model: nn.Module, layers) -> list[str]:
    mixable = mixable_layer_names(model)
    cands = {n: m for n, m in model.named_modules(remove_duplicate=False) if n in mixable}
    available = ", ".join(repr(n) for n in cands) or "(none)"
    if layers is None:
        chosen = [n for n, m in cands.items() if _kind(m) not in OPT_IN]
        skipped = _unhandled(model)
        if skipped:
            warnings.warn(
                f"mixout_model: {len(skipped)} layer(s) with weights cannot be mixed and stay as they "
                f"are: {', '.join(skipped)}",
                UnmixedLayerWarning,
                stacklevel=3,
            )
    elif callable(layers):
        chosen = [n for n, m in cands.items() if layers(n, m)]
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"layer names must be strings, got {bad!r}")
        everything, inner = dict(model.named_modules(remove_duplicate=False)), _inside_attention(model)
        missing = [n for n in names if n not in everything]
        wrong = [
            f"{n!r} ({type(everything[n]).__name__}, part of the MultiheadAttention {inner[n]!r})"
            if n in inner
            else f"{n!r} ({type(everything[n]).__name__})"
            for n in names
            if n in everything and n not in cands
        ]
        problems = ([f"not found: {missing!r}"] if missing else []) + (
            ["not a layer mixout converts: " + ", ".join(wrong)] if wrong else []
        )
        if problems:
            raise ValueError(f"bad layer names, {'; '.join(problems)}. Mixable layers: {available}")
        chosen = names
    if not chosen:
        raise ValueError(f"no layer selected to mix. Mixable layers: {available}")
    return chosen


def _replace(model: nn.Module, mapping: dict[int, nn.Module]) -> nn.Module:
    """Swap modules by identity everywhere they are referenced; return the (possibly new) root."""
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in mapping:
                setattr(parent, child_name, mapping[id(child)])
    return mapping.get(id(model), model)


def _run(model: nn.Module, example_inputs) -> None:
    if isinstance(example_inputs, dict):
        model(**example_inputs)
    elif isinstance(example_inputs, tuple):
        model(*example_inputs)
    else:
        model(example_inputs)


def feeding_dropouts(model: nn.Module, layers: Iterable[nn.Module], example_inputs) -> list[nn.Module]:
    """The dropout modules of ``model`` whose output reaches the input of one of ``layers`` (mixed by eq. 8).

    Found from one training-mode forward pass: each dropout's output gets a zero that requires grad,
    and a dropout feeds the layers when the sum of their inputs depends on its zero (autograd). A dropout
    whose forward never runs (its ``p`` applied functionally) feeds nothing. Nothing is trained, no
    random state is consumed and every module's training mode is restored.

    Args:
        model (nn.Module): the model.
        layers (iterable of nn.Module): modules of ``model``.
        example_inputs: a tensor, a tuple of positional arguments or a dict of keyword arguments.

    Returns:
        list[nn.Module]: the dropouts that feed ``layers``.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 2), nn.Dropout(0.1))
        >>> [d is net[1] for d in feeding_dropouts(net, [net[2]], torch.ones(1, 3))]
        [True]
    """
    layers = list(layers)
    markers, inputs, hooks = {}, [], []

    def mark(module, args, output):
        zero = markers.setdefault(module, torch.zeros((), requires_grad=True))
        return output + zero.to(output.device)

    def record(module, args, kwargs):
        inputs.extend(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.requires_grad)

    drops = [m for m in model.modules() if isinstance(m, DROPOUT_TYPES)]
    modes = {m: m.training for m in model.modules()}
    hooks += [d.register_forward_hook(mark) for d in drops]
    hooks += [m.register_forward_pre_hook(record, with_kwargs=True) for m in layers]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            model.train()
            _run(model, example_inputs)
            used = [d for d in drops if d in markers]
            if not used or not inputs:
                return []
            total = sum(t.float().sum() for t in inputs)
            grads = torch.autograd.grad(total, [markers[d] for d in used], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return [d for d, g in zip(used, grads, strict=True) if g is not None]


def _set_dropouts(model, layers, dropout_p, dropouts, example_inputs) -> None:
    if dropout_p is None:
        return
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, DROPOUT_TYPES)]
    if callable(dropouts):
        chosen = [m for n, m in named if dropouts(n, m)]
    elif dropouts == "all":
        chosen = [m for _, m in named]
    elif dropouts is not None:
        raise ValueError(f"dropouts must be None, 'all' or a predicate f(name, module), got {dropouts!r}")
    elif example_inputs is not None:
        chosen = feeding_dropouts(model, layers, example_inputs)
    else:
        chosen = [m for _, m in named]
        if named:
            warnings.warn(
                f"mixout_model: which dropouts feed the mixed layers cannot be told without "
                f"example_inputs, so all {len(named)} dropout modules get p={dropout_p:g} (pass "
                f"example_inputs=..., or dropouts='all' or a predicate)",
                UserWarning,
                stacklevel=3,
            )
    for m in chosen:
        m.p = dropout_p


def _from_checkpoint(model: nn.Module, state_dict, p) -> dict[str, tuple[float, str, bool]]:
    """Layers of ``model`` that ``state_dict`` holds as mixed: name -> (p, level, has targets)."""
    found = {}
    for name in mixable_layer_names(model):
        prefix = f"{name}." if name else ""
        state = state_dict.get(prefix + "_extra_state")
        has_targets = any(
            k.startswith(prefix) and k.endswith("target") and "." not in k[len(prefix) :] for k in state_dict
        )
        if state is not None:
            found[name] = (*decode_state(state), has_targets)
        elif has_targets:  # a checkpoint from before p was stored
            if p is None:
                raise ValueError(
                    f"the checkpoint holds mixed layer {name!r} without its p (saved by an older "
                    f"version): pass p="
                )
            found[name] = (mixing.check_p(p), "neuron", True)
    if not found:
        raise ValueError(
            "from_state_dict holds no mixed layer (no '<layer>._extra_state' or '<layer>.target' key)"
        )
    return found


def mixout_model(
    model: nn.Module,
    p: float | None = None,
    layers: Iterable[str] | str | Callable[[str, nn.Module], bool] | None = None,
    *,
    level: str = "neuron",
    dropout_p: float | None = 0.0,
    dropouts: str | Callable[[str, nn.Module], bool] | None = None,
    example_inputs=None,
    from_state_dict: dict | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Turn chosen layers of ``model`` into mixout(w_pre, p) layers (eq. 8; eq. 5 with ``level="parameter"``).

    Layers it converts (:data:`LAYER_TYPES`): ``nn.Linear`` and subclasses that keep its forward,
    ``transformers``' ``Conv1D`` (recognised without importing ``transformers``),
    ``nn.MultiheadAttention`` (its input projections and ``out_proj`` together), ``nn.Conv1d/2d/3d``
    and ``nn.Embedding`` (see :mod:`mixout_theory.layers` for each one's input units). A chosen layer
    becomes ``<MixClass>.from_module(layer, p, share_parameters=True)``: target = its current weight,
    the same ``Parameter`` objects (a layer reachable under several names becomes one module). Mixout
    takes dropout's place, so ``dropout_p`` goes to the dropout modules (:data:`DROPOUT_TYPES`) chosen
    by ``dropouts``; dropout applied functionally inside a ``forward`` is out of reach. Raises
    ``ValueError`` for unknown names, names of layers it cannot convert, or an empty selection, listing
    the convertible layers.

    Args:
        model (nn.Module): the model.
        p (float): the mixing probability (with ``from_state_dict``: only the fallback for checkpoints
            without it).
        layers: ``None`` = every convertible layer but the embeddings, with an
            :class:`UnmixedLayerWarning` listing modules with weights that none of the classes converts;
            a list of names as in ``model.named_modules()`` (a string is one name); or a predicate
            ``f(name, module) -> bool``, called once on every convertible layer.
        level (str): ``"neuron"`` (eq. 8) or ``"parameter"`` (eq. 5).
        dropout_p (float, optional): the new ``p`` of the chosen dropouts (default 0; ``None`` leaves
            every dropout as it is).
        dropouts: ``None`` = those feeding a mixed layer (:func:`feeding_dropouts`) when
            ``example_inputs`` is given, else all of them with a warning; ``"all"``; or a predicate
            ``f(name, module)``.
        example_inputs: one forward pass's inputs, to find the feeding dropouts.
        from_state_dict (dict, optional): rebuild a mixed model from a checkpoint of one: the layers whose
            ``_extra_state`` (or, from older versions, ``target``) it holds are converted with its ``p``
            and level (``layers`` must be None), then the whole state dict is loaded strictly.
        inplace (bool): convert ``model`` itself instead of a deep copy.

    Returns:
        nn.Module: the converted model (a new object when the root itself is converted).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 2))
        >>> mixed = mixout_model(net, 0.5, layers=["3"], example_inputs=torch.ones(1, 3))
        >>> type(mixed[3]).__name__, mixed[2].p, torch.equal(mixed[3].target, net[3].weight)
        ('MixLinear', 0.0, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    level = check_level(level)
    if dropout_p is not None:
        mixing.check_p(dropout_p)
    if from_state_dict is not None:
        if layers is not None:
            raise ValueError("layers must be None with from_state_dict (the checkpoint says which are mixed)")
        plan = _from_checkpoint(model, from_state_dict, p)
    else:
        if p is None:
            raise TypeError("mixout_model needs p (the mixing probability), or from_state_dict=")
        p = mixing.check_p(p)
        plan = {n: (p, level, True) for n in _select(model, layers)}  # validated before copying
    if not inplace:
        model = copy.deepcopy(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    chosen = {id(modules[n]): (modules[n], *plan[n]) for n in plan}
    if dropout_p is not None:
        _set_dropouts(model, [m for m, *_ in chosen.values()], dropout_p, dropouts, example_inputs)
    mapping = {
        i: _kind(m).from_module(m, lp, level=lv, share_parameters=True, target="w_pre" if t else "zero")
        for i, (m, lp, lv, t) in chosen.items()
    }
    model = _replace(model, mapping)
    if from_state_dict is not None:
        model.load_state_dict(from_state_dict)
    return model


def unmix_model(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Turn every mixout layer (eq. 8 / eq. 5) of ``model`` back into its plain layer, trained weights kept.

    The new layers hold the same ``Parameter`` objects as the mixed ones (of the copy when
    ``inplace=False``), so ``state_dict()`` is that of the plain model: ready for ``save_pretrained`` /
    ``from_pretrained``. Targets are dropped; dropout probabilities are not restored.

    Args:
        model (nn.Module): the model.
        inplace (bool): convert ``model`` itself instead of a deep copy.

    Returns:
        nn.Module: the model (a new object when the root itself is a mixout layer).

    Example:
        >>> plain = unmix_model(mixout_model(nn.Sequential(nn.Linear(3, 2)), 0.5))
        >>> type(plain[0]).__name__, "0.target" in plain.state_dict()
        ('Linear', False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    mapping = {
        id(m): m.to_plain(share_parameters=True) for m in model.modules() if isinstance(m, MixoutLayer)
    }
    return _replace(model, mapping)


def mixed_layer_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the mixout layers (eq. 8 / eq. 5) of ``model`` (the first name of each).

    Args:
        model (nn.Module): the model.

    Returns:
        list[str]: the names, as in ``model.named_modules()``.

    Example:
        >>> mixed_layer_names(mixout_model(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), 0.1))
        ['0', '2']
    """
    return [name for name, m in model.named_modules() if isinstance(m, MixoutLayer)]

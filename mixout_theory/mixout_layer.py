"""What every mixout layer shares (:class:`MixoutLayer`): ``p``, the level, the targets, the masks, the state.

Reference: C. Lee, K. Cho, W. Kang, "Mixout", ICLR 2020 (arXiv:1909.11299). The layers themselves
(:class:`~mixout_theory.layers.MixLinear`, ...) live in :mod:`mixout_theory.layers`. At each
training forward call a layer applies ``W_eff = u + M (W - u) / (1 - p)`` (eq. 4 with ``mu = 1 - p``)
with a fresh mask ``M`` drawn by :func:`mixout_theory.masks.bernoulli_mask` at the layer's level.

``p`` and the level travel with the layer: ``state_dict()`` holds ``<layer>._extra_state``, a float64
tensor ``[1, p, level]`` (tensors only, so ``safetensors`` / ``save_pretrained`` can write it; casts such
as ``.half()`` never touch it), restored by ``load_state_dict``; a checkpoint from before it was stored
loads strictly and keeps the layer's ``p``. ``generator`` (default ``None``: torch's global one) may be a
``torch.Generator`` on the weight's device. Under activation checkpointing (``torch.utils.checkpoint``,
``transformers``' gradient checkpointing) the backward uses the very mask drawn in forward with any
generator: torch restores its global random state for the recomputation itself, and a layer with its
own generator keeps the masks of forward calls that may be recomputed (:func:`may_be_recomputed`),
keyed by the global random state, which it reads and never advances (checkpointing restores that
state for the recomputation, which so finds them). One case stays out of reach: a layer called twice
inside one checkpointed segment with nothing drawn from torch's global generator between the calls
(the recomputation then gets the two calls' masks in reverse order).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch import nn

from mixout_theory import mixing
from mixout_theory.entries import check_real_dtype
from mixout_theory.masks import LEVELS, bernoulli_mask, check_level

__all__ = ["MixoutLayer", "decode_state", "may_be_recomputed", "recomputing"]

_STATE_VERSION = 1.0
_REPLAY_LIMIT = 16  # forward calls whose masks a layer keeps for recomputations that may never come


def _probe(name: str, default):
    probe = getattr(torch._C, name, None) or getattr(torch._C._autograd, name, None)
    return default if probe is None else probe


def recomputing() -> bool:
    """Whether this forward runs inside a backward pass: activation checkpointing recomputing it."""
    return _probe("_current_graph_task_id", lambda: 0)() != -1


def may_be_recomputed() -> bool:
    """Whether the forward running now may be run again by activation checkpointing.

    True inside a backward pass (a recomputation), without grad mode (reentrant checkpointing's first
    pass) or under saved-tensor hooks (non-reentrant checkpointing, also offloading); False in plain
    training. Where torch lacks the probes, True (the safe answer).
    """
    hooks = _probe("_top_saved_tensors_default_hooks", lambda _: True)
    return not torch.is_grad_enabled() or recomputing() or hooks(False) is not None


def _random_state_key(device: torch.device) -> int:
    """A fingerprint of torch's global random state (CPU, and the device's): what checkpointing
    restores before it recomputes, so the recomputation of a call sees the key its forward saw."""
    state = torch.get_rng_state()
    if device.type == "cuda":
        state = torch.cat([state, torch.cuda.get_rng_state(device)])
    return hash(state.numpy().tobytes())


def _fresh(cls, config: dict) -> nn.Module:
    """``cls(**config)`` built on the meta device: no random initialisation, no memory."""
    with torch.device("meta"):
        return cls(**config)


def _adopt(new: nn.Module, old: nn.Module, share: bool) -> nn.Module:
    """Give ``new`` every parameter of ``old`` (the same objects, or copies), and its training mode."""
    for name, param in old.named_parameters(remove_duplicate=False):
        owner, _, leaf = name.rpartition(".")
        if not share:
            param = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
        setattr(new.get_submodule(owner), leaf, param)
    return new.train(old.training)


class MixoutLayer:
    """What every mixout layer shares: ``p``, ``level``, ``generator``, the targets, the masks (eq. 4).

    In training mode each forward call mixes the layer's weights, ``W_eff = u + M (W - u) / (1 - p)``,
    with a fresh mask ``M`` at the layer's level (:func:`~mixout_theory.masks.bernoulli_mask`); in
    evaluation mode, or at ``p = 0``, it is the plain layer. A subclass lists its mixed weights in
    :meth:`_specs` as ``(parameter path, target buffer name, view shape, neuron mask shape)``: the weight
    is mixed in the view (:func:`~mixout_theory.mixing.mixed_weight` with ``M / (1 - p)``), with a mask
    of the neuron shape or of the view's. :meth:`from_module` converts a plain layer, :meth:`to_plain`
    converts back, :meth:`set_target` sets ``u``.

    Args:
        p (float): every subclass's constructor takes the mixing probability ...
        level (str): ... and the mask level, ``"neuron"`` (eq. 8) or ``"parameter"`` (eq. 5).

    Example:
        >>> layer = MixLinear(3, 2, p=0.1, level="parameter")
        >>> isinstance(layer, MixoutLayer), layer.p, layer.level
        (True, 0.1, 'parameter')
    """

    _PLAIN: type = nn.Module  # the plain layer type it mixes (subclasses that keep its forward too)

    def _init_mixout(self, p, level) -> None:
        self.p = p
        self.level = level
        self.generator: torch.Generator | None = None
        self._replay: OrderedDict[int, list[torch.Tensor]] = OrderedDict()
        self._target_is_w_pre = False
        self._plain_type = self._PLAIN
        for _, target, *_ in self._specs():
            self.register_buffer(target, None)

    # -- state ---------------------------------------------------------------------------------
    @property
    def p(self) -> float:
        """The mixing probability (the chance that an input unit's weights are replaced by ``u``)."""
        return self._p

    @p.setter
    def p(self, value) -> None:
        self._p = mixing.check_p(value)

    @property
    def level(self) -> str:
        """``"neuron"`` (mixout, eq. 8) or ``"parameter"`` (mixconnect, eq. 5)."""
        return self._level

    @level.setter
    def level(self, value) -> None:
        self._level = check_level(value)

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([_STATE_VERSION, self._p, LEVELS.index(self._level)], dtype=torch.float64)

    def set_extra_state(self, state) -> None:
        self.p, self.level = decode_state(state)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        if prefix + "_extra_state" in missing:  # saved before p was stored: keep this layer's p
            missing.remove(prefix + "_extra_state")

    def _weight(self, path: str) -> torch.Tensor:
        owner, _, leaf = path.rpartition(".")
        return getattr(self.get_submodule(owner), leaf)

    def set_target(self, target: torch.Tensor | None, name: str | None = None) -> None:
        """Store ``target`` (detached copy, on the weight's device / dtype) or ``None`` (``u = 0``).

        ``name``: which target buffer (default: the layer's only one)."""
        specs = {t: w for w, t, *_ in self._specs()}
        if name is None:
            if len(specs) != 1:
                raise ValueError(f"{type(self).__name__} has several targets, name one of {sorted(specs)}")
            (name,) = specs
        value = None if target is None else mixing.check_target(self._weight(specs[name]), target).clone()
        setattr(self, name, value)
        self._target_is_w_pre = False

    def _set_w_pre(self) -> None:
        for weight, target, *_ in self._specs():
            setattr(self, target, self._weight(weight).detach().clone())
        self._target_is_w_pre = True

    def extra_repr(self) -> str:
        kind = "w_pre" if self._target_is_w_pre else "given"
        if all(getattr(self, t) is None for _, t, *_ in self._specs()):
            kind = "zero (dropout)"
        level = "" if self._level == "neuron" else ", level=parameter"
        base, mix = super().extra_repr(), f"p={self._p:g}{level}, target={kind}"
        return f"{base}, {mix}" if base else mix

    # -- the masks and the mixed weights -----------------------------------------------------------
    def _active(self) -> bool:
        return self.training and self._p > 0.0

    def _draw(self, specs) -> list[torch.Tensor]:
        """One scaled mask ``M / (1 - p)`` per mixed weight (all zero at ``p = 1``: exactly ``u``)."""
        out = []
        for weight, _, view, unit in specs:
            w = check_real_dtype(f"{type(self).__name__}.{weight}", self._weight(weight))
            shape = unit if self._level == "neuron" else view
            if self._p == 1.0:
                out.append(torch.zeros(shape, device=w.device, dtype=w.dtype))
            else:
                mask = bernoulli_mask(w, self._p, shape, self.generator)
                out.append(mask.mul_(1.0 / (1.0 - self._p)))
        return out

    def _scales(self, specs) -> list[torch.Tensor]:
        """:meth:`_draw`, such that a recomputed forward (activation checkpointing) gets the same masks.

        With torch's global generator there is nothing to do: checkpointing restores it. With the
        layer's own generator, a forward that may be recomputed keeps its masks under the key of the
        global random state (:func:`_random_state_key`, read, never advanced), and its recomputation
        takes them back (the newest under that key first, as backward recomputes the latest forward
        first). Nothing is kept in plain training.
        """
        if self.generator is None or not may_be_recomputed():
            return self._draw(specs)
        key = _random_state_key(self._weight(specs[0][0]).device)
        if recomputing():
            kept = self._replay.get(key)
            if kept:
                masks = kept.pop()
                if not kept:
                    del self._replay[key]
                return masks
            warnings.warn(
                f"{type(self).__name__}: recomputed forward without its masks (more than "
                f"{_REPLAY_LIMIT} calls in flight?): new masks are drawn",
                RuntimeWarning,
                stacklevel=2,
            )
            return self._draw(specs)
        masks = self._draw(specs)
        self._replay.setdefault(key, []).append(masks)
        self._replay.move_to_end(key)
        while sum(map(len, self._replay.values())) > _REPLAY_LIMIT:
            oldest = next(iter(self._replay))
            self._replay[oldest].pop(0)
            if not self._replay[oldest]:
                del self._replay[oldest]
        return masks

    def mixed_weights(self) -> list[torch.Tensor]:
        """The weights this forward call uses, in :meth:`_specs` order: eq. 4 in training mode."""
        specs = self._specs()
        weights = [self._weight(w) for w, *_ in specs]
        if not self._active():
            return weights
        out = []
        for w, (_, target, view, _), s in zip(weights, specs, self._scales(specs), strict=True):
            u = getattr(self, target)
            mixed = mixing.mixed_weight(w.reshape(view), None if u is None else u.reshape(view), s)
            out.append(mixed.reshape(w.shape))
        return out

    # -- conversion ----------------------------------------------------------------------------------
    @classmethod
    def supports(cls, module: nn.Module) -> bool:
        """Whether ``module`` is a plain layer of this kind (its own forward, not an override)."""
        return (
            isinstance(module, cls._PLAIN)
            and not isinstance(module, MixoutLayer)
            and type(module).forward is cls._PLAIN.forward
        )

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        p: float,
        *,
        level: str = "neuron",
        share_parameters: bool = False,
        target: str = "w_pre",
    ):
        """This mixout layer made from a plain one: same parameters (copies, or the very objects when
        ``share_parameters``), device, dtype, ``requires_grad`` and training mode; targets = its current
        weights (``target="w_pre"``) or none (``target="zero"``: dropout). The global random state is
        not touched."""
        if not cls.supports(module):
            raise TypeError(
                f"{cls.__name__} converts a plain {cls._PLAIN.__name__}, got {type(module).__name__}"
            )
        return cls._build(module, p, level, share_parameters, target, type(module))

    @classmethod
    def _build(cls, module, p, level, share_parameters, target, plain_type):
        p, level = mixing.check_p(p), check_level(level)
        if target not in ("w_pre", "zero"):
            raise ValueError(f"target must be 'w_pre' or 'zero', got target={target!r}")
        new = _adopt(_fresh(cls, {**cls._config(module), "p": p, "level": level}), module, share_parameters)
        new._plain_type = plain_type
        if target == "w_pre":
            new._set_w_pre()
        return new

    def _plain_class(self) -> type:
        return self._plain_type

    def to_plain(self, *, share_parameters: bool = False) -> nn.Module:
        """The plain layer (of the type it was made from) with this layer's current weights; no target."""
        return _adopt(_fresh(self._plain_class(), self._config(self)), self, share_parameters)


def decode_state(state) -> tuple[float, str]:
    """``(p, level)`` from a mixout layer's ``_extra_state`` tensor ``[1, p, level index]``."""
    values = state.tolist() if isinstance(state, torch.Tensor) else None
    if not (
        isinstance(values, list) and len(values) == 3 and values[0] == _STATE_VERSION and values[2] in (0, 1)
    ):
        raise ValueError(f"not a mixout layer's state (expected a tensor [1, p, level]): {state!r}")
    return mixing.check_p(values[1]), LEVELS[int(values[2])]

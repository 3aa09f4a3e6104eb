"""Mixout layers: ``torch.nn`` layers whose weights are mixout(u, p)-ed in training mode.

Reference: C. Lee, K. Cho, W. Kang, "Mixout", ICLR 2020 (arXiv:1909.11299). Every layer here applies,
at each training forward call, ``W_eff = u + M (W - u) / (1 - p)`` (eq. 4 with ``mu = 1 - p``) with a
fresh Bernoulli(1 - p) mask ``M`` and the exact gradient ``dW_eff / dW = M / (1 - p)``; evaluation mode
(and ``p = 0``) is the plain layer, biases are never mixed. ``u`` (the *target*) is a buffer holding
``w_pre``, the weight when the layer was converted, or nothing (``u = 0``: dropout on the inputs).

The mask *level*: ``"neuron"`` (mixout(u, p), eq. 8, the default) draws one value per **input unit**,
shared by every weight leaving it; ``"parameter"`` (mixconnect(u, 1-p, p(1-p)), eq. 5) one per weight.
What an input unit is, layer by layer (the weights that unit feeds are mixed or kept together):

* :class:`MixLinear` (``nn.Linear``, weight ``(out, in)``): input feature ``j``, column ``W[:, j]``.
* :class:`MixConv1D` (``transformers``' GPT-2 ``Conv1D``, weight stored transposed ``(in, out)``):
  input feature ``j``, *row* ``W[j]``.
* :class:`MixConv1d` / ``2d`` / ``3d`` (weight ``(out, in / groups, *kernel)``): input channel ``c``,
  all of ``c``'s kernel weights into every output channel, shared over the whole kernel window and
  every position (a channel is the natural neuron of a convolution; per-element masks, mixconnect,
  would instead mix single kernel taps independently). With ``groups > 1`` each of the ``in`` actual
  input channels gets its own value.
* :class:`MixEmbedding` (weight ``(num, dim)``): vocabulary entry ``r``, row ``W[r]``: an embedding is
  a linear map of a one-hot input, whose units are the entries. One value per entry per call, shared
  by every occurrence of that token in the batch; computed on the looked-up rows only.
* :class:`MixMultiheadAttention` (``nn.MultiheadAttention``): its input projections and ``out_proj``,
  one value per input unit *per projection* (the packed ``in_proj_weight`` is mixed as the three
  query / key / value maps it holds, exactly as three separate mixed Linear layers would be).

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
import torch.nn.functional as F
from torch import nn

from mixout_theory import mixing

__all__ = [
    "LEVELS",
    "MixoutLayer",
    "MixLinear",
    "MixConv1D",
    "MixConv1d",
    "MixConv2d",
    "MixConv3d",
    "MixEmbedding",
    "MixMultiheadAttention",
    "may_be_recomputed",
    "recomputing",
]

#: The mask levels: one value per input unit (mixout, eq. 8) or per weight (mixconnect, eq. 5).
LEVELS = ("neuron", "parameter")
_STATE_VERSION = 1.0
_REPLAY_LIMIT = 16  # forward calls whose masks a layer keeps for recomputations that may never come


def check_level(level) -> str:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(map(repr, LEVELS))}, got level={level!r}")
    return level


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
    """What every mixout layer shares: ``p``, ``level``, ``generator``, the targets, the masks.

    A subclass lists its mixed weights in :meth:`_specs` as ``(parameter path, target buffer name,
    view shape, neuron mask shape)``: the weight is mixed in the view (eq. 4,
    ``mixing.mixed_weight(W, u, M / (1 - p))``), with a mask of the neuron shape or of the view's.
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
            w = self._weight(weight)
            shape = unit if self._level == "neuron" else view
            mask = torch.empty(shape, device=w.device, dtype=w.dtype)
            if self._p == 1.0:
                out.append(mask.zero_())
            else:
                out.append(
                    mask.bernoulli_(1.0 - self._p, generator=self.generator).mul_(1.0 / (1.0 - self._p))
                )
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
        for w, (_, target, view, _), s in zip(weights, specs, self._scales(specs)):
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


class MixLinear(MixoutLayer, nn.Linear):
    """``nn.Linear`` with a mixed weight: ``y = x W_eff^T + b`` (eq. 8 at the neuron level).

    ``target`` (``u``) is a buffer (``state_dict()``, ``.to()``, ``.half()`` carry it), never trained;
    ``None`` means ``u = 0``: dropout(p) on the inputs with one mask per call. At the neuron level the
    forward pass gives :func:`mixing.mixout_linear`'s numbers bit for bit (the same mask draw and lerp).
    """

    _PLAIN = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        p: float = 0.0,
        target: torch.Tensor | None = None,
        device=None,
        dtype=None,
        *,
        level: str = "neuron",
    ) -> None:
        p, level = mixing.check_p(p), check_level(level)  # before the random initialisation
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_mixout(p, level)
        self.set_target(target)

    def _specs(self):
        return (("weight", "target", (self.out_features, self.in_features), (1, self.in_features)),)

    @staticmethod
    def _config(m):
        return dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.mixed_weights()[0], self.bias)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        p: float,
        target: torch.Tensor | None = None,
        *,
        share_parameters: bool = False,
        level: str = "neuron",
    ) -> "MixLinear":
        """A :class:`MixLinear` with ``linear``'s weight and bias (any ``nn.Linear``, a mixed one too);
        ``target`` defaults to ``w_pre``, a detached copy of ``linear.weight`` as it is now."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        plain = type(linear) if MixLinear.supports(linear) else nn.Linear
        new = cls._build(linear, p, level, share_parameters, "w_pre", plain)
        if target is not None:
            new.set_target(target)
        return new

    def to_linear(self, *, share_parameters: bool = False) -> nn.Linear:
        """A plain ``nn.Linear`` with this layer's current weight and bias; no target."""
        return _adopt(_fresh(nn.Linear, self._config(self)), self, share_parameters)


class MixConv1D(MixoutLayer, nn.Module):
    """``transformers``' ``Conv1D`` (GPT-2's linear layer, weight ``(nx, nf)`` = ``(in, out)``), mixed:
    ``y = x W_eff + b`` with one mask value per input feature, i.e. per row of the weight."""

    _PLAIN = nn.Module  # recognised by name (see supports), so that transformers is never imported

    def __init__(self, nf: int, nx: int, p: float = 0.0, *, level: str = "neuron", device=None, dtype=None):
        p, level = mixing.check_p(p), check_level(level)
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.empty(nx, nf, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(nf, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.02)
        self._init_mixout(p, level)

    def _specs(self):
        return (("weight", "target", (self.nx, self.nf), (self.nx, 1)),)

    @staticmethod
    def _config(m):
        return dict(nf=m.nf, nx=m.nx)

    @classmethod
    def supports(cls, module):
        t = type(module)
        return t.__name__ == "Conv1D" and t.__module__.startswith("transformers")

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, {super().extra_repr()}"

    def _plain_class(self) -> type:
        if self._plain_type is nn.Module:  # built directly, not converted: transformers' own class
            from transformers.pytorch_utils import Conv1D

            return Conv1D
        return self._plain_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.mixed_weights()[0])
        return out.view(*x.shape[:-1], self.nf)


class _MixConv(MixoutLayer):
    """A mixed ``nn.ConvNd``: one mask value per input channel (shared over the kernel window)."""

    def __init__(self, *args, p: float = 0.0, level: str = "neuron", **kwargs) -> None:
        p, level = mixing.check_p(p), check_level(level)
        super().__init__(*args, **kwargs)
        self._init_mixout(p, level)

    def _specs(self):
        g, (out, in_g, *kernel) = self.groups, self.weight.shape
        view = (g, out // g, in_g, *kernel)
        return (("weight", "target", view, (g, 1, in_g) + (1,) * len(kernel)),)

    @staticmethod
    def _config(m):
        return dict(
            in_channels=m.in_channels,
            out_channels=m.out_channels,
            kernel_size=m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=m.groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.mixed_weights()[0], self.bias)


class MixConv1d(_MixConv, nn.Conv1d):
    _PLAIN = nn.Conv1d


class MixConv2d(_MixConv, nn.Conv2d):
    _PLAIN = nn.Conv2d


class MixConv3d(_MixConv, nn.Conv3d):
    _PLAIN = nn.Conv3d


class MixEmbedding(MixoutLayer, nn.Embedding):
    """``nn.Embedding`` with mixed rows: ``y = u[i] + M_i (W[i] - u[i]) / (1 - p)`` for token ``i``.

    Equal to looking ``i`` up in the mixed table ``W_eff`` (eq. 4 with one mask value per vocabulary
    entry), computed on the looked-up rows only, so a step costs ``O(tokens x dim)``, not the table.
    ``max_norm`` (which renormalises the table in place) is not supported.
    """

    _PLAIN = nn.Embedding

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx=None,
        p: float = 0.0,
        *,
        level: str = "neuron",
        **kwargs,
    ) -> None:
        p, level = mixing.check_p(p), check_level(level)
        if kwargs.get("max_norm") is not None:
            raise ValueError("MixEmbedding does not support max_norm (it renormalises the table in place)")
        super().__init__(num_embeddings, embedding_dim, padding_idx, **kwargs)
        self._init_mixout(p, level)

    def _specs(self):
        return (("weight", "target", (self.num_embeddings, self.embedding_dim), (self.num_embeddings, 1)),)

    @staticmethod
    def _config(m):
        return dict(
            num_embeddings=m.num_embeddings,
            embedding_dim=m.embedding_dim,
            padding_idx=m.padding_idx,
            scale_grad_by_freq=m.scale_grad_by_freq,
            sparse=m.sparse,
        )

    @classmethod
    def supports(cls, module):
        return super().supports(module) and module.max_norm is None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(
            input, self.weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse
        )
        if not self._active():
            return rows
        (scale,) = self._scales(self._specs())
        u = None if self.target is None else F.embedding(input, self.target)
        return mixing.mixed_weight(rows, u, F.embedding(input, scale))


class MixMultiheadAttention(MixoutLayer, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with mixed input projections and ``out_proj`` (neuron level: one value
    per input unit of each projection; the packed ``in_proj_weight`` as its query / key / value parts).

    Training forward: ``nn.MultiheadAttention.forward`` run with the mixed weights in place of the
    parameters (swapped in for the call only); evaluation is the plain module (fast path included).
    The targets are buffers ``in_proj_target`` (or ``q_proj_target``, ``k_proj_target``,
    ``v_proj_target`` when key / value sizes differ) and ``out_proj_target``.
    """

    _PLAIN = nn.MultiheadAttention

    def __init__(
        self, embed_dim: int, num_heads: int, *args, p: float = 0.0, level: str = "neuron", **kwargs
    ):
        p, level = mixing.check_p(p), check_level(level)
        super().__init__(embed_dim, num_heads, *args, **kwargs)
        self._init_mixout(p, level)

    def _specs(self):
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            inputs = (("in_proj_weight", "in_proj_target", (3, e, e), (3, 1, e)),)
        else:
            inputs = tuple(
                (f"{k}_proj_weight", f"{k}_proj_target", (e, d), (1, d))
                for k, d in (("q", e), ("k", self.kdim), ("v", self.vdim))
            )
        return inputs + (("out_proj.weight", "out_proj_target", (e, e), (1, e)),)

    @staticmethod
    def _config(m):
        return dict(
            embed_dim=m.embed_dim,
            num_heads=m.num_heads,
            dropout=m.dropout,
            bias=m.in_proj_bias is not None,
            add_bias_kv=m.bias_k is not None,
            add_zero_attn=m.add_zero_attn,
            kdim=m.kdim,
            vdim=m.vdim,
            batch_first=m.batch_first,
        )

    def forward(self, *args, **kwargs):
        if not self._active():
            return super().forward(*args, **kwargs)
        saved = []
        try:
            for (path, *_), mixed in zip(self._specs(), self.mixed_weights()):
                owner, _, leaf = path.rpartition(".")
                module = self.get_submodule(owner)
                saved.append((module, leaf, module._parameters[leaf]))
                module._parameters[leaf] = mixed  # read by the forward below in place of the parameter
            return super().forward(*args, **kwargs)
        finally:
            for module, leaf, param in saved:
                module._parameters[leaf] = param

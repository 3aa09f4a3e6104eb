"""Mixout layers: ``torch.nn`` layers whose weights are mixout(u, p)-ed in training mode.

Reference: C. Lee, K. Cho, W. Kang, "Mixout", ICLR 2020 (arXiv:1909.11299). Every layer here applies,
at each training forward call, ``W_eff = u + M (W - u) / (1 - p)`` (eq. 4 with ``mu = 1 - p``) with a
fresh Bernoulli(1 - p) mask ``M`` and the exact gradient ``dW_eff / dW = M / (1 - p)``; evaluation mode
(and ``p = 0``) is the plain layer, biases are never mixed. ``u`` (the *target*) is a buffer holding
``w_pre``, the weight when the layer was converted, or nothing (``u = 0``: dropout on the inputs).

The mask *level* (:data:`~mixout_theory.masks.LEVELS`): ``"neuron"`` (mixout(u, p), eq. 8, the default)
draws one value per **input unit**, shared by every weight leaving it; ``"parameter"``
(mixconnect(u, 1-p, p(1-p)), eq. 5) one per weight.
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

What the layers share (``p`` and the level in ``state_dict()``, the targets, the masks under
activation checkpointing) is :class:`~mixout_theory.mixout_layer.MixoutLayer`, in
:mod:`mixout_theory.mixout_layer`; its names are importable from here too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixout_theory import mixing
from mixout_theory.masks import LEVELS, check_level
from mixout_theory.mixout_layer import (
    MixoutLayer,
    _adopt,
    _fresh,
    decode_state,
    may_be_recomputed,
    recomputing,
)

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
    "decode_state",
    "may_be_recomputed",
    "recomputing",
]


class MixLinear(MixoutLayer, nn.Linear):
    """``nn.Linear`` with a mixed weight: ``y = x W_eff^T + b``, ``W_eff = u + M (W - u) / (1 - p)`` (eq. 8).

    ``M`` is one Bernoulli(1 - p) value per input feature (column ``W[:, j]``), or per weight with
    ``level="parameter"`` (eq. 5), drawn afresh at each training forward call; evaluation mode is the
    plain layer. At the neuron level the forward pass gives :func:`~mixout_theory.mixing.mixout_linear`'s
    numbers bit for bit. ``target`` (``u``) is a buffer (``state_dict()``, ``.to()``, ``.half()`` carry
    it), never trained. :meth:`from_linear` converts a plain layer with ``u = w_pre``.

    Args:
        in_features (int): size of each input sample.
        out_features (int): size of each output sample.
        bias (bool): whether the layer has a bias (never mixed).
        p (float): the mixing probability.
        target (Tensor, optional): ``u``, of the weight's shape; ``None``: ``u = 0``, dropout(p) on the
            inputs.
        device, dtype: as for ``nn.Linear``.
        level (str): ``"neuron"`` (eq. 8) or ``"parameter"`` (eq. 5).

    Shape:
        input ``(*, in_features)``, output ``(*, out_features)``; weight ``(out_features, in_features)``.

    Example:
        >>> layer = MixLinear.from_linear(nn.Linear(3, 2), p=0.5)
        >>> layer(torch.ones(4, 3)).shape, layer.p, layer.level
        (torch.Size([4, 2]), 0.5, 'neuron')
        >>> x = torch.ones(1, 3)
        >>> torch.equal(layer.eval()(x), layer.to_linear()(x))
        True
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
    ) -> MixLinear:
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
    """``transformers``' ``Conv1D`` (GPT-2's linear layer), mixed: ``y = x W_eff + b`` (eq. 8).

    The weight is stored transposed, ``(nx, nf)`` = ``(in, out)``, so the neuron-level mask has one
    value per input feature, i.e. per *row* of the weight. :meth:`from_module` converts a
    ``transformers`` ``Conv1D`` (target ``u = w_pre``); built directly it has no target (``u = 0``).

    Args:
        nf (int): output features.
        nx (int): input features.
        p (float): the mixing probability.
        level (str): ``"neuron"`` (eq. 8) or ``"parameter"`` (eq. 5).
        device, dtype: of the parameters.

    Shape:
        input ``(*, nx)``, output ``(*, nf)``; weight ``(nx, nf)``.

    Example:
        >>> MixConv1D(nf=4, nx=3, p=0.5)(torch.ones(2, 5, 3)).shape
        torch.Size([2, 5, 4])
    """

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
    """A mixed ``nn.ConvNd``: ``W_eff = u + M (W - u) / (1 - p)`` in training mode (eq. 4), with ``M`` one
    Bernoulli(1 - p) value per input channel, shared over the kernel window (eq. 8), or one per weight
    (``level="parameter"``, eq. 5)."""

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
    """``nn.Conv1d`` with a mixed weight (eq. 8): one mask value per input channel, over the whole kernel.

    Made by :meth:`from_module` from a plain ``nn.Conv1d`` (``u = w_pre``) or directly (``u = 0``).

    Args:
        *args: ``nn.Conv1d``'s (``in_channels``, ``out_channels``, ``kernel_size``, ...).
        p (float): the mixing probability.
        level (str): ``"neuron"`` (eq. 8) or ``"parameter"`` (eq. 5).
        **kwargs: ``nn.Conv1d``'s (``stride``, ``padding``, ``groups``, ...).

    Shape:
        as ``nn.Conv1d``: input ``(N, C_in, L)``, output ``(N, C_out, L_out)``; weight
        ``(C_out, C_in / groups, *kernel_size)``.

    Example:
        >>> conv = MixConv1d.from_module(nn.Conv1d(3, 8, 3), p=0.2)
        >>> conv(torch.ones(1, 3, 5)).shape
        torch.Size([1, 8, 3])
    """

    _PLAIN = nn.Conv1d


class MixConv2d(_MixConv, nn.Conv2d):
    """``nn.Conv2d`` with a mixed weight (eq. 8): one mask value per input channel, over the whole kernel.

    Made by :meth:`from_module` from a plain ``nn.Conv2d`` (``u = w_pre``) or directly (``u = 0``).

    Args:
        *args: ``nn.Conv2d``'s (``in_channels``, ``out_channels``, ``kernel_size``, ...).
        p (float): the mixing probability.
        level (str): ``"neuron"`` (eq. 8) or ``"parameter"`` (eq. 5).
        **kwargs: ``nn.Conv2d``'s (``stride``, ``padding``, ``groups``, ...).

    Shape:
        as ``nn.Conv2d``: input ``(N, C_in, H, W)``, output ``(N, C_out, H_out, W_out)``; weight
        ``(C_out, C_in / groups, *kernel_size)``.

    Example:
        >>> conv = MixConv2d.from_module(nn.Conv2d(3, 8, 3), p=0.2)
        >>> conv(torch.ones(1, 3, 5, 5)).shape
        torch.Size([1, 8, 3, 3])
    """

    _PLAIN = nn.Conv2d


class MixConv3d(_MixConv, nn.Conv3d):
    """``nn.Conv3d`` with a mixed weight (eq. 8): one mask value per input channel, over the whole kernel.

    Made by :meth:`from_module` from a plain ``nn.Conv3d`` (``u = w_pre``) or directly (``u = 0``).

    Args:
        *args: ``nn.Conv3d``'s (``in_channels``, ``out_channels``, ``kernel_size``, ...).
        p (float): the mixing probability.
        level (str): ``"neuron"`` (eq. 8) or ``"parameter"`` (eq. 5).
        **kwargs: ``nn.Conv3d``'s (``stride``, ``padding``, ``groups``, ...).

    Shape:
        as ``nn.Conv3d``: input ``(N, C_in, D, H, W)``, output ``(N, C_out, D_out, H_out, W_out)``; weight
        ``(C_out, C_in / groups, *kernel_size)``.

    Example:
        >>> conv = MixConv3d.from_module(nn.Conv3d(3, 8, 3), p=0.2)
        >>> conv(torch.ones(1, 3, 5, 5, 5)).shape
        torch.Size([1, 8, 3, 3, 3])
    """

    _PLAIN = nn.Conv3d


class MixEmbedding(MixoutLayer, nn.Embedding):
    """``nn.Embedding`` with mixed rows: ``y = u[i] + M_i (W[i] - u[i]) / (1 - p)`` for token ``i`` (eq. 8).

    Equal to looking ``i`` up in the mixed table ``W_eff`` (one mask value per vocabulary entry, shared by
    every occurrence of it in the call), computed on the looked-up rows only, so a step costs
    ``O(tokens x dim)``, not the table. ``max_norm`` (which renormalises the table in place) is not
    supported.

    Args:
        num_embeddings (int): the vocabulary size.
        embedding_dim (int): the size of each embedding.
        padding_idx (int, optional): as for ``nn.Embedding``.
        p (float): the mixing probability.
        level (str): ``"neuron"`` (one value per entry, eq. 8) or ``"parameter"`` (per weight, eq. 5).
        **kwargs: ``nn.Embedding``'s (``scale_grad_by_freq``, ``sparse``, ``device``, ``dtype``).

    Shape:
        input ``(*)`` of indices, output ``(*, embedding_dim)``; weight ``(num_embeddings, embedding_dim)``.

    Example:
        >>> table = MixEmbedding.from_module(nn.Embedding(10, 4), p=0.5)
        >>> table(torch.tensor([[1, 2, 2]])).shape
        torch.Size([1, 3, 4])
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
    """``nn.MultiheadAttention`` with mixed input projections and ``out_proj`` (eq. 8 per projection).

    One mask value per input unit *of each projection*; the packed ``in_proj_weight`` is mixed as the
    query / key / value maps it holds, exactly as three separate mixed Linear layers would be. Training
    forward: ``nn.MultiheadAttention.forward`` run with the mixed weights in place of the parameters;
    evaluation is the plain module (fast path included). The targets are buffers ``in_proj_target`` (or
    ``q_proj_target``, ``k_proj_target``, ``v_proj_target`` when key / value sizes differ) and
    ``out_proj_target``.

    Args:
        embed_dim (int): the model dimension.
        num_heads (int): the number of heads.
        *args: ``nn.MultiheadAttention``'s further positional arguments.
        p (float): the mixing probability.
        level (str): ``"neuron"`` (eq. 8) or ``"parameter"`` (eq. 5).
        **kwargs: ``nn.MultiheadAttention``'s (``dropout``, ``kdim``, ``vdim``, ``batch_first``, ...).

    Shape:
        as ``nn.MultiheadAttention``: query ``(L, N, E)`` (``(N, L, E)`` with ``batch_first``), output
        the same and the attention weights.

    Example:
        >>> attn = MixMultiheadAttention.from_module(nn.MultiheadAttention(8, 2, batch_first=True), p=0.1)
        >>> q = torch.ones(1, 3, 8)
        >>> attn(q, q, q)[0].shape
        torch.Size([1, 3, 8])
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
            for (path, *_), mixed in zip(self._specs(), self.mixed_weights(), strict=True):
                owner, _, leaf = path.rpartition(".")
                module = self.get_submodule(owner)
                saved.append((module, leaf, module._parameters[leaf]))
                module._parameters[leaf] = mixed  # read by the forward below in place of the parameter
            return super().forward(*args, **kwargs)
        finally:
            for module, leaf, param in saved:
                module._parameters[leaf] = param

"""The random masks of eq. 4: the mixing probability, the mask level, the mask shape, the one sampler.

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299). Equation numbers are the paper's.

A mask ``M`` of Bernoulli(1 - p) values (mean ``mu = 1 - p``) says which units keep ``w`` (1) and
which are mixed to the target ``u`` (0). The mask *level*, one word across the library:

* ``"neuron"`` -- mixout(u, p), eq. 8: one value per *input unit* (index of dim 1 of a weight of
  shape ``(out, in, ...)``), shared by every weight leaving it;
* ``"parameter"`` -- mixconnect(u, 1-p, p(1-p)), eq. 5: one independent value per parameter.

:func:`bernoulli_mask` draws every mask of the library (the operator in :mod:`~mixout_theory.mixing`,
the layers, the Monte Carlo penalty), so a seeded generator gives the same mask wherever it is used;
:func:`neuron_mask` and :func:`parameter_mask` are the masks of the two levels, :func:`mask_shape`
a level's mask shape, :func:`check_p` and :func:`check_level` the checks of ``p`` and of a level.
"""

from __future__ import annotations

import math
import numbers

import torch

from mixout_theory.entries import check_real_dtype

__all__ = [
    "LEVELS",
    "check_p",
    "check_level",
    "mask_shape",
    "bernoulli_mask",
    "neuron_mask",
    "parameter_mask",
]

#: The mask levels: one value per input unit (mixout, eq. 8) or one per parameter (mixconnect, eq. 5).
LEVELS = ("neuron", "parameter")


def check_p(p) -> float:
    """Validate a mixing probability ``p in [0, 1]`` and return it as a float.

    Args:
        p (float or one-element Tensor): the probability that a unit is mixed (replaced by ``u``).

    Returns:
        float: ``p``. Raises ``TypeError`` for a non-number (a bool, a tensor of more than one
        element) and ``ValueError`` for NaN or a value outside ``[0, 1]``.

    Example:
        >>> check_p(torch.tensor(0.25))
        0.25
    """
    if isinstance(p, torch.Tensor):
        if p.numel() != 1:
            raise TypeError(f"p must be a single number, got a tensor of shape {tuple(p.shape)}")
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be a real number in [0, 1], got {p!r} of type {type(p).__name__}")
    p = float(p)
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got p={p!r}")
    return p


def check_level(level) -> str:
    """Validate a mask level: one of :data:`LEVELS` (``"neuron"``, eq. 8; ``"parameter"``, eq. 5)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(map(repr, LEVELS))}, got level={level!r}")
    return level


def mask_shape(shape, level: str = "neuron") -> tuple[int, ...]:
    """Shape of one mask for a weight of ``shape``, broadcasting against it.

    ``level="neuron"`` (eq. 8): ``(1, in, 1, ...)`` for ``(out, in, ...)``, one value per input unit
    (a 0-D or 1-D weight: one per element); ``level="parameter"`` (eq. 5): ``shape`` itself.
    """
    shape = tuple(shape)
    if check_level(level) == "parameter" or len(shape) <= 1:
        return shape
    return (1, shape[1]) + (1,) * (len(shape) - 2)


def bernoulli_mask(
    like: torch.Tensor, p: float, shape=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A Bernoulli(1-p) mask, the ``M`` of eq. 4 with ``mu = 1 - p``: every mask of the library is drawn here.

    On ``like``'s device and dtype: of ``like``'s shape and memory layout when ``shape`` is None,
    else a contiguous tensor of ``shape``. One ``bernoulli_`` call on ``generator`` (None: torch's
    global generator), so a seeded generator gives the same mask wherever it is drawn. A complex
    ``like`` raises ``TypeError``: mixout's weights are real.
    """
    p = check_p(p)
    check_real_dtype("the weight a mask is drawn for", like)
    if shape is None:
        mask = torch.empty_like(like, requires_grad=False)
    else:
        mask = torch.empty(shape, device=like.device, dtype=like.dtype)
    return mask.bernoulli_(1.0 - p, generator=generator)


def neuron_mask(weight: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Neuron-level Bernoulli(1-p) mask (eq. 8): one value per input unit of ``weight``.

    Column ``j`` (``W[:, j]``, every weight leaving input neuron ``j``) is kept (1) or mixed (0) as a
    whole. Drawn by :func:`bernoulli_mask`.

    Args:
        weight (Tensor): the weight the mask is for (its shape, device and dtype).
        p (float): the mixing probability.
        generator (torch.Generator, optional): the random source (default: torch's global one).

    Shape:
        ``(out, in, *rest)`` gives ``(1, in, 1, ...)``; a 0-D or 1-D weight one value per element.

    Returns:
        Tensor: the mask of 0s and 1s.

    Example:
        >>> neuron_mask(torch.ones(4, 3), 0.5, torch.Generator().manual_seed(0)).shape
        torch.Size([1, 3])
    """
    return bernoulli_mask(weight, p, mask_shape(weight.shape), generator)


def parameter_mask(weight: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Parameter-level Bernoulli(1-p) mask (eq. 5): one independent value per entry of ``weight``.

    Args:
        weight (Tensor): the weight the mask is for (its shape, layout, device and dtype).
        p (float): the mixing probability.
        generator (torch.Generator, optional): the random source (default: torch's global one).

    Shape:
        the mask has ``weight``'s shape.

    Returns:
        Tensor: the mask of 0s and 1s, drawn by :func:`bernoulli_mask`.

    Example:
        >>> parameter_mask(torch.ones(4, 3), 0.5, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3])
    """
    return bernoulli_mask(weight, p, None, generator)

"""The mixout operator as pure functions (the ``torch.nn.functional`` half of the library).

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299). Equation numbers are the paper's.

Notation: ``w`` the trained parameter, ``u`` the target it is mixed with (``w_pre`` for finetuning,
0 for dropout / dropconnect), ``M`` a random mask with ``E M = mu``, ``Var M = sigma^2``.

* :func:`mixed_weight` -- the one implementation of eq. 4 that everything calls (this module, the
  modules, the experiment's engine): ``Phi = u + s (w - u)`` for a mask already scaled, ``s = M / mu``.
* :func:`mixture`    -- eq. 4, the random mixture function ``Phi(w; u, M) = u + M (w - u) / mu``.
* :func:`mixout`     -- mixout(u, p), eq. 8: one Bernoulli(1-p) mask value per *input unit*
  (index of dim 1 of a weight of shape ``(out, in, ...)``), shared by every weight leaving it.
* :func:`mixconnect` -- mixconnect(u, 1-p, p(1-p)), eq. 5: one independent mask value per parameter.
* :func:`mixout_authors` -- the same forward value as :func:`mixout` with the backward of the
  authors' public code (``grad * mask``), which omits the exact factor ``1/(1-p)``. For comparison only.
* The masks and their *level* (``"neuron"``, eq. 8, or ``"parameter"``, eq. 5) live in
  :mod:`~mixout_theory.masks` and are importable from here too: :func:`neuron_mask`,
  :func:`parameter_mask`, :func:`bernoulli_mask` (the one sampler), :func:`mask_shape`,
  :func:`check_level`, :func:`check_p`.
* :func:`mixout_linear` -- ``F.linear`` with a mixout(u, p) weight (what ``MixLinear`` runs): the
  same mask, weight and exact gradient as the composition.
* :func:`sample_mixtures`, :func:`mixture_variance` -- many draws at once, and the exact
  per-coordinate variance ``(sigma^2 / mu^2) (w - u)^2`` (Theorem 1's proof), for Monte Carlo checks.
* :func:`mixout_sgd` -- plain SGD through the mixture with the exact or the authors' backward, to show
  that the authors' gradient amounts to SGD with the learning rate scaled by ``1 - p``.

All operator functions return ``weight`` itself when ``training`` is False or ``p == 0``, and the
target (with an all-zero gradient to ``weight``) when ``p == 1``. The gradient is the exact one,
``d Phi / d w = M / mu`` (``mask / (1-p)``), and no gradient ever flows into the target. A target on
another device or of another dtype is moved / cast to the weight's; a target of another shape is an
error (never broadcast). A ``generator`` must live on the weight's device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import torch

from mixout_theory.entries import check_real_dtype
from mixout_theory.masks import (
    LEVELS,
    bernoulli_mask,
    check_level,
    check_p,
    mask_shape,
    neuron_mask,
    parameter_mask,
)

__all__ = [
    # the masks (mixout_theory.masks), importable from here too
    "LEVELS",
    "check_level",
    "mask_shape",
    "bernoulli_mask",
    # the operator
    "mixed_weight",
    "mixture",
    "mixout",
    "mixconnect",
    "mixout_authors",
    "mixout_linear",
    "neuron_mask",
    "parameter_mask",
    "check_p",
    "check_target",
    "mixture_variance",
    "sample_mixtures",
    "SGDPath",
    "mixout_sgd",
]


def _check_weight(weight) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    check_real_dtype("weight", weight)


def check_target(weight: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Return the target ``u`` as a detached tensor on ``weight``'s device and dtype.

    Args:
        weight (Tensor): the weight ``w`` the target is mixed with.
        target (Tensor or None): ``u``; ``None`` means the origin (dropout / dropconnect).

    Shape:
        ``target`` must have ``weight``'s shape (it is never broadcast; else ``ValueError``).

    Returns:
        Tensor: ``u`` detached, with ``weight``'s shape, device and dtype.

    Example:
        >>> check_target(torch.ones(2, 3), None)
        tensor([[0., 0., 0.],
                [0., 0., 0.]])
    """
    _check_weight(weight)
    if target is None:
        return torch.zeros_like(weight, requires_grad=False).detach()
    if not isinstance(target, torch.Tensor):
        target = torch.as_tensor(target)
    check_real_dtype("target", target)
    if target.shape != weight.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match weight shape {tuple(weight.shape)}"
        )
    return target.detach().to(device=weight.device, dtype=weight.dtype)


def mixed_weight(
    w: torch.Tensor, u: torch.Tensor | None, scale: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 4 for a mask divided by its mean, ``s = M / mu``: ``Phi = u + s (w - u)``.

    Computed as ``torch.lerp(u, w, s)``, one pass over the weight: exactly ``u`` where ``s == 0`` and
    exactly ``w`` where ``s == 1``. The gradient to ``w`` is ``s`` (``u`` gets none from callers that
    detach it).

    Args:
        w (Tensor): the weight.
        u (Tensor or None): the target; ``None`` means the origin (dropout / dropconnect): ``w * s``.
        scale (Tensor): the scaled mask ``s = M / mu``.
        out (Tensor, optional): write into this preallocated tensor (no autograd).

    Shape:
        ``scale`` broadcasts against ``w``; ``u`` and the result have ``w``'s shape.

    Returns:
        Tensor: ``Phi``.

    Example:
        >>> mixed_weight(torch.tensor([1.0, 2.0]), torch.zeros(2), torch.tensor([0.0, 2.0]))
        tensor([0., 4.])
    """
    check_real_dtype("w", w)
    if u is None:
        return torch.mul(w, scale) if out is None else torch.mul(w, scale, out=out)
    check_real_dtype("u", u)
    return torch.lerp(u, w, scale) if out is None else torch.lerp(u, w, scale, out=out)


def mixture(w: torch.Tensor, u: torch.Tensor, mask: torch.Tensor, mu: float) -> torch.Tensor:
    """Eq. 4, the random mixture function ``Phi(w; u, M) = u + M (w - u) / mu`` for any mask.

    ``E Phi = w`` whenever ``E M = mu`` (Bernoulli, Gaussian, ... masks); where ``M = 0`` the result is
    exactly ``u``. Computed by :func:`mixed_weight` with ``s = M / mu``.

    Args:
        w (Tensor): the weight.
        u (Tensor or None): the target (``None``: the origin).
        mask (Tensor): the mask ``M``.
        mu (float or Tensor): the mask mean, > 0.

    Shape:
        ``mask`` broadcasts against ``w``; ``u`` must have ``w``'s shape (never broadcast).

    Returns:
        Tensor: ``Phi``, of ``w``'s shape.

    Example:
        >>> mixture(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]), 0.5)
        tensor([1., 5.])
    """
    positive = (
        bool((mu > 0).all()) if isinstance(mu, torch.Tensor) else isinstance(mu, numbers.Real) and mu > 0
    )
    if not positive:
        raise ValueError(f"mu (the mask mean) must be > 0, got mu={mu!r}")
    if u is not None and u.shape != w.shape:
        raise ValueError(f"target shape {tuple(u.shape)} does not match weight shape {tuple(w.shape)}")
    return mixed_weight(w, u, mask / mu)


def _all_target(weight: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """p == 1: exactly ``u``, with an all-zero (never NaN) gradient to ``weight``."""
    u = torch.zeros_like(weight).detach() if u is None else u
    return torch.where(torch.zeros((), dtype=torch.bool, device=weight.device), weight, u)


def _scaled(mask: torch.Tensor, p: float) -> torch.Tensor:
    """``B / (1 - p)`` in place: the scaled mask :func:`mixed_weight` takes."""
    return mask.mul_(1.0 / (1.0 - p))


def _mix(weight, target, p, training, generator, make_mask):
    p = check_p(p)
    _check_weight(weight)
    u = None if target is None else check_target(weight, target)
    if not training or p == 0.0:
        return weight
    if p == 1.0:
        return _all_target(weight, u)
    return mixed_weight(weight, u, _scaled(make_mask(weight, p, generator), p))


def mixout(
    weight: torch.Tensor,
    target: torch.Tensor | None = None,
    p: float = 0.0,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Neuron-level mixout(u, p) of a weight (eq. 8): ``Phi = u + B (w - u) / (1 - p)``.

    ``B_j ~ Bernoulli(1 - p)`` is drawn once per input unit ``j`` (dim 1, :func:`neuron_mask`): a
    mixed column becomes exactly ``u[:, j]``. Gradient: ``d Phi / d w = B / (1 - p)``.

    Args:
        weight (Tensor): ``w``.
        target (Tensor, optional): ``u``; ``None`` gives dropout(p) on the inputs.
        p (float): the mixing probability.
        training (bool): ``False`` returns ``weight`` itself.
        generator (torch.Generator, optional): the mask's random source.

    Shape:
        ``weight`` ``(out, in, *rest)`` (or 0-D / 1-D); ``target`` and the result have its shape.

    Returns:
        Tensor: ``Phi``.

    Example:
        >>> w, u = torch.ones(2, 3), torch.zeros(2, 3)
        >>> mixout(w, u, 0.5, generator=torch.Generator().manual_seed(0))
        tensor([[0., 0., 2.],
                [0., 0., 2.]])
    """
    return _mix(weight, target, p, training, generator, neuron_mask)


def mixconnect(
    weight: torch.Tensor,
    target: torch.Tensor | None = None,
    p: float = 0.0,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Parameter-level mixconnect(u, 1-p, p(1-p)) (eq. 5): ``Phi = u + M (w - u) / (1 - p)``.

    ``M_i ~ Bernoulli(1 - p)`` independently per parameter (:func:`parameter_mask`).

    Args:
        weight (Tensor): ``w``.
        target (Tensor, optional): ``u``; ``None`` gives dropconnect(p).
        p (float): the mixing probability.
        training (bool): ``False`` returns ``weight`` itself.
        generator (torch.Generator, optional): the mask's random source.

    Shape:
        ``target`` and the result have ``weight``'s shape.

    Returns:
        Tensor: ``Phi``.

    Example:
        >>> out = mixconnect(torch.ones(2, 3), None, 0.5, generator=torch.Generator().manual_seed(0))
        >>> sorted(out.unique().tolist())
        [0.0, 2.0]
    """
    return _mix(weight, target, p, training, generator, parameter_mask)


def mixout_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    p: float = 0.0,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A linear map with a mixout(u, p) weight (eq. 8): ``F.linear(x, mixout(weight, target, p), bias)``.

    The same mask draw and mixed weight as :func:`mixout` (the same numbers, bit for bit, as
    :class:`~mixout_theory.layers.MixLinear`); the gradient is autograd's, the exact
    ``dL/dPhi * B / (1 - p)``, and higher derivatives work.

    Args:
        x (Tensor): the input.
        weight (Tensor): ``w``.
        bias (Tensor, optional): never mixed.
        target (Tensor, optional): ``u``; ``None`` gives dropout(p) on the inputs.
        p (float): the mixing probability.
        training (bool): ``False`` is the plain ``F.linear``.
        generator (torch.Generator, optional): the mask's random source.

    Shape:
        ``x`` ``(*, in)``, ``weight`` ``(out, in)``, ``bias`` ``(out,)``; output ``(*, out)``.

    Returns:
        Tensor: the output.

    Example:
        >>> mixout_linear(torch.ones(5, 3), torch.ones(2, 3), p=0.5).shape
        torch.Size([5, 2])
    """
    return torch.nn.functional.linear(x, mixout(weight, target, p, training, generator), bias)


class _AuthorsMixout(torch.autograd.Function):
    """Forward as eq. 4; backward ``grad * mask`` as in github.com/bloodwass/mixout (no 1/(1-p))."""

    @staticmethod
    def forward(ctx, weight, target, mask, p):
        ctx.save_for_backward(mask)
        return mixture(weight, target, mask, 1.0 - p)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None


def mixout_authors(
    weight: torch.Tensor,
    target: torch.Tensor | None = None,
    p: float = 0.0,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mixout (eq. 8) with the authors' backward, ``grad * B`` instead of the exact ``grad * B / (1 - p)``.

    The forward value is :func:`mixout`'s for the same ``generator``. Kept for comparisons only.

    Args:
        weight (Tensor): ``w``.
        target (Tensor, optional): ``u`` (``None``: the origin).
        p (float): the mixing probability.
        training (bool): ``False`` returns ``weight`` itself.
        generator (torch.Generator, optional): the mask's random source.

    Shape:
        ``target`` and the result have ``weight``'s shape.

    Returns:
        Tensor: ``Phi``.

    Example:
        >>> w = torch.ones(2, 3, requires_grad=True)
        >>> mixout_authors(w, None, 0.5, generator=torch.Generator().manual_seed(0)).sum().backward()
        >>> w.grad
        tensor([[0., 0., 1.],
                [0., 0., 1.]])
    """
    p = check_p(p)
    u = check_target(weight, target)
    if not training or p == 0.0:
        return weight
    if p == 1.0:
        return _all_target(weight, u)
    return _AuthorsMixout.apply(weight, u, neuron_mask(weight, p, generator), p)


def mixture_variance(
    weight: torch.Tensor, target: torch.Tensor | None = None, p: float = 0.0
) -> torch.Tensor:
    """Exact per-coordinate variance of mixout / mixconnect draws (Theorem 1's proof): ``p/(1-p) (w-u)^2``.

    ``inf`` where ``p == 1`` and ``w_i != u_i`` (0 where they are equal, NaN where either is NaN).
    Computed without gradient.

    Args:
        weight (Tensor): ``w``.
        target (Tensor, optional): ``u`` (``None``: the origin).
        p (float): the mixing probability.

    Shape:
        the result has ``weight``'s shape.

    Returns:
        Tensor: ``Var Phi_i = (sigma^2 / mu^2) (w_i - u_i)^2``.

    Example:
        >>> mixture_variance(torch.tensor([1.0, 3.0]), None, 0.5)
        tensor([1., 9.])
    """
    p = check_p(p)
    with torch.no_grad():
        d2 = (weight - check_target(weight, target)) ** 2
        if p == 1.0:
            return torch.where(d2 > 0, torch.full_like(d2, math.inf), d2)  # 0 where equal, NaN stays NaN
        return d2 * (p / (1.0 - p))


def sample_mixtures(
    weight: torch.Tensor,
    target: torch.Tensor | None = None,
    p: float = 0.0,
    n: int = 1,
    *,
    level: str = "neuron",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n`` independent draws of eq. 4 at once (for Monte Carlo checks of ``E Phi = w``), no gradient.

    Args:
        weight (Tensor): ``w``.
        target (Tensor, optional): ``u`` (``None``: the origin).
        p (float): the mixing probability.
        n (int): the number of draws.
        level (str): ``"neuron"`` (mixout masks, eq. 8) or ``"parameter"`` (mixconnect, eq. 5).
        generator (torch.Generator, optional): the masks' random source.

    Shape:
        the result is ``(n, *weight.shape)``.

    Returns:
        Tensor: the draws, stacked along a new dim 0.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> draws = sample_mixtures(torch.ones(2, 3), None, 0.5, 4000, generator=g)
        >>> draws.shape, round(draws.mean().item(), 1)
        (torch.Size([4000, 2, 3]), 1.0)
    """
    p = check_p(p)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer, got n={n!r}")
    level = check_level(level)
    with torch.no_grad():
        u = check_target(weight, target)
        w = weight.detach()
        if p == 0.0:
            return w.expand((int(n),) + tuple(w.shape)).clone()
        if p == 1.0:
            return u.expand((int(n),) + tuple(u.shape)).clone()
        mask = bernoulli_mask(w, p, (int(n),) + mask_shape(w.shape, level), generator)
        return mixture(w, u, mask, 1.0 - p)


class SGDPath(NamedTuple):
    """Result of :func:`mixout_sgd`: ``weights[k]`` is ``w_k`` (``weights[0] = w0``), ``losses[k]`` is
    the training loss ``L(Phi(w_k; u, B_k))`` seen at step ``k``, and ``masks[k]`` is ``B_k``."""

    weights: torch.Tensor
    losses: torch.Tensor
    masks: torch.Tensor


def mixout_sgd(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    w0: torch.Tensor,
    target: torch.Tensor | None = None,
    p: float = 0.0,
    lr: float = 0.1,
    steps: int = 100,
    *,
    backward: str = "exact",
    seed: int = 0,
) -> SGDPath:
    """Plain SGD on ``L(Phi(w; u, B))`` (eq. 8) with a fresh neuron-level mask ``B_k`` at every step.

    ``w_{k+1} = w_k - lr * g_k`` with ``g_k = (B_k / (1 - p)) * grad L(Phi_k)`` (``backward="exact"``,
    the chain rule through eq. 4) or ``g_k = B_k * grad L(Phi_k)`` (``backward="authors"``, their
    public code). Since ``Phi_k`` depends on ``w_k`` and ``B_k`` only, the authors' run with ``lr`` is
    the exact run with ``lr * (1 - p)`` (equal up to rounding).

    Args:
        loss_fn (callable): maps a weight of ``w0``'s shape to a scalar tensor.
        w0 (Tensor): the starting weight.
        target (Tensor, optional): ``u`` (``None``: the origin).
        p (float): the mixing probability.
        lr (float): the learning rate, > 0.
        steps (int): the number of steps, >= 0.
        backward (str): ``"exact"`` or ``"authors"``.
        seed (int): seeds the masks' ``torch.Generator`` (same seed, same masks).

    Shape:
        ``weights`` ``(steps + 1, *w0.shape)``, ``losses`` ``(steps,)``, ``masks`` ``(steps, 1, in, ...)``.

    Returns:
        SGDPath: ``(weights, losses, masks)``.

    Example:
        >>> path = mixout_sgd(lambda w: (w**2).sum(), torch.ones(2, 3), p=0.5, steps=5)
        >>> path.weights.shape, path.masks.shape
        (torch.Size([6, 2, 3]), torch.Size([5, 1, 3]))
    """
    p = check_p(p)
    if backward not in ("exact", "authors"):
        raise ValueError(f"backward must be 'exact' or 'authors', got backward={backward!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite positive number, got lr={lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got steps={steps!r}")
    op = mixout if backward == "exact" else mixout_authors
    u = check_target(w0, target)
    gen = torch.Generator(device=w0.device).manual_seed(int(seed))
    w = w0.detach().clone()
    weights, losses, masks = [w.clone()], [], []
    for _ in range(int(steps)):
        w.requires_grad_(True)
        state = gen.get_state()
        masks.append(
            neuron_mask(w, p, gen)
            if 0.0 < p < 1.0
            else torch.full(mask_shape(w.shape), 1.0 - p, dtype=w.dtype, device=w.device)
        )
        gen.set_state(state)  # the operator below draws the very same mask
        loss = loss_fn(op(w, u, p, True, gen))
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w = w - lr * grad
        weights.append(w.clone())
        losses.append(loss.detach())
    empty = torch.empty((0,) + mask_shape(w0.shape), dtype=w0.dtype, device=w0.device)
    return SGDPath(
        torch.stack(weights),
        torch.stack(losses) if losses else torch.empty(0, dtype=w0.dtype, device=w0.device),
        torch.stack(masks) if masks else empty,
    )

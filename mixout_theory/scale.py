"""The scale scan: how the mixout penalty grows with the displacement ``d = w - u``, order by order.

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299). Equation numbers are the paper's.

Move the target towards ``w``: ``u_t = w - t d`` (:func:`scaled_target`). Then
``Phi_t - w = t X o d`` with ``X = M / mu - 1`` (eq. 4), and for a loss that is smooth around ``w``

    ``E L(Phi_t) - L(w) = c2 t^2 + c3 t^3 + c4 t^4 + ...``,

``c2 = (1/2) E X^2 sum_g d_g^T H_gg d_g`` (Theorem 1's second-order value, ``E X^2 = p / (1 - p)``),
``c3 = (1/6) E X^3 sum_g D^3 L[d_g, d_g, d_g]`` (masks of different groups are independent, so only a
group's own third derivative survives), with ``E X^3 = p (2p - 1) / (1 - p)^2`` (:func:`mask_moment`):
the cubic term vanishes at ``p = 1/2`` and changes sign there. A kink of the loss on the way (a ReLU
unit whose pre-activation a mask pushes across 0) is not seen by the derivatives at ``w``; it adds
terms of its own order, which the scan exposes.

* :func:`scaled_target` -- ``u_t = w - t (w - u)``;
* :func:`scale_scan` -- the Monte Carlo samples of the penalty at every ``t``, on the *same* masks;
* :func:`scale_fit` -- the coefficients ``c_k`` of chosen orders, least squares over the scan;
* :func:`mask_moment` -- ``E X^k`` of the mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from mixout_theory.bounds import check_mixing_p
from mixout_theory.entries import paired_entries, rebuild_entries
from mixout_theory.penalty import penalty_samples

__all__ = ["scaled_target", "scale_scan", "scale_fit", "mask_moment"]


def scaled_target(w, u, t: float):
    """The target ``u_t = w - t (w - u)``, so that ``w - u_t = t (w - u)`` (``u = None``: the origin).

    ``w - u_t`` is recovered from ``u_t`` to a relative precision of about ``eps |w| / (t |w - u|)``
    (``eps``: the dtype's; 1.2e-7 in float32): scan small ``t`` in float64.

    Args:
        w (Tensor or collection): the point.
        u (same structure as ``w``, optional): the target at ``t = 1``.
        t (float): the scale of the displacement.

    Returns:
        the same structure as ``w``.

    Example:
        >>> scaled_target(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]), 0.5)
        tensor([0.5000, 2.0000])
    """
    return rebuild_entries(w, [wt - t * (wt - ut) for _, wt, ut in paired_entries(w, u)])


def scale_scan(loss_fn: Callable, w, u, p: float, ts: Sequence[float], n_samples: int, seed: int, **kw):
    """``L(Phi(w; u_t, M_s)) - L(w)`` for every ``t`` of ``ts`` on the same ``n_samples`` masks.

    Each ``t`` runs :func:`~mixout_theory.penalty.penalty_samples` with target :func:`scaled_target`
    and a generator seeded with ``seed``, so every ``t`` sees the same masks: the scan's values are, mask
    by mask, smooth functions of ``t`` where the loss is smooth (common random numbers), and
    :func:`scale_fit` reads their orders without the Monte Carlo noise between points.

    Args:
        loss_fn, w, u, p, n_samples: as for :func:`~mixout_theory.penalty.penalty_samples`.
        ts (sequence of float): the scales.
        seed (int): the masks' seed.
        **kw: ``level``, ``batch_size``, ``batched``, ``mixed`` ... of ``penalty_samples``.

    Returns:
        Tensor: float64, one row of samples per scale.

    Shape:
        returns ``(len(ts), n_samples)``, or ``(len(ts), n_samples, K)`` for a loss of ``K`` columns.

    Example:
        >>> cube = lambda W: W.pow(3).sum(-1)  # c2 = 3 E X^2 sum w d^2, c3 = E X^3 sum d^3
        >>> d = scale_scan(cube, torch.ones(2), torch.zeros(2), 0.2, [0.5, 1.0], 4000, 0, level="parameter")
        >>> d.shape
        torch.Size([2, 4000])
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int (every t draws the same masks from it), got {seed!r}")
    ts = [float(t) for t in ts]
    return torch.stack(
        [penalty_samples(loss_fn, w, scaled_target(w, u, t), p, n_samples, generator=seed, **kw) for t in ts]
    )


def scale_fit(ts: Sequence[float], values: Sequence[float], orders: Sequence[int] = (2, 3)) -> dict:
    """The coefficients ``c_k`` of ``values(t) = sum_k c_k t^k`` over ``orders``, by least squares.

    Each equation is divided by ``t^min(orders)``, so that the small ``t`` count as much as the large ones.

    Args:
        ts (sequence of float): the scales, positive.
        values (sequence of float): the penalty (or a part of it) at each scale.
        orders (sequence of int): the powers of ``t`` in the model.

    Returns:
        dict: ``{k: c_k}``.

    Example:
        >>> ts = [0.1, 0.2, 0.5, 1.0]
        >>> fit = scale_fit(ts, [2 * t**2 - 0.5 * t**3 for t in ts])
        >>> round(fit[2], 12), round(fit[3], 12)
        (2.0, -0.5)
    """
    t = np.asarray(ts, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    orders = list(orders)
    if (
        not orders
        or len(set(orders)) != len(orders)
        or not all(isinstance(k, int) and k >= 0 for k in orders)
    ):
        raise ValueError(f"orders must be distinct non-negative integers, got {orders}")
    if t.ndim != 1 or t.shape != y.shape:
        raise ValueError(f"scale_fit needs one value per scale, got {t.size} scales and {y.size} values")
    if (t <= 0).any() or np.unique(t).size < len(orders):
        raise ValueError(
            f"scale_fit needs positive scales, at least {len(orders)} distinct ones for orders {orders}; "
            f"got ts={list(ts)}"
        )
    low = min(orders)
    design = np.stack([t ** (k - low) for k in orders], axis=1)
    coef = np.linalg.lstsq(design, y / t**low, rcond=None)[0]
    return {int(k): float(c) for k, c in zip(orders, coef, strict=True)}


def mask_moment(p: float, k: int) -> float:
    """``E X^k`` for ``X = M / mu - 1``, ``M ~ Bernoulli(mu)``, ``mu = 1 - p``: the mask's central moments.

    ``E X = 0``, ``E X^2 = p / (1 - p)``, ``E X^3 = p (2p - 1) / (1 - p)^2``:
    ``E X^k = mu (1 / mu - 1)^k + p (-1)^k``.

    Args:
        p (float): the mixing probability, in ``[0, 1)``.
        k (int): the order.

    Returns:
        float: ``E X^k``.

    Example:
        >>> mask_moment(0.2, 2), round(mask_moment(0.2, 3), 12), mask_moment(0.5, 3)
        (0.25, -0.1875, 0.0)
    """
    p = check_mixing_p(p)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got k={k!r}")
    mu = 1.0 - p
    return mu * (1.0 / mu - 1.0) ** k + p * (-1.0) ** k

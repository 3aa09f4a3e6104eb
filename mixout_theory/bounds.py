"""Theorem 1 and Corollary 1.1 of Mixout as formulas, and the strong-convexity moduli they need.

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299). Equation numbers are the paper's.

* :func:`theorem1_penalty`   -- eq. 7, ``E L(Phi(w; u, M)) - L(w) >= m sigma^2 / (2 mu^2) ||w - u||^2``.
* :func:`corollary11_penalty` -- eq. 9, the same for mixout(u, p): ``m p / (2 (1 - p)) ||w - u||^2``.
* :func:`restricted_corollary11_penalty` -- Supplement B (eq. 15): when only some coordinates are
  mixed, the norm runs over the mixed coordinates only.
* Moduli ``m`` (eq. 1) of the losses the bounds are checked on, each next to the loss it belongs to:
  :func:`quadratic_modulus` / :func:`quadratic_loss`, :func:`least_squares_modulus` /
  :func:`least_squares_loss`, :func:`logistic_modulus` / :func:`logistic_loss`,
  :func:`softmax_modulus` / :func:`softmax_loss`.

``w`` and ``u`` may be single tensors or matching flat collections of tensors: mappings such as a
``state_dict`` (same keys) or lists / tuples (same length), entry by entry of the same shape (read by
:mod:`mixout_theory.entries`, whose functions are importable from here too).
Every bound is returned as a 0-dim tensor (differentiable in ``w``); moduli are Python floats.

The losses take a leading batch of parameter vectors, so they can be handed directly to
:func:`mixout_theory.penalty.empirical_penalty` (``batched=True``).
"""

from __future__ import annotations

import math
import numbers

import torch

from mixout_theory.entries import (
    as_float,
    check_real_dtype,
    only_mixed,
    paired_entries,
    rebuild_entries,
    resolve_mixed,
)
from mixout_theory.masks import check_p

__all__ = [
    "bernoulli_moments",
    "check_mixing_p",
    "squared_distance",
    "theorem1_penalty",
    "corollary11_penalty",
    "restricted_corollary11_penalty",
    "paired_entries",
    "as_float",
    "rebuild_entries",
    "resolve_mixed",
    "quadratic_modulus",
    "least_squares_modulus",
    "logistic_modulus",
    "softmax_modulus",
    "quadratic_loss",
    "least_squares_loss",
    "logistic_loss",
    "softmax_loss",
    "add_intercept",
]


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def check_mixing_p(p) -> float:
    """Validate a mixout probability for the bounds: ``p`` must lie in ``[0, 1)``.

    ``p = 1`` mixes every unit, so ``mu = 1 - p = 0`` and ``Phi`` (eq. 4) is undefined; it raises
    ``ValueError`` like any value outside ``[0, 1]`` (non-numbers raise ``TypeError``).
    """
    p = check_p(p)
    if p == 1.0:
        raise ValueError(
            "p must lie in [0, 1) for the mixout penalty: p=1.0 gives mu = 1 - p = 0, so Phi "
            "(eq. 4) is undefined and the bound p/(1-p) is infinite"
        )
    return p


def _check_real(name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {name}={value!r}")
    return value


def _check_positive(name: str, value, what: str) -> float:
    value = _check_real(name, value)
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0 ({what}), got {name}={value!r}")
    return value


def _check_modulus(m) -> float:
    return _check_positive("m", m, "a strong-convexity modulus")


def bernoulli_moments(p) -> tuple[float, float]:
    """Mean and variance of a Bernoulli(1 - p) mask (Section 3): ``(mu, sigma^2) = (1 - p, p (1 - p))``.

    With these, mixconnect(u, mu, sigma^2) is marginally mixout(u, p), and ``sigma^2 / mu^2 = p / (1 - p)``
    turns eq. 7 into eq. 9.

    Args:
        p (float): the mixing probability, in ``[0, 1)``.

    Returns:
        tuple[float, float]: ``(mu, sigma^2)``.

    Example:
        >>> bernoulli_moments(0.25)
        (0.75, 0.1875)
    """
    p = check_mixing_p(p)
    return 1.0 - p, p * (1.0 - p)


def squared_distance(w, u=None, mixed=None) -> torch.Tensor:
    """``||w - u||^2`` over all entries, or over the mixed coordinates only (Supplement B, eq. 15).

    Args:
        w (Tensor or collection): the weights (a tensor, a mapping such as a ``state_dict``, a list).
        u (same structure as ``w``, optional): the target (``None``: the origin).
        mixed (optional): which coordinates count (:func:`~mixout_theory.entries.resolve_mixed`;
            ``None``: all).

    Returns:
        Tensor: a 0-dim tensor, differentiable in ``w``.

    Example:
        >>> squared_distance({"a": torch.tensor([3.0, 4.0]), "b": torch.ones(2)}, None, mixed=["a"])
        tensor(25.)
    """
    entries = paired_entries(w, u)
    selections = resolve_mixed(entries, mixed)
    total = None
    for (_, wt, ut), sel in zip(entries, selections, strict=True):
        wt, ut = as_float(wt), as_float(ut)  # integer entries: no wrap-around
        term = only_mixed(wt - ut, sel).pow(2).sum()  # unmixed coordinates (even inf / NaN) add nothing
        total = term if total is None else total + term
    return total


# --------------------------------------------------------------------------------------------
# Theorem 1 and Corollary 1.1
# --------------------------------------------------------------------------------------------


def theorem1_penalty(w, u, m, mu, sigma2, mixed=None) -> torch.Tensor:
    """Theorem 1 (eq. 7): the lower bound ``m sigma^2 / (2 mu^2) ||w - u||^2`` on ``E L(Phi) - L(w)``.

    Holds for every ``w`` when ``L`` is ``m``-strongly convex and the mask has mean ``mu > 0`` and
    variance ``sigma2`` per coordinate (correlations between coordinates do not matter).

    Args:
        w (Tensor or collection): the weights.
        u (same structure as ``w``, optional): the target (``None``: the origin).
        m (float): the strong-convexity modulus of ``L``, > 0.
        mu (float): the mask mean, > 0.
        sigma2 (float): the mask variance, >= 0.
        mixed (optional): restricts the norm to the mixed coordinates (Supplement B).

    Returns:
        Tensor: the bound, a 0-dim tensor differentiable in ``w``.

    Example:
        >>> theorem1_penalty(torch.tensor([1.0, 2.0]), None, m=2.0, mu=0.5, sigma2=0.25)
        tensor(5.)
    """
    m = _check_modulus(m)
    mu = _check_positive("mu", mu, "the mean of the mask")
    sigma2 = _check_real("sigma2", sigma2)
    if sigma2 < 0.0:
        raise ValueError(f"sigma2 must be >= 0 (the variance of the mask), got sigma2={sigma2!r}")
    return m * sigma2 / (2.0 * mu * mu) * squared_distance(w, u, mixed)


def corollary11_penalty(w, u, m, p, mixed=None) -> torch.Tensor:
    """Corollary 1.1 (eq. 9): mixout(u, p) penalises at least ``m p / (2 (1 - p)) ||w - u||^2``.

    Theorem 1 with ``mu = 1 - p``, ``sigma^2 = p (1 - p)``.

    Args:
        w (Tensor or collection): the weights.
        u (same structure as ``w``, optional): the target (``None``: the origin).
        m (float): the strong-convexity modulus of ``L``, > 0.
        p (float): the mixing probability, in ``[0, 1)``.
        mixed (optional): restricts the norm to the mixed coordinates (Supplement B).

    Returns:
        Tensor: the bound, a 0-dim tensor differentiable in ``w``.

    Example:
        >>> corollary11_penalty(torch.tensor([1.0, 2.0]), torch.zeros(2), m=1.0, p=0.5)
        tensor(2.5000)
    """
    m = _check_modulus(m)
    p = check_mixing_p(p)
    return m * p / (2.0 * (1.0 - p)) * squared_distance(w, u, mixed)


def restricted_corollary11_penalty(w, u, m, p, mixed) -> torch.Tensor:
    """Supplement B (eq. 15): mixout on some coordinates only, ``m p / (2 (1 - p)) ||(w - u)_mixed||^2``.

    Args:
        w (Tensor or collection): the weights, e.g. a ``state_dict``.
        u (same structure as ``w``, optional): the target (``None``: the origin).
        m (float): the strong-convexity modulus, > 0.
        p (float): the mixing probability, in ``[0, 1)``.
        mixed: required: names of the mixed entries (``{"2.weight", "4.weight"}``), a predicate on
            names, or a mapping to bool tensors (:func:`~mixout_theory.entries.resolve_mixed`).

    Returns:
        Tensor: the bound, a 0-dim tensor differentiable in ``w``.

    Example:
        >>> w = {"0.weight": torch.ones(2, 2), "0.bias": torch.ones(2)}
        >>> restricted_corollary11_penalty(w, None, m=1.0, p=0.5, mixed=lambda name: name.endswith("weight"))
        tensor(2.)
    """
    if mixed is None:
        raise ValueError(
            "restricted_corollary11_penalty needs mixed (which coordinates are mixed); "
            "use corollary11_penalty to mix everything"
        )
    return corollary11_penalty(w, u, m, p, mixed=mixed)


# --------------------------------------------------------------------------------------------
# strong-convexity moduli (eq. 1) and the losses they belong to
# --------------------------------------------------------------------------------------------


def _as_matrix(name: str, a) -> torch.Tensor:
    a = check_real_dtype(name, torch.as_tensor(a))
    if a.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(a.shape)}")
    if not a.dtype.is_floating_point:
        a = a.to(torch.get_default_dtype())
    return a


def _check_symmetric(name: str, a: torch.Tensor) -> torch.Tensor:
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(a.shape)}")
    a64 = a.detach().to(torch.float64)
    scale = max(a64.abs().max().item(), 1.0)
    asym = (a64 - a64.T).abs().max().item()
    if asym > 1e-8 * scale:
        raise ValueError(f"{name} must be symmetric, max |{name} - {name}^T| = {asym:.3g}")
    return (a64 + a64.T) / 2


def quadratic_modulus(A) -> float:
    """Modulus (eq. 1) of ``L(w) = 1/2 (w - w*)^T A (w - w*) + c``: the smallest eigenvalue of ``A``.

    Args:
        A (Tensor): the square, symmetric, positive definite Hessian (else ``ValueError``).

    Shape:
        ``A`` is ``(d, d)``.

    Returns:
        float: ``lambda_min(A)``.

    Example:
        >>> round(quadratic_modulus(torch.tensor([[2.0, 1.0], [1.0, 2.0]])), 6)
        1.0
    """
    a = _check_symmetric("A", _as_matrix("A", A))
    lam_min = torch.linalg.eigvalsh(a)[0].item()
    if lam_min <= 0.0:
        raise ValueError(
            f"A is not positive definite (smallest eigenvalue {lam_min:.3g}): "
            "the quadratic is not strongly convex"
        )
    return lam_min


def least_squares_modulus(X) -> float:
    """Modulus (eq. 1) of ``L(w) = (1 / (2n)) ||X w - y||^2``: the smallest eigenvalue of ``X^T X / n``.

    ``X`` is used as given: an intercept is the caller's job (:func:`add_intercept`). Raises
    ``ValueError`` when ``X^T X`` is singular (rank below ``d``, e.g. ``n < d``).

    Args:
        X (Tensor): the design matrix.

    Shape:
        ``X`` is ``(n, d)``.

    Returns:
        float: ``lambda_min(X^T X / n)``.

    Example:
        >>> least_squares_modulus(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        0.5
    """
    x = _as_matrix("X", X).detach().to(torch.float64)
    n, d = x.shape
    if n == 0 or d == 0:
        raise ValueError(f"X must have at least one row and one column, got shape {(n, d)}")
    eig = torch.linalg.eigvalsh(x.T @ x / n)
    lam_min, lam_max = eig[0].item(), eig[-1].item()
    if lam_min <= d * torch.finfo(torch.float64).eps * max(lam_max, 1e-300) * 10:
        rank = int(torch.linalg.matrix_rank(x).item())
        raise ValueError(
            f"X^T X / n is singular (X has shape {(n, d)} and rank {rank}): "
            "least squares is not strongly convex"
        )
    return lam_min


def logistic_modulus(lam) -> float:
    """Modulus (eq. 1) of L2-regularised logistic regression, ``mean_i CE_i(w) + (lam / 2) ||w||^2``: ``lam``.

    The cross-entropy term is convex (Hessian ``mean_i s_i (1 - s_i) x_i x_i^T``, PSD), so the modulus
    is ``lam`` (exact when the data term is flat in some direction). Convention of :func:`logistic_loss`.

    Args:
        lam (float): the L2 coefficient, > 0.

    Returns:
        float: ``lam``.

    Example:
        >>> logistic_modulus(0.05)
        0.05
    """
    return _check_positive("lam", lam, "the L2 coefficient; lam = 0 is not strongly convex")


def softmax_modulus(lam) -> float:
    """Modulus (eq. 1) of L2-regularised softmax regression, ``mean_i CE_i(W) + (lam/2) ||W||_F^2``: ``lam``.

    The cross-entropy term is convex but flat along ``W -> W + 1 v^T`` (one vector added to every class
    row), so the modulus is exactly ``lam``. Convention of :func:`softmax_loss`.

    Args:
        lam (float): the L2 coefficient, > 0.

    Returns:
        float: ``lam``.

    Example:
        >>> softmax_modulus(0.05)
        0.05
    """
    return _check_positive("lam", lam, "the L2 coefficient; lam = 0 is not strongly convex")


def add_intercept(x) -> torch.Tensor:
    """Design matrix ``[x, 1]`` for a line or plane fit (Supplement D): a ones column appended.

    Args:
        x (Tensor): the inputs (integers are cast to the default float dtype).

    Shape:
        ``x`` ``(n,)`` gives ``(n, 2)``; ``(n, d)`` gives ``(n, d + 1)``.

    Returns:
        Tensor: the design matrix.

    Example:
        >>> add_intercept(torch.tensor([2.0, 3.0]))
        tensor([[2., 1.],
                [3., 1.]])
    """
    x = check_real_dtype("x", torch.as_tensor(x))
    if not x.dtype.is_floating_point:
        x = x.to(torch.get_default_dtype())
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"x must be 1-D or 2-D, got shape {tuple(x.shape)}")
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def quadratic_loss(w: torch.Tensor, A: torch.Tensor, w_star: torch.Tensor, c: float = 0.0) -> torch.Tensor:
    """``L(w) = 1/2 (w - w*)^T A (w - w*) + c`` over the flattened ``w``, batched over leading dims.

    Modulus: :func:`quadratic_modulus`.

    Args:
        w (Tensor): the weights, with any leading batch dims.
        A (Tensor): the Hessian.
        w_star (Tensor): the minimiser ``w*``.
        c (float): the minimum value.

    Shape:
        ``w`` ``(*batch, *w_star.shape)``, ``A`` ``(d, d)`` with ``d = w_star.numel()``; output ``batch``.

    Returns:
        Tensor: the losses.

    Example:
        >>> quadratic_loss(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.eye(2), torch.zeros(2))
        tensor([0.5000, 2.0000])
    """
    w, A, w_star = (
        as_float(torch.as_tensor(w), "w"),
        as_float(torch.as_tensor(A), "A"),
        as_float(torch.as_tensor(w_star), "w_star"),
    )
    k = w_star.dim()
    batch = w.shape[: w.dim() - k]
    if tuple(w.shape[w.dim() - k :]) != tuple(w_star.shape):
        raise ValueError(
            f"w has shape {tuple(w.shape)}, which does not end with w_star's shape {tuple(w_star.shape)}"
        )
    d = (w - w_star).reshape(*batch, -1)
    return 0.5 * ((d @ A) * d).sum(-1) + c


def least_squares_loss(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``L(w) = (1 / (2n)) ||X w - y||^2``, batched over leading dims of ``w`` (Supplement D).

    Modulus: :func:`least_squares_modulus` (``lambda_min(X^T X / n)``).

    Args:
        w (Tensor): the weights.
        X (Tensor): the design matrix.
        y (Tensor): the targets.

    Shape:
        ``w`` ``(*batch, d)``, ``X`` ``(n, d)``, ``y`` ``(n,)``; output ``batch``.

    Returns:
        Tensor: the losses.

    Example:
        >>> least_squares_loss(torch.tensor([1.0, 0.0]), torch.eye(2), torch.tensor([0.0, 1.0]))
        tensor(0.5000)
    """
    w, X, y = (as_float(torch.as_tensor(t), name) for name, t in (("w", w), ("X", X), ("y", y)))
    r = w @ X.T - y
    return 0.5 * r.pow(2).mean(-1)


def logistic_loss(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """``L(w) = mean_i [log(1 + e^{z_i}) - y_i z_i] + (lam / 2) ||w||^2`` with ``z = X w``, ``y in {0, 1}``.

    Every coordinate of ``w`` (an intercept column included) is regularised. Modulus:
    :func:`logistic_modulus` (``lam``).

    Args:
        w (Tensor): the weights.
        X (Tensor): the inputs.
        y (Tensor): the labels, 0 or 1.
        lam (float): the L2 coefficient.

    Shape:
        ``w`` ``(*batch, d)``, ``X`` ``(n, d)``, ``y`` ``(n,)``; output ``batch``.

    Returns:
        Tensor: the losses.

    Example:
        >>> logistic_loss(torch.zeros(2), torch.eye(2), torch.tensor([0.0, 1.0]), 0.1)
        tensor(0.6931)
    """
    w, X, y = (as_float(torch.as_tensor(t), name) for name, t in (("w", w), ("X", X), ("y", y)))
    z = w @ X.T
    data = (torch.nn.functional.softplus(z) - y * z).mean(-1)
    return data + 0.5 * lam * w.pow(2).sum(-1)


def softmax_loss(W: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """``L(W) = mean_i [logsumexp(W x_i) - (W x_i)_{y_i}] + (lam / 2) ||W||_F^2`` for ``k`` classes.

    Under neuron-level mixout the unit is an input feature, a column ``W[:, j]`` (as for
    ``nn.Linear``). Modulus: :func:`softmax_modulus` (``lam``).

    Args:
        W (Tensor): the weights.
        X (Tensor): the inputs.
        y (Tensor): the class indices.
        lam (float): the L2 coefficient.

    Shape:
        ``W`` ``(*batch, k, d)``, ``X`` ``(n, d)``, ``y`` ``(n,)``; output ``batch``.

    Returns:
        Tensor: the losses.

    Example:
        >>> softmax_loss(torch.zeros(3, 2), torch.eye(2), torch.tensor([0, 2]), 0.1)
        tensor(1.0986)
    """
    W, X = as_float(torch.as_tensor(W), "W"), as_float(torch.as_tensor(X), "X")  # y: the class indices
    logits = X @ W.transpose(-1, -2)  # (*batch, n, k)
    picked = logits[..., torch.arange(y.shape[0], device=y.device), y]  # (*batch, n)
    data = (torch.logsumexp(logits, -1) - picked).mean(-1)
    return data + 0.5 * lam * W.pow(2).sum((-1, -2))

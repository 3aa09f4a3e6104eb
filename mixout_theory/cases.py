"""The worked cases of the theory: losses where Theorem 1 / Corollary 1.1 hold, checked by Monte Carlo.

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299). Equation numbers are the paper's.

* :class:`TheoryCase` and its builders: :func:`quadratic_case` (an SPD or isotropic quadratic, with
  the exact penalty), :func:`least_squares_case`, :func:`logistic_case` and :func:`softmax_case`
  (L2-regularised, so strongly convex with a known modulus ``m``); :func:`theory_cases` the standard four.
* :func:`penalty_curve` -- the Monte Carlo penalty ``E L(Phi(w)) - L(w)`` against ``p`` with its 95%
  interval, beside the Corollary 1.1 bound ``m p / (2 (1 - p)) ||w - u||^2`` (eq. 9).
* :func:`line_fit_experiment` -- Supplement D: the least-squares line fitted under mixout(u, p),
  solved exactly, moves from the data's line to the target's as ``p`` grows.

The theory figures (:mod:`mixout_theory.figures`) and notebook 02 draw these.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mixout_theory import bounds
from mixout_theory.bounds import check_mixing_p
from mixout_theory.deprecation import renamed_keywords
from mixout_theory.masks import check_level
from mixout_theory.penalty import (
    empirical_penalty,
    mixout_least_squares,
    neuron_groups,
    quadratic_penalty,
)

__all__ = [
    "TheoryCase",
    "quadratic_case",
    "least_squares_case",
    "logistic_case",
    "softmax_case",
    "theory_cases",
    "PenaltyCurve",
    "penalty_curve",
    "LineFit",
    "line_fit_experiment",
]


@renamed_keywords(scheme="level")
@dataclass(frozen=True)
class TheoryCase:
    """A strongly convex loss, a point ``w``, a target ``u`` and the modulus ``m`` (Corollary 1.1, eq. 9).

    Args:
        name (str): a short identifier.
        label (str): a legend label.
        loss (callable): the batched loss, ``(S, *w.shape)`` to ``(S,)``.
        w (Tensor): the point.
        u (Tensor): the target.
        m (float): the strong-convexity modulus of ``loss``.
        level (str): the mask level, ``"neuron"`` (eq. 8) or ``"parameter"`` (eq. 5). Formerly ``scheme``.
        exact (callable, optional): ``p`` to the exact penalty, when known.
        data (dict): the problem's arrays.

    Example:
        >>> case = theory_cases()[0]
        >>> case.name, case.level, round(case.bound(0.5) / case.exact(0.5), 2)
        ('quadratic', 'parameter', 0.28)
    """

    name: str
    label: str
    loss: Callable
    w: torch.Tensor
    u: torch.Tensor
    m: float
    level: str = "neuron"
    exact: Callable[[float], float] | None = None
    data: dict = field(default_factory=dict)

    def bound(self, p: float) -> float:
        """Corollary 1.1 (eq. 9) at ``p`` for this case."""
        return float(bounds.corollary11_penalty(self.w, self.u, self.m, p))


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


@renamed_keywords(scheme="level")
def quadratic_case(
    shape=(6,),
    seed: int = 0,
    isotropic: bool = False,
    m: float = 1.0,
    condition: float = 8.0,
    level: str = "parameter",
) -> TheoryCase:
    """Random quadratic ``1/2 (w - w*)^T A (w - w*)`` on a weight of ``shape`` (float64).

    ``isotropic=True``: ``A = m I`` (Theorem 1 holds with equality). Otherwise ``A = Q diag(e) Q^T``
    with eigenvalues ``e`` spread log-uniformly over ``[m, condition * m]`` (modulus ``m``).
    ``exact`` uses :func:`quadratic_penalty`, with :func:`neuron_groups` for ``level="neuron"``
    (``level``, the mask level, was called ``scheme``).
    """
    level = check_level(level)
    g = _gen(seed)
    shape = tuple(shape)
    D = math.prod(shape)
    if isotropic:
        A = m * torch.eye(D, dtype=torch.float64)
    else:
        Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        e = m * condition ** torch.linspace(0.0, 1.0, D, dtype=torch.float64)
        A = (Q * e) @ Q.T
        A = (A + A.T) / 2
    w_star = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    u = torch.randn(shape, generator=g, dtype=torch.float64)
    groups = neuron_groups(shape) if level == "neuron" else None
    mod = bounds.quadratic_modulus(A)
    kind = f"A = {m:g} I" if isotropic else f"SPD A, cond {condition:g}"
    return TheoryCase(
        name="quadratic_isotropic" if isotropic else "quadratic",
        label=f"quadratic, {kind}, w {tuple(shape)}, {level} masks",
        loss=lambda W: bounds.quadratic_loss(W, A, w_star),
        w=w,
        u=u,
        m=mod,
        level=level,
        exact=lambda p: quadratic_penalty(A, w, u, p, groups),
        data={"A": A, "w_star": w_star, "groups": groups},
    )


def least_squares_case(n: int = 40, dim: int = 3, seed: int = 0, noise: float = 0.5) -> TheoryCase:
    """Least squares ``(1/(2n)) ||X w - y||^2`` on Gaussian data; exact penalty via ``H = X^T X / n``."""
    g = _gen(seed)
    X = torch.randn(n, dim, generator=g, dtype=torch.float64)
    w_star = torch.randn(dim, generator=g, dtype=torch.float64)
    y = X @ w_star + noise * torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.randn(dim, generator=g, dtype=torch.float64)
    u = torch.randn(dim, generator=g, dtype=torch.float64)
    H = X.T @ X / n
    return TheoryCase(
        name="least_squares",
        label=f"least squares, n={n}, d={dim}",
        loss=lambda W: bounds.least_squares_loss(W, X, y),
        w=w,
        u=u,
        m=bounds.least_squares_modulus(X),
        level="neuron",
        exact=lambda p: quadratic_penalty(H, w, u, p),
        data={"X": X, "y": y, "w_star": w_star},
    )


def logistic_case(n: int = 200, dim: int = 4, lam: float = 0.05, seed: int = 0) -> TheoryCase:
    """L2-regularised logistic regression (labels from a random logistic model); modulus ``lam``."""
    g = _gen(seed)
    X = torch.randn(n, dim, generator=g, dtype=torch.float64)
    w_star = torch.randn(dim, generator=g, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(X @ w_star), generator=g)
    w = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    u = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    return TheoryCase(
        name="logistic",
        label=f"L2 logistic, n={n}, d={dim}, lam={lam:g}",
        loss=lambda W: bounds.logistic_loss(W, X, y, lam),
        w=w,
        u=u,
        m=bounds.logistic_modulus(lam),
        level="neuron",
        data={"X": X, "y": y, "lam": lam},
    )


def softmax_case(
    n: int = 200, dim: int = 4, classes: int = 3, lam: float = 0.05, seed: int = 0
) -> TheoryCase:
    """L2-regularised softmax regression, ``W`` of shape ``(classes, dim)``, neuron-level masks
    (one per input feature, column ``W[:, j]``); modulus ``lam``."""
    g = _gen(seed)
    X = torch.randn(n, dim, generator=g, dtype=torch.float64)
    W_star = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(X @ W_star.T, -1), 1, generator=g).squeeze(-1)
    w = 0.5 * torch.randn(classes, dim, generator=g, dtype=torch.float64)
    u = 0.5 * torch.randn(classes, dim, generator=g, dtype=torch.float64)
    return TheoryCase(
        name="softmax",
        label=f"L2 softmax, n={n}, d={dim}, k={classes}, lam={lam:g}",
        loss=lambda W: bounds.softmax_loss(W, X, y, lam),
        w=w,
        u=u,
        m=bounds.softmax_modulus(lam),
        level="neuron",
        data={"X": X, "y": y, "lam": lam},
    )


def theory_cases(seed: int = 0) -> list[TheoryCase]:
    """The four cases of the penalty-vs-p figure (eq. 9): quadratic, least squares, logistic, softmax.

    Args:
        seed (int): seeds every case's data.

    Returns:
        list[TheoryCase]: the cases, built by ``quadratic_case``, ``least_squares_case``,
        ``logistic_case`` and ``softmax_case`` of :mod:`mixout_theory.cases`.

    Example:
        >>> [case.name for case in theory_cases()]
        ['quadratic', 'least_squares', 'logistic', 'softmax']
    """
    return [
        quadratic_case(seed=seed),
        least_squares_case(seed=seed),
        logistic_case(seed=seed),
        softmax_case(seed=seed),
    ]


@renamed_keywords(scheme="level")
@dataclass(frozen=True)
class PenaltyCurve:
    """Monte Carlo penalty against Corollary 1.1 over a grid of ``p`` for one :class:`TheoryCase`.

    Arrays (NumPy, one entry per ``p``): ``mean``, ``se``, ``lo``, ``hi`` (95% interval), ``bound``
    (eq. 9) and ``exact`` (``None`` when the case has no closed form).
    """

    name: str
    label: str
    level: str
    ps: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    bound: np.ndarray
    exact: np.ndarray | None
    n_samples: int


def penalty_curve(
    case: TheoryCase, ps, n_samples: int, seed: int = 0, batch_size: int = 4096
) -> PenaltyCurve:
    """The Monte Carlo penalty ``E L(Phi) - L(w)`` of ``case`` at every ``p``, beside Corollary 1.1 (eq. 9).

    One seeded generator serves the whole grid; each ``p`` gets :func:`empirical_penalty` with the
    case's mask level.

    Args:
        case (TheoryCase): the loss, point, target and modulus.
        ps (sequence of float): the mixing probabilities, each in ``[0, 1)``.
        n_samples (int): masks per ``p``.
        seed (int): the generator's seed.
        batch_size (int): masks per loss evaluation.

    Returns:
        PenaltyCurve: NumPy arrays over ``ps``: ``mean``, ``se``, ``lo``, ``hi`` (95% interval),
        ``bound`` (eq. 9) and ``exact`` (``None`` without a closed form).

    Example:
        >>> curve = penalty_curve(theory_cases()[1], [0.2, 0.5], n_samples=2000)
        >>> bool((curve.mean > curve.bound).all())
        True
    """
    ps = np.asarray([check_mixing_p(float(p)) for p in ps], dtype=float)
    g = _gen(seed)
    est = [
        empirical_penalty(
            case.loss, case.w, case.u, p, n_samples, level=case.level, generator=g, batch_size=batch_size
        )
        for p in ps
    ]
    col = lambda attr: np.array([getattr(e, attr) for e in est])  # noqa: E731
    return PenaltyCurve(
        name=case.name,
        label=case.label,
        level=case.level,
        ps=ps,
        mean=col("mean"),
        se=col("se"),
        lo=col("lo"),
        hi=col("hi"),
        bound=np.array([case.bound(p) for p in ps]),
        exact=None if case.exact is None else np.array([case.exact(p) for p in ps]),
        n_samples=n_samples,
    )


@dataclass(frozen=True)
class LineFit:
    """Supplement D: data ``y = w1* x + w2* + noise``, a target line ``u``, and the mixout(u, p) fits.

    ``fits[i]`` is ``(w1, w2)`` minimising ``E L(Phi(w; u, B))`` exactly at ``ps[i]``
    (:func:`mixout_least_squares`, one mask per coordinate).
    """

    x: torch.Tensor
    y: torch.Tensor
    w_star: torch.Tensor
    u: torch.Tensor
    ps: tuple
    fits: torch.Tensor
    m: float


def line_fit_experiment(ps=(0.0, 0.3, 0.6, 0.9), n: int = 40, noise: float = 0.3, seed: int = 1) -> LineFit:
    """Supplement D: the line ``y = w1 x + w2`` fitted exactly under mixout(u, p) for each ``p``.

    ``x ~ U(-2, 2)``, ``w* ~ N(0, I)``, Gaussian noise of std ``noise`` and a random target line
    ``u ~ N(0, I)``, all seeded; each fit is :func:`mixout_least_squares` (one mask per coordinate).

    Args:
        ps (sequence of float): the mixing probabilities, each in ``[0, 1)``.
        n (int): the number of points.
        noise (float): the noise's standard deviation.
        seed (int): the data's seed.

    Returns:
        LineFit: the data ``x``, ``y``, ``w_star``, the target ``u``, ``ps``, ``fits`` (one ``(w1, w2)``
        per ``p``) and ``m``, the least-squares modulus ``lambda_min(X^T X / n)``.

    Shape:
        ``fits`` is ``(len(ps), 2)``.

    Example:
        >>> fit = line_fit_experiment(ps=(0.0, 0.9))
        >>> fit.fits.shape, bool((fit.fits[1] - fit.u).norm() < (fit.fits[0] - fit.u).norm())
        (torch.Size([2, 2]), True)
    """
    g = _gen(seed)
    x = 4.0 * torch.rand(n, generator=g, dtype=torch.float64) - 2.0
    w_star = torch.randn(2, generator=g, dtype=torch.float64)
    y = w_star[0] * x + w_star[1] + noise * torch.randn(n, generator=g, dtype=torch.float64)
    u = torch.randn(2, generator=g, dtype=torch.float64)
    X = bounds.add_intercept(x)
    ps = tuple(check_mixing_p(float(p)) for p in ps)
    fits = torch.stack([mixout_least_squares(X, y, u, p) for p in ps])
    return LineFit(x=x, y=y, w_star=w_star, u=u, ps=ps, fits=fits, m=bounds.least_squares_modulus(X))

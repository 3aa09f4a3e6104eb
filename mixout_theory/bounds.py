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
``state_dict`` (same keys) or lists / tuples (same length), entry by entry of the same shape.
Every bound is returned as a 0-dim tensor (differentiable in ``w``); moduli are Python floats.

The losses take a leading batch of parameter vectors, so they can be handed directly to
:func:`mixout_theory.penalty.empirical_penalty` (``batched=True``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch

from mixout_theory.mixing import check_p

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
    """Mean and variance of a Bernoulli(1 - p) mask: ``(mu, sigma^2) = (1 - p, p (1 - p))``.

    With these, mixconnect(u, mu, sigma^2) is marginally mixout(u, p) (Section 3 of the paper), and
    ``sigma^2 / mu^2 = p / (1 - p)`` turns eq. 7 into eq. 9. ``p`` must lie in ``[0, 1)``.
    """
    p = check_mixing_p(p)
    return 1.0 - p, p * (1.0 - p)


# --------------------------------------------------------------------------------------------
# collections of tensors
# --------------------------------------------------------------------------------------------


def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def paired_entries(w, u) -> list[tuple[object, torch.Tensor, torch.Tensor]]:
    """Pair up ``w`` and ``u`` entry by entry: a list of ``(name, w_entry, u_entry)``.

    ``name`` is ``None`` for a single tensor, the key for a mapping (``state_dict``), the index for
    a list / tuple. ``u`` may be ``None`` (the origin: dropout / dropconnect). Raises ``ValueError``
    naming the keys, lengths or shapes that do not match, and ``TypeError`` for anything that is not
    a tensor or a flat collection of tensors.
    """
    if isinstance(w, torch.Tensor):
        if u is None:
            u = torch.zeros_like(w)
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"w is a tensor but u is {_describe(u)}; they must have the same structure")
        if u.shape != w.shape:
            raise ValueError(f"shape mismatch: w has shape {tuple(w.shape)}, u has shape {tuple(u.shape)}")
        return [(None, w, u)]
    if isinstance(w, Mapping):
        if u is None:
            u = {k: None for k in w}
        if not isinstance(u, Mapping):
            raise TypeError(f"w is a mapping but u is {_describe(u)}; they must have the same structure")
        if set(w) != set(u):
            only_w = sorted(map(str, set(w) - set(u)))
            only_u = sorted(map(str, set(u) - set(w)))
            raise ValueError(f"key mismatch between w and u: only in w {only_w}, only in u {only_u}")
        names = list(w)
        pairs = [(k, w[k], u[k]) for k in names]
    elif isinstance(w, Sequence) and not isinstance(w, (str, bytes)):
        if u is None:
            u = [None] * len(w)
        if not isinstance(u, Sequence) or isinstance(u, (str, bytes)):
            raise TypeError(
                f"w is a {type(w).__name__} but u is {_describe(u)}; they must have the same structure"
            )
        if len(w) != len(u):
            raise ValueError(f"length mismatch: w has {len(w)} entries, u has {len(u)}")
        pairs = [(i, w[i], u[i]) for i in range(len(w))]
    else:
        raise TypeError(
            f"w must be a tensor, a mapping (e.g. a state_dict) or a list/tuple of tensors, got {_describe(w)}"
        )
    if not pairs:
        raise ValueError("w is an empty collection: there is nothing to mix")
    out = []
    for name, wt, ut in pairs:
        if not isinstance(wt, torch.Tensor):
            raise TypeError(f"entry {name!r} of w must be a tensor, got {_describe(wt)}")
        if ut is None:
            ut = torch.zeros_like(wt)
        if not isinstance(ut, torch.Tensor):
            raise TypeError(f"entry {name!r} of u must be a tensor, got {_describe(ut)}")
        if wt.shape != ut.shape:
            raise ValueError(
                f"shape mismatch at entry {name!r}: w has shape {tuple(wt.shape)}, u has shape {tuple(ut.shape)}"
            )
        out.append((name, wt, ut))
    return out


def as_float(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if floating point, else as float64: integer differences and squares would wrap around."""
    return t if t.dtype.is_floating_point or t.dtype.is_complex else t.to(torch.float64)


def rebuild_entries(w, values: list):
    """Put one value per entry of :func:`paired_entries` back into ``w``'s structure (its inverse)."""
    if isinstance(w, torch.Tensor):
        return values[0]
    if isinstance(w, Mapping):
        return dict(zip(list(w), values))
    return type(w)(values) if isinstance(w, tuple) else list(values)


def _entry_selection(name, value, wt: torch.Tensor):
    """One entry's selection: ``True`` (all mixed), ``False`` (none) or a bool tensor."""
    if isinstance(value, bool):
        return value
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.bool:
            raise TypeError(
                f"the mixed mask for entry {name!r} must be a bool tensor, got dtype {value.dtype}"
            )
        try:
            torch.broadcast_shapes(value.shape, wt.shape)
        except RuntimeError:
            raise ValueError(
                f"the mixed mask for entry {name!r} has shape {tuple(value.shape)}, which does not "
                f"broadcast to the entry's shape {tuple(wt.shape)}"
            ) from None
        if torch.broadcast_shapes(value.shape, wt.shape) != wt.shape:
            raise ValueError(
                f"the mixed mask for entry {name!r} has shape {tuple(value.shape)}, which would enlarge "
                f"the entry's shape {tuple(wt.shape)}"
            )
        return value.to(wt.device)
    raise TypeError(
        f"the mixed selection for entry {name!r} must be a bool or a bool tensor, got {_describe(value)}"
    )


def resolve_mixed(entries, mixed) -> list:
    """Which coordinates of each entry of :func:`paired_entries` are mixed (Supplement B).

    Returns one item per entry: ``True`` (every coordinate mixed), ``False`` (none) or a bool tensor
    that broadcasts to the entry's shape (``True`` = mixed). ``mixed`` may be

    * ``None``: everything is mixed;
    * a bool tensor: the mask of a single-tensor ``w``;
    * a callable ``name -> bool``: applied to each key (mapping) or index (list / tuple);
    * a mapping ``name -> bool | bool tensor``: names left out are not mixed;
    * a collection of names (keys of a mapping, indices of a list): those entries are mixed whole;
    * a list / tuple of bools or bool tensors, one per entry of a list / tuple ``w``.

    Unknown names and masks of the wrong shape raise ``ValueError``.
    """
    names = [name for name, _, _ in entries]
    if mixed is None:
        return [True] * len(entries)
    single = len(entries) == 1 and names[0] is None
    if isinstance(mixed, torch.Tensor):
        if not single:
            raise TypeError(
                "a mixed mask given as one tensor needs a single-tensor w; use a mapping or list of masks"
            )
        return [_entry_selection("w", mixed, entries[0][1])]
    if single:
        raise TypeError(f"for a single-tensor w, mixed must be None or a bool tensor, got {_describe(mixed)}")
    if callable(mixed):
        return [bool(mixed(name)) for name in names]
    if isinstance(mixed, Mapping):
        unknown = [k for k in mixed if k not in names]
        if unknown:
            raise ValueError(f"mixed names entries that w does not have: {sorted(map(str, unknown))}")
        return [_entry_selection(name, mixed.get(name, False), wt) for name, wt, _ in entries]
    if isinstance(mixed, (str, bytes)):
        raise TypeError(
            f"mixed must be a collection of names, not the single string {mixed!r}; wrap it in a list"
        )
    try:
        items = list(mixed)
    except TypeError:
        raise TypeError(
            f"mixed must be None, a callable, a mapping or a collection, got {_describe(mixed)}"
        ) from None
    positional = isinstance(names[0], int)
    if positional and items and all(isinstance(x, (bool, torch.Tensor)) for x in items):
        if len(items) != len(entries):
            raise ValueError(f"length mismatch: w has {len(entries)} entries, mixed has {len(items)} masks")
        return [_entry_selection(name, x, wt) for (name, wt, _), x in zip(entries, items)]
    unknown = [x for x in items if x not in names]
    if unknown:
        raise ValueError(f"mixed names entries that w does not have: {sorted(map(str, unknown))}")
    chosen = set(items)
    return [name in chosen for name in names]


def squared_distance(w, u=None, mixed=None) -> torch.Tensor:
    """``||w - u||^2`` summed over all entries, or over the mixed coordinates only (Supplement B).

    ``mixed`` follows :func:`resolve_mixed`. Returns a 0-dim tensor, differentiable in ``w``.
    """
    entries = paired_entries(w, u)
    selections = resolve_mixed(entries, mixed)
    total = None
    for (_, wt, ut), sel in zip(entries, selections):
        wt, ut = as_float(wt), as_float(ut)  # integer entries: no wrap-around
        if sel is False:
            term = (wt - ut).sum() * 0.0
        elif sel is True:
            term = (wt - ut).pow(2).sum()
        else:
            term = ((wt - ut).pow(2) * sel.to(wt.dtype)).sum()
        total = term if total is None else total + term
    return total


# --------------------------------------------------------------------------------------------
# Theorem 1 and Corollary 1.1
# --------------------------------------------------------------------------------------------


def theorem1_penalty(w, u, m, mu, sigma2, mixed=None) -> torch.Tensor:
    """Theorem 1 (eq. 7): the lower bound ``m sigma^2 / (2 mu^2) ||w - u||^2`` on ``E L(Phi) - L(w)``.

    Holds for every ``w`` when ``L`` is strongly convex with modulus ``m`` and the mask has mean
    ``mu > 0`` and variance ``sigma2 >= 0`` per coordinate (correlations between coordinates do not
    matter). ``mixed`` restricts the norm to the mixed coordinates (Supplement B, see
    :func:`resolve_mixed`).
    """
    m = _check_modulus(m)
    mu = _check_positive("mu", mu, "the mean of the mask")
    sigma2 = _check_real("sigma2", sigma2)
    if sigma2 < 0.0:
        raise ValueError(f"sigma2 must be >= 0 (the variance of the mask), got sigma2={sigma2!r}")
    return m * sigma2 / (2.0 * mu * mu) * squared_distance(w, u, mixed)


def corollary11_penalty(w, u, m, p, mixed=None) -> torch.Tensor:
    """Corollary 1.1 (eq. 9): mixout(u, p) penalises at least ``m p / (2 (1 - p)) ||w - u||^2``.

    Theorem 1 with ``mu = 1 - p``, ``sigma^2 = p (1 - p)``; ``p`` must lie in ``[0, 1)``.
    ``mixed`` restricts the norm to the mixed coordinates (Supplement B).
    """
    m = _check_modulus(m)
    p = check_mixing_p(p)
    return m * p / (2.0 * (1.0 - p)) * squared_distance(w, u, mixed)


def restricted_corollary11_penalty(w, u, m, p, mixed) -> torch.Tensor:
    """Supplement B (eq. 15): mixout on some coordinates only, ``m p / (2 (1 - p)) ||(w - u)_mixed||^2``.

    Typical use: ``w``, ``u`` are state dicts and ``mixed`` names the mixed weights, e.g.
    ``{"2.weight", "4.weight"}``, or a predicate ``lambda name: name.endswith("weight")``; a mapping
    to bool tensors picks single coordinates (see :func:`resolve_mixed`). ``mixed`` is required here.
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
    a = torch.as_tensor(a)
    if a.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(a.shape)}")
    if not (a.dtype.is_floating_point or a.dtype.is_complex):
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
    """Modulus of ``L(w) = 1/2 (w - w*)^T A (w - w*) + c``: the smallest eigenvalue of symmetric ``A``.

    Raises ``ValueError`` if ``A`` is not square and symmetric, or not positive definite (then ``L``
    is not strongly convex).
    """
    a = _check_symmetric("A", _as_matrix("A", A))
    lam_min = torch.linalg.eigvalsh(a)[0].item()
    if lam_min <= 0.0:
        raise ValueError(
            f"A is not positive definite (smallest eigenvalue {lam_min:.3g}): the quadratic is not strongly convex"
        )
    return lam_min


def least_squares_modulus(X) -> float:
    """Modulus of ``L(w) = (1 / (2n)) ||X w - y||^2``: the smallest eigenvalue of ``X^T X / n``.

    ``X`` is the design matrix, shape ``(n, d)``, used as given: an intercept is the caller's job
    (append a column of ones, e.g. with :func:`add_intercept`). Raises ``ValueError`` when
    ``X^T X`` is singular (rank below ``d``, e.g. ``n < d``): least squares is then not strongly convex.
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
            f"X^T X / n is singular (X has shape {(n, d)} and rank {rank}): least squares is not strongly convex"
        )
    return lam_min


def logistic_modulus(lam) -> float:
    """Modulus of L2-regularised logistic regression, ``L(w) = mean_i CE_i(w) + (lam / 2) ||w||^2``.

    The cross-entropy term is convex (its Hessian ``mean_i s_i (1 - s_i) x_i x_i^T`` is PSD), so the
    modulus is ``lam`` (exact when the data term is flat in some direction, e.g. ``d > n``).
    Convention as in :func:`logistic_loss`: ``lam`` multiplies ``1/2 ||w||^2`` and the data term is
    a mean, not a sum. ``lam`` must be > 0.
    """
    return _check_positive("lam", lam, "the L2 coefficient; lam = 0 is not strongly convex")


def softmax_modulus(lam) -> float:
    """Modulus of L2-regularised softmax regression, ``L(W) = mean_i CE_i(W) + (lam / 2) ||W||_F^2``.

    The cross-entropy term is convex but flat along ``W -> W + 1 v^T`` (adding one vector to every
    class row leaves the softmax unchanged), so the modulus is exactly ``lam``. Convention as in
    :func:`softmax_loss`. ``lam`` must be > 0.
    """
    return _check_positive("lam", lam, "the L2 coefficient; lam = 0 is not strongly convex")


def add_intercept(x) -> torch.Tensor:
    """Design matrix ``[x, 1]``: a 1-D ``x`` becomes ``(n, 2)``; a 2-D ``x`` gets a ones column appended."""
    x = torch.as_tensor(x)
    if not x.dtype.is_floating_point:
        x = x.to(torch.get_default_dtype())
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"x must be 1-D or 2-D, got shape {tuple(x.shape)}")
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def quadratic_loss(w: torch.Tensor, A: torch.Tensor, w_star: torch.Tensor, c: float = 0.0) -> torch.Tensor:
    """``L(w) = 1/2 (w - w*)^T A (w - w*) + c`` over the flattened ``w``, batched over leading dims.

    ``w`` has shape ``(*batch, *w_star.shape)``; returns shape ``batch``. Modulus: :func:`quadratic_modulus`.
    """
    w, A, w_star = (
        as_float(torch.as_tensor(w)),
        as_float(torch.as_tensor(A)),
        as_float(torch.as_tensor(w_star)),
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
    """``L(w) = (1 / (2n)) ||X w - y||^2``, batched: ``w`` of shape ``(*batch, d)`` gives ``batch``.

    Modulus: :func:`least_squares_modulus` (``lambda_min(X^T X / n)``).
    """
    w, X, y = (as_float(torch.as_tensor(t)) for t in (w, X, y))
    r = w @ X.T - y
    return 0.5 * r.pow(2).mean(-1)


def logistic_loss(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """``L(w) = mean_i [log(1 + e^{z_i}) - y_i z_i] + (lam / 2) ||w||^2`` with ``z = X w``, ``y in {0, 1}``.

    Batched: ``w`` of shape ``(*batch, d)`` gives ``batch``. Every coordinate of ``w`` (an intercept
    column included) is regularised. Modulus: :func:`logistic_modulus` (``lam``).
    """
    w, X, y = (as_float(torch.as_tensor(t)) for t in (w, X, y))
    z = w @ X.T
    data = (torch.nn.functional.softplus(z) - y * z).mean(-1)
    return data + 0.5 * lam * w.pow(2).sum(-1)


def softmax_loss(W: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """``L(W) = mean_i [logsumexp(W x_i) - (W x_i)_{y_i}] + (lam / 2) ||W||_F^2``, ``W`` of shape ``(k, d)``.

    Batched: ``W`` of shape ``(*batch, k, d)`` gives ``batch``; ``y`` holds class indices. Under
    neuron-level mixout the unit is an input feature, a column ``W[:, j]`` (as for ``nn.Linear``).
    Modulus: :func:`softmax_modulus` (``lam``).
    """
    W, X = as_float(torch.as_tensor(W)), as_float(torch.as_tensor(X))  # y stays the class indices
    logits = X @ W.transpose(-1, -2)  # (*batch, n, k)
    picked = logits[..., torch.arange(y.shape[0], device=y.device), y]  # (*batch, n)
    data = (torch.logsumexp(logits, -1) - picked).mean(-1)
    return data + 0.5 * lam * W.pow(2).sum((-1, -2))

"""The mixout penalty ``E L(Phi(w; u, M)) - L(w)``: Monte Carlo, exact for quadratics, worked cases.

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299). Equation numbers are the paper's.

* :func:`empirical_penalty` -- Monte Carlo estimate of ``E L(Phi) - L(w)`` with
  ``Phi = u + M (w - u) / (1 - p)`` (eq. 4), masks drawn by :func:`mixout_theory.masks.bernoulli_mask`
  (``level="neuron"``: mixout, eq. 8; ``level="parameter"``: mixconnect, eq. 5).
* :func:`quadratic_penalty` -- the exact penalty of a quadratic,
  ``(p / (2 (1 - p))) sum_g d_g^T A_gg d_g`` with ``d = w - u`` (groups share one mask value).
* :func:`neuron_groups` -- the groups of a flattened ``(out, in)`` weight under mixout (column j).
* :func:`mixout_least_squares` -- the exact minimiser of ``E L(Phi(w))`` for least squares
  (Supplement D): ``(H + k (H o G)) w = X^T y / n + k (H o G) u`` with ``H = X^T X / n``,
  ``k = p / (1 - p)``.
* :func:`wdecay` -- the weight-decay penalty ``wdecay(u, lambda) = (lambda / 2) ||w - u||^2`` (the
  paper's notation), the explicit L2 pull that Corollary 1.1 compares mixout(u, p) with; ``u = 0`` is
  ordinary weight decay, ``u = w_pre`` is L2-SP.

The worked cases built on these estimators live in :mod:`mixout_theory.cases`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mixout_theory import bounds
from mixout_theory.bounds import check_mixing_p
from mixout_theory.deprecation import renamed_keywords, renamed_names
from mixout_theory.entries import (
    as_float,
    check_real_dtype,
    only_mixed,
    paired_entries,
    rebuild_entries,
    resolve_mixed,
)
from mixout_theory.masks import LEVELS, bernoulli_mask, check_level, mask_shape
from mixout_theory.mixing import mixture

__all__ = [
    "Z95",
    "LEVELS",
    "PenaltyEstimate",
    "empirical_penalty",
    "penalty_samples",
    "quadratic_penalty",
    "wdecay",
    "neuron_groups",
    "mixout_least_squares",
    "expected_mixout_least_squares_loss",
]

#: two-sided 95% normal quantile used for the intervals
Z95 = 1.959963984540054

__getattr__ = renamed_names(__name__, globals(), SCHEMES="LEVELS")  # the old name of LEVELS


# --------------------------------------------------------------------------------------------
# Monte Carlo
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PenaltyEstimate:
    """A Monte Carlo estimate of the mixout penalty ``E L(Phi) - L(w)`` (eq. 4) by :func:`empirical_penalty`.

    Args:
        mean (float): the sample mean of ``L(Phi_s) - L(w)`` over ``n_samples`` independent masks.
        se (float): its standard error, ``std / sqrt(n_samples)``.
        lo (float): the lower end of the normal 95% interval, ``mean - 1.96 se``.
        hi (float): the upper end, ``mean + 1.96 se``.
        n_samples (int): the number of masks.
        std (float): the sample standard deviation (``ddof=1``).

    Example:
        >>> est = PenaltyEstimate(mean=1.0, se=0.1, lo=0.8, hi=1.2, n_samples=100, std=1.0)
        >>> est.within(1.3), est.within(1.5)
        (True, False)
    """

    mean: float
    se: float
    lo: float
    hi: float
    n_samples: int
    std: float

    @classmethod
    def of(cls, samples: torch.Tensor) -> PenaltyEstimate:
        """The estimate from independent samples ``(n,)`` of ``L(Phi) - L(w)`` (:func:`penalty_samples`)."""
        d = torch.as_tensor(samples, dtype=torch.float64)
        if d.dim() != 1 or d.numel() < 2:
            raise ValueError(
                f"PenaltyEstimate.of needs a 1-D tensor of >= 2 samples, got shape {tuple(d.shape)}"
            )
        n, mean = d.numel(), d.mean().item()
        std = d.std(correction=1).item()
        se = std / math.sqrt(n)
        return cls(mean, se, mean - Z95 * se, mean + Z95 * se, n, std)

    def within(self, value: float, n_se: float = 4.0) -> bool:
        """Whether ``value`` lies within ``n_se`` standard errors of the mean."""
        return abs(self.mean - float(value)) <= n_se * self.se


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}")
    return int(value)


def _make_generator(generator, device) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        g = torch.Generator(device=device)
        g.manual_seed(int(generator))
        return g
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")


def _index(batch, i):
    if isinstance(batch, torch.Tensor):
        return batch[i]
    if isinstance(batch, Mapping):
        return {k: v[i] for k, v in batch.items()}
    return type(batch)(v[i] for v in batch)


def _as_scalar(value, what: str) -> torch.Tensor:
    value = torch.as_tensor(value)
    if value.numel() != 1:
        raise ValueError(
            f"the per-sample loss_fn must return a scalar, got shape {tuple(value.shape)} {what}"
        )
    return value.reshape(())


def _evaluate(loss_fn, batch, size: int, batched: bool, state: dict) -> torch.Tensor:
    """Losses of ``size`` parameter samples: ``(size,)``, or ``(size, K)`` if ``state["columns"]``."""
    if batched:
        out = loss_fn(batch)
        shaped = isinstance(out, torch.Tensor) and out.dim() in (1, 1 + state["columns"])
        if not shaped or out.shape[0] != size:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            want = f"({size},)" + (f" or ({size}, K)" if state["columns"] else "")
            raise ValueError(
                f"a batched loss_fn must map a batch of {size} parameter samples to a tensor of shape "
                f"{want}, got {got}; pass batched=False for a loss of one parameter sample"
            )
        return out
    if state["vectorize"] == "vmap":
        try:
            out = torch.func.vmap(loss_fn)(batch)
            return out.reshape(size)
        except Exception as exc:  # noqa: BLE001 - any vmap failure falls back to the exact loop
            warnings.warn(
                f"torch.func.vmap could not vectorise loss_fn ({type(exc).__name__}: {exc}); "
                "evaluating it one sample at a time instead",
                RuntimeWarning,
                stacklevel=3,
            )
            state["vectorize"] = "loop"
    return torch.stack([_as_scalar(loss_fn(_index(batch, i)), f"(sample {i})") for i in range(size)])


@renamed_keywords(scheme="level")
def empirical_penalty(
    loss_fn: Callable,
    w,
    u,
    p: float,
    n_samples: int,
    level: str = "neuron",
    generator: torch.Generator | int | None = None,
    batch_size: int = 1024,
    batched: bool = True,
    vectorize: str = "vmap",
    mixed=None,
) -> PenaltyEstimate:
    """Monte Carlo estimate of the mixout penalty ``E_M L(Phi(w; u, M)) - L(w)`` (eq. 4 / eq. 7).

    ``Phi = u + M (w - u) / (1 - p)`` with Bernoulli(1 - p) masks, drawn as
    :func:`~mixout_theory.mixing.mixout` (``level="neuron"``) or :func:`~mixout_theory.mixing.mixconnect`
    (``level="parameter"``) draws them.
    Masks depend only on ``generator``, ``batch_size`` and ``n_samples``, never on how the loss is
    evaluated, so the modes give the same estimate. Evaluated under ``torch.no_grad()``, statistics in
    float64; ``p = 0`` returns an exact zero (NaN, as eq. 9's ``0 * ||w - u||^2``, where ``w - u`` is
    not finite on a mixed coordinate).

    Args:
        loss_fn (callable): with ``batched=True``, maps a batch of parameter samples (``(S, *w.shape)``;
            for a mapping / list ``w`` the same structure, every entry batched) to the ``S`` losses
            (the losses of :mod:`mixout_theory.bounds` work as is); with ``batched=False``, maps one
            sample to a scalar.
        w (Tensor or collection): the point (a tensor, a mapping such as a ``state_dict``, a list).
        u (same structure as ``w``, optional): the target (``None``: the origin).
        p (float): the mixing probability, in ``[0, 1)``.
        n_samples (int): the number of masks, >= 2.
        level (str): ``"neuron"`` (one value per input unit, dim 1 of a weight ``(out, in, ...)``, one
            per element of a 1-D tensor) or ``"parameter"`` (one per parameter). Formerly ``scheme``.
        generator (torch.Generator or int, optional): the masks' random source, or a seed.
        batch_size (int): masks drawn and evaluated per call of ``loss_fn``.
        batched (bool): the ``loss_fn`` convention above.
        vectorize (str): for ``batched=False``: ``"vmap"`` (:func:`torch.func.vmap`, falling back with a
            warning) or ``"loop"``.
        mixed (optional): leaves some entries / coordinates unmixed (Supplement B;
            :func:`~mixout_theory.entries.resolve_mixed`).

    Shape:
        a batched ``loss_fn`` maps ``(S, *w.shape)`` to ``(S,)``.

    Returns:
        PenaltyEstimate: the mean, its standard error and 95% interval.

    Example:
        >>> loss = lambda W: 0.5 * W.pow(2).sum(-1)  # m = 1: the exact penalty is eq. 9 with equality
        >>> est = empirical_penalty(loss, torch.ones(3), None, 0.5, 20000, level="parameter", generator=0)
        >>> est.within(corollary11_penalty(torch.ones(3), None, 1.0, 0.5))
        True
    """
    args = (loss_fn, w, u, p, n_samples, level, generator, batch_size, batched, vectorize, mixed)
    return PenaltyEstimate.of(_samples(*args, columns=False))


def penalty_samples(
    loss_fn: Callable,
    w,
    u,
    p: float,
    n_samples: int,
    level: str = "neuron",
    generator: torch.Generator | int | None = None,
    batch_size: int = 1024,
    batched: bool = True,
    vectorize: str = "vmap",
    mixed=None,
) -> torch.Tensor:
    """The Monte Carlo samples behind :func:`empirical_penalty`: ``L(Phi(w; u, M_s)) - L(w)``, one per mask.

    The same masks, arguments and checks as :func:`empirical_penalty` (which is
    ``PenaltyEstimate.of(penalty_samples(...))``). A batched ``loss_fn`` may return ``K`` values per
    sample, ``(S, K)``: every column is then differenced against its value at ``w`` on the *same* masks,
    so that the difference of two columns is a paired estimate (e.g. a network and a variant of it).

    Args:
        loss_fn, w, u, p, n_samples, level, generator, batch_size, batched, vectorize, mixed: as for
            :func:`empirical_penalty`; a batched ``loss_fn`` may return ``(S, K)``.

    Returns:
        Tensor: the samples, float64.

    Shape:
        returns ``(n_samples,)``, or ``(n_samples, K)`` for a loss returning ``(S, K)``; float64.

    Example:
        >>> loss = lambda W: torch.stack([W.pow(2).sum(-1), W.pow(3).sum(-1)], -1)  # two losses, K = 2
        >>> d = penalty_samples(loss, torch.ones(3), None, 0.5, 1000, level="parameter", generator=0)
        >>> d.shape, PenaltyEstimate.of(d[:, 0]).within(3.0)  # E ||Phi||^2 - ||w||^2 = 3 p / (1 - p)
        (torch.Size([1000, 2]), True)
    """
    args = (loss_fn, w, u, p, n_samples, level, generator, batch_size, batched, vectorize, mixed)
    return _samples(*args, columns=True)


def _samples(loss_fn, w, u, p, n_samples, level, generator, batch_size, batched, vectorize, mixed, columns):
    p = check_mixing_p(p)
    n_samples = _check_count("n_samples", n_samples, 2)
    batch_size = _check_count("batch_size", batch_size, 1)
    level = check_level(level)
    if vectorize not in ("vmap", "loop"):
        raise ValueError(f"vectorize must be 'vmap' or 'loop', got vectorize={vectorize!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    entries = [(k, as_float(wt), as_float(ut)) for k, wt, ut in paired_entries(w, u)]  # integers: as float64
    selections = resolve_mixed(entries, mixed)
    state = {"vectorize": vectorize, "columns": columns}
    mu = 1.0 - p
    with torch.no_grad():
        ws = [wt.detach() for _, wt, _ in entries]
        if p == 0.0:  # Phi = w: nothing is mixed, and no loss is evaluated (columns: one evaluation at w)
            finite = all(
                bool(only_mixed(wt - ut, sel).isfinite().all())
                for (_, wt, ut), sel in zip(entries, selections, strict=True)
            )
            shape = (n_samples,)
            if columns and batched:
                base = _evaluate(loss_fn, rebuild_entries(w, [x.unsqueeze(0) for x in ws]), 1, True, state)
                shape += tuple(base.shape[1:])
            return torch.full(shape, 0.0 if finite else math.nan, dtype=torch.float64)
        gen = _make_generator(generator, entries[0][1].device)
        if batched:
            base = _evaluate(loss_fn, rebuild_entries(w, [x.unsqueeze(0) for x in ws]), 1, True, state)[0]
        else:
            base = _as_scalar(loss_fn(rebuild_entries(w, ws)), "(at w)")
        base = base.to(torch.float64)
        diffs = []
        for start in range(0, n_samples, batch_size):
            size = min(batch_size, n_samples - start)
            samples = []
            for (_, _, ut), wd, sel in zip(entries, ws, selections, strict=True):
                if sel is False:
                    samples.append(wd.expand(size, *wd.shape))
                    continue
                mask = bernoulli_mask(wd, p, (size,) + mask_shape(wd.shape, level), gen)  # one per sample
                phi = mixture(wd, ut.detach(), mask, mu)
                if sel is not True:
                    phi = torch.where(sel, phi, wd)
                samples.append(phi)
            losses = _evaluate(loss_fn, rebuild_entries(w, samples), size, batched, state)
            if losses.shape[1:] != base.shape:
                raise ValueError(
                    f"loss_fn returned {tuple(losses.shape[1:])} values per sample, {tuple(base.shape)} at w"
                )
            diffs.append(losses.to(torch.float64) - base)
        return torch.cat(diffs)


# --------------------------------------------------------------------------------------------
# exact penalty of a quadratic
# --------------------------------------------------------------------------------------------


def neuron_groups(shape) -> torch.Tensor:
    """Group id of every element of a row-major flattened weight under neuron-level mixout (eq. 8).

    Element ``W[i, j, ...]`` belongs to group ``j`` (input unit ``j``, column ``W[:, j]``); a 1-D shape
    puts every element in its own group.

    Args:
        shape (tuple or Tensor): the weight's shape (or the weight).

    Shape:
        the result has ``prod(shape)`` entries.

    Returns:
        Tensor: the group-id vector (long), usable as ``groups`` in :func:`quadratic_penalty`.

    Example:
        >>> neuron_groups((2, 3))
        tensor([0, 1, 2, 0, 1, 2])
    """
    shape = tuple(int(s) for s in (shape.shape if isinstance(shape, torch.Tensor) else shape))
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must have non-negative sizes, got {shape}")
    view = mask_shape(shape, "neuron")  # the elements sharing a mask value share an id
    return torch.arange(math.prod(view)).reshape(view).expand(shape).reshape(-1).clone()


def _group_ids(groups, size: int) -> torch.Tensor:
    """Normalise ``groups`` (a group-id vector or a partition of ``range(size)``) to group ids."""
    if isinstance(groups, torch.Tensor) or (
        isinstance(groups, (Sequence, np.ndarray))
        and len(groups) > 0
        and all(isinstance(g, (numbers.Integral, np.integer)) and not isinstance(g, bool) for g in groups)
    ):
        ids = torch.as_tensor(groups)
        if ids.dim() != 1 or ids.numel() != size:
            raise ValueError(
                f"a group-id vector must be 1-D with one id per coordinate ({size}), "
                f"got shape {tuple(ids.shape)}"
            )
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"group ids must be integers, got dtype {ids.dtype}")
        return ids.long()
    try:
        parts = [list(map(int, g)) for g in groups]
    except TypeError:
        raise TypeError("groups must be a group-id vector or a partition (a list of index lists)") from None
    ids = torch.full((size,), -1, dtype=torch.long)
    for gi, part in enumerate(parts):
        for i in part:
            if not 0 <= i < size:
                raise ValueError(f"groups: index {i} (group {gi}) is outside range({size})")
            if ids[i] != -1:
                raise ValueError(
                    f"groups: index {i} appears in more than one group (groups {ids[i].item()} and {gi})"
                )
            ids[i] = gi
    missing = (ids == -1).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"groups must partition range({size}); indices {missing[:10]} are in no group")
    return ids


def _grouped_hessian(A: torch.Tensor, groups, size: int) -> torch.Tensor:
    """``A o G`` with ``G_ij = [i, j in the same group]`` (``diag(A)`` for independent masks)."""
    if groups is None:
        return torch.diag(torch.diagonal(A))
    ids = _group_ids(groups, size).to(A.device)
    return A * (ids[:, None] == ids[None, :]).to(A.dtype)


def _check_A(A, size: int) -> torch.Tensor:
    A = check_real_dtype("A", torch.as_tensor(A)).detach().to(torch.float64)
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
    if A.shape[0] != size:
        raise ValueError(f"A is {A.shape[0]}x{A.shape[1]} but w - u has {size} coordinates")
    if not A.isfinite().all():  # entries off the groups' blocks do not enter the formula: check them here
        raise ValueError("A must be finite, got NaN or inf entries (it is the Hessian of the quadratic)")
    asym = (A - A.T).abs().max().item()
    if asym > 1e-8 * max(A.abs().max().item(), 1.0):
        raise ValueError(f"A must be symmetric, max |A - A^T| = {asym:.3g}")
    return A


def quadratic_penalty(A, w, u, p: float, groups=None) -> float:
    """Exact mixout penalty of a quadratic ``L(w) = 1/2 (w - w*)^T A (w - w*) + c`` (Theorem 1's proof).

    ``E L(Phi) - L(w) = (p / (2 (1 - p))) sum_g d_g^T A_gg d_g`` with ``d = w - u`` flattened row-major:
    masks shared within groups; independent masks (``groups=None``) give ``sum_i A_ii d_i^2``.

    Args:
        A (Tensor): the symmetric Hessian.
        w (Tensor): the point.
        u (Tensor, optional): the target (``None``: the origin).
        p (float): the mixing probability, in ``[0, 1)``.
        groups (optional): a group-id vector, one integer per coordinate of ``d`` (coordinates with the
            same id share one mask value, e.g. :func:`neuron_groups`), or a partition of
            ``range(d.numel())`` as lists of indices; ``None``: one mask value per coordinate.

    Shape:
        ``A`` is ``(d, d)`` with ``d = w.numel()``; ``u`` has ``w``'s shape.

    Returns:
        float: the penalty (float64 maths).

    Example:
        >>> w = torch.ones(2, 2)
        >>> quadratic_penalty(torch.eye(4), w, None, 0.5), quadratic_penalty(torch.ones(4, 4), w, None, 0.5)
        (2.0, 2.0)
        >>> quadratic_penalty(torch.ones(4, 4), w, None, 0.5, groups=neuron_groups(w.shape))
        4.0
    """
    p = check_mixing_p(p)
    ((_, w, u),) = paired_entries(torch.as_tensor(w), None if u is None else torch.as_tensor(u))
    d = (w.detach().to(torch.float64) - u.detach().to(torch.float64)).reshape(-1)  # no integer wrap-around
    A = _check_A(A, d.numel())
    return p / (2.0 * (1.0 - p)) * (d @ _grouped_hessian(A, groups, d.numel()) @ d).item()


# --------------------------------------------------------------------------------------------
# weight decay towards a point: the explicit L2 penalty mixout is compared with
# --------------------------------------------------------------------------------------------


def wdecay(w, u, lam: float, keys=None) -> torch.Tensor:
    """The penalty of ``wdecay(u, lambda)``, ``(lambda / 2) ||w - u||^2``, that eq. 9 compares mixout with.

    Training with ``wdecay(u, lambda)`` minimises ``L(w) + wdecay(w, u, lambda)``; ``u = None`` (the
    origin) is ordinary weight decay, ``u = w_pre`` is L2-SP. Corollary 1.1 says mixout(u, p) costs at
    least ``wdecay(w, u, m p / (1 - p))`` for an ``m``-strongly convex loss. This is the *coupled* form,
    whose gradient ``lambda (w - u)`` is added to the loss gradient before the optimiser sees it
    (decoupled decay, AdamW's, is the gradient of no fixed penalty under Adam's rescaling).

    Args:
        w (Tensor or mapping): the weights, or a mapping such as a state dict.
        u (same structure as ``w``, optional): the target (detached; ``None``: the origin). A mapping
            must hold every key summed over; extra keys are ignored.
        lam (float): ``lambda``, finite and >= 0.
        keys (iterable of str, optional): for mappings, the keys summed over (default: every key of ``w``).

    Returns:
        Tensor: a 0-dim tensor that keeps ``w``'s autograd graph.

    Example:
        >>> wdecay({"a": torch.tensor([3.0, 4.0]), "b": torch.ones(3)}, None, 0.1, keys=["a"])
        tensor(1.2500)
    """
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got lam={lam!r}")
    if isinstance(w, torch.Tensor):
        if keys is not None:
            raise TypeError("keys is only for mapping (state_dict) arguments; w is a tensor")
        pairs = paired_entries(w, u)
    elif isinstance(w, Mapping):
        names = list(w) if keys is None else list(keys)
        if not names:
            raise ValueError("wdecay: no parameters selected (empty w or keys)")
        missing = [k for k in names if k not in w]
        if missing:
            raise ValueError(f"wdecay: keys {missing} are not in w (it has {list(w)})")
        if u is not None:
            if not isinstance(u, Mapping):
                raise TypeError(f"w is a mapping but u is {type(u).__name__}; give u as a mapping or None")
            absent = [k for k in names if k not in u]
            if absent:
                raise ValueError(f"wdecay: u lacks the keys {absent}")
        pairs = paired_entries({k: w[k] for k in names}, None if u is None else {k: u[k] for k in names})
    else:
        raise TypeError(f"w must be a tensor or a mapping of tensors, got {type(w).__name__}")
    total = None
    for _, wt, ut in pairs:
        wt, ut = as_float(wt), as_float(ut)  # integer entries: no wrap-around
        term = (wt - ut.detach().to(wt.dtype)).pow(2).sum()
        total = term if total is None else total + term
    return 0.5 * lam * total


# --------------------------------------------------------------------------------------------
# Supplement D: least squares under mixout, solved exactly
# --------------------------------------------------------------------------------------------


def _least_squares_inputs(X, y, u):
    X = check_real_dtype("X", torch.as_tensor(X))
    y = check_real_dtype("y", torch.as_tensor(y))
    if X.dim() != 2:
        raise ValueError(f"X must be a 2-D design matrix (n, d), got shape {tuple(X.shape)}")
    if y.shape != (X.shape[0],):
        raise ValueError(
            f"y must have shape ({X.shape[0]},) to match X {tuple(X.shape)}, got {tuple(y.shape)}"
        )
    u = torch.zeros(X.shape[1], dtype=X.dtype) if u is None else check_real_dtype("u", torch.as_tensor(u))
    if u.shape != (X.shape[1],):
        raise ValueError(
            f"u must have shape ({X.shape[1]},) to match X {tuple(X.shape)}, got {tuple(u.shape)}"
        )
    return X, y, u


def mixout_least_squares(X, y, u, p: float, groups=None) -> torch.Tensor:
    """Exact minimiser of ``E L(Phi(w; u, M))``, ``L(w) = ||X w - y||^2 / (2n)`` least squares (Supplement D).

    ``E L(Phi) = L(w) + (k / 2) (w - u)^T (H o G) (w - u)`` with ``H = X^T X / n``, ``k = p / (1 - p)``,
    so the minimiser solves ``(H + k (H o G)) w = X^T y / n + k (H o G) u``. ``p = 0`` gives ordinary
    least squares; as ``p -> 1`` the solution tends to ``u``.

    Args:
        X (Tensor): the design matrix.
        y (Tensor): the targets.
        u (Tensor, optional): the target weights (``None``: the origin).
        p (float): the mixing probability, in ``[0, 1)``.
        groups (optional): a group-id vector or a partition of the coordinates, as in
            :func:`quadratic_penalty`; ``None``: one mask value per coordinate (mixconnect, or mixout of
            a 1-D parameter such as the line ``(w1, w2)``).

    Shape:
        ``X`` ``(n, d)``, ``y`` ``(n,)``, ``u`` and the result ``(d,)``.

    Returns:
        Tensor: the minimiser, in ``X``'s dtype.

    Example:
        >>> X, y = torch.eye(2, dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> mixout_least_squares(X, y, torch.zeros(2, dtype=torch.float64), 0.5)
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    p = check_mixing_p(p)
    X, y, u = _least_squares_inputs(X, y, u)
    x64, y64, u64 = (t.detach().to(torch.float64) for t in (X, y, u))
    n, d = x64.shape
    H = x64.T @ x64 / n
    k = p / (1.0 - p)
    HG = _grouped_hessian(H, groups, d)
    lhs = H + k * HG
    rhs = x64.T @ y64 / n + k * (HG @ u64)
    try:
        sol = torch.linalg.solve(lhs, rhs)
    except RuntimeError as exc:
        raise ValueError(f"the mixout least-squares system is singular at p={p} ({exc})") from None
    return sol.to(X.dtype if X.dtype.is_floating_point else torch.get_default_dtype())


def expected_mixout_least_squares_loss(w, X, y, u, p: float, groups=None) -> float:
    """``E L(Phi(w; u, M)) = L(w) + quadratic_penalty(X^T X / n, w, u, p, groups)`` for least squares.

    ``groups``: a group-id vector or a partition of the coordinates, as in :func:`quadratic_penalty`.
    """
    X, y, u = _least_squares_inputs(X, y, u)
    x64 = X.detach().to(torch.float64)
    w64 = check_real_dtype("w", torch.as_tensor(w)).detach().to(torch.float64)
    base = bounds.least_squares_loss(w64, x64, y.detach().to(torch.float64)).item()
    return base + quadratic_penalty(x64.T @ x64 / x64.shape[0], w64, u, p, groups)

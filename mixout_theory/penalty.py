"""The mixout penalty ``E L(Phi(w; u, M)) - L(w)``: Monte Carlo, exact for quadratics, worked cases.

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299). Equation numbers are the paper's.

* :func:`empirical_penalty` -- Monte Carlo estimate of ``E L(Phi) - L(w)`` with
  ``Phi = u + M (w - u) / (1 - p)`` (eq. 4), masks drawn as in :mod:`mixout_theory.mixing`
  (``scheme="neuron"``: mixout, eq. 8; ``scheme="parameter"``: mixconnect, eq. 5).
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
from mixout_theory.bounds import as_float, check_mixing_p, paired_entries, rebuild_entries, resolve_mixed
from mixout_theory.mixing import mixture, parameter_mask

__all__ = [
    "Z95",
    "PenaltyEstimate",
    "empirical_penalty",
    "quadratic_penalty",
    "wdecay",
    "neuron_groups",
    "mixout_least_squares",
    "expected_mixout_least_squares_loss",
]

#: two-sided 95% normal quantile used for the intervals
Z95 = 1.959963984540054

SCHEMES = ("neuron", "parameter")


# --------------------------------------------------------------------------------------------
# Monte Carlo
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PenaltyEstimate:
    """A Monte Carlo estimate of ``E L(Phi) - L(w)``.

    ``mean`` is the sample mean of ``L(Phi_s) - L(w)`` over ``n_samples`` independent masks, ``std``
    its sample standard deviation (``ddof=1``), ``se = std / sqrt(n_samples)`` and ``(lo, hi)`` the
    normal 95% interval ``mean -+ 1.96 se``.
    """

    mean: float
    se: float
    lo: float
    hi: float
    n_samples: int
    std: float

    def within(self, value: float, n_se: float = 4.0) -> bool:
        """Whether ``value`` lies within ``n_se`` standard errors of the mean."""
        return abs(self.mean - float(value)) <= n_se * self.se


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}")
    return int(value)


def _check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got scheme={scheme!r}")
    return scheme


def _mask_shape(weight: torch.Tensor, scheme: str) -> tuple[int, ...]:
    """Per-sample mask shape, as :func:`mixing.neuron_mask` / :func:`mixing.parameter_mask` draw it."""
    if scheme == "parameter" or weight.dim() <= 1:
        return tuple(weight.shape)
    return (1, weight.shape[1]) + (1,) * (weight.dim() - 2)


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
    """Losses of a batch of ``size`` parameter samples, shape ``(size,)``."""
    if batched:
        out = loss_fn(batch)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (size,):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"a batched loss_fn must map a batch of {size} parameter samples to a tensor of shape "
                f"({size},), got {got}; pass batched=False for a loss of one parameter sample"
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


def empirical_penalty(
    loss_fn: Callable,
    w,
    u,
    p: float,
    n_samples: int,
    scheme: str = "neuron",
    generator: torch.Generator | int | None = None,
    batch_size: int = 1024,
    batched: bool = True,
    vectorize: str = "vmap",
    mixed=None,
) -> PenaltyEstimate:
    """Monte Carlo estimate of the mixout penalty ``E_M L(Phi(w; u, M)) - L(w)`` (eq. 4 / eq. 7).

    ``Phi = u + M (w - u) / (1 - p)`` with Bernoulli(1 - p) masks: ``scheme="neuron"`` draws one value
    per input unit (dim 1 of a weight of shape ``(out, in, ...)``, one per element of a 1-D tensor)
    as :func:`mixout_theory.mixing.neuron_mask` does; ``scheme="parameter"`` one per parameter as
    :func:`mixout_theory.mixing.parameter_mask`.

    ``loss_fn`` convention:

    * ``batched=True`` (default): ``loss_fn`` takes a batch of parameter samples, a tensor of shape
      ``(S, *w.shape)`` (for a mapping / list ``w``: the same structure with every entry batched), and
      returns the ``S`` losses, shape ``(S,)``. The losses of :mod:`mixout_theory.bounds` work as is.
    * ``batched=False``: ``loss_fn`` takes one parameter sample (``w``'s structure) and returns a
      scalar. It is vectorised with :func:`torch.func.vmap` (``vectorize="vmap"``); if vmap fails the
      estimator warns and loops over samples, which ``vectorize="loop"`` asks for directly.

    Masks depend only on ``generator`` (a ``torch.Generator`` or an int seed), ``batch_size`` and
    ``n_samples``, never on how the loss is evaluated, so the modes give the same estimate.
    ``w`` and ``u`` may be tensors or matching flat collections (``u=None`` is the origin); ``mixed``
    leaves some entries / coordinates unmixed (Supplement B; see :func:`bounds.resolve_mixed`).
    Evaluated under ``torch.no_grad()``, statistics in float64. ``p = 0`` returns an exact zero.
    """
    p = check_mixing_p(p)
    n_samples = _check_count("n_samples", n_samples, 2)
    batch_size = _check_count("batch_size", batch_size, 1)
    scheme = _check_scheme(scheme)
    if vectorize not in ("vmap", "loop"):
        raise ValueError(f"vectorize must be 'vmap' or 'loop', got vectorize={vectorize!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    entries = [(k, as_float(wt), as_float(ut)) for k, wt, ut in paired_entries(w, u)]  # integers: as float64
    selections = resolve_mixed(entries, mixed)
    if p == 0.0:
        return PenaltyEstimate(0.0, 0.0, 0.0, 0.0, n_samples, 0.0)
    gen = _make_generator(generator, entries[0][1].device)
    state = {"vectorize": vectorize}
    mu = 1.0 - p
    with torch.no_grad():
        ws = [wt.detach() for _, wt, _ in entries]
        if batched:
            base = _evaluate(loss_fn, rebuild_entries(w, [x.unsqueeze(0) for x in ws]), 1, True, state)[0]
        else:
            base = _as_scalar(loss_fn(rebuild_entries(w, ws)), "(at w)")
        base = base.to(torch.float64)
        diffs = []
        for start in range(0, n_samples, batch_size):
            size = min(batch_size, n_samples - start)
            samples = []
            for (_, wt, ut), wd, sel in zip(entries, ws, selections):
                if sel is False:
                    samples.append(wd.expand(size, *wd.shape))
                    continue
                holder = torch.empty((size,) + _mask_shape(wd, scheme), dtype=wd.dtype, device=wd.device)
                mask = parameter_mask(holder, p, gen)  # independent Bernoulli(1-p) per mask slot
                phi = mixture(wd, ut.detach(), mask, mu)
                if sel is not True:
                    phi = torch.where(sel, phi, wd)
                samples.append(phi)
            losses = _evaluate(loss_fn, rebuild_entries(w, samples), size, batched, state)
            diffs.append(losses.to(torch.float64) - base)
        d = torch.cat(diffs)
    mean = d.mean().item()
    std = d.std(correction=1).item()
    se = std / math.sqrt(n_samples)
    return PenaltyEstimate(mean, se, mean - Z95 * se, mean + Z95 * se, n_samples, std)


# --------------------------------------------------------------------------------------------
# exact penalty of a quadratic
# --------------------------------------------------------------------------------------------


def neuron_groups(shape) -> torch.Tensor:
    """Group id of every element of a row-major flattened weight under neuron-level mixout.

    For ``shape = (out, in, *rest)`` element ``W[i, j, ...]`` belongs to group ``j`` (input unit j,
    column ``W[:, j]``); a 1-D shape puts every element in its own group. Returns a long tensor of
    length ``prod(shape)``, usable as ``groups`` in :func:`quadratic_penalty`.
    """
    shape = tuple(int(s) for s in (shape.shape if isinstance(shape, torch.Tensor) else shape))
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must have non-negative sizes, got {shape}")
    if len(shape) <= 1:
        return torch.arange(math.prod(shape))
    view = (1, shape[1]) + (1,) * (len(shape) - 2)
    return torch.arange(shape[1]).reshape(view).expand(shape).reshape(-1).clone()


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
                f"a group-id vector must be 1-D with one id per coordinate ({size}), got shape {tuple(ids.shape)}"
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
    A = torch.as_tensor(A).detach().to(torch.float64)
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
    if A.shape[0] != size:
        raise ValueError(f"A is {A.shape[0]}x{A.shape[1]} but w - u has {size} coordinates")
    asym = (A - A.T).abs().max().item()
    if asym > 1e-8 * max(A.abs().max().item(), 1.0):
        raise ValueError(f"A must be symmetric, max |A - A^T| = {asym:.3g}")
    return A


def quadratic_penalty(A, w, u, p: float, groups=None) -> float:
    """Exact mixout penalty of ``L(w) = 1/2 (w - w*)^T A (w - w*) + c`` (any ``w*``, ``c``).

    ``E L(Phi) - L(w) = 1/2 sum_ij A_ij Cov(Phi_i, Phi_j)`` (from the proof of Theorem 1):
    independent masks (``groups=None``) give ``(sigma^2 / (2 mu^2)) sum_i A_ii d_i^2``; masks shared
    within groups give ``(sigma^2 / (2 mu^2)) sum_g d_g^T A_gg d_g``, with ``d = w - u`` flattened
    row-major, ``sigma^2 / mu^2 = p / (1 - p)``. ``groups`` is a group-id vector (see
    :func:`neuron_groups`) or a partition of the coordinate indices. Returns a float (float64 maths).
    """
    p = check_mixing_p(p)
    w = torch.as_tensor(w)
    u = torch.zeros_like(w) if u is None else torch.as_tensor(u)
    if w.shape != u.shape:
        raise ValueError(f"shape mismatch: w has shape {tuple(w.shape)}, u has shape {tuple(u.shape)}")
    d = (w.detach().to(torch.float64) - u.detach().to(torch.float64)).reshape(-1)  # no integer wrap-around
    A = _check_A(A, d.numel())
    return p / (2.0 * (1.0 - p)) * (d @ _grouped_hessian(A, groups, d.numel()) @ d).item()


# --------------------------------------------------------------------------------------------
# weight decay towards a point: the explicit L2 penalty mixout is compared with
# --------------------------------------------------------------------------------------------


def wdecay(w, u, lam: float, keys=None) -> torch.Tensor:
    """The penalty of ``wdecay(u, lambda)``: ``(lambda / 2) ||w - u||^2`` (the paper's ``wdecay(u, lambda)``).

    Training with ``wdecay(u, lambda)`` means minimising ``L(w) + wdecay(w, u, lambda)``; ``u = None``
    (the origin) is ordinary weight decay, ``u = w_pre`` is L2-SP. Corollary 1.1 (eq. 9) says
    mixout(u, p) costs at least ``wdecay(w, u, m p / (1 - p))`` for an ``m``-strongly convex loss.

    ``w`` and ``u`` are tensors, or mappings such as state dicts; for mappings the penalty is
    summed over ``keys`` (default: every key of ``w``; ``u`` must hold each of them, extra keys of
    ``u`` are ignored, so ``u`` may be a whole network while ``keys`` names only its Linear weights).
    The result is a 0-dim tensor that keeps ``w``'s autograd graph: its gradient is
    ``lambda (w - u)`` and ``u`` is treated as a constant (detached).

    This is the *coupled* form: the gradient of the penalty is added to the loss gradient before the
    optimiser sees it (what :func:`mixout_theory.experiment.engine.train_ensemble` does for
    ``Member(wdecay=lambda)``). It is the definition the theory compares mixout with. Decoupled decay
    (AdamW: ``w <- w - lr * lambda * (w - u)`` outside Adam's normalisation) is not the gradient of
    any fixed penalty under Adam, whose per-coordinate step size rescales the penalty's gradient.
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
    X = torch.as_tensor(X)
    y = torch.as_tensor(y)
    if X.dim() != 2:
        raise ValueError(f"X must be a 2-D design matrix (n, d), got shape {tuple(X.shape)}")
    if y.shape != (X.shape[0],):
        raise ValueError(
            f"y must have shape ({X.shape[0]},) to match X {tuple(X.shape)}, got {tuple(y.shape)}"
        )
    u = torch.zeros(X.shape[1], dtype=X.dtype) if u is None else torch.as_tensor(u)
    if u.shape != (X.shape[1],):
        raise ValueError(
            f"u must have shape ({X.shape[1]},) to match X {tuple(X.shape)}, got {tuple(u.shape)}"
        )
    return X, y, u


def mixout_least_squares(X, y, u, p: float, groups=None) -> torch.Tensor:
    """Exact minimiser of ``E L(Phi(w; u, M))`` for ``L(w) = (1 / (2n)) ||X w - y||^2`` (Supplement D).

    ``E L(Phi) = L(w) + (k / 2) (w - u)^T (H o G) (w - u)`` with ``H = X^T X / n``, ``k = p / (1 - p)``
    (see :func:`quadratic_penalty`), so the minimiser solves the ridge-like system
    ``(H + k (H o G)) w = X^T y / n + k (H o G) u``. ``groups=None`` is one mask per coordinate
    (mixconnect, or mixout of a 1-D parameter such as the line ``(w1, w2)``). ``p = 0`` gives ordinary
    least squares; as ``p -> 1`` the solution tends to ``u``. Returns ``w`` in ``X``'s dtype.
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
    """``E L(Phi(w; u, M)) = L(w) + quadratic_penalty(X^T X / n, w, u, p, groups)`` for least squares."""
    X, y, u = _least_squares_inputs(X, y, u)
    x64 = X.detach().to(torch.float64)
    w64 = torch.as_tensor(w).detach().to(torch.float64)
    base = bounds.least_squares_loss(w64, x64, y.detach().to(torch.float64)).item()
    return base + quadratic_penalty(x64.T @ x64 / x64.shape[0], w64, u, p, groups)

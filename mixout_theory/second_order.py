"""Theorem 1 to second order on any loss: the mixout penalty and the curvature it sees, from exact HVPs.

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299). Equation numbers are the paper's.

The derivation follows the proof of Theorem 1 (eqs. 12-14), with the Hessian ``H`` of ``L`` at ``w``
in place of strong convexity. Taylor's theorem gives

    ``L(Phi) = L(w) + g^T (Phi - w) + 1/2 (Phi - w)^T H (Phi - w) + O(||Phi - w||^3)``

and ``E Phi = w`` (eq. 4), so the linear term has mean zero:
``E L(Phi) - L(w) ~= 1/2 sum_ij H_ij Cov(Phi_i, Phi_j)``. With ``d = w - u``, ``Phi - w = (M / mu - 1) d``.
Under mixout(u, p) the mask is one Bernoulli(1 - p) value per *group* ``g``, independent across
groups: an input neuron (column ``j`` of a weight ``(out, in, ...)``, eq. 8), an element of a 1-D
tensor, or (mixconnect, eq. 5) a single coordinate. ``Cov(M_g / mu, M_h / mu) = [g = h] p / (1 - p)``, so

    ``E L(Phi) - L(w) ~= (p / (2 (1 - p))) sum_g d_g^T H_gg d_g``      (exact when ``L`` is quadratic)

with ``d_g`` the restriction of ``d`` to group ``g``. The error is third order in ``d`` and does not
vanish in general (``E (M - mu)^3 != 0`` for a Bernoulli mask). Taylor's theorem needs ``L`` twice
differentiable between ``w`` and every ``Phi``: through ReLUs, automatic differentiation gives the
almost-everywhere Hessian, and units that a dropped neuron pushes across 0 add a further term, itself
of second order in the mask, that ``H`` does not contain (notebook 05 measures it on the paper's MLP).

Corollary 1.1 (eq. 9) replaces each ``d_g^T H_gg d_g`` by ``m ||d_g||^2``. On a network there is no
global ``m``; two numbers say where it stands:

* ``m_min`` -- the smallest eigenvalue of ``H`` restricted to the mixed coordinates
  (:func:`curvature`). ``sum_g d_g^T H_gg d_g >= m_min ||d||^2`` always, and the corollary's
  assumption needs ``m_min > 0``.
* ``m_eff = sum_g d_g^T H_gg d_g / ||d||^2`` -- the curvature along the displacement
  (:attr:`SecondOrderTerms.m_eff`): the coefficient that actually multiplies ``p/(2(1-p)) ||d||^2``.

Everything is computed from Hessian-vector products ``H v = d/dt grad L(w + t v)`` (forward-mode
over reverse-mode, :func:`torch.func.jvp` of :func:`torch.func.grad`, batched with
:func:`torch.func.vmap`), so ``H`` is never formed: one product per group for the penalty, a Lanczos
run (``scipy.sparse.linalg.eigsh``) for the extreme eigenvalues.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mixout_theory.bounds import check_mixing_p
from mixout_theory.deprecation import renamed_keywords, renamed_names
from mixout_theory.entries import paired_entries, rebuild_entries, resolve_mixed
from mixout_theory.masks import LEVELS, check_level
from mixout_theory.penalty import neuron_groups

__all__ = [
    "LEVELS",
    "MixedHessian",
    "SecondOrderTerms",
    "second_order_terms",
    "second_order_penalty",
    "Curvature",
    "curvature",
]

__getattr__ = renamed_names(__name__, globals(), GROUPS="LEVELS")  # the old name of LEVELS
#: Hessian-vector products per batched call unless told otherwise.
HVP_CHUNK = 8


def _check_chunk(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got chunk_size={chunk_size!r}")
    return int(chunk_size)


class MixedHessian:
    """The Hessian ``H`` of ``loss_fn`` at ``params`` on the mixed coordinates, as an operator (Theorem 1).

    The mixed coordinates are flattened entry by entry (row-major) into one vector of length :attr:`n`
    (:meth:`flatten` maps any collection of ``params``' structure to it; :meth:`params_at` back).
    :meth:`matvec` computes ``H v`` exactly (``jvp`` of ``grad``, vectorised with ``vmap`` in chunks;
    a loss ``torch.func`` cannot transform falls back, with a warning, to double backward);
    :attr:`n_hvp` counts the products. ``H`` is never formed (:meth:`dense` forms it, for small ``n``).

    Args:
        loss_fn (callable): maps ``params``' structure to a scalar tensor.
        params (Tensor or collection): the point (a tensor, a mapping such as a ``state_dict``, a list).
        mixed (optional): the mixed coordinates (:func:`~mixout_theory.entries.resolve_mixed`); the
            others stay fixed at ``params``.
        chunk_size (int): Hessian-vector products per batched call.

    Shape:
        :meth:`matvec` takes ``(n,)`` or ``(B, n)`` and returns the same shape.

    Example:
        >>> H = MixedHessian(lambda w: (w**2).sum() + w.prod(), torch.zeros(2))
        >>> H.n, H.matvec(torch.tensor([1.0, 0.0]))
        (2, tensor([2., 1.]))
    """

    def __init__(self, loss_fn: Callable, params, mixed=None, chunk_size: int = HVP_CHUNK):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.chunk_size = _check_chunk(chunk_size)
        self.entries = paired_entries(params, None)
        for name, wt, _ in self.entries:
            if not wt.dtype.is_floating_point:
                raise TypeError(f"entry {name!r} of params must be floating point, got dtype {wt.dtype}")
        self.structure = params
        self.index = []  # per entry: None (whole entry mixed), False (not mixed) or the flat positions mixed
        for (_, wt, _), sel in zip(self.entries, resolve_mixed(self.entries, mixed), strict=True):
            if sel is True or sel is False:
                self.index.append(None if sel else False)
            else:
                self.index.append(sel.expand(wt.shape).reshape(-1).nonzero().flatten())
        self.point = self.flatten([wt for _, wt, _ in self.entries]).detach()
        self.n = self.point.numel()
        sizes = [
            0 if i is False else (wt.numel() if i is None else i.numel())
            for (_, wt, _), i in zip(self.entries, self.index, strict=True)
        ]
        #: which entry each mixed coordinate belongs to
        self.coordinate_entry = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        if self.n == 0:
            raise ValueError("no coordinate is mixed: mixed selects nothing in params")
        self.loss_fn = loss_fn
        self.value = self._loss(self.point).detach()
        if not torch.isfinite(self.value):
            raise ValueError(f"loss_fn is not finite at params (L = {self.value.item()})")
        self._grad = torch.func.grad(self._loss)
        self._mode = "func"
        self.n_hvp = 0

    def flatten(self, values) -> torch.Tensor:
        """The mixed coordinates of ``values`` (``params``' structure, or a tensor per entry), one vector."""
        if not isinstance(values, list):
            values = [v for _, _, v in paired_entries(self.structure, values)]
        parts = []
        for (_, wt, _), v, idx in zip(self.entries, values, self.index, strict=False):
            v = torch.as_tensor(v).to(wt.device, wt.dtype).reshape(-1)
            if idx is None:
                parts.append(v)
            elif idx is not False:
                parts.append(v[idx])
        return torch.cat(parts) if parts else torch.zeros(0, dtype=self.entries[0][1].dtype)

    def params_at(self, z: torch.Tensor):
        """``params`` with the mixed coordinates replaced by the vector ``z`` (differentiable in ``z``)."""
        out, start = [], 0
        for (_, wt, _), idx in zip(self.entries, self.index, strict=True):
            base = wt.detach()
            if idx is False:
                out.append(base)
                continue
            size = base.numel() if idx is None else idx.numel()
            piece = z[start : start + size]
            start += size
            out.append(
                piece.reshape(base.shape)
                if idx is None
                else base.reshape(-1).scatter(0, idx, piece).reshape(base.shape)
            )
        return rebuild_entries(self.structure, out)

    def _loss(self, z: torch.Tensor) -> torch.Tensor:
        value = self.loss_fn(self.params_at(z))
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"loss_fn must return a scalar tensor, got {got}")
        return value.reshape(())

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for one vector ``(n,)`` or each row of a batch ``(B, n)``."""
        v = torch.as_tensor(v, dtype=self.point.dtype, device=self.point.device)
        single = v.dim() == 1
        V = v.unsqueeze(0) if single else v
        if V.dim() != 2 or V.shape[1] != self.n:
            raise ValueError(f"v must have shape ({self.n},) or (B, {self.n}), got {tuple(v.shape)}")
        self.n_hvp += V.shape[0]
        if self._mode == "func":
            try:
                with (
                    warnings.catch_warnings()
                ):  # torch.func's first call scripts a helper: torch's own notice
                    warnings.filterwarnings(
                        "ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning
                    )
                    hv = torch.func.vmap(self._hvp_func, chunk_size=self.chunk_size)(V)
                return hv[0] if single else hv
            except Exception as exc:  # noqa: BLE001 - e.g. a custom autograd.Function without vmap / jvp rules
                warnings.warn(
                    f"torch.func could not transform loss_fn ({type(exc).__name__}: {exc}); "
                    "using double backward, one vector at a time",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._mode = "autograd"
        hv = self._hvp_autograd(V)
        return hv[0] if single else hv

    def _hvp_func(self, v: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(self._grad, (self.point,), (v,))[1]

    def _hvp_autograd(self, V: torch.Tensor) -> torch.Tensor:
        """``H v`` for every row of ``V`` by double backward: one graph of the gradient, one pass per row."""
        with torch.enable_grad():
            z = self.point.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self._loss(z), z, create_graph=True)
            rows = [torch.autograd.grad(g, z, v, retain_graph=True, allow_unused=True)[0] for v in V]
        return torch.stack(
            [torch.zeros_like(v) if hv is None else hv.detach() for v, hv in zip(V, rows, strict=True)]
        )

    def gradient(self) -> torch.Tensor:
        """``grad L`` at ``params`` in the mixed coordinates."""
        return self._grad(self.point).detach()

    def quadratic_forms(self, V: torch.Tensor) -> torch.Tensor:
        """``v^T H v`` for every row ``v`` of ``V`` (float64), ``chunk_size`` products per batched call."""
        out = [(rows.double() * self.matvec(rows).double()).sum(1) for rows in V.split(self.chunk_size)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def dense(self) -> torch.Tensor:
        """The whole ``n x n`` matrix, one product per column (for small ``n`` only: checks, tests)."""
        eye = torch.eye(self.n, dtype=self.point.dtype, device=self.point.device)
        H = torch.cat([self.matvec(rows) for rows in eye.split(self.chunk_size)])
        return 0.5 * (H + H.T)


# --------------------------------------------------------------------------------------------
# the second-order penalty


@renamed_keywords(groups="level")
@dataclass(frozen=True)
class SecondOrderTerms:
    """``sum_g d_g^T H_gg d_g`` at ``w``, ``d = w - u``: the 2nd-order penalty (Theorem 1's proof), ``m_eff``.

    :meth:`penalty` is ``(p / (2 (1 - p))) quad`` and :attr:`m_eff` ``= quad / dist2`` the curvature
    along ``d``, the modulus that makes eq. 9 the second-order value. Built by :func:`second_order_terms`.

    Args:
        quad (float): the sum over groups (float64).
        dist2 (float): ``||d||^2`` over the mixed coordinates.
        n_groups (int): groups with ``d_g != 0`` (one Hessian-vector product each).
        level (str): the mask level, ``"neuron"`` or ``"parameter"``. Formerly ``groups``.
        loss (float): ``L(w)``.
        by_entry (dict): each entry's share of ``quad``.

    Example:
        >>> terms = SecondOrderTerms(quad=3.0, dist2=2.0, n_groups=2, level="neuron", loss=0.0)
        >>> terms.m_eff, terms.penalty(0.5)
        (1.5, 1.5)
    """

    quad: float
    dist2: float
    n_groups: int
    level: str
    loss: float
    by_entry: dict = field(default_factory=dict)

    @property
    def m_eff(self) -> float:
        """``m_eff = sum_g d_g^T H_gg d_g / ||d||^2``: the modulus that makes eq. 9 the second-order value."""
        if self.dist2 == 0.0:
            raise ValueError("w equals u on the mixed coordinates: m_eff = 0/0 is undefined there")
        return self.quad / self.dist2

    def penalty(self, p: float) -> float:
        """``(p / (2 (1 - p))) sum_g d_g^T H_gg d_g``: 2nd-order ``E L(Phi(w)) - L(w)`` of mixout(u, p)."""
        p = check_mixing_p(p)
        return p / (2.0 * (1.0 - p)) * self.quad


def _coordinate_groups(op: MixedHessian, level: str) -> torch.Tensor:
    """Group id of every mixed coordinate (flattened as :meth:`MixedHessian.flatten` does)."""
    if level == "parameter":
        return torch.arange(op.n)
    ids, offset = [], 0
    for (_, wt, _), idx in zip(op.entries, op.index, strict=True):
        if idx is False:
            continue
        g = neuron_groups(wt.shape)  # column j of (out, in, ...); each element of a 1-D tensor
        ids.append((g if idx is None else g[idx.cpu()]) + offset)
        offset += int(g.max()) + 1 if g.numel() else 0
    return torch.cat(ids)


@renamed_keywords(groups="level")
def second_order_terms(
    loss_fn: Callable, params, target, mixed=None, level: str = "neuron", *, chunk_size: int = HVP_CHUNK
) -> SecondOrderTerms:
    """``sum_g d_g^T H_gg d_g``, ``d = params - target``, ``H`` the Hessian of ``loss_fn`` (Theorem 1 proof).

    Each group with ``d_g != 0`` costs one Hessian-vector product ``H d_g`` (``d_g^T H_gg d_g =
    d_g^T H d_g`` since ``d_g`` vanishes outside ``g``), ``chunk_size`` of them per vectorised call.

    Args:
        loss_fn (callable): maps ``params``' structure to a scalar tensor.
        params (Tensor or collection): the point ``w``.
        target (same structure, optional): ``u`` (``None``: the origin).
        mixed (optional): the mixed coordinates (:func:`~mixout_theory.entries.resolve_mixed`).
        level (str): ``"neuron"``: one group per input neuron of each mixed weight (column ``j`` of
            ``(out, in, ...)``, every element of a 1-D tensor; eq. 8); ``"parameter"``: one per
            coordinate (eq. 5), i.e. ``sum_i H_ii d_i^2``. Formerly ``groups``.
        chunk_size (int): Hessian-vector products per batched call.

    Returns:
        SecondOrderTerms: the sum, ``||d||^2``, the group count, each entry's share and ``L(w)``.

    Example:
        >>> loss = lambda W: 0.5 * (W.sum(0) ** 2).sum()  # couples the rows of each column
        >>> w = torch.ones(2, 3)
        >>> second_order_terms(loss, w, None).quad, second_order_terms(loss, w, None, level="parameter").quad
        (12.0, 6.0)
    """
    level = check_level(level)
    entries = paired_entries(params, target)  # names mismatched keys / shapes
    op = MixedHessian(loss_fn, params, mixed, chunk_size)
    d = (op.point - op.flatten([ut for _, _, ut in entries])).double().cpu()  # group bookkeeping on the CPU
    ids = torch.unique(_coordinate_groups(op, level), return_inverse=True)[1]  # groups numbered 0..G-1
    norms = torch.zeros(int(ids.max()) + 1, dtype=torch.float64).index_add_(0, ids, d * d)  # ||d_g||^2
    live = (norms != 0).nonzero().flatten()  # d_g = 0 adds nothing: no product (a NaN d_g is kept: NaN)
    row_of = torch.full_like(norms, -1, dtype=torch.long)
    row_of[live] = torch.arange(live.numel())
    quad = torch.zeros_like(norms)
    for start in range(0, live.numel(), op.chunk_size):
        rows = live[start : start + op.chunk_size]
        cols = torch.isin(ids, rows).nonzero().flatten()
        V = torch.zeros(rows.numel(), op.n, dtype=op.point.dtype)
        V[row_of[ids[cols]] - start, cols] = d[cols].to(
            op.point.dtype
        )  # row r: d restricted to group rows[r]
        quad[rows] = op.quadratic_forms(V.to(op.point.device)).cpu()  # d_g^T H d_g
    # each group lies in one entry: its entry is that of any of its coordinates
    group_entry = torch.zeros(norms.numel(), dtype=torch.long).scatter_(0, ids, op.coordinate_entry)
    by_entry = {
        op.entries[e][0]: float(quad[group_entry == e].sum()) for e in op.coordinate_entry.unique().tolist()
    }
    return SecondOrderTerms(
        quad=float(quad.sum()),
        dist2=float(norms.sum()),
        n_groups=int(live.numel()),
        level=level,
        loss=float(op.value),
        by_entry=by_entry,
    )


@renamed_keywords(groups="level")
def second_order_penalty(
    loss_fn: Callable,
    params,
    target,
    p: float,
    mixed=None,
    level: str = "neuron",
    *,
    chunk_size: int = HVP_CHUNK,
) -> float:
    """The second-order mixout penalty ``(p / (2 (1 - p))) sum_g d_g^T H_gg d_g`` (Theorem 1's proof).

    Exact for a quadratic loss (then it equals :func:`quadratic_penalty` with the same groups); on any
    smooth loss it is ``E L(Phi(w)) - L(w)`` up to third-order terms in ``d``.

    Args:
        loss_fn (callable): maps ``params``' structure to a scalar tensor.
        params (Tensor or collection): the point ``w``.
        target (same structure, optional): ``u`` (``None``: the origin).
        p (float): the mixing probability, in ``[0, 1)``.
        mixed (optional): the mixed coordinates (:func:`~mixout_theory.entries.resolve_mixed`).
        level (str): ``"neuron"`` (eq. 8) or ``"parameter"`` (eq. 5), as in :func:`second_order_terms`.
            Formerly ``groups``.
        chunk_size (int): Hessian-vector products per batched call.

    Returns:
        float: the penalty.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> second_order_penalty(lambda w: 0.5 * w @ A @ w, torch.ones(2), None, 0.5)
        2.0
    """
    p = check_mixing_p(p)
    return second_order_terms(loss_fn, params, target, mixed, level, chunk_size=chunk_size).penalty(p)


# --------------------------------------------------------------------------------------------
# extreme eigenvalues


@dataclass(frozen=True)
class Curvature:
    """Extreme eigenvalues of ``H`` on the mixed coordinates: ``m_min`` (eq. 9's ``m`` if > 0) and ``m_max``.

    Built by :func:`curvature`; :attr:`convex` says whether ``m_min > 0``.

    Args:
        m_min (float): the smallest eigenvalue.
        m_max (float): the largest eigenvalue.
        n (int): the number of mixed coordinates.
        method (str): ``"lanczos"`` or ``"dense"``.
        n_hvp (int): Hessian-vector products spent.

    Example:
        >>> Curvature(m_min=0.5, m_max=3.0, n=4, method="dense", n_hvp=4).convex
        True
    """

    m_min: float
    m_max: float
    n: int
    method: str
    n_hvp: int

    @property
    def convex(self) -> bool:
        """Whether the loss is strongly convex in the mixed coordinates at this point (``m_min > 0``)."""
        return self.m_min > 0.0


def curvature(
    loss_fn: Callable,
    params,
    mixed=None,
    *,
    method: str = "auto",
    tol: float = 1e-8,
    maxiter: int | None = None,
    seed: int = 0,
    chunk_size: int = HVP_CHUNK,
) -> Curvature:
    """``m_min``, ``m_max``: extreme eigenvalues of the Hessian on the mixed coordinates (eq. 9's ``m``).

    ``method="lanczos"``: implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``) on a
    ``LinearOperator`` whose products are :meth:`MixedHessian.matvec`, once for the largest and once
    for the smallest algebraic eigenvalue, so ``H`` is never formed. ``method="dense"``:
    ``torch.linalg.eigvalsh`` of the formed matrix (``n`` products). ``"auto"``: dense up to 64
    coordinates.

    Args:
        loss_fn (callable): maps ``params``' structure to a scalar tensor.
        params (Tensor or collection): the point.
        mixed (optional): the mixed coordinates (:func:`~mixout_theory.entries.resolve_mixed`).
        method (str): ``"auto"``, ``"lanczos"`` or ``"dense"``.
        tol (float): Lanczos' relative tolerance.
        maxiter (int, optional): Lanczos' iteration limit.
        seed (int): seeds Lanczos' starting vector.
        chunk_size (int): Hessian-vector products per batched call.

    Returns:
        Curvature: ``m_min``, ``m_max``, ``n``, the method and the products spent.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> c = curvature(lambda w: 0.5 * w @ A @ w, torch.zeros(2, dtype=torch.float64))
        >>> round(c.m_min, 6), round(c.m_max, 6), c.method
        (1.0, 3.0, 'dense')
    """
    if method not in ("auto", "lanczos", "dense"):
        raise ValueError(f"method must be 'auto', 'lanczos' or 'dense', got method={method!r}")
    op = MixedHessian(loss_fn, params, mixed, chunk_size)
    if method == "dense" or (method == "auto" and op.n <= 64) or op.n <= 2:
        eig = torch.linalg.eigvalsh(op.dense().double())
        return Curvature(float(eig[0]), float(eig[-1]), op.n, "dense", op.n_hvp)
    from scipy.sparse.linalg import LinearOperator, eigsh

    def mv(x):
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1)).to(op.point)
        return op.matvec(v).detach().double().cpu().numpy()

    linop = LinearOperator((op.n, op.n), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(op.n)
    ends = {}
    for which in ("LA", "SA"):
        vals = eigsh(linop, k=1, which=which, tol=tol, maxiter=maxiter, v0=v0, return_eigenvectors=False)
        ends[which] = float(vals[0])
    if not math.isfinite(ends["SA"] + ends["LA"]):
        raise ValueError("the Hessian has non-finite entries at params (check the loss for NaN / inf)")
    return Curvature(ends["SA"], ends["LA"], op.n, "lanczos", op.n_hvp)

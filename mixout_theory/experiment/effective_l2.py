"""What curvature mixout sees on the paper's MLP: the L2 coefficient it implies (eq. 9 read backwards).

Corollary 1.1 bounds the mixout penalty below by ``m p / (2 (1 - p)) ||w - u||^2``. On a network,
where no global modulus ``m`` exists, the coefficient that would make it an equality,

    ``m(w) = 2 (E L(Phi(w)) - L(w)) / ((p / (1 - p)) ||w - u||^2)``   (norm over the mixed weights),

is measured by :func:`effective_l2` with the library's Monte Carlo estimator
(:func:`mixout_theory.penalty.empirical_penalty`) and the MLP's own forward (:func:`mlp.tail`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mixout_theory import penalty
from mixout_theory.experiment import mlp

__all__ = ["EffectiveL2", "effective_l2"]


@dataclass(frozen=True)
class EffectiveL2:
    """The L2 coefficient that mixout(u, p) implies at one point ``w`` (Corollary 1.1 read backwards).

    ``penalty``: Monte Carlo ``E L(Phi(w)) - L(w)``, ``dist2 = ||w - u||^2`` over the mixed weights,
    ``m = 2 penalty / ((p / (1 - p)) dist2)`` with its 95% interval ``(m_lo, m_hi)``, and
    ``lam = m p / (1 - p) = 2 penalty / dist2``: the lambda of the ``wdecay(u, lambda)`` whose penalty
    equals mixout's at ``w``. ``loss`` is ``L(w)`` on the evaluation batch.
    """

    p: float
    loss: float
    dist2: float
    penalty: penalty.PenaltyEstimate
    m: float
    m_lo: float
    m_hi: float
    lam: float


def _tail_losses(params: dict, h1, y, w2, w3) -> torch.Tensor:
    """Mean cross-entropy for each of ``S`` samples of the mixed weights ``w2 (S, 100, 300)``,
    ``w3 (S, 10, 100)``, the rest of the network fixed (eval mode): :func:`mlp.tail` on a shared ``h1``."""
    z = mlp.tail(params, h1.expand(w2.shape[0], *h1.shape), w2, w3)  # (S, B, 10)
    return F.cross_entropy(z.transpose(1, 2), y.expand(z.shape[0], -1), reduction="none").mean(-1)


def effective_l2(
    params: dict,
    reference: dict,
    p: float,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_samples: int = 256,
    generator=0,
    batch_size: int = 64,
    control_variate: bool = True,
) -> EffectiveL2:
    """The coefficient ``2 (E L(Phi(w)) - L(w)) / ((p / (1 - p)) ||w - u||^2)`` at one network.

    ``params``: one network (unstacked); ``reference``: ``u`` (``w_pre``, or any network holding
    ``fc2.weight`` / ``fc3.weight``). ``Phi`` mixes fc2 and fc3 with neuron-level masks (eq. 8, one
    Bernoulli(1-p) value per input unit, shared by the whole batch ``x, y``), estimated with
    :func:`mixout_theory.penalty.empirical_penalty` from ``n_samples`` masks (``generator``: a seed or
    ``torch.Generator``; the same seed gives the same masks at every checkpoint). The norm is over the
    mixed weights only (Supplement B). Undefined at ``w = u`` (0 / 0): raises ``ValueError``.

    ``control_variate=True`` estimates the same expectation from ``L(Phi) - g^T (Phi - w)``, ``g`` the
    exact gradient of ``L`` at ``w``: the subtracted term has mean exactly 0 (``E Phi = w``, eq. 4), so
    the estimate stays unbiased while its first-order noise, ``O(||w - u||)`` against a penalty of
    ``O(||w - u||^2)``, is removed.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1) for an effective L2 coefficient, got p={p!r}")
    w = {k: params[k].detach() for k in mlp.MIXED}
    u = {k: reference[k].detach().to(w[k].dtype) for k in mlp.MIXED}
    dist2 = float(sum((w[k] - u[k]).double().pow(2).sum() for k in mlp.MIXED))
    if dist2 == 0.0:
        raise ValueError(
            "w equals u on the mixed weights: the effective coefficient is 0/0 there (undefined)"
        )
    with torch.no_grad():
        h1 = mlp.hidden1(params, x.to(w["fc2.weight"].dtype))  # fc1 is never mixed: computed once
    tail = lambda b: _tail_losses(params, h1, y, b["fc2.weight"], b["fc3.weight"])  # noqa: E731
    grad = {}
    if control_variate:
        leaves = {k: v.clone().requires_grad_(True) for k, v in w.items()}
        value = tail({k: v.unsqueeze(0) for k, v in leaves.items()})[0]
        grad = dict(zip(leaves, torch.autograd.grad(value, list(leaves.values())), strict=False))

    def loss(b):
        out = tail(b)
        for k, g in grad.items():  # minus the first-order term g^T (Phi - w), whose mean is exactly 0
            out = out - ((b[k] - w[k]) * g).flatten(1).sum(1)
        return out

    with torch.no_grad():
        est = penalty.empirical_penalty(
            loss, w, u, p, n_samples, level="neuron", generator=generator, batch_size=batch_size
        )
        base = float(tail({k: v.unsqueeze(0) for k, v in w.items()})[0])
    scale = 2.0 / (p / (1.0 - p) * dist2)
    m, m_lo, m_hi = scale * est.mean, scale * est.lo, scale * est.hi
    return EffectiveL2(float(p), base, dist2, est, m, m_lo, m_hi, lam=2.0 * est.mean / dist2)

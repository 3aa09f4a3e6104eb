"""The mixout penalty of the paper's MLP split into its parts: second order, smooth higher order, kinks.

With ``v = Phi - w`` (eq. 4; ``E v = 0``), mask by mask,

    ``L(Phi) - L(w) = g^T v + (1/2) v^T H v + [L_0(Phi) - L(w) - g^T v - (1/2) v^T H v]
    + [L(Phi) - L_0(Phi)]``

``L_0`` is the same network with the ReLU after ``fc2`` *frozen* at its pattern at ``w``: each unit's
``ReLU(z)`` replaced by ``z 1[z_w > 0]`` (example by example), so only the values the units pass change.
``L_0`` has no kink, and its gradient ``g`` and Hessian ``H`` at ``w`` are the network's (the ReLU is
linear around ``z_w != 0``). Averaged over the masks, the four terms are ``0``, the exact second-order
value (Theorem 1), the *smooth* higher-order part (LayerNorm and softmax beyond second order) and the
*kink* part (units a mask pushes across 0, which no derivative at ``w`` sees). All four are computed on
the same masks, so each part has its own, paired, 95% interval; ``mc = second order + smooth + kink``
and ``mc_frozen = second order + smooth``.

``g^T v`` and ``v^T H v`` are the first two derivatives of ``s -> L_0(w + s v)`` at 0, in closed form
from the Taylor coefficients of LayerNorm and of the logits along the line (:func:`_along`), at the
cost of a few elementwise passes; the masks come from :func:`mixout_theory.penalty.penalty_samples`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mixout_theory import penalty
from mixout_theory.experiment import mlp

__all__ = ["LAYERS", "PenaltyParts", "parts_loss", "penalty_parts", "estimates"]

#: which weights each layer split mixes (independent masks for ``both``)
LAYERS = {"fc2": ("fc2.weight",), "fc3": ("fc3.weight",), "both": mlp.MIXED}
#: the columns of :func:`parts_loss`: the penalty, the frozen network's, the smooth remainder, flips
COLUMNS = ("mc", "mc_frozen", "smooth", "flips")


@dataclass(frozen=True)
class PenaltyParts:
    """The parts of the penalty at one point, each a :class:`~mixout_theory.penalty.PenaltyEstimate`.

    ``mc``: ``E L(Phi) - L(w)``; ``mc_frozen``: the same with the ReLU pattern frozen at ``w``;
    ``kink``: ``mc - mc_frozen``; ``quadratic``: the Monte Carlo mean of ``(1/2) v^T H v``, whose exact
    mean is the second-order value; ``smooth``: ``mc_frozen - quadratic``, mask by mask, an unbiased
    estimate of ``E L_0(Phi) - L(w) - second order``; ``beyond = smooth + kink``, everything beyond second
    order, so that ``second order + beyond`` estimates the penalty without the quadratic's Monte Carlo
    noise. ``flips``: the mean fraction of (example, unit) pairs of the second hidden layer whose on/off
    differs from ``w``'s.
    """

    mc: penalty.PenaltyEstimate
    mc_frozen: penalty.PenaltyEstimate
    kink: penalty.PenaltyEstimate
    smooth: penalty.PenaltyEstimate
    quadratic: penalty.PenaltyEstimate
    beyond: penalty.PenaltyEstimate
    flips: float


def _along(params: dict, a0, a1, w3, v3, y):
    """``(d/ds, d^2/ds^2)`` at ``s = 0`` of the mean cross-entropy of ``head(a0 + s a1, w3 + s v3)``.

    LayerNorm of ``c(s) = c0 + s c1`` (centred) is ``c(s) / sigma(s)``, ``sigma^2 = sigma0^2 + 2 s alpha
    + s^2 beta``; to second order ``1 / sigma = (1 + r1 s + r2 s^2) / sigma0`` with ``r1 = -alpha /
    sigma0^2``, ``r2 = -beta / (2 sigma0^2) + (3/2) alpha^2 / sigma0^4``. The logits ``o0 + s o1 + s^2 o2``
    then give ``l' = (pi - e_y) . o1`` and ``l'' = o1^T (diag pi - pi pi^T) o1 + 2 (pi - e_y) . o2``.
    Shapes: ``a0 (B, n)``, ``a1 (S, B, n)``, ``v3 (S, 10, n)``; returns two ``(S,)`` tensors.
    """
    c0 = a0 - a0.mean(-1, keepdim=True)
    c1 = a1 - a1.mean(-1, keepdim=True)
    var0 = c0.pow(2).mean(-1, keepdim=True) + mlp.LN_EPS
    alpha, beta = (c0 * c1).mean(-1, keepdim=True), c1.pow(2).mean(-1, keepdim=True)
    r1 = -alpha / var0
    r2 = -beta / (2 * var0) + 1.5 * alpha.pow(2) / var0.pow(2)
    gain, sigma0 = params["ln2.weight"], var0.sqrt()
    h0 = c0 / sigma0 * gain + params["ln2.bias"]
    h1 = (c1 + r1 * c0) / sigma0 * gain
    h2 = (r1 * c1 + r2 * c0) / sigma0 * gain
    o0 = h0 @ w3.T + params["fc3.bias"]
    o1 = h1 @ w3.T + torch.matmul(h0, v3.transpose(-1, -2))
    o2 = h2 @ w3.T + torch.matmul(h1, v3.transpose(-1, -2))
    pi = o0.softmax(-1)
    resid = pi - F.one_hot(y, pi.shape[-1]).to(pi.dtype)
    first = (resid * o1).sum(-1)
    second = (pi * o1.pow(2)).sum(-1) - (pi * o1).sum(-1).pow(2) + 2 * (resid * o2).sum(-1)
    return first.mean(-1), second.mean(-1)


def parts_loss(params: dict, x: torch.Tensor, y: torch.Tensor, mixed=mlp.MIXED):
    """``(loss_fn, w)``: a batched loss of the mixed weights returning the four :data:`COLUMNS` per sample
    (``L - g^T v``, ``L_0 - g^T v``, ``L_0 - g^T v - (1/2) v^T H v``, flipped fraction) for
    :func:`mixout_theory.penalty.penalty_samples`, and ``w`` (float64). ``mixed``: the weights the masks
    act on (the others stay at ``w``, and ``fc2``'s product is skipped when it is not mixed)."""
    net = {k: v.detach().double() for k, v in params.items()}
    y = y.to(net["fc3.weight"].device)
    with torch.no_grad():
        h1 = mlp.hidden1(net, x.double())
        z_w = mlp.pre2(net, h1.unsqueeze(0), net["fc2.weight"].unsqueeze(0))[0]  # as the samples compute it
    on = z_w > 0
    a0, w3 = z_w * on, net["fc3.weight"]

    def losses(b):
        v2, v3 = b["fc2.weight"] - net["fc2.weight"], b["fc3.weight"] - w3
        if "fc2.weight" in mixed:
            z = z_w + torch.bmm(h1.expand(v2.shape[0], *h1.shape), v2.transpose(1, 2))
        else:
            z = z_w.expand(v2.shape[0], *z_w.shape)
        first, second = _along(net, a0, (z - z_w) * on, w3, v3, y)
        out = [mlp.head(net, F.relu(z), b["fc3.weight"]), mlp.head(net, z * on, b["fc3.weight"])]
        real, frozen = (
            F.cross_entropy(o.transpose(1, 2), y.expand(o.shape[0], -1), reduction="none").mean(-1) - first
            for o in out
        )
        flips = ((z > 0) != on).double().mean((1, 2))
        return torch.stack([real, frozen, frozen - second / 2, flips], 1)

    return losses, {k: net[k] for k in mlp.MIXED}


def penalty_parts(
    params: dict,
    reference: dict,
    p: float,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    layer: str = "both",
    n_samples: int = 256,
    seed: int = 0,
    batch_size: int = 64,
) -> PenaltyParts:
    """The parts of ``E L(Phi(w)) - L(w)`` at ``w = params`` for mixout(``u = reference``, p) on the
    weights of ``layer`` (:data:`LAYERS`), from ``n_samples`` neuron-level masks (eq. 8) seeded with
    ``seed`` (the same seed: the same masks). ``L``: the mean cross-entropy (float64) over ``x, y``."""
    loss_fn, w = parts_loss(params, x, y, LAYERS[layer])
    u = {k: reference[k].detach().double() for k in mlp.MIXED}
    d = penalty.penalty_samples(
        loss_fn, w, u, p, n_samples, generator=seed, batch_size=batch_size, mixed=list(LAYERS[layer])
    )
    return estimates(d)


def estimates(d: torch.Tensor) -> PenaltyParts:
    """:class:`PenaltyParts` from the ``(n, 4)`` samples of :func:`parts_loss`'s columns."""
    est = penalty.PenaltyEstimate.of
    mc, frozen, smooth, flips = d.unbind(1)
    kink = mc - frozen
    return PenaltyParts(
        est(mc),
        est(frozen),
        est(kink),
        est(smooth),
        est(frozen - smooth),
        est(kink + smooth),
        flips.mean().item(),
    )

"""How far the source task's framing is from the target's, in numbers: :func:`shift_statistics`
(bounding boxes and centres of mass of the ink, and a linear probe that tells the two framings apart
on held-out digits, with a same-framing control)."""

from __future__ import annotations

import torch

from mixout_theory.experiment.data import ExperimentData
from mixout_theory.experiment.standin import bounding_boxes

STAT_THRESHOLD = 128  # a pixel is "ink" for the framing statistics when >= half intensity


def framing_statistics(images: torch.Tensor, threshold: int = STAT_THRESHOLD) -> dict[str, float]:
    """How digits sit in their frame: bounding box of the ink and spread of the centre of mass.

    ``images``: (N, 28, 28) in [0, 1] (or uint8). Ink = pixel >= threshold/255. Returns means of
    bounding-box height, width, longer side and area fraction; the mean distance of the
    intensity-weighted centre of mass from the canvas centre (13.5, 13.5); its spread
    ``sqrt(var_row + var_col)`` over images; and the mean pixel value.
    """
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    u8 = (x * 255).round()
    r0, r1, c0, c1 = bounding_boxes(u8, threshold - 0.5)
    h = (r1 - r0 + 1).clamp(min=0).float()
    w = (c1 - c0 + 1).clamp(min=0).float()
    ar = torch.arange(x.shape[-1], dtype=torch.float32)
    tot = x.sum(dim=(1, 2)).clamp(min=1e-12)
    cy = (x.sum(dim=2) * ar).sum(dim=1) / tot
    cx = (x.sum(dim=1) * ar).sum(dim=1) / tot
    centre = (x.shape[-1] - 1) / 2
    return {
        "bbox_height": float(h.mean()),
        "bbox_width": float(w.mean()),
        "bbox_side": float(torch.maximum(h, w).mean()),
        "bbox_area_fraction": float((h * w).mean() / x.shape[-1] ** 2),
        "com_offset": float(torch.sqrt((cy - centre) ** 2 + (cx - centre) ** 2).mean()),
        "com_spread": float(torch.sqrt(cy.var() + cx.var())),
        "mean_pixel": float(x.mean()),
    }


def _linear_probe(xa_tr, xb_tr, xa_te, xb_te, l2: float = 1.0, steps: int = 15) -> float:
    """Test accuracy of L2-regularised logistic regression telling framing A from B on standardised 2x2-pooled
    pixels (196 features), fitted by Newton's method in float64 (at most ``steps`` steps; about ten)."""

    def feats(a, b):
        x = torch.cat([a, b]).reshape(-1, 14, 2, 14, 2).double().mean(dim=(2, 4)).reshape(-1, 196)
        return x, torch.cat([torch.ones(len(a)), torch.zeros(len(b))]).double()

    (x_tr, y_tr), (x_te, y_te) = feats(xa_tr, xb_tr), feats(xa_te, xb_te)
    mu, sd = x_tr.mean(0), x_tr.std(0).clamp(min=1e-3)
    x_tr = torch.cat([(x_tr - mu) / sd, torch.ones(len(x_tr), 1, dtype=torch.float64)], dim=1)
    x_te = torch.cat([(x_te - mu) / sd, torch.ones(len(x_te), 1, dtype=torch.float64)], dim=1)
    d = x_tr.shape[1]
    reg = torch.full((d,), l2, dtype=torch.float64)
    reg[-1] = 1e-9  # (almost) no penalty on the bias
    w = torch.zeros(d, dtype=torch.float64)
    for _ in range(steps):
        p = torch.sigmoid(x_tr @ w)
        grad = x_tr.T @ (p - y_tr) + reg * w
        hess = (x_tr * (p * (1 - p))[:, None]).T @ x_tr
        hess.diagonal().add_(reg)
        step = torch.linalg.solve(hess, grad)
        w -= step
        if float(step.abs().max()) < 1e-7:  # converged (Newton: quadratically)
            break
    return float(((x_te @ w > 0).double() == y_te).double().mean())


def shift_statistics(data: ExperimentData, n: int = 2000, seed: int = 0) -> dict:
    """Show the source/target shift with numbers (framing statistics and a linear probe).

    Framing statistics (:func:`framing_statistics`) on ``n`` random training images of each task; a
    linear probe trained on ``n`` source-train vs ``n`` target-train images and tested on up to ``n``
    source-val vs target-val images (other digits: it can only succeed by the framing; chance 0.5).
    The control probe sets two disjoint sets of *target* images against each other (same framing), so
    it should stay near 0.5: the probe finds the framing, not chance structure.
    """
    if not isinstance(n, int) or n < 10:
        raise ValueError(f"n must be an int >= 10, got {n!r}")
    g = torch.Generator().manual_seed(seed)

    def sample(task, split, k):
        x = data.task(task)[split].x
        return data._pixels(task, x[torch.randperm(x.shape[0], generator=g)[:k]])

    src_tr, tgt_tr = sample("source", "train", n), sample("target", "train", 2 * n)
    src_te, tgt_te = sample("source", "val", n), sample("target", "val", n)
    tgt_tr, ctl_tr = tgt_tr[:n], tgt_tr[n:]
    k = min(len(src_te), len(tgt_te))
    src_te, tgt_te = src_te[:k], tgt_te[:k]
    ctl_te = sample("target", "test", k)
    return {
        "source_name": data.source_name,
        "source": framing_statistics(src_tr),
        "target": framing_statistics(tgt_tr),
        "probe_accuracy": _linear_probe(src_tr, tgt_tr, src_te, tgt_te),
        "probe_control_accuracy": _linear_probe(ctl_tr, tgt_tr, ctl_te, tgt_te),
        "probe_train": len(src_tr) + len(tgt_tr),
        "probe_test": 2 * k,
        "chance": 0.5,
    }

"""The stand-in source task: MNIST digits re-framed the way EMNIST frames them (Cohen et al., 2017).

Without EMNIST Digits, the experiment (:mod:`mixout_theory.experiment.data`) pretrains on MNIST
training half A rendered by :func:`render_emnist_style` and finetunes on the disjoint, plain half B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: How the stand-in frames a digit, after EMNIST's conversion (Cohen et al., 2017): crop to the
#: bounding box of the ink, scale (aspect kept) so the longer side fills a 24-pixel box, centre the
#: box in 28x28, mild Gaussian blur, rescale the peak to 255.
RENDER = {
    "canvas": 28,
    "box": 24,
    "crop_threshold": 0,
    "interpolation": "bilinear",
    "blur_sigma": 0.7,
    "blur_radius": 3,
    "peak": 255,
}


def bounding_boxes(images: torch.Tensor, threshold: int) -> tuple[torch.Tensor, ...]:
    """Inclusive bounding box (r0, r1, c0, c1) of pixels > threshold; empty images give r1 < r0."""
    ink, n = images > threshold, images.shape[-1]
    ar = torch.arange(n)
    rows, cols = ink.any(dim=2), ink.any(dim=1)
    r0 = torch.where(rows, ar, n).amin(dim=1)
    r1 = torch.where(rows, ar, -1).amax(dim=1)
    c0 = torch.where(cols, ar, n).amin(dim=1)
    c1 = torch.where(cols, ar, -1).amax(dim=1)
    return r0, r1, c0, c1


def _blur_matrix(n: int, sigma: float, radius: int) -> torch.Tensor:
    """Banded n x n matrix B with ``B @ img @ B.T`` = Gaussian blur with zero padding."""
    k = torch.arange(-radius, radius + 1, dtype=torch.float32)
    w = torch.exp(-(k**2) / (2 * sigma**2))
    w = w / w.sum()
    d = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    mat = torch.zeros(n, n)
    band = d.abs() <= radius
    mat[band] = w[(d[band] + radius)]
    return mat


def render_emnist_style(images: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Re-frame uint8 digits (N, 28, 28) the way EMNIST does: crop, fit a 24x24 box, centre, blur.

    Per image: bounding box of the ink (pixels > ``RENDER['crop_threshold']``); scale factor
    ``s = 24 / max(h, w)`` (aspect ratio kept); box centre to canvas centre (one bilinear
    ``affine_grid``/``grid_sample`` per chunk); separable Gaussian blur (sigma ``RENDER['blur_sigma']``)
    as two batched matrix products; peak rescaled to 255; rounded. Empty images stay empty.
    """
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise TypeError(
            f"images must be uint8 of shape (N, 28, 28), got {images.dtype} {tuple(images.shape)}"
        )
    canvas, box = RENDER["canvas"], RENDER["box"]
    half = canvas / 2
    blur = _blur_matrix(canvas, RENDER["blur_sigma"], RENDER["blur_radius"])
    out = torch.empty_like(images)
    for lo in range(0, images.shape[0], chunk):
        img = images[lo : lo + chunk]
        m = img.shape[0]
        r0, r1, c0, c1 = bounding_boxes(img, RENDER["crop_threshold"])
        empty = r1 < r0
        h = (r1 - r0 + 1).clamp(min=1).float()
        w = (c1 - c0 + 1).clamp(min=1).float()
        s = torch.where(empty, torch.ones(m), box / torch.maximum(h, w))
        cy = torch.where(empty, torch.full((m,), half), (r0 + r1 + 1).float() / 2)
        cx = torch.where(empty, torch.full((m,), half), (c0 + c1 + 1).float() / 2)
        # output normalised coordinate u -> input (cx/half - 1) + u/s   (align_corners=False)
        theta = torch.zeros(m, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
        theta[:, 0, 2], theta[:, 1, 2] = cx / half - 1, cy / half - 1
        grid = F.affine_grid(theta, [m, 1, canvas, canvas], align_corners=False)
        x = img[:, None].float() / 255
        x = F.grid_sample(x, grid, mode=RENDER["interpolation"], padding_mode="zeros", align_corners=False)
        x = blur @ x[:, 0] @ blur.T
        peak = x.amax(dim=(1, 2), keepdim=True)
        x = torch.where(peak > 0, x / peak.clamp(min=1e-12), x)
        out[lo : lo + m] = (x * RENDER["peak"]).round_().clamp_(0, 255).to(torch.uint8)
    return out

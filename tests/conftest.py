"""Shared test helpers, as fixtures (pytest finds them here for every test under tests/).

* ``gen`` -- ``gen(seed, device="cpu")``: a fresh ``torch.Generator`` seeded with ``seed``. Two calls
  with the same seed give generators that draw the same masks, which is how the tests compare an
  operator with its reference computation.
* ``blob_task`` -- ``blob_task(n=48, seed=0)``: a seeded 10-class task of 784-pixel inputs (one
  Gaussian mean per class, scaled 0.5, plus unit noise), ``(x float32 (n, 784), y int64 (n,))``,
  for the ablation and curvature tests.

Figures are drawn with the non-interactive Agg backend (the library builds ``Figure`` objects and
never touches pyplot, but a backend is still picked when matplotlib is first imported).
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


def _generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


@pytest.fixture(scope="session")
def gen():
    """``gen(seed, device="cpu")`` -> a fresh ``torch.Generator`` seeded with ``seed``."""
    return _generator


def _blob_task(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    means = torch.randn(10, 784, generator=g)
    return means[y] * 0.5 + torch.randn(n, 784, generator=g), y


@pytest.fixture(scope="session")
def blob_task():
    """``blob_task(n=48, seed=0)`` -> ``(x, y)``, a seeded synthetic 10-class task."""
    return _blob_task

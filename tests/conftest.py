"""Shared test helpers, as fixtures (pytest finds them here for every test under tests/).

* ``gen`` -- ``gen(seed, device="cpu")``: a fresh ``torch.Generator`` seeded with ``seed``. Two calls
  with the same seed give generators that draw the same masks, which is how the tests compare an
  operator with its reference computation.

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

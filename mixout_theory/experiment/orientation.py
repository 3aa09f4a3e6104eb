"""How the source task's images are oriented, relative to MNIST's (the fidelity study's first option).

EMNIST's files store every image transposed relative to MNIST; :mod:`~mixout_theory.experiment.sources`
transposes them back, so the default source is *upright*. ``torchvision.datasets.EMNIST`` returns
them as stored, so a pipeline built on it pretrains on *transposed* digits; the stand-in can be
transposed the same way. :func:`mixout_theory.experiment.sweep.experiment_tensors` applies the choice.
"""

from __future__ import annotations

import torch

__all__ = ["ORIENTATIONS", "check_orientation", "oriented_name", "transposed_images"]

#: How the source task's images are oriented: as MNIST's (upright: EMNIST transposed back, the
#: stand-in as rendered) or transposed relative to them (EMNIST as its files store it and as
#: ``torchvision.datasets.EMNIST`` returns it; the stand-in transposed the same way).
ORIENTATIONS = ("upright", "transposed")


def check_orientation(orientation) -> str:
    if orientation not in ORIENTATIONS:
        raise ValueError(
            f"orientation must be one of {', '.join(map(repr, ORIENTATIONS))}, got {orientation!r}"
        )
    return orientation


def oriented_name(source_name: str, orientation: str) -> str:
    """The source task's name, saying when its images are transposed relative to MNIST's."""
    if check_orientation(orientation) == "upright":
        return source_name
    if source_name.startswith("EMNIST"):
        return f"{source_name} as stored (transposed relative to MNIST, as torchvision delivers it)"
    return f"{source_name}, transposed (as torchvision delivers EMNIST)"


def transposed_images(x: torch.Tensor, side: int = 28) -> torch.Tensor:
    """Each flattened ``side x side`` image of ``x`` (N, side^2) transposed (H <-> W)."""
    return x.view(-1, side, side).transpose(1, 2).reshape(x.shape)

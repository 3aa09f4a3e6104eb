"""A part of a study's run list, so that several processes or machines can share one study.

Shard ``K/N`` computes the chunks (ensembles fixed by the whole list,
:func:`~mixout_theory.experiment.store.pending_chunks`) whose index is ``K - 1`` modulo ``N``: the same
ensembles as an unsharded run, so the same numbers bit for bit, and ``N`` shards compute every chunk once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Part ``k`` of ``n`` (1-based) of a study's run list: the chunks ``i`` with ``i % n == k - 1``.

    Example:
        >>> Shard.parse("2/3").owns(4), Shard.parse("2/3").owns(5)
        (True, False)
    """

    k: int = 1
    n: int = 1

    def __post_init__(self):
        if not (1 <= self.k <= self.n):
            raise ValueError(f"shard must be K/N with 1 <= K <= N, got {self.k}/{self.n}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` as a shard (a one-line error for anything else)."""
        if not re.fullmatch(r"[0-9]+/[0-9]+", str(text)):
            raise ValueError(f"shard must be K/N (e.g. 2/8), got {text!r}")
        return cls(*map(int, str(text).split("/")))

    def owns(self, index: int) -> bool:
        """Whether chunk ``index`` (0-based, in the whole run list) is this shard's."""
        return index % self.n == self.k - 1

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

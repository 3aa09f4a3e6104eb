"""What a notebook shows: results computed now, your stored ones, or those committed with the repository.

Unless recomputing is asked for (``MIXOUT_RECOMPUTE=1``, or ``recompute=True``: the study runs at the
current profile, resuming from what is stored, and is exported), each study shows the user's newest
export of the current profile under ``figures/``, else the paper-profile results committed in
``docs/results/``, read back from its tables, each checked against the sha256 in its ``meta.json``.
:func:`results` is the one loader; the :class:`Shown` it returns says which results these are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mixout_theory.experiment import report
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.store import project_dir
from mixout_theory.experiment.studies import REGISTRY, complete_export
from mixout_theory.experiment.study import Context

__all__ = ["RECOMPUTE_ENV", "COMMITTED", "Shown", "recompute_requested", "results"]

RECOMPUTE_ENV = "MIXOUT_RECOMPUTE"
#: the committed paper-profile results of each study, under ``docs/results/``
COMMITTED = {name: study.committed for name, study in REGISTRY.items()}
COMPUTED, STORED, SHIPPED = "computed now", "your stored results", "committed with the repository"


def recompute_requested() -> bool:
    """``$MIXOUT_RECOMPUTE`` is ``1`` (the notebooks' one switch; anything else shows stored results)."""
    return os.environ.get(RECOMPUTE_ENV, "0").strip() == "1"


@dataclass(frozen=True)
class Shown:
    """Which results a notebook shows: their ``origin`` (:data:`COMPUTED`, :data:`STORED` or
    :data:`SHIPPED`), the folder they were read from, their profile, source task and configuration key."""

    origin: str
    where: Path
    profile: str
    source_name: str
    config: str

    def __str__(self) -> str:
        return (
            f"showing: {self.origin}, from {self.where}\nprofile {self.profile} | "
            f"{report.task_line(self.source_name)} | config {self.config}"
        )


def results(study: str, profile: str, recompute: bool | None = None, options: RunOptions | None = None):
    """``(results, Shown)`` of ``study`` (a key of :data:`~mixout_theory.experiment.studies.REGISTRY`),
    from where the module says (``recompute``: default ``$MIXOUT_RECOMPUTE``), read back by its ``load``."""
    s = REGISTRY[study]
    if recompute_requested() if recompute is None else recompute:
        ctx = Context(profile, options=options or RunOptions(progress=False))
        result = s.run(ctx)
        where, origin = s.export_folder(ctx, result), COMPUTED
        complete_export(s, result, ctx, where)
    else:
        mine = project_dir("figures").glob(f"{s.export_name}-{profile}-*/meta.json")
        newest = max(mine, key=lambda p: p.stat().st_mtime, default=None)
        where, origin = (newest.parent, STORED) if newest is not None else (s.committed_dir(), SHIPPED)
    loaded = s.load(where)
    return loaded, Shown(origin, where, *s.shown(loaded))

"""What a notebook shows: results computed now, the user's stored ones, or those committed with the repository.

The experiment notebooks open at once. Unless recomputing is asked for (``MIXOUT_RECOMPUTE=1``, or
``recompute=True``), each study shows, in this order:

1. the user's own stored results of the current profile (the newest sweep store under ``results/``,
   the stored ablations, the Theorem 1 export under ``figures/``);
2. the paper-profile results committed in ``docs/results/`` (read back from their tables, every table
   checked against the sha256 in its ``meta.json``).

Recomputing runs the study at the current profile (resuming from what is stored). Each loader
returns its results with a :class:`Shown`, which the notebook prints first: where the results come
from, the profile, the source task and the configuration key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mixout_theory.experiment import (
    ablations,
    exports,
    fidelity,
    fidelity_report,
    plots,
    report,
    sweep,
    theorem1,
)
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.store import export_dir, find_stores, project_dir

__all__ = [
    "RECOMPUTE_ENV",
    "COMMITTED",
    "Shown",
    "recompute_requested",
    "figure2_results",
    "ablation_results",
    "theorem1_results",
    "fidelity_results",
]

RECOMPUTE_ENV = "MIXOUT_RECOMPUTE"
#: the committed paper-profile results of each study, under ``docs/results/``
COMMITTED = {
    "figure2": "figure2-paper-stand-in",
    "ablations": "ablations",
    "theorem1": "theorem1-paper-stand-in",
    "fidelity": "fidelity-paper-stand-in",
}
COMPUTED, STORED, SHIPPED = "computed now", "your stored results", "committed with the repository"


def recompute_requested() -> bool:
    """``$MIXOUT_RECOMPUTE`` is ``1`` (the notebooks' one switch; anything else shows stored results)."""
    return os.environ.get(RECOMPUTE_ENV, "0").strip() == "1"


@dataclass(frozen=True)
class Shown:
    """Which results a notebook shows: ``origin`` (computed now / your stored results / committed with
    the repository), the folder they were read from, their profile, source task and configuration key."""

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


def _committed(study: str) -> Path:
    return project_dir("docs") / "results" / COMMITTED[study]


def _exported(study: str, profile: str) -> tuple[Path, str]:
    """The user's export of ``study`` at ``profile`` under ``figures/``, else the committed one."""
    mine = sorted(project_dir("figures").glob(f"{study}-{profile}-*/meta.json"))
    return (mine[0].parent, STORED) if mine else (_committed(study), SHIPPED)


def _recompute(recompute: bool | None) -> bool:
    return recompute_requested() if recompute is None else recompute


def figure2_results(profile: str, recompute: bool | None = None, options: RunOptions | None = None):
    """``(records, Shown)`` for Figure 2: :func:`sweep.run_experiment` when recomputing, else the
    newest stored sweep of ``profile``, else the committed paper-profile runs."""
    if _recompute(recompute):
        store = sweep.run_experiment(profile, options or RunOptions(progress=False))
        records, origin, where = store.records(), COMPUTED, store.dir
    else:
        mine = [
            s
            for s in find_stores(project_dir("results"))
            if s.name.startswith(f"{profile}-") and sweep.is_figure2_store(s)
        ]
        if mine:
            records, origin, where = sweep.load_records(mine[0]), STORED, mine[0]
        else:
            where = _committed("figure2")
            records, origin = exports.load_figure2(where)[0], SHIPPED
    r = records[0]
    return records, Shown(origin, where, r["profile"], r.get("source_name") or r["source"], r["config"])


def ablation_results(profile: str, recompute: bool | None = None, options: RunOptions | None = None):
    """``(AblationResults, Shown)``: :func:`ablations.run_ablations` when recomputing, else the stored
    studies of ``profile``, else the committed paper-profile export (:func:`exports.load_ablations`)."""
    if _recompute(recompute):
        res = ablations.run_ablations(profile, options=options or RunOptions(progress=False))
        origin, where = COMPUTED, project_dir("results") / "ablations"
    else:
        mine = [r for r in ablations.load_ablations() if r.config.profile == profile]
        if mine:
            res, origin, where = mine[0], STORED, project_dir("results") / "ablations"
        else:
            where = _committed("ablations")
            res, origin = exports.load_ablations(where), SHIPPED
    keys = ", ".join(f"{s} {res.config.key(s)}" for s in res.records)
    return res, Shown(origin, where, res.config.profile, res.source_name, keys)


def theorem1_results(profile: str, recompute: bool | None = None, options: RunOptions | None = None):
    """``(points, trajectory, meta, Shown)`` of the Theorem 1 study: run and exported into
    ``figures/theorem1-<profile>-<source>/`` when recomputing, else the user's export of ``profile``
    there, else the committed paper-profile tables (each checked against its sha256)."""
    if _recompute(recompute):
        res = theorem1.run_theorem1(profile, options or RunOptions(progress=False))
        where, origin = export_dir("theorem1", profile, res.config.source), COMPUTED
        plots.export_theorem1(res, where)
    else:
        where, origin = _exported("theorem1", profile)
    points, traj, meta = theorem1.load_tables(where)
    shown = Shown(origin, where, meta["config"]["profile"], meta["context"]["source_name"], meta["store_key"])
    return points, traj, meta, shown


def fidelity_results(profile: str, recompute: bool | None = None, options: RunOptions | None = None):
    """``(FidelityResults, Shown)`` of the fidelity study: run and exported into
    ``figures/fidelity-<profile>-<source>/`` when recomputing, else the user's export of ``profile``
    there, else the committed paper-profile export (every table checked against its sha256)."""
    if _recompute(recompute):
        res = fidelity.run_fidelity(profile, options or RunOptions(progress=False))
        where, origin = export_dir("fidelity", profile, res.runs[0]["source"]), COMPUTED
        fidelity_report.export_fidelity(res, where)
    else:
        where, origin = _exported("fidelity", profile)
        res = fidelity.load_fidelity(where)
    keys = ", ".join(v["config"] for v in res.variants.values())
    return res, Shown(origin, where, res.profile, res.source_name, keys)

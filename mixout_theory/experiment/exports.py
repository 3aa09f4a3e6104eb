"""Exported result folders, read back without their stores (what the committed ``docs/results/`` hold).

* :func:`load_figure2` -- the Figure 2 export (:func:`mixout_theory.experiment.plots.export_experiment`):
  the run records from ``runs.csv`` and ``meta.json``.
* :func:`load_ablations` -- the ablations' export (:func:`mixout_theory.experiment.plots.export_ablations`)
  as :class:`~mixout_theory.experiment.ablations.AblationResults`.

Every table is checked against the sha256 its ``meta.json`` records before it is read
(:func:`~mixout_theory.experiment.store.checked_meta`). The Theorem 1 study reads its own tables
(:func:`mixout_theory.experiment.theorem1.load_tables`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mixout_theory.experiment import ablations, sweep
from mixout_theory.experiment.store import checked_meta, read_csv

__all__ = ["load_figure2", "load_ablations", "RUN_TEXT", "ABLATION_TABLES"]

#: the columns of the sweep's ``runs.csv`` that are names or hashes, never numbers
RUN_TEXT = (
    "run_id",
    "method",
    "source",
    "profile",
    "config",
    "device",
    "mixout_theory",
    "python",
    "source_name",
    "torch",
)
#: the run tables of an ablations export, by study
ABLATION_TABLES = {
    "small_data": "small_data_runs.csv",
    "new_head": "new_head_runs.csv",
    "trajectory": "trajectory.csv",
}


def load_figure2(folder) -> tuple[list[dict], dict]:
    """``(records, meta)`` of an exported Figure 2 folder, its tables checked against ``meta.json``."""
    meta = checked_meta(
        folder, sweep.EXPORT_TABLES, "export it again from its store (python -m mixout_theory figures)"
    )
    return sweep.sorted_records(read_csv(Path(folder) / "runs.csv", text=RUN_TEXT)), meta


def load_ablations(folder) -> ablations.AblationResults:
    """The studies of an exported folder (``*_runs.csv``, ``trajectory.csv``, ``subsets.csv``,
    ``meta.json``) as :class:`AblationResults`, without the stores: every table is checked against
    the sha256 in ``meta.json``, setting labels and orders are restored from the settings, and each
    trajectory run regains its checkpoints. Exports written before ``trajectory_runs.csv`` existed
    keep only the per-p mean test accuracy of the trajectory runs (``trajectory_summary.csv``); each
    run then carries that mean, so summaries over restarts are unchanged."""
    folder = Path(folder)
    names = [
        n
        for n in (*ABLATION_TABLES.values(), "trajectory_runs.csv", "trajectory_summary.csv", "subsets.csv")
        if (folder / n).is_file()
    ]
    meta = checked_meta(folder, names, "export the studies again (python -m mixout_theory ablations)")
    settings = {
        s.name: (i, s.label)
        for group in (ablations.SMALL_DATA_SETTINGS, ablations.HEAD_SETTINGS)
        for i, s in enumerate(group)
    }
    index = torch.tensor([r["target_train_index"] for r in read_csv(folder / "subsets.csv")])
    res = ablations.AblationResults(
        ablations.config_from_dict(meta["config"]), meta["w_pre_test_acc"], meta["source_name"], index
    )
    for study in ("small_data", "new_head"):
        if (folder / ABLATION_TABLES[study]).is_file():
            rows = read_csv(folder / ABLATION_TABLES[study], text=("setting",))
            res.records[study] = [
                dict(r, study=study, order=settings[r["setting"]][0], label=settings[r["setting"]][1])
                for r in rows
            ]
    if (folder / "trajectory.csv").is_file():
        res.records["trajectory"] = _trajectory_records(folder, res.config)
    return res


def _trajectory_records(folder: Path, config: ablations.AblationConfig) -> list[dict]:
    if (folder / "trajectory_runs.csv").is_file():
        runs = read_csv(folder / "trajectory_runs.csv")
    else:
        acc = {r["p"]: r["test_acc"] for r in read_csv(folder / "trajectory_summary.csv")}
        runs = [
            {"p": p, "restart": k, "test_acc": acc[p]}
            for p in config.trajectory_ps
            for k in range(config.trajectory_restarts)
        ]
    points = read_csv(folder / "trajectory.csv")
    per_run = {"p", "restart", "size", "eval_size", "mc_samples"}
    records = []
    for run in runs:
        c = [r for r in points if (r["p"], r["restart"]) == (run["p"], run["restart"])]
        facts = {k: c[0][k] for k in per_run} | {"steps": c[-1]["step"], "epochs": c[-1]["epoch"]} | run
        records.append(dict(facts, checkpoints=[{k: v for k, v in q.items() if k not in per_run} for q in c]))
    return records

"""What each study exports (tables with their checksums, figures, reports) and how an export is read back.

Writers: :func:`export_experiment` / :func:`render_experiment` (Figure 2's runs, of records or of one
store), :func:`export_ablations`, :func:`export_theorem1` -- tables, ``meta.json`` with the sha256 of every
table, figures drawn by :mod:`~mixout_theory.experiment.plots` from those tables' numbers.

Readers, without the stores (what ``docs/results/`` holds), every table checked against its ``meta.json``
(:func:`~mixout_theory.experiment.store.checked_meta`): :func:`load_figure2` and :func:`load_ablations`
(Theorem 1 and fidelity read their own: ``theorem1.load_tables``, ``fidelity.load_fidelity``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mixout_theory.experiment import ablations, plots, report, store, sweep, theorem1
from mixout_theory.experiment.machine import machines_of, run_env
from mixout_theory.experiment.report import PER_RUN
from mixout_theory.figures import save_figure

__all__ = ["export_experiment", "render_experiment", "export_ablations", "export_theorem1"]
__all__ += ["theorem1_figures", "load_figure2", "load_ablations", "RUN_TEXT", "ABLATION_TABLES"]

#: the columns of the sweep's ``runs.csv`` that are names or hashes, never numbers
RUN_TEXT = tuple("run_id method source profile config device mixout_theory python source_name torch".split())
#: the run tables of an ablations export, by study
ABLATION_TABLES = {s: f"{s}_runs.csv" for s in ("small_data", "new_head")} | {"trajectory": "trajectory.csv"}
#: the columns of ``tables.md``'s paired differences: keys, or ``(key, header)``
PAIRED_COLUMNS = [("size", "n train"), "a", "b", ("n", "restarts"), ("mean_diff", "mean acc(a) - acc(b)")]
PAIRED_COLUMNS += [("sd_diff", "sd"), ("a_wins", "a better"), "ties", ("b_wins", "b better")]


def load_figure2(folder) -> tuple[list[dict], dict]:
    """``(records, meta)`` of an exported Figure 2 folder, its tables checked against ``meta.json``."""
    meta = store.checked_meta(
        folder, sweep.EXPORT_TABLES, "export it again from its store (python -m mixout_theory figures)"
    )
    return sweep.sorted_records(store.read_csv(Path(folder) / "runs.csv", text=RUN_TEXT)), meta


def load_ablations(folder) -> ablations.AblationResults:
    """The studies of an exported folder as :class:`AblationResults`, without the stores: every table
    checked against ``meta.json``, setting labels and orders restored, each trajectory run with its
    checkpoints. Exports older than ``trajectory_runs.csv`` keep only the per-p mean test accuracy
    (``trajectory_summary.csv``): each run carries that mean, so summaries over restarts are unchanged."""
    folder = Path(folder)
    tables = (*ABLATION_TABLES.values(), "trajectory_runs.csv", "trajectory_summary.csv", "subsets.csv")
    names = [n for n in tables if (folder / n).is_file()]
    meta = store.checked_meta(folder, names, "export the studies again (python -m mixout_theory ablations)")
    groups = (ablations.SMALL_DATA_SETTINGS, ablations.HEAD_SETTINGS)
    settings = {s.name: {"order": i, "label": s.label} for group in groups for i, s in enumerate(group)}
    index = torch.tensor([r["target_train_index"] for r in store.read_csv(folder / "subsets.csv")])
    config = ablations.config_from_dict(meta["config"])
    res = ablations.AblationResults(config, meta["w_pre_test_acc"], meta["source_name"], index)
    for study in ("small_data", "new_head"):
        if (folder / ABLATION_TABLES[study]).is_file():
            rows = store.read_csv(folder / ABLATION_TABLES[study], text=("setting",))
            res.records[study] = [dict(r, study=study, **settings[r["setting"]]) for r in rows]
    if (folder / "trajectory.csv").is_file():
        res.records["trajectory"] = _trajectory_records(folder, res.config)
    return res


def _trajectory_records(folder: Path, config: ablations.AblationConfig) -> list[dict]:
    if (folder / "trajectory_runs.csv").is_file():
        runs = store.read_csv(folder / "trajectory_runs.csv")
    else:
        acc = {r["p"]: r["test_acc"] for r in store.read_csv(folder / "trajectory_summary.csv")}
        restarts = range(config.trajectory_restarts)
        runs = [{"p": p, "restart": k, "test_acc": acc[p]} for p in config.trajectory_ps for k in restarts]
    points = store.read_csv(folder / "trajectory.csv")
    records = []
    for run in runs:
        c = [r for r in points if (r["p"], r["restart"]) == (run["p"], run["restart"])]
        facts = {k: c[0][k] for k in PER_RUN} | {"steps": c[-1]["step"], "epochs": c[-1]["epoch"]} | run
        records.append(dict(facts, checkpoints=[{k: v for k, v in q.items() if k not in PER_RUN} for q in c]))
    return records


def render_experiment(store_dir, out_dir, band: str = "std") -> list[Path]:
    """Figure 2, the per-layer distances, the tables and ``meta.json`` of one sweep store (no
    training), into ``out_dir/experiment-<profile>-<source>/``."""
    records = sweep.load_records(store_dir)
    if not records:
        return []
    out = Path(out_dir) / f"experiment-{records[0]['profile']}-{records[0]['source']}"
    return export_experiment(records, out, sweep.store_context(store_dir), band)


def export_experiment(records: list[dict], out_dir, context: dict, band: str = "std") -> list[Path]:
    """``figure2`` and ``layer_distances`` (PNG, PDF), ``table.csv`` / ``table.md``, ``runs.csv`` and
    ``meta.json`` (:func:`sweep.export_runs`) of these runs into ``out_dir``."""
    meta = report.experiment_meta(records)
    summary = report.summarise(records)
    out = Path(out_dir)
    paths = save_figure(plots.figure2(summary, meta, band), out, "figure2")
    paths += save_figure(plots.layer_distance_figure(summary, meta, band), out, "layer_distances")
    paths += report.summary_table(summary, meta, out)
    claims = {k: v for k, v in report.figure2_claims(records).items() if k != "report"}
    return paths + sweep.export_runs(records, out, context, claims)


def export_theorem1(res, out_dir) -> dict:
    """The Theorem 1 study's tables and ``meta.json`` (:func:`theorem1.export_tables`) and its figures
    (:func:`theorem1_figures`), drawn from the tables just written, into ``out_dir``; returns
    ``{name: path}``."""
    written = theorem1.export_tables(res, out_dir)
    for stem, fig in theorem1_figures(theorem1.load_tables(out_dir)).items():
        written.update({p.name: p for p in save_figure(fig, out_dir, stem)})
    return written


def theorem1_figures(tables: theorem1.Tables) -> dict:
    """The Theorem 1 study's figures drawn from its exported tables: ``{file stem: Figure}`` (the
    trajectory and the beyond-second-order figure only where their tables have rows)."""
    figs = {"theorem1_network": plots.theorem1_figure(tables.points, tables.meta)}
    if tables.trajectory:
        figs["theorem1_trajectory"] = plots.theorem1_trajectory_figure(tables.trajectory, tables.meta)
    if tables.layers or tables.scale:
        figs["beyond_second_order"] = plots.beyond_second_order_figure(
            tables.layers, tables.scale, tables.meta
        )
    return figs


def export_ablations(res: ablations.AblationResults, out_dir) -> dict:
    """Write the ablations' tidy CSVs, summary CSVs, figures (PNG, PDF), ``tables.md`` and ``meta.json``
    (configuration, claims, the sha256 of every CSV) into ``out_dir``; returns ``{name: path}``
    (``meta.json``'s ``this_invocation_seconds`` is empty for results loaded from disk)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, tables, small_recs = {}, [], res.records.get("small_data")

    def write_csv(name, rows, cols=None, exact=False):
        if not rows:
            return
        cols = cols or [k for k in rows[0] if not isinstance(rows[0][k], (list, dict))]
        if not exact:
            rows = [{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
        written[name] = store.atomic_write_csv(out_dir / name, rows, cols, lineterminator="\n")

    def write_figure(stem, fig):
        written.update({p.name: p for p in save_figure(fig, out_dir, stem)})

    def write_table(title, rows, columns):
        tables.append(f"{title}\n\n" + report.markdown_table(rows, columns))

    run_cols = (
        "size setting restart data_seed mask_seed epochs steps test_acc test_loss train_loss dist_mixed "
        "dist_fc1 dist_fc2 dist_fc3 dist_all"
    ).split()
    meta = {
        "config": store.jsonable(res.config.asdict()),
        "w_pre_test_acc": res.w_pre_acc,
        "source_name": res.source_name,
        "this_invocation_seconds": res.seconds,
        "env": run_env(),
        "machines": machines_of(r for recs in res.records.values() for r in recs),
        "training": {s: _training_cost(r) for s, r in res.records.items()},
        "subset_sha256": ablations.subset_sha256(res.subset_index),
        "store_keys": {s: res.config.key(s) for s in res.records},
    }
    small = head = traj = []
    if small_recs is not None:
        small = report.summarise_runs(small_recs, res.w_pre_acc)
        write_csv("small_data_runs.csv", small_recs, run_cols, exact=True)
        write_csv("small_data_summary.csv", small)
        write_figure("small_data", plots.small_data_figure(small_recs, res.w_pre_acc, res.source_name))
        write_table("## Small data, many restarts", small, report.SUMMARY_COLUMNS)
        paired = report.paired_differences(small_recs)
        write_csv("small_data_paired.csv", paired)
        write_table("### Paired differences (restart by restart)", paired, PAIRED_COLUMNS)
    if (recs := res.records.get("new_head")) is not None:
        head = report.summarise_runs(recs, res.w_pre_acc)
        head_cols = run_cols[:3] + ["head_seed"] + run_cols[3:] + ["dist_fc3_w0"]
        write_csv("new_head_runs.csv", recs, head_cols, exact=True)
        write_csv("new_head_summary.csv", head)
        write_figure("new_head", plots.new_head_figure(recs, res.w_pre_acc, small_recs, res.source_name))
        write_table("## A new output layer", head, report.HEAD_COLUMNS)
    if (recs := res.records.get("trajectory")) is not None:
        traj = report.trajectory_summary(recs)
        write_csv("trajectory.csv", report.trajectory_rows(recs), exact=True)
        write_csv("trajectory_runs.csv", recs, [*PER_RUN, "epochs", "steps", "test_acc"], exact=True)
        write_csv("trajectory_summary.csv", traj)
        write_figure("trajectory", plots.trajectory_figure(recs, res.source_name, res.config.warmup))
        write_table("## Effective L2 coefficient along the run", traj, report.TRAJECTORY_COLUMNS)
    idx = res.subset_index.tolist()
    write_csv("subsets.csv", [{"rank": i, "target_train_index": j} for i, j in enumerate(idx)])
    meta["claims"] = store.jsonable(report.claims(small, head, traj, small_recs))
    store.atomic_write(out_dir / "tables.md", "\n\n".join(tables) + "\n")
    written["meta.json"] = store.write_meta(out_dir, meta, [n for n in written if n.endswith(".csv")])
    written["tables.md"] = out_dir / "tables.md"
    return written


def _training_cost(records: list[dict]) -> dict:
    """Runs, member-steps and wall seconds of training (evaluation excluded) summed over the stored
    runs, each carrying its ensemble's seconds (a trajectory ensemble's include its checkpoints) and size."""
    secs = sum(
        r.get("chunk_seconds", r.get("seconds", 0.0)) / r.get("chunk_members", len(records)) for r in records
    )
    return dict(runs=len(records), member_steps=int(sum(r["steps"] for r in records)), seconds=float(secs))

"""The experiment's figures and exported tables, rendered from stored run records (never trains).

* the paper's Figure 2 (:func:`figure2`: (a) ``||w_ft - w_pre||^2``, (b) MNIST and (c) source
  validation accuracy against p, dropout vs mixout) and the per-layer distances
  (:func:`layer_distance_figure`); :func:`render_experiment` writes them with the table of one store;
* the ablations' figures (:func:`small_data_figure`, :func:`new_head_figure`, :func:`trajectory_figure`)
  and :func:`export_ablations`, which writes them with every table and ``meta.json``;
* :func:`source_target_figure` -- what the two tasks look like;
* :func:`render_all` -- everything, from what is stored (``python -m mixout_theory figures``).

Figures are ``matplotlib.figure.Figure`` objects (no pyplot state); numbers come from
:mod:`~mixout_theory.experiment.report`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from mixout_theory.experiment import ablations, report, sweep, theorem1
from mixout_theory.experiment.ablations import HEAD_SETTINGS, SMALL_DATA_SETTINGS
from mixout_theory.experiment.store import atomic_write, atomic_write_csv, find_stores, jsonable, run_env
from mixout_theory.figures import render_theory_figures, save_figure

__all__ = ["figure2", "layer_distance_figure", "plot_metric_vs_p", "render_experiment", "small_data_figure",
           "new_head_figure", "trajectory_figure", "export_ablations", "theorem1_figure", "theorem1_trajectory_figure", "export_theorem1", "source_target_figure", "render_all"]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Figure 2 and the per-layer distances (paper Section 4)


METHOD_STYLE = {"dropout": dict(color="tab:red", marker="s"), "mixout": dict(color="tab:blue", marker="o")}
FIG2_PANELS = (
    ("dist_all", r"(a) $\|w_{ft} - w_{pre}\|^2$ (all parameters)"),
    ("target_val_acc", "(b) MNIST validation accuracy"),
    ("source_val_acc", "(c) source-task validation accuracy"),
)
LAYER_PANELS = (
    ("dist_mixed", "mixed weights (fc2 + fc3)"),
    ("dist_fc2", "fc2 300->100 (mixed)"),
    ("dist_fc3", "fc3 100->10 (mixed)"),
    ("dist_fc1", "fc1 784->300 (never mixed)"),
    ("dist_all", "all parameters"),
)


def plot_metric_vs_p(ax, summary: list[dict], metric: str, title: str = "", ylabel: str = "") -> None:
    """Mean over restarts with a +-1 std band against p, dropout vs mixout (p = 0 shared)."""
    for method, style in METHOD_STYLE.items():
        rows = sorted((r for r in summary if r["method"] == method), key=lambda r: r["p"])
        if not rows:
            continue
        p = np.array([r["p"] for r in rows])
        mean = np.array([r[f"{metric}_mean"] for r in rows])
        std = np.array([r[f"{metric}_std"] for r in rows])
        ax.plot(p, mean, label=method, lw=1.6, ms=4, **style)
        ax.fill_between(p, mean - std, mean + std, color=style["color"], alpha=0.2, lw=0)
    ax.set_xlabel("p")
    ax.set_title(title, fontsize=10)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def figure2(summary: list[dict], meta: dict) -> Figure:
    """The paper's Figure 2: (a) squared distance to w_pre, (b) target and (c) source accuracy vs p."""
    fig = Figure(figsize=(13, 4.0), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (metric, title) in zip(axes, FIG2_PANELS):
        plot_metric_vs_p(ax, summary, metric, title)
    axes[0].legend()
    fig.suptitle("Mixout vs dropout when finetuning w_pre on MNIST (Lee, Cho, Kang 2020, Fig. 2)\n" + report.caption(meta), fontsize=10)
    return fig


def layer_distance_figure(summary: list[dict], meta: dict) -> Figure:
    """Squared distance to w_pre per layer vs p: mixout pulls only the layers it mixes (Supp. B)."""
    fig = Figure(figsize=(16, 3.6), layout="constrained")
    axes = fig.subplots(1, len(LAYER_PANELS))
    for ax, (metric, title) in zip(axes, LAYER_PANELS):
        plot_metric_vs_p(ax, summary, metric, title)
    axes[0].set_ylabel(r"$\|w_{ft} - w_{pre}\|^2$")
    axes[0].legend()
    fig.suptitle("Where the finetuned weights move, layer by layer\n" + report.caption(meta), fontsize=10)
    return fig


def render_experiment(store_dir, out_dir) -> list[Path]:
    """Figure 2, the per-layer distances and the table of one results store (no training)."""
    records = sweep.load_records(store_dir)
    if not records:
        return []
    meta = report.experiment_meta(records)
    summary = report.summarise(records)
    out = Path(out_dir) / f"experiment-{meta['profile']}-{meta['source']}"
    paths = save_figure(figure2(summary, meta), out, "figure2")
    paths += save_figure(layer_distance_figure(summary, meta), out, "layer_distances")
    return paths + report.summary_table(summary, meta, out)


def render_all(out_dir, results=None) -> list[Path]:
    """Every figure from stored results only (never trains): the theory figures, the experiment
    figures of the newest sweep store per profile and source under ``results``, the ablation
    figures and tables of every profile and source stored under ``results/ablations/``
    (into ``out_dir/ablations-<profile>-<source>/``) and those of the Theorem 1 study stored under
    ``results/theorem1/`` (into ``out_dir/theorem1-<profile>-<source>/``)."""
    paths = render_theory_figures(out_dir)
    if results is None or not Path(results).exists():
        return paths
    seen = set()
    for store in find_stores(results):  # newest first
        kind = store.name.rsplit("-", 1)[0]  # profile-source
        if kind not in seen:
            seen.add(kind)
            paths += render_experiment(store, out_dir)
    for res in ablations.load_ablations(results):
        out = Path(out_dir) / f"ablations-{res.config.profile}-{res.config.source}"
        paths += list(export_ablations(res, out).values())
    for res in theorem1.load_stored(results):
        out = Path(out_dir) / f"theorem1-{res.config.profile}-{res.config.source}"
        paths += list(export_theorem1(res, out).values())
    return paths


def source_target_figure(exp, n: int = 10) -> Figure:
    """The first ``n`` validation images of the source task above those of the target task (MNIST)."""
    fig = Figure(figsize=(1.1 * n, 2.6), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for row, (task, name) in enumerate((("source", exp.source_name), ("target", "MNIST"))):
        imgs, labels = exp.images(task, "val", n), exp.task(task).val.y[:n]
        for ax, img, lab in zip(axes[row], imgs, labels):
            ax.imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(str(int(lab)), fontsize=8)
        axes[row][0].set_ylabel(name if len(name) < 20 else name.replace(": ", ":\n", 1), fontsize=8)
    fig.suptitle(exp.label, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# the ablations (the paper's GLUE questions; Table 3's new output layer)



def _strip_box(ax, groups: list[tuple[str, np.ndarray]], colors, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data = [g for _, g in groups]
    bp = ax.boxplot(data, positions=range(len(data)), widths=0.55, showfliers=False, patch_artist=True)
    for patch, c in zip(bp["boxes"], colors):
        patch.set(facecolor=c, alpha=0.25)
    for i, (vals, c) in enumerate(zip(data, colors)):
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(vals)), vals, s=9, color=c, zorder=3, linewidths=0)
    ax.set_xticks(range(len(data)))
    ax.set_xticklabels([n for n, _ in groups], rotation=60, ha="right", fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)


def _threshold_lines(ax, th: dict) -> None:
    lo, hi = ax.get_ylim()
    lines = (("failed_below", "-", "w_pre (failed below)"), ("outlier_below", ":", "best median - 3 sd"))
    for key, style, text in lines:
        v = th[key]
        if lo <= v <= hi:
            ax.axhline(v, ls=style, color="0.3", lw=0.9, label=f"{text} = {v:.3f}")


def _short(label: str) -> str:
    return label.replace("wdecay", "wd").replace("mixout", "mix").replace("new head: ", "")


def small_data_figure(records: list[dict], w_pre_acc: float, source_name: str = "") -> Figure:
    """Study 1: target test accuracy of every run, box + strip per setting, one panel per size."""
    sizes = sorted({r["size"] for r in records})
    fig = Figure(figsize=(3.6 * len(sizes), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sizes)))
    names = [s.name for s in SMALL_DATA_SETTINGS]
    labels = {s.name: _short(s.label) for s in SMALL_DATA_SETTINGS}
    colors = ["C3"] + ["C2"] * 3 + ["C0"] * 4 + ["C4"]
    for ax, size in zip(axes, sizes):
        at = [r for r in records if r["size"] == size]
        present = [n for n in names if any(r["setting"] == n for r in at)]
        groups = [(labels[n], np.array([r["test_acc"] for r in at if r["setting"] == n])) for n in present]
        _strip_box(ax, groups, [colors[names.index(n)] for n in present], seed=size)
        th = report.failure_thresholds(at, w_pre_acc)
        _threshold_lines(ax, th)
        restarts = len({r["restart"] for r in at})
        steps, epochs = at[0]["steps"], at[0].get("epochs", "?")
        ax.set_title(f"{size} target images, {restarts} restarts\n{steps} steps ({epochs} epochs)", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower left")
    axes[0].set_ylabel("target test accuracy")
    fig.suptitle(f"Small target sets, many restarts (w_pre test acc {w_pre_acc:.3f}; failed: below it)"
                 + (f"\nsource: {source_name}" if source_name else ""), fontsize=10)  # fmt: skip
    return fig


def new_head_figure(records: list[dict], w_pre_acc: float, reference: list[dict] | None = None,
                    source_name: str = "") -> Figure:  # fmt: skip
    """Study 2: test accuracy with a re-initialised head, per head regulariser (mixout(w_pre, 0.7) on
    fc2 throughout); ``reference`` (study 1's mixout(w_pre, 0.7) runs, pretrained head) in grey."""
    sizes = sorted({r["size"] for r in records})
    fig = Figure(figsize=(3.0 * len(sizes), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sizes)))
    for ax, size in zip(axes, sizes):
        at = [r for r in records if r["size"] == size]
        groups = [(_short(s.label), np.array([r["test_acc"] for r in at if r["setting"] == s.name]))
                  for s in HEAD_SETTINGS if any(r["setting"] == s.name for r in at)]  # fmt: skip
        colors = ["C1", "C3", "C0"][: len(groups)]
        ref = [r["test_acc"] for r in (reference or []) if r["size"] == size and r["setting"] == "mixout0.7"]
        if ref:
            groups.append(("pretrained head,\nmix(w_pre, 0.7)", np.array(ref)))
            colors.append("0.5")
        _strip_box(ax, groups, colors, seed=size)
        _threshold_lines(ax, report.failure_thresholds(at, w_pre_acc))
        ax.set_title(f"{size} target images, {len({r['restart'] for r in at})} restarts", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower left")
    axes[0].set_ylabel("target test accuracy")
    fig.suptitle("A new output layer (N(0, 0.02^2)), mixout(w_pre, 0.7) on fc2; regulariser on the new head"
                 + (f"\nsource: {source_name}" if source_name else ""), fontsize=10)  # fmt: skip
    return fig


def trajectory_figure(records: list[dict], lambdas=(0.01, 0.1, 1.0)) -> Figure:
    """Study 3: (a) the implied modulus ``m_t`` with its 95% interval, (b) the implied wdecay lambda
    ``m_t p / (1 - p)`` against the L2-SP lambdas of study 1, (c) ``||w_t - w_pre||^2`` (mixed), vs step."""
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    ps = sorted({r["p"] for r in records})
    for i, p in enumerate(ps):
        for j, r in enumerate(rr for rr in records if rr["p"] == p):
            c = r["checkpoints"]
            step = np.array([q["step"] for q in c])
            lab = f"p = {p:g}" if j == 0 else None
            axes[0].plot(step, [q["m"] for q in c], "-o", ms=2.5, color=f"C{i}", label=lab, alpha=0.9)
            axes[0].fill_between(step, [q["m_lo"] for q in c], [q["m_hi"] for q in c], color=f"C{i}", alpha=0.15, lw=0)
            axes[1].plot(step, [q["lam"] for q in c], "-o", ms=2.5, color=f"C{i}", label=lab)
            axes[2].plot(step, [q["dist2"] for q in c], "-o", ms=2.5, color=f"C{i}", label=lab)
    for lam in lambdas:
        axes[1].axhline(lam, ls="--", color="0.4", lw=0.8)
        axes[1].annotate(f"L2-SP lambda={lam:g}", (0.01, lam), xycoords=("axes fraction", "data"), fontsize=7,
                         va="bottom", color="0.3")  # fmt: skip
    r0 = records[0]
    warm = int(r0.get("warmup", 0.1) * r0["steps"])
    for ax in axes[:2]:
        ax.axvline(warm, color="0.6", lw=0.8, ls=":")
        ax.annotate("end of warm-up", (warm, 0.98), xycoords=("data", "axes fraction"), fontsize=7, color="0.4",
                    ha="left", va="top", rotation=90)  # fmt: skip
    axes[0].set_title("implied modulus m_t = 2 (E L(Phi) - L) / ((p/(1-p)) ||w_t - w_pre||^2)", fontsize=9)
    axes[1].set_title("implied wdecay(w_pre, lambda): lambda_t = m_t p / (1-p)", fontsize=9)
    axes[2].set_title("||w_t - w_pre||^2 over the mixed weights (fc2, fc3)", fontsize=9)
    axes[1].set_yscale("log", nonpositive="mask")
    axes[2].set_yscale("log", nonpositive="mask")
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Mixout as an adaptive L2 penalty along finetuning ({r0['size']} target images, "
                 f"evaluation batch {r0['eval_size']}, {r0['mc_samples']} masks per checkpoint, 95% intervals)",
                 fontsize=10)  # fmt: skip
    return fig



# --------------------------------------------------------------------------------------------
# Theorem 1 on the network (mixout_theory.experiment.theorem1)


POINT_STYLE = {"finetuned": dict(color="tab:blue", marker="o", label="w = w_p (finetuned), u = w_pre"),
               "displaced": dict(color="tab:orange", marker="s", label="w = w_pre, u = w_pre - d_p")}  # fmt: skip
SCAN_POINT = {"w_p": "finetuned", "w_pre": "displaced"}


def _ratio_bars(ax, x, rows, style, label):
    so = np.array([r["second_order"] for r in rows])
    mc, lo, hi = (np.array([r[k] for r in rows]) for k in ("mc", "mc_lo", "mc_hi"))
    ax.errorbar(x, mc / so, yerr=[(mc - lo) / so, (hi - mc) / so], fmt=style["marker"] + "-", color=style["color"],
                ms=5, capsize=3, label=label)  # fmt: skip


def theorem1_figure(points: list[dict], meta: dict) -> Figure:
    """(a) the mixout penalty ``E L(Phi(w)) - L(w)`` against p: Monte Carlo (95% interval) and the
    second-order value, at the finetuned weights and at ``w_pre`` with the same displacement; (b) their
    ratio; (c) the curvatures ``m_eff`` (along ``d``) and ``m_min`` (smallest eigenvalue of ``H`` on the
    mixed weights) Corollary 1.1 would use; (d) the ratio at one fixed point for masks of other p.
    Read from the exported table."""
    fig = Figure(figsize=(12, 8.8), layout="constrained")
    (a, b), (c, d) = fig.subplots(2, 2)
    for part, style in POINT_STYLE.items():
        rows = sorted((r for r in points if r["part"] == part), key=lambda r: r["p"])
        if not rows:
            continue
        p = np.array([r["p"] for r in rows])
        mc, lo, hi = (np.array([r[k] for r in rows]) for k in ("mc", "mc_lo", "mc_hi"))
        a.errorbar(p, mc, yerr=[mc - lo, hi - mc], fmt=style["marker"], color=style["color"], ms=5, capsize=3,
                   label=f"Monte Carlo (95% CI), {style['label']}")  # fmt: skip
        a.plot(p, [r["second_order"] for r in rows], "--", color=style["color"], lw=1.5,
               label=f"second order, {style['label']}")  # fmt: skip
        _ratio_bars(b, p, rows, style, style["label"])
        c.plot(p, [r["m_eff"] for r in rows], style["marker"] + "-", color=style["color"], label=f"m_eff, {style['label']}")
        if part == "finetuned" and rows[0].get("m_min") is not None:
            c.plot(p, [r["m_min"] for r in rows], "v:", color="tab:green", label="m_min at w_p (Lanczos)")
    pre = [r for r in points if r["part"] == "w_pre"]
    if pre:
        c.axhline(pre[0]["m_min"], color="tab:green", ls="--", lw=0.8, label=f"m_min at w_pre ({pre[0]['m_min']:.3g})")
    scan = [r for r in points if r["part"] == "scan"]
    for point, part in SCAN_POINT.items():
        rows = sorted((r for r in scan if r["point"] == point), key=lambda r: r["p"])
        if rows:
            _ratio_bars(d, [r["p"] for r in rows], rows, POINT_STYLE[part],
                        f"{POINT_STYLE[part]['label']}, p = {rows[0]['at_p']:g}")  # fmt: skip
    a.set_yscale("log")
    a.set_ylabel("E L(Phi(w)) - L(w)  [nats]")
    a.set_title("(a) the mixout(u, p) penalty on the finetuning loss", fontsize=9)
    b.set_ylabel("Monte Carlo / second order")
    b.set_title("(b) what the second-order expansion misses", fontsize=9)
    c.set_yscale("symlog", linthresh=0.01)
    c.set_ylabel("curvature  [nats per unit ||d||^2]  (symlog)")
    c.set_title("(c) m_eff = sum_g d_g^T H_gg d_g / ||d||^2, and m_min (< 0: Corollary 1.1 is vacuous)", fontsize=9)
    d.set_ylabel("Monte Carlo / second order")
    d.set_title("(d) one fixed point, masks of probability q (a third-order remainder changes sign at q = 0.5)",
                fontsize=9)  # fmt: skip
    d.set_xlabel("mask probability q at fixed w and u")
    for ax in (a, b, c):
        ax.set_xlabel("mixout probability p (of the run and of the mask)")
    for ax in (b, c, d):
        ax.axhline(1.0 if ax is not c else 0.0, color="0.4", lw=0.8)
    for ax in (a, b, c, d):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    ctx = meta.get("context", {})
    fig.suptitle(f"Theorem 1 on the MLP finetuned {ctx.get('source_name', '?')} -> MNIST ({meta['config']['profile']} "
                 f"profile, restart {meta['config']['restart']})\nL = mean cross-entropy on {ctx.get('loss_size', '?')} "
                 f"MNIST training images; mixout on fc2 and fc3; {meta['config']['mc_samples']} masks per Monte Carlo "
                 "point", fontsize=10)  # fmt: skip
    return fig


def theorem1_trajectory_figure(trajectory: list[dict], meta: dict) -> Figure:
    """The coefficient mixout implies along finetuning runs, ``m_t = 2 (E L(Phi) - L) / (k ||d||^2)`` from
    Monte Carlo (95% band), beside the curvature along the displacement ``m_eff(w_t)``; and their ratio."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, p in enumerate(sorted({r["p"] for r in trajectory})):
        rows = sorted((r for r in trajectory if r["p"] == p), key=lambda r: r["step"])
        step = np.array([r["step"] for r in rows])
        m, lo, hi = (np.array([r[k] for r in rows]) for k in ("m_mc", "m_mc_lo", "m_mc_hi"))
        eff = np.array([r["m_eff"] for r in rows])
        axes[0].plot(step, m, "-o", ms=3, color=f"C{i}", label=f"p = {p:g}: Monte Carlo m_t (95% band)")
        axes[0].fill_between(step, lo, hi, color=f"C{i}", alpha=0.2, lw=0)
        axes[0].plot(step, eff, "--x", ms=5, color=f"C{i}", label=f"p = {p:g}: m_eff(w_t), exact HVPs")
        axes[1].errorbar(step, m / eff, yerr=[(m - lo) / eff, (hi - m) / eff], fmt="-o", ms=3, capsize=2,
                         color=f"C{i}", label=f"p = {p:g}")  # fmt: skip
    axes[0].set_ylabel("coefficient  [nats per unit ||w_t - w_pre||^2]")
    axes[0].set_title("(a) implied coefficient vs curvature along w_t - w_pre", fontsize=9)
    axes[1].axhline(1.0, color="0.4", lw=0.8)
    axes[1].set_ylabel("Monte Carlo m_t / m_eff(w_t)")
    axes[1].set_title("(b) ratio (1 = the second-order expansion explains it)", fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("optimiser step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ctx = meta.get("context", {})
    fig.suptitle(f"Along finetuning, {ctx.get('source_name', '?')} -> MNIST\none mixout(w_pre, p) run per p on "
                 f"{ctx.get('trajectory_size', '?')} MNIST images (restart 0), L on the same images, "
                 f"{ctx.get('trajectory_samples', '?')} masks per checkpoint", fontsize=10)  # fmt: skip
    return fig


def export_theorem1(res, out_dir) -> dict:
    """The Theorem 1 study's tables and ``meta.json`` (:func:`theorem1.export_tables`) and its two
    figures, rendered from the tables just written, into ``out_dir``; returns ``{name: path}``."""
    written = theorem1.export_tables(res, out_dir)
    points, traj, meta = theorem1.load_tables(out_dir)
    figs = {"theorem1_network": theorem1_figure(points, meta)}
    if traj:
        figs["theorem1_trajectory"] = theorem1_trajectory_figure(traj, meta)
    for stem, fig in figs.items():
        written.update({p.name: p for p in save_figure(fig, out_dir, stem)})
    return written


def export_ablations(res: ablations.AblationResults, out_dir) -> dict:
    """Write the ablations' tidy CSVs, summary CSVs, PNG figures, ``tables.md`` and ``meta.json`` into
    ``out_dir`` (``meta.json``'s ``this_invocation_seconds`` is empty for results loaded from disk)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}

    def write_csv(name, rows, cols=None):
        if not rows:
            return
        cols = cols or [k for k in rows[0] if not isinstance(rows[0][k], (list, dict))]
        rows = [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in cols} for r in rows]
        written[name] = atomic_write_csv(out_dir / name, rows, cols, lineterminator="\n")

    run_cols = ["size", "setting", "restart", "data_seed", "mask_seed", "epochs", "steps", "test_acc", "test_loss",
                "train_loss", "dist_mixed", "dist_fc1", "dist_fc2", "dist_fc3", "dist_all"]  # fmt: skip
    tables, meta = [], {"config": jsonable(res.config.asdict()), "w_pre_test_acc": res.w_pre_acc,
                        "source_name": res.source_name, "this_invocation_seconds": res.seconds, "env": run_env(),
                        "training": {s: _training_cost(r) for s, r in res.records.items()},
                        "subset_sha256": ablations.subset_sha256(res.subset_index),
                        "store_keys": {s: res.config.key(s) for s in res.records}}  # fmt: skip
    small = head = traj = []
    if "small_data" in res.records:
        recs = res.records["small_data"]
        small = report.summarise_runs(recs, res.w_pre_acc)
        write_csv("small_data_runs.csv", recs, run_cols)
        write_csv("small_data_summary.csv", small)
        _save(small_data_figure(recs, res.w_pre_acc, res.source_name), out_dir / "small_data.png", written)
        tables.append("## Small data, many restarts\n\n" + report.markdown_table(small, report.SUMMARY_COLUMNS))
        paired = report.paired_differences(recs)
        write_csv("small_data_paired.csv", paired)
        tables.append("### Paired differences (restart by restart)\n\n" + report.markdown_table(
            paired, [("size", "n train"), ("a", "a"), ("b", "b"), ("n", "restarts"),
                     ("mean_diff", "mean acc(a) - acc(b)"), ("sd_diff", "sd"), ("a_wins", "a better"), ("ties", "ties"),
                     ("b_wins", "b better")]))
    if "new_head" in res.records:
        recs = res.records["new_head"]
        head = report.summarise_runs(recs, res.w_pre_acc)
        write_csv("new_head_runs.csv", recs, run_cols[:3] + ["head_seed"] + run_cols[3:] + ["dist_fc3_w0"])
        write_csv("new_head_summary.csv", head)
        _save(new_head_figure(recs, res.w_pre_acc, res.records.get("small_data"), res.source_name),
              out_dir / "new_head.png", written)  # fmt: skip
        tables.append("## A new output layer\n\n" + report.markdown_table(head, report.HEAD_COLUMNS))
    if "trajectory" in res.records:
        recs = res.records["trajectory"]
        traj = report.trajectory_summary(recs)
        write_csv("trajectory.csv", report.trajectory_rows(recs))
        write_csv("trajectory_summary.csv", traj)
        _save(trajectory_figure(recs), out_dir / "trajectory.png", written)
        tables.append("## Effective L2 coefficient along the run\n\n" + report.markdown_table(traj, report.TRAJECTORY_COLUMNS))
    idx = res.subset_index.tolist()
    write_csv("subsets.csv", [{"rank": i, "target_train_index": j} for i, j in enumerate(idx)])
    meta["claims"] = jsonable(report.claims(small, head, traj, res.records.get("small_data")))
    atomic_write(out_dir / "tables.md", "\n\n".join(tables) + "\n")
    atomic_write(out_dir / "meta.json", json.dumps(jsonable(meta), indent=1, sort_keys=True))
    written["tables.md"], written["meta.json"] = out_dir / "tables.md", out_dir / "meta.json"
    return written


def _training_cost(records: list[dict]) -> dict:
    """Runs, member-steps and wall seconds of training (evaluation excluded) summed over the stored
    runs: each run carries its ensemble's seconds and size (``seconds`` of a trajectory ensemble
    include its Monte Carlo checkpoints)."""
    secs = sum(r.get("chunk_seconds", r.get("seconds", 0.0)) / r.get("chunk_members", len(records)) for r in records)
    return {"runs": len(records), "member_steps": int(sum(r["steps"] for r in records)), "seconds": float(secs)}


def _save(fig, path: Path, written: dict) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    written[path.name] = path

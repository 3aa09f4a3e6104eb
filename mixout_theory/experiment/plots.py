"""The experiment's figures, drawn from run records and tables (:mod:`~mixout_theory.experiment.exports`
writes them): the paper's Figure 2 and the per-layer distances, the ablations', Theorem 1's, and the two
tasks. Each is a ``matplotlib.figure.Figure`` (no pyplot state) naming its source task
(:func:`report.task_line`), its numbers from :mod:`~mixout_theory.experiment.report`."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import ScalarFormatter

from mixout_theory.experiment import report
from mixout_theory.experiment.ablations import HEAD_SETTINGS, SMALL_DATA_SETTINGS
from mixout_theory.experiment.report import task_line

__all__ = [
    "figure2",
    "layer_distance_figure",
    "plot_metric_vs_p",
    "small_data_figure",
    "new_head_figure",
    "trajectory_figure",
    "theorem1_figure",
    "theorem1_trajectory_figure",
    "beyond_second_order_figure",
    "source_target_figure",
]


# --------------------------------------------------------------------------------------------
# Figure 2 and the per-layer distances (paper Section 4)
METHOD_STYLE = {"dropout": dict(color="tab:red", marker="s"), "mixout": dict(color="tab:blue", marker="o")}
METHOD_LABEL = {"dropout": "dropout(p)", "mixout": "mixout(w_pre, p)"}
DIST_LABEL = r"$\|w_{ft} - w_{pre}\|^2$  (sum of squares)"
SOURCE_ACC_LABEL = "source validation accuracy (fraction)"
FIG2_PANELS = (
    ("dist_all", r"(a) squared distance to $w_{pre}$, all parameters", DIST_LABEL),
    ("target_val_acc", "(b) target task: MNIST validation accuracy", "MNIST validation accuracy (fraction)"),
    ("source_val_acc", "(c) source task validation accuracy, after finetuning", SOURCE_ACC_LABEL),
)
LAYER_PANELS = (
    ("dist_mixed", "mixed weights (fc2 + fc3)"),
    ("dist_fc2", "fc2 300->100 (mixed)"),
    ("dist_fc3", "fc3 100->10 (mixed)"),
    ("dist_fc1", "fc1 784->300 (never mixed)"),
    ("dist_all", "all parameters"),
)


def plot_metric_vs_p(
    ax, summary: list[dict], metric: str, title: str = "", ylabel: str = "", band: str = "std"
) -> None:
    """Mean over restarts against p, dropout vs mixout (p = 0 shared), with a :func:`report.band_halfwidth`
    band (``"std"``: +-1 std, the paper's; ``"ci95"``: t-based 95% CI of the mean)."""
    for method, style in METHOD_STYLE.items():
        rows = _by_p(summary, "method", method)
        if not rows:
            continue
        p, mean = _columns(rows, "p", f"{metric}_mean")
        half = report.band_halfwidth([r[f"{metric}_std"] for r in rows], [r["n"] for r in rows], band)
        ax.plot(p, mean, label=METHOD_LABEL[method], lw=1.6, ms=4, **style)
        ax.fill_between(p, mean - half, mean + half, color=style["color"], alpha=0.2, lw=0)
    ax.set_xlabel("p (dropout or mixout probability)")
    ax.set_title(title, fontsize=10)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=report.BANDS[band], title_fontsize=7)


def _by_p(rows: list[dict], key: str, value) -> list[dict]:
    """The rows whose ``key`` is ``value``, sorted by p."""
    return sorted((r for r in rows if r[key] == value), key=lambda r: r["p"])


def _columns(rows: list[dict], *keys) -> list[np.ndarray]:
    """Each of ``keys`` over ``rows``, as an array."""
    return [np.array([r[k] for r in rows]) for k in keys]


def _panels_vs_p(summary: list[dict], meta: dict, band: str, figsize, panels, title: str) -> Figure:
    """A :func:`plot_metric_vs_p` panel per ``(metric, title, y label)``; ``title`` and the caption above."""
    fig = Figure(figsize=figsize, layout="constrained")
    for ax, (metric, head, ylabel) in zip(fig.subplots(1, len(panels)), panels, strict=False):
        plot_metric_vs_p(ax, summary, metric, head, ylabel, band)
    fig.suptitle(f"{title}\n{report.caption(meta, band)}", fontsize=10)
    return fig


def figure2(summary: list[dict], meta: dict, band: str = "std") -> Figure:
    """The paper's Figure 2: (a) squared distance to w_pre, (b) target and (c) source accuracy vs p."""
    title = "Mixout vs dropout when finetuning w_pre on MNIST (Lee, Cho, Kang 2020, Fig. 2)"
    return _panels_vs_p(summary, meta, band, (14, 4.4), FIG2_PANELS, title)


def layer_distance_figure(summary: list[dict], meta: dict, band: str = "std") -> Figure:
    """Squared distance to w_pre per layer vs p: mixout pulls only the layers it mixes (Supp. B)."""
    panels = [(metric, title, DIST_LABEL) for metric, title in LAYER_PANELS]
    title = "Where the finetuned weights move, layer by layer"
    return _panels_vs_p(summary, meta, band, (18, 4.0), panels, title)


def source_target_figure(exp, n: int = 10) -> Figure:
    """The first ``n`` validation images of the source task above those of the target task (MNIST)."""
    fig = Figure(figsize=(max(1.1 * n, 8.0), 2.8), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for row, (task, name) in enumerate((("source", "source"), ("target", "target\n(MNIST)"))):
        imgs, labels = exp.images(task, "val", n), exp.task(task).val.y[:n]
        for ax, img, lab in zip(axes[row], imgs, labels, strict=False):
            ax.imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(str(int(lab)), fontsize=8)
        axes[row][0].set_ylabel(name, fontsize=9)
    head = f"first {n} validation images of each task, digit label above each"
    fig.suptitle(f"{task_line(exp.source_name)}\n{head}", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# the ablations (the paper's GLUE questions; Table 3's new output layer)
#: the two failure cut-offs of :func:`report.failure_thresholds`: key, line style, what it means
THRESHOLD_STYLE = (
    ("failed_below", "-", "w_pre's target test accuracy (a run below it failed)"),
    ("outlier_below", ":", "best setting's median - 3 sd (3-sd outliers below)"),
)


def _short(label: str) -> str:
    return label.replace("wdecay", "wd").replace("mixout", "mix").replace("new head: ", "")


def _box_panels(records: list[dict], w_pre_acc: float, figsize, panel, title: str) -> Figure:
    """One box + strip panel per size (a box per group, its runs as jittered dots), ``panel(runs of the
    size, size) -> (groups, colors, panel title)``, with the cut-offs of :func:`report.failure_thresholds`
    in its range (their values in its title, their legend below the panels); ``title`` above them all."""
    sizes = sorted({r["size"] for r in records})
    fig = Figure(figsize=(figsize[0] * len(sizes), figsize[1]), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sizes)))
    for ax, size in zip(axes, sizes, strict=False):
        at = [r for r in records if r["size"] == size]
        groups, colors, head = panel(at, size)
        rng, data = np.random.default_rng(size), [g for _, g in groups]
        bp = ax.boxplot(data, positions=range(len(data)), widths=0.55, showfliers=False, patch_artist=True)
        for patch, c in zip(bp["boxes"], colors, strict=False):
            patch.set(facecolor=c, alpha=0.25)
        for i, (vals, c) in enumerate(zip(data, colors, strict=False)):
            ax.scatter(i + rng.uniform(-0.18, 0.18, len(vals)), vals, s=9, color=c, zorder=3, linewidths=0)
        ax.set_xticks(range(len(data)))
        ax.set_xticklabels([n for n, _ in groups], rotation=60, ha="right", fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        th = report.failure_thresholds(at, w_pre_acc)
        lo, hi = ax.get_ylim()
        for key, style, _ in THRESHOLD_STYLE:
            if lo <= th[key] <= hi:
                ax.axhline(th[key], ls=style, color="0.3", lw=0.9)
        cuts = f"w_pre {th['failed_below']:.3f}, median - 3 sd {th['outlier_below']:.3f}"
        ax.set_title(f"{head}\n{cuts}", fontsize=8)
    axes[0].set_ylabel("target (MNIST) test accuracy, fraction")
    handles = [Line2D([], [], ls=ls, color="0.3", lw=0.9, label=text) for _, ls, text in THRESHOLD_STYLE]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def small_data_figure(records: list[dict], w_pre_acc: float, source_name: str = "") -> Figure:
    """Study 1: target test accuracy of every run, box + strip per setting, one panel per size."""
    names = [s.name for s in SMALL_DATA_SETTINGS]
    labels = {s.name: _short(s.label) for s in SMALL_DATA_SETTINGS}
    colors = ["C3"] + ["C2"] * 3 + ["C0"] * 4 + ["C4"]

    def panel(at, size):
        present = [n for n in names if any(r["setting"] == n for r in at)]
        groups = [(labels[n], np.array([r["test_acc"] for r in at if r["setting"] == n])) for n in present]
        restarts, steps, epochs = len({r["restart"] for r in at}), at[0]["steps"], at[0].get("epochs", "?")
        head = f"{size} target images, {restarts} restarts, {steps} steps ({epochs} epochs)"
        return groups, [colors[names.index(n)] for n in present], head

    title = "Small target sets, many restarts: one dot per run (box: quartiles)\n" + task_line(source_name)
    return _box_panels(records, w_pre_acc, (3.9, 5.4), panel, title)


def new_head_figure(
    records: list[dict], w_pre_acc: float, reference: list[dict] | None = None, source_name: str = ""
) -> Figure:
    """Study 2: test accuracy with a re-initialised head, per head regulariser (mixout(w_pre, 0.7) on
    fc2 throughout); ``reference`` (study 1's mixout(w_pre, 0.7) runs, pretrained head) in grey."""

    def panel(at, size):
        groups = [
            (_short(s.label), np.array([r["test_acc"] for r in at if r["setting"] == s.name]))
            for s in HEAD_SETTINGS
            if any(r["setting"] == s.name for r in at)
        ]
        colors = ["C1", "C3", "C0"][: len(groups)]
        ref = [r["test_acc"] for r in (reference or []) if r["size"] == size and r["setting"] == "mixout0.7"]
        if ref:
            groups.append(("pretrained head,\nmix(w_pre, 0.7)", np.array(ref)))
            colors.append("0.5")
        return groups, colors, f"{size} target images, {len({r['restart'] for r in at})} restarts"

    title = (
        "A new output layer (N(0, 0.02^2)), mixout(w_pre, 0.7) on fc2; the regulariser of the new head on "
        "the x axis; one dot per run\n" + task_line(source_name)
    )
    return _box_panels(records, w_pre_acc, (3.4, 5.0), panel, title)


def trajectory_figure(
    records: list[dict], source_name: str = "", warmup: float = 0.1, lambdas=(0.01, 0.1, 1.0)
) -> Figure:
    """Study 3: (a) the implied modulus ``m_t`` with its 95% interval, (b) the implied wdecay lambda
    ``m_t p / (1 - p)`` against the L2-SP lambdas of study 1, (c) ``||w_t - w_pre||^2`` (mixed), vs
    step; one line per run (restart), the end of the ``warmup`` fraction of the steps marked."""
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    restarts = len({r["restart"] for r in records})
    for i, p in enumerate(sorted({r["p"] for r in records})):
        for j, r in enumerate(rr for rr in records if rr["p"] == p):
            c = r["checkpoints"]
            step, lo, hi = _columns(c, "step", "m_lo", "m_hi")
            lab = f"p = {p:g}" if j == 0 else None
            for ax, key, alpha in zip(axes, ("m", "lam", "dist2"), (0.9, None, None), strict=True):
                ax.plot(step, [q[key] for q in c], "-o", ms=2.5, color=f"C{i}", label=lab, alpha=alpha)
            axes[0].fill_between(step, lo, hi, color=f"C{i}", alpha=0.15, lw=0)
    r0 = records[0]
    warm = warmup * r0["steps"]
    for ax in axes:
        ax.axvline(warm, color="0.5", lw=0.9, ls=":", label=f"end of warm-up (step {warm:.0f})")
        ax.set_xlabel("optimiser step")
        ax.grid(True, which="both", alpha=0.3)
    margin = dict(xycoords=("axes fraction", "data"), fontsize=7, va="center", color="0.3")
    for lam in lambdas:  # labelled in the right margin, outside the curves
        axes[1].axhline(lam, ls="--", color="0.4", lw=0.8)
        axes[1].annotate(f"{lam:g}", (1.01, lam), annotation_clip=False, **margin)
    axes[1].plot([], [], ls="--", color="0.4", lw=0.8, label="L2-SP lambdas of study 1 (right margin)")
    title = "(a) implied modulus m_t = 2 (E L(Phi) - L) / ((p/(1-p)) ||w_t - w_pre||^2)"
    axes[0].set_title(title, fontsize=9)
    axes[0].set_ylabel("m_t  [nats per unit ||w_t - w_pre||^2]  (band: 95% CI)")
    axes[1].set_title("(b) implied wdecay(w_pre, lambda): lambda_t = m_t p / (1-p)", fontsize=9)
    axes[1].set_ylabel("lambda_t  [nats per unit ||w_t - w_pre||^2]  (log)")
    axes[2].set_title("(c) squared distance over the mixed weights (fc2, fc3)", fontsize=9)
    axes[2].set_ylabel("||w_t - w_pre||^2  (sum of squares, log)")
    axes[1].set_yscale("log", nonpositive="mask")
    axes[2].set_yscale("log", nonpositive="mask")
    axes[0].legend(fontsize=7, loc="upper right")  # the colours: p; (b) and (c) name their reference lines
    for ax, loc in ((axes[1], "lower center"), (axes[2], "lower right")):
        lines = [h for h in ax.get_lines() if not h.get_label().startswith(("p = ", "_"))]
        ax.legend(handles=lines, fontsize=7, loc=loc)
    fig.suptitle(
        f"Mixout as an adaptive L2 penalty along finetuning: {r0['size']} target images, one line per run "
        f"({restarts} restart{'s' if restarts > 1 else ''} per p), evaluation batch {r0['eval_size']}, "
        f"{r0['mc_samples']} masks per checkpoint\n{task_line(source_name)}",
        fontsize=10,
    )
    return fig


# --------------------------------------------------------------------------------------------
# Theorem 1 on the network (mixout_theory.experiment.theorem1)
POINT_STYLE = {
    "finetuned": dict(color="tab:blue", marker="o", label="w = w_p (finetuned), u = w_pre"),
    "displaced": dict(color="tab:orange", marker="s", label="w = w_pre, u = w_pre - d_p"),
}
SCAN_POINT = {"w_p": "finetuned", "w_pre": "displaced"}


def _ratio_bars(ax, x, rows, style, label):
    so, mc, lo, hi = _columns(rows, "second_order", "mc", "mc_lo", "mc_hi")
    kw = dict(fmt=style["marker"] + "-", color=style["color"], ms=5, capsize=3, label=label)
    ax.errorbar(x, mc / so, yerr=[(mc - lo) / so, (hi - mc) / so], **kw)


def theorem1_figure(points: list[dict], meta: dict) -> Figure:
    """(a) the mixout penalty ``E L(Phi(w)) - L(w)`` against p: Monte Carlo (95% interval) and the
    second-order value, at the finetuned weights and at ``w_pre`` with the same displacement; (b) their
    ratio; (c) the curvatures ``m_eff`` (along ``d``) and ``m_min`` (smallest eigenvalue of ``H`` on the
    mixed weights) Corollary 1.1 would use; (d) the ratio at one fixed point for masks of other p.
    Read from the exported table."""
    fig = Figure(figsize=(12, 8.8), layout="constrained")
    (a, b), (c, d) = fig.subplots(2, 2)
    for part, style in POINT_STYLE.items():
        rows = _by_p(points, "part", part)
        if not rows:
            continue
        p, mc, lo, hi, so = _columns(rows, "p", "mc", "mc_lo", "mc_hi", "second_order")
        color, marker, label = style["color"], style["marker"], style["label"]
        kw = dict(fmt=marker, color=color, ms=5, capsize=3, label=f"Monte Carlo (95% CI), {label}")
        a.errorbar(p, mc, yerr=[mc - lo, hi - mc], **kw)
        a.plot(p, so, "--", color=color, lw=1.5, label=f"second order, {label}")
        _ratio_bars(b, p, rows, style, label)
        c.plot(p, [r["m_eff"] for r in rows], marker + "-", color=color, label=f"m_eff, {label}")
        if part == "finetuned" and rows[0].get("m_min") is not None:
            c.plot(p, [r["m_min"] for r in rows], "v:", color="tab:green", label="m_min at w_p (Lanczos)")
    pre = [r for r in points if r["part"] == "w_pre"]
    if pre:
        m_min = pre[0]["m_min"]
        c.axhline(m_min, color="tab:green", ls="--", lw=0.8, label=f"m_min at w_pre ({m_min:.3g})")
    scan = [r for r in points if r["part"] == "scan"]
    for point, part in SCAN_POINT.items():
        rows = _by_p(scan, "point", point)
        if rows:
            label = f"{POINT_STYLE[part]['label']}, p = {rows[0]['at_p']:g}"
            _ratio_bars(d, [r["p"] for r in rows], rows, POINT_STYLE[part], label)
    a.set(yscale="log", ylabel="E L(Phi(w)) - L(w)  [nats]")
    a.set_title("(a) the mixout(u, p) penalty on the finetuning loss", fontsize=9)
    b.set_ylabel("Monte Carlo / second order")
    b.set_title("(b) what the second-order expansion misses", fontsize=9)
    c.set_yscale("symlog", linthresh=0.01)
    c.set_ylabel("curvature  [nats per unit ||d||^2]  (symlog)")
    title = "(c) m_eff = sum_g d_g^T H_gg d_g / ||d||^2, and m_min (< 0: Corollary 1.1 is vacuous)"
    c.set_title(title, fontsize=9)
    d.set(ylabel="Monte Carlo / second order", xlabel="mask probability q at fixed w and u")
    title = "(d) one fixed point, mask probability q (the cubic term changes sign at q = 0.5)"
    d.set_title(title, fontsize=9)
    for ax in (a, b, c):
        ax.set_xlabel("mixout probability p (of the run and of the mask)")
    for ax in (b, c, d):
        ax.axhline(1.0 if ax is not c else 0.0, color="0.4", lw=0.8)
    for ax in (a, b, c, d):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    masks = f"mixout on fc2 and fc3; {meta['config']['mc_samples']} masks per Monte Carlo point"
    fig.suptitle(_theorem1_caption(meta, "Theorem 1 on the finetuned MLP", masks), fontsize=10)
    return fig


def _theorem1_caption(meta: dict, title: str, masks: str) -> str:
    """``title`` with what a Theorem 1 figure was measured on: profile, restart, source task, the loss."""
    ctx, cfg = meta.get("context", {}), meta["config"]
    task, loss_size = task_line(ctx.get("source_name", "?")), ctx.get("loss_size", "?")
    return (
        f"{title} ({cfg['profile']} profile, restart {cfg['restart']}); {task}\n"
        f"L = mean cross-entropy on {loss_size} MNIST training images; {masks}"
    )


def theorem1_trajectory_figure(trajectory: list[dict], meta: dict) -> Figure:
    """The coefficient mixout implies along finetuning runs, ``m_t = 2 (E L(Phi) - L) / (k ||d||^2)`` from
    Monte Carlo (95% band), beside the curvature along the displacement ``m_eff(w_t)``; and their ratio."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, p in enumerate(sorted({r["p"] for r in trajectory})):
        rows = sorted((r for r in trajectory if r["p"] == p), key=lambda r: r["step"])
        step, m, lo, hi, eff = _columns(rows, "step", "m_mc", "m_mc_lo", "m_mc_hi", "m_eff")
        axes[0].plot(step, m, "-o", ms=3, color=f"C{i}", label=f"p = {p:g}: Monte Carlo m_t (95% band)")
        axes[0].fill_between(step, lo, hi, color=f"C{i}", alpha=0.2, lw=0)
        axes[0].plot(step, eff, "--x", ms=5, color=f"C{i}", label=f"p = {p:g}: m_eff(w_t), exact HVPs")
        kw = dict(fmt="-o", ms=3, capsize=2, color=f"C{i}", label=f"p = {p:g}")
        axes[1].errorbar(step, m / eff, yerr=[(m - lo) / eff, (hi - m) / eff], **kw)
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
    fig.suptitle(
        f"Along finetuning; {task_line(ctx.get('source_name', '?'))}\none mixout(w_pre, p) run per p on "
        f"{ctx.get('trajectory_size', '?')} MNIST images (restart 0), L on the same images, "
        f"{ctx.get('trajectory_samples', '?')} masks per checkpoint",
        fontsize=10,
    )
    return fig


PART_STYLE = {  # the three parts of the penalty (mixout_theory.experiment.penalty_parts)
    "second_order": dict(color="tab:blue", label="second order (exact, Theorem 1)"),
    "smooth": dict(color="tab:green", label="smooth higher order (ReLU pattern frozen at w)"),
    "kink": dict(color="tab:red", label="kinks (hidden units of fc2 crossing 0)"),
}
LAYER_STYLE = {"fc2": ("tab:purple", "^"), "fc3": ("tab:olive", "v"), "both": ("k", "o")}


def _stacked_shares(ax, rows, title: str) -> None:
    """The parts of the penalty as shares of their sum, stacked (negative parts below 0), per p."""
    p = np.array([r["p"] for r in rows])
    total = sum(np.array([r[k] for r in rows]) for k in PART_STYLE)
    up, down, width = np.zeros(len(rows)), np.zeros(len(rows)), 0.07
    for key, style in PART_STYLE.items():
        share = np.array([r[key] for r in rows]) / total
        bottom = np.where(share >= 0, up, down)
        ax.bar(p, share, width, bottom=bottom, color=style["color"], alpha=0.75, label=style["label"])
        if key != "second_order":  # its 95% interval, at the top of its segment
            lo, hi = (np.array([r[f"{key}{s}"] for r in rows]) / total for s in ("_lo", "_hi"))
            top = bottom + share
            ax.errorbar(p, top, yerr=[share - lo, hi - share], fmt="none", ecolor="0.15", capsize=3, lw=1)
        up, down = np.where(share >= 0, up + share, up), np.where(share < 0, down + share, down)
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_ylim(min(down.min(), 0.0) - 0.05, max(up.max(), 1.0) + 0.45)  # room for the legend above
    ax.set(xlabel="mixout probability p", ylabel="share of the penalty E L(Phi) - L(w)", xticks=p)
    ax.set_title(title, fontsize=9)


def beyond_second_order_figure(layers: list[dict], scan: list[dict], meta: dict) -> Figure:
    """Where the second-order (adaptive L2) reading of mixout holds on the MLP, and what else there is:
    (a, b) the penalty split into second order, smooth higher order and kinks, as stacked shares against
    p, at the finetuned and the displaced points (both layers mixed); (c) the fraction of the second hidden
    layer's units that a mask flips; (d) Monte Carlo / second order with fc2, fc3 or both mixed; (e, f)
    the scale scan on log-log axes, the parts against the scale t of the displacement, with reference
    slopes t^2 and t^3. Read from the exported tables."""
    fig = Figure(figsize=(15, 9), layout="constrained")
    (a, b, c), (d, e, f) = fig.subplots(2, 3)
    names = {"w_p": "finetuned: w = w_p, u = w_pre", "w_pre": "displaced: w = w_pre, u = w_pre - d_p"}
    for ax, (point, name) in zip((a, b), names.items(), strict=True):
        rows = _by_p([r for r in layers if r["mixed"] == "both"], "point", point)
        if rows:
            _stacked_shares(ax, rows, f"({'ab'[ax is b]}) {name}; fc2 and fc3 mixed")
    for point, style in zip(names, POINT_STYLE.values(), strict=True):
        for layer in ("fc2", "both"):
            rows = _by_p([r for r in layers if r["mixed"] == layer], "point", point)
            if rows:
                p, flips = _columns(rows, "p", "flips")
                fmt = style["marker"] + ("-" if layer == "both" else ":")
                c.plot(p, 100 * flips, fmt, color=style["color"], label=f"{SCAN_POINT[point]}, {layer} mixed")
        for layer, (color, marker) in LAYER_STYLE.items():
            rows = [r for r in _by_p(layers, "point", point) if r["mixed"] == layer and r["second_order"] > 0]
            if rows:
                ps, so, up, lo, hi = _columns(rows, "p", "second_order", "beyond", "beyond_lo", "beyond_hi")
                kw = dict(fmt=marker + ("-" if point == "w_pre" else "--"), color=color, ms=5, capsize=2)
                label = f"{layer} mixed, {SCAN_POINT[point]}"
                d.errorbar(ps, 1 + up / so, yerr=[(up - lo) / so, (hi - up) / so], label=label, **kw)
    c.set(xlabel="mixout probability p", ylabel="units that flip on a mask draw  [% of (example, unit)]")
    c.set_title("(c) second hidden layer: ReLU units pushed across 0 by the mask", fontsize=9)
    d.axhline(1.0, color="0.4", lw=0.8)
    d.set(xlabel="mixout probability p", ylabel="(second order + beyond) / second order  (95% CI)")
    d.set_title("(d) which layer: fc3 has no ReLU after it, fc2 has", fontsize=9)
    for ax, point in zip((e, f), names, strict=True):
        rows = sorted((r for r in scan if r["point"] == point), key=lambda r: (r["p"], r["t"]))
        if not rows:
            ax.set_visible(False)
            continue
        t = _columns(rows, "t")[0]
        for key, style in PART_STYLE.items():
            y, color = np.array([r[key] for r in rows]), style["color"]
            if key == "second_order":
                ax.plot(t, y, "-", color=color, lw=5, alpha=0.4, zorder=1, label=style["label"])
                continue
            lo, hi = _columns(rows, f"{key}_lo", f"{key}_hi")
            neg = y < 0  # |y| on the log axis; its interval flips with the sign, cut above 0
            below, above = np.where(neg, hi - y, y - lo), np.where(neg, y - lo, hi - y)
            yerr = [np.minimum(below, 0.999 * np.abs(y)), above]
            ax.errorbar(t, np.abs(y), yerr=yerr, fmt="-", color=color, capsize=2, lw=1.2)
            ax.plot(t[~neg], y[~neg], "o", color=color, ms=5, label=f"|{style['label']}|")
            if neg.any():
                ax.plot(t[neg], -y[neg], "o", color=color, mfc="white", ms=5, label="  (open: negative)")
            k, mid = (2 if key == "kink" else 3), len(t) // 2
            ref = 0.3 * abs(y[mid]) * (t / t[mid]) ** k
            ax.plot(t, ref, ":", color=color, lw=1.2, label=f"reference slope {k} (t^{k})")
        xlabel, ylabel = "scale t of the displacement (u_t = w - t d)", "part of E L(Phi) - L(w)  [nats]"
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
        ax.set_title(f"({'ef'[ax is f]}) scale scan, {SCAN_POINT[point]}, p = {rows[0]['p']:g}", fontsize=9)
    for ax in (a, b, c, d, e, f):
        if ax.get_visible():
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    title = "Beyond second order: the mixout penalty of the finetuned MLP split into its parts"
    n = meta["config"]["mc_samples"]
    masks = f"{n} masks per point, the same masks for every part (paired 95% intervals)"
    fig.suptitle(_theorem1_caption(meta, title, masks), fontsize=10)
    return fig

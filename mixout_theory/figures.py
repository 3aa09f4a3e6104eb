"""Figures: the theory figures (Theorem 1 / Corollary 1.1, Supplement D), recomputed in seconds.

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299). Equation numbers are the paper's.

* :func:`plot_penalty_vs_p` -- on one axes: the Monte Carlo penalty ``E L(Phi) - L(w)`` with its 95%
  interval against the Corollary 1.1 bound ``m p / (2 (1 - p)) ||w - u||^2`` (eq. 9), and the exact
  penalty where there is one.
* :func:`plot_line_fit` -- on one axes: Supplement D, the least-squares line fitted under
  mixout(u, p) moves from the data's line to the target's line as ``p`` grows.
* :func:`theory_penalty_figure`, :func:`line_fit_figure` -- whole figures (``matplotlib.figure.Figure``
  objects, no pyplot state, so any backend, notebooks' inline one included, is left alone).
* :func:`render_theory_figures`, :func:`render_all` -- write PNG and PDF files.

All computation lives in :mod:`mixout_theory.penalty`; this module only draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mixout_theory.penalty import (
    LineFit,
    PenaltyCurve,
    line_fit_experiment,
    penalty_curve,
    theory_cases,
)

__all__ = [
    "DEFAULT_PS",
    "plot_penalty_vs_p",
    "plot_line_fit",
    "theory_penalty_figure",
    "line_fit_figure",
    "compute_theory_curves",
    "render_theory_figures",
    "render_all",
]

#: the p grid of the theory figure, 0.05 .. 0.95 (p = 0 has zero penalty and no place on a log axis)
DEFAULT_PS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))
FORMATS = ("png", "pdf")


def _p_range(ps) -> str:
    ps = np.asarray(ps, dtype=float)
    return f"p in [{ps.min():.2g}, {ps.max():.2g}] ({len(ps)} values)"


def plot_penalty_vs_p(ax, curve: PenaltyCurve, logy: bool = True, title: str | None = None, legend: bool = True):
    """Draw one :class:`~mixout_theory.penalty.PenaltyCurve` on ``ax`` and return ``ax``.

    Monte Carlo mean with its 95% interval (band and error bars), the Corollary 1.1 bound (eq. 9,
    dashed) and, when known, the exact penalty (dotted). ``logy`` drops ``p = 0`` (zero penalty).
    The title names the case, the ``p`` range and the number of Monte Carlo samples.
    """
    ps = np.asarray(curve.ps, dtype=float)
    keep = ps > 0 if logy else np.ones_like(ps, dtype=bool)
    x = ps[keep]
    ax.fill_between(x, curve.lo[keep], curve.hi[keep], color="C0", alpha=0.25, linewidth=0)
    ax.errorbar(x, curve.mean[keep], yerr=[curve.mean[keep] - curve.lo[keep], curve.hi[keep] - curve.mean[keep]],
                fmt="o", ms=3, color="C0", capsize=2,
                label=f"Monte Carlo E L(Phi) - L(w), 95% CI (n={curve.n_samples})")
    ax.plot(x, curve.bound[keep], "--", color="C3", label="Corollary 1.1 bound m p / (2(1-p)) ||w-u||^2")
    if curve.exact is not None:
        ax.plot(x, curve.exact[keep], ":", color="k", label="exact (quadratic, closed form)")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("mixout probability p")
    ax.set_ylabel("penalty E L(Phi(w)) - L(w)")
    ax.set_title(title or f"{curve.label}\n{_p_range(ps)}, {curve.n_samples} masks per p", fontsize=9)
    if legend:
        ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    return ax


def _line(a: float, b: float) -> str:
    return f"y = {a:.2f} x {'-' if b < 0 else '+'} {abs(b):.2f}"


def plot_line_fit(ax, fit: LineFit, title: str | None = None, legend: bool = True):
    """Draw Supplement D's picture on ``ax`` and return ``ax``: data, true line, target line ``u``,
    and the exact mixout(u, p) fit for every ``p`` of ``fit`` (colour darkens with ``p``)."""
    x = fit.x.numpy()
    grid = np.linspace(x.min(), x.max(), 50)
    ax.scatter(x, fit.y.numpy(), s=10, color="0.6", label=f"data, n={len(x)}")
    w1, w2 = fit.w_star.tolist()
    ax.plot(grid, w1 * grid + w2, color="k", lw=1.5, label=f"true line {_line(w1, w2)}")
    t1, t2 = fit.u.tolist()
    ax.plot(grid, t1 * grid + t2, "--", color="C3", lw=1.5, label=f"target u: {_line(t1, t2)}")
    colors = [(0.1, 0.3 + 0.6 * (1 - i / max(len(fit.ps) - 1, 1)), 0.9) for i in range(len(fit.ps))]
    for p, (a, b), c in zip(fit.ps, fit.fits.tolist(), colors):
        ax.plot(grid, a * grid + b, color=c, lw=1.2, label=f"mixout(u, p={p:g}) fit: {_line(a, b)}")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ps_text = ", ".join(f"{p:g}" for p in fit.ps)
    ax.set_title(title or f"Supplement D: least squares under mixout(u, p), p in {{{ps_text}}}\n"
                 f"exact minimiser of E L(Phi(w)), m = lambda_min(X^T X / n) = {fit.m:.3f}", fontsize=9)
    if legend:
        ax.legend(fontsize=7, loc="best")
    ax.grid(True, alpha=0.3)
    return ax


def theory_penalty_figure(curves: Sequence[PenaltyCurve], ncols: int = 2, logy: bool = True) -> Figure:
    """One panel per curve (see :func:`plot_penalty_vs_p`), as a standalone ``Figure``."""
    curves = list(curves)
    if not curves:
        raise ValueError("theory_penalty_figure needs at least one curve")
    ncols = min(ncols, len(curves))
    nrows = -(-len(curves) // ncols)
    fig = Figure(figsize=(5.5 * ncols, 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, curve in zip(axes, curves):
        plot_penalty_vs_p(ax, curve, logy=logy)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    fig.suptitle("Theorem 1 / Corollary 1.1 (eq. 9): Monte Carlo mixout penalty vs the lower bound", fontsize=11)
    return fig


def line_fit_figure(fit: LineFit) -> Figure:
    """Supplement D's line-fit picture (see :func:`plot_line_fit`) as a standalone ``Figure``."""
    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    plot_line_fit(fig.subplots(), fit)
    return fig


def compute_theory_curves(ps=DEFAULT_PS, n_samples: int = 2000, seed: int = 0) -> list[PenaltyCurve]:
    """Penalty curves of the four standard cases (:func:`mixout_theory.penalty.theory_cases`)."""
    return [penalty_curve(case, ps, n_samples, seed=seed + i) for i, case in enumerate(theory_cases(seed))]


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    return paths


def render_theory_figures(out_dir, n_samples: int = 2000, ps=DEFAULT_PS, seed: int = 0) -> list[Path]:
    """Write the theory figures as PNG and PDF into ``out_dir`` and return their paths.

    ``theorem1_penalty_vs_p``: Monte Carlo penalty with 95% interval vs Corollary 1.1 (and the exact
    value for the quadratics) for an SPD quadratic, least squares, L2 logistic and L2 softmax
    regression. ``supplement_d_line_fit``: the line-fit picture for ``p`` in {0, 0.3, 0.6, 0.9}.
    Seeded, a few seconds on a CPU.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = _save(theory_penalty_figure(compute_theory_curves(ps, n_samples, seed)), out_dir, "theorem1_penalty_vs_p")
    paths += _save(line_fit_figure(line_fit_experiment()), out_dir, "supplement_d_line_fit")
    return paths


# --------------------------------------------------------------------------------------------
# the EMNIST Digits -> MNIST experiment (paper Section 4, Figure 2), rendered from stored results

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


def _caption(meta: dict) -> str:
    return (f"source task: {meta.get('source_name') or meta.get('source')} | profile: {meta.get('profile')} | "
            f"{meta.get('restarts')} restarts per setting, mean +- 1 std | config {meta.get('config')}")  # fmt: skip


def experiment_meta(records: list[dict]) -> dict:
    """What every experiment figure states about the runs behind it."""
    r = records[0]
    return {"source": r["source"], "source_name": r.get("source_name", ""), "profile": r["profile"],
            "config": r["config"], "restarts": len({x["seed"] for x in records}), "runs": len(records)}  # fmt: skip


def figure2(summary: list[dict], meta: dict) -> Figure:
    """The paper's Figure 2: (a) squared distance to w_pre, (b) target and (c) source accuracy vs p."""
    fig = Figure(figsize=(13, 4.0), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (metric, title) in zip(axes, FIG2_PANELS):
        plot_metric_vs_p(ax, summary, metric, title)
    axes[0].legend()
    fig.suptitle("Mixout vs dropout when finetuning w_pre on MNIST (Lee, Cho, Kang 2020, Fig. 2)\n" + _caption(meta), fontsize=10)
    return fig


def layer_distance_figure(summary: list[dict], meta: dict) -> Figure:
    """Squared distance to w_pre per layer vs p: mixout pulls only the layers it mixes (Supp. B)."""
    fig = Figure(figsize=(16, 3.6), layout="constrained")
    axes = fig.subplots(1, len(LAYER_PANELS))
    for ax, (metric, title) in zip(axes, LAYER_PANELS):
        plot_metric_vs_p(ax, summary, metric, title)
    axes[0].set_ylabel(r"$\|w_{ft} - w_{pre}\|^2$")
    axes[0].legend()
    fig.suptitle("Where the finetuned weights move, layer by layer\n" + _caption(meta), fontsize=10)
    return fig


TABLE_COLUMNS = ("dist_all", "dist_mixed", "dist_fc1", "target_val_acc", "target_test_acc", "source_val_acc")


def summary_table(summary: list[dict], meta: dict, out_dir: Path) -> list[Path]:
    """The figure's numbers as ``table.csv`` (mean and std columns) and ``table.md`` (mean +- std)."""
    from mixout_theory.sweep import atomic_write, atomic_write_csv

    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["method", "p", "n"] + [f"{c}_{s}" for c in TABLE_COLUMNS for s in ("mean", "std")]
    atomic_write_csv(out_dir / "table.csv", summary, cols, lineterminator="\n")
    md = [f"<!-- {_caption(meta)} -->", f"*{_caption(meta)}*", "",
          "| method | p | n | " + " | ".join(TABLE_COLUMNS) + " |", "|---|---|---|" + "---|" * len(TABLE_COLUMNS)]  # fmt: skip
    for r in summary:
        cells = [f"{r[c + '_mean']:.4f} +- {r[c + '_std']:.4f}" for c in TABLE_COLUMNS]
        md.append(f"| {r['method']} | {r['p']:.1f} | {r['n']} | " + " | ".join(cells) + " |")
    atomic_write(out_dir / "table.md", "\n".join(md) + "\n")
    return [out_dir / "table.csv", out_dir / "table.md"]


def render_experiment(store_dir, out_dir) -> list[Path]:
    """Figure 2, the per-layer distances and the table of one results store (no training)."""
    from mixout_theory.sweep import load_records, summarise

    records = load_records(store_dir)
    if not records:
        return []
    meta = experiment_meta(records)
    summary = summarise(records)
    out = Path(out_dir) / f"experiment-{meta['profile']}-{meta['source']}"
    paths = _save(figure2(summary, meta), out, "figure2")
    paths += _save(layer_distance_figure(summary, meta), out, "layer_distances")
    return paths + summary_table(summary, meta, out)


def render_all(out_dir, results=None) -> list[Path]:
    """Every figure: the theory figures, and the experiment figures of the newest store per profile
    and source found under ``results`` (rendered from stored records only)."""
    paths = render_theory_figures(out_dir)
    if results is not None and Path(results).exists():
        from mixout_theory.sweep import find_stores

        seen = set()
        for store in find_stores(results):  # newest first
            kind = store.name.rsplit("-", 1)[0]  # profile-source
            if kind not in seen:
                seen.add(kind)
                paths += render_experiment(store, out_dir)
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

"""The fidelity study's figures: one per panel of the paper's Figure 2, every variant's curves
overlaid with the paper's values (the endpoints read off its figure, never points between them)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from mixout_theory.experiment import data
from mixout_theory.experiment.fidelity import FIGURE, FidelityResults, _mean
from mixout_theory.figures import save_figure

#: (stem, [(metric, panel title, y label)], the paper's endpoints [(p, value, method or None for both)])
PANELS = (
    ("fidelity_distance", [("dist_all", "(a) whole parameter vector", "||w_ft - w_pre||^2"),
                           ("dist_mixed", "(a) mixed weights only", "||w_ft - w_pre||^2 over the mixed weights")],
     [(0.0, 1.55, None), (0.8, 2.51, "dropout"), (0.8, 0.40, "mixout")]),
    ("fidelity_target", [("target_val_acc", "(b) MNIST validation accuracy", "accuracy (fraction correct)")],
     [(0.0, 0.972, None), (0.8, 0.917, "dropout"), (0.8, 0.970, "mixout")]),
    ("fidelity_source", [("source_val_acc", "(c) source-task validation accuracy", "accuracy (fraction correct)")],
     [(0.0, 0.72, None), (0.8, 0.522, "dropout")]),
)  # fmt: skip
STYLE = {"mixout": dict(ls="-", marker="o"), "dropout": dict(ls="--", marker="s")}


def panel_figure(res: FidelityResults, panels, paper) -> Figure:
    names = list(res.variants)
    colors = [f"C{i}" for i in range(len(names))]
    fig = Figure(figsize=(6.2 * len(panels), 5.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, title, ylabel) in zip(axes, panels):
        for name, color in zip(names, colors):
            records = [r for r in res.runs if r["variant"] == name]
            ps = sorted({r["p"] for r in records})
            for method, style in STYLE.items():
                ax.plot(ps, [_mean(records, method, p, metric) for p in ps], color=color, lw=1.4, ms=3.5,
                        label=f"{name}: {method}", **style)
        for i, (p, value, method) in enumerate(paper):
            ax.errorbar([p], [value], yerr=0.01, color="black", marker="X", ms=8, ls="none", capsize=3,
                        label=f"paper, {FIGURE} (+-0.01)" if i == 0 else None)
            ax.annotate(method or "both", (p, value), textcoords="offset points", xytext=(6, 4), fontsize=7)
        ax.set(xlabel="p (dropout or mixout probability)", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7)
    fig.suptitle(f"Figure 2 under each reading of the protocol, {res.profile} profile; mean over restarts\n"
                 f"{data.task_line(res.source_name)} (each variant's source orientation in its name)", fontsize=9)
    return fig


def save_all(res: FidelityResults, out_dir) -> list[Path]:
    """Every panel's figure as PNG and PDF into ``out_dir``."""
    paths = []
    for stem, panels, paper in PANELS:
        paths += save_figure(panel_figure(res, panels, paper), Path(out_dir), stem)
    return paths

"""The fidelity study's export: its tables, its report (``fidelity.md``) and its figures.

The figures: one per panel of the paper's Figure 2, every variant's curves overlaid with the paper's
values (the endpoints read off its figure, never points between them)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from mixout_theory.experiment import data, fidelity
from mixout_theory.experiment.fidelity import CLAIMS, FIGURE, LEVEL_TOLERANCE, SIZE_FACTOR, FidelityResults
from mixout_theory.experiment.machine import machines_of, run_env
from mixout_theory.experiment.store import atomic_write, atomic_write_csv, write_meta
from mixout_theory.figures import save_figure

__all__ = ["PANELS", "panel_figure", "export_fidelity", "report_markdown"]

#: (stem, [(metric, panel title, y label)], the paper's endpoints [(p, value, method or None for both)])
PANELS = (
    (
        "fidelity_distance",
        [
            ("dist_all", "(a) whole parameter vector", "||w_ft - w_pre||^2"),
            ("dist_mixed", "(a) mixed weights only", "||w_ft - w_pre||^2 over the mixed weights"),
        ],
        [(0.0, 1.55, None), (0.8, 2.51, "dropout"), (0.8, 0.40, "mixout")],
    ),
    (
        "fidelity_target",
        [("target_val_acc", "(b) MNIST validation accuracy", "accuracy (fraction correct)")],
        [(0.0, 0.972, None), (0.8, 0.917, "dropout"), (0.8, 0.970, "mixout")],
    ),
    (
        "fidelity_source",
        [("source_val_acc", "(c) source-task validation accuracy", "accuracy (fraction correct)")],
        [(0.0, 0.72, None), (0.8, 0.522, "dropout")],
    ),
)
STYLE = {"mixout": dict(ls="-", marker="o"), "dropout": dict(ls="--", marker="s")}


def panel_figure(res: FidelityResults, panels, paper) -> Figure:
    fig = Figure(figsize=(max(11.0, 6.2 * len(panels)), 6.0), layout="constrained")  # room for the legend
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, title, ylabel) in zip(axes, panels, strict=False):
        for i, name in enumerate(res.variants):
            records = [r for r in res.runs if r["variant"] == name]
            ps = sorted({r["p"] for r in records})
            for method, style in STYLE.items():
                means = [fidelity.group_mean(records, method, p, metric) for p in ps]
                ax.plot(ps, means, color=f"C{i}", lw=1.4, ms=3.5, label=f"{name}: {method}", **style)
        for i, (p, value, method) in enumerate(paper):
            label = f"paper, {FIGURE} (+-0.01)" if i == 0 else None
            mark = dict(color="black", marker="X", ms=8, ls="none", capsize=3, label=label)
            ax.errorbar([p], [value], yerr=0.01, **mark)
            ax.annotate(method or "both", (p, value), textcoords="offset points", xytext=(6, 4), fontsize=7)
        ax.set(xlabel="p (dropout or mixout probability)", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3 if len(panels) > 1 else 2, fontsize=7)
    fig.suptitle(
        f"Figure 2 under each reading of the protocol, {res.profile} profile; mean over restarts\n"
        f"{data.task_line(res.source_name)} (each variant's source orientation in its name)",
        fontsize=9,
    )
    return fig


def export_fidelity(res: FidelityResults, out_dir) -> dict:
    """``runs.csv``, ``claims.csv``, ``scores.csv``, ``fidelity.md``, the figures (PNG + PDF) and
    ``meta.json`` (variants, store keys, w_pre accuracies, the tables' sha256) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranked = fidelity.scores(res.rows)
    for name, rows in (("runs.csv", res.runs), ("claims.csv", res.rows), ("scores.csv", ranked)):
        atomic_write_csv(out / name, rows, list(dict.fromkeys(k for r in rows for k in r)))
    atomic_write(out / "fidelity.md", report_markdown(res, ranked))
    paths = []
    for stem, panels, paper in PANELS:  # every panel's figure, PNG and PDF
        paths += save_figure(panel_figure(res, panels, paper), out, stem)
    rules = {"level": f"within {LEVEL_TOLERANCE} of the paper's", "size": f"within a factor {SIZE_FACTOR}"}
    meta = {"profile": res.profile, "source_name": res.source_name, "variants": res.variants, "rules": rules}
    meta |= {"paper_steps": fidelity.PAPER_STEPS, "env": run_env(), "machines": machines_of(res.runs)}
    write_meta(out, meta, fidelity.EXPORT_TABLES)
    files = {"runs": out / "runs.csv", "claims": out / "claims.csv", "report": out / "fidelity.md"}
    return files | {"figures": paths}


def _cell(r: dict) -> str:
    if not math.isfinite(r["ours"]):
        return "not measured"
    mark = {"yes": "**yes**", "no": "no"}[r["reproduced"]]
    return f"{r['ours']:.3f} ({r['ratio']:.2f}x) {mark}"


def report_markdown(res: FidelityResults, ranked: list[dict]) -> str:
    """The report: the rules, the scores, and every claim beside the paper for every variant."""
    names = list(res.variants)
    lines = [
        f"# Figure 2 reconciled: {res.profile} profile, {data.task_line(res.source_name)}",
        "",
        f"Each claim: ours (ours / paper) and whether it is reproduced: a level within {LEVEL_TOLERANCE}, "
        f"a size within a factor {SIZE_FACTOR}. Paper values from its text or {FIGURE} (+-0.01).",
        "",
        "| variant | reproduced / measured | median abs log ratio | store |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['variant']} | {s['reproduced']} / {s['measured']} | {s['median_abs_log_ratio']:.3f} | "
        f"{res.variants[s['variant']]['store']} |"
        for s in ranked
    ]
    lines += ["", "| claim | paper | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for c in CLAIMS:
        cells = {r["variant"]: _cell(r) for r in res.rows if r["claim"] == c.key}
        paper = f"{c.paper:.3f} ({'text' if c.source == fidelity.TEXT else 'figure'})"
        lines.append(f"| {c.what} | {paper} | " + " | ".join(cells.get(n, "") for n in names) + " |")
    held = {r["claim"] for r in res.rows if r["reproduced"] == "yes"}
    none = [c.what for c in CLAIMS if c.key not in held]
    lines += ["", "Reproduced by no variant: " + ("; ".join(none) if none else "none") + "."]
    return "\n".join(lines) + "\n"

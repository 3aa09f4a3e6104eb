"""The theory figures (Theorem 1 / Corollary 1.1, Supplement D), recomputed in seconds.

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299). Equation numbers are the paper's.

* :func:`plot_penalty_vs_p` -- on one axes: the Monte Carlo penalty ``E L(Phi) - L(w)`` with its 95%
  interval against the Corollary 1.1 bound ``m p / (2 (1 - p)) ||w - u||^2`` (eq. 9), and the exact
  penalty where there is one.
* :func:`plot_line_fit` -- on one axes: Supplement D, the least-squares line fitted under
  mixout(u, p) moves from the data's line to the target's line as ``p`` grows.
* :func:`theory_penalty_figure`, :func:`line_fit_figure` -- whole figures (``matplotlib.figure.Figure``
  objects, no pyplot state, so any backend, notebooks' inline one included, is left alone).
* :func:`render_theory_figures` -- write them as PNG and PDF files; :func:`save_figure` writes any.

All computation lives in :mod:`mixout_theory.cases`; this module only draws. The experiment's
figures are in :mod:`mixout_theory.experiment.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mixout_theory.cases import (
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
    "save_figure",
    "FORMATS",
]

#: the p grid of the theory figure, 0.05 .. 0.95 (p = 0 has zero penalty and no place on a log axis)
DEFAULT_PS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))
FORMATS = ("png", "pdf")


def _p_range(ps) -> str:
    ps = np.asarray(ps, dtype=float)
    return f"p in [{ps.min():.2g}, {ps.max():.2g}] ({len(ps)} values)"


def plot_penalty_vs_p(
    ax, curve: PenaltyCurve, logy: bool = True, title: str | None = None, legend: bool = True
):
    """Draw one :class:`~mixout_theory.cases.PenaltyCurve` on ``ax`` and return ``ax``.

    Monte Carlo mean with its 95% interval (band and error bars), the Corollary 1.1 bound (eq. 9,
    dashed) and, when known, the exact penalty (dotted). ``logy`` drops ``p = 0`` (zero penalty).
    The title names the case, the ``p`` range and the number of Monte Carlo samples.
    """
    ps = np.asarray(curve.ps, dtype=float)
    keep = ps > 0 if logy else np.ones_like(ps, dtype=bool)
    x = ps[keep]
    ax.fill_between(x, curve.lo[keep], curve.hi[keep], color="C0", alpha=0.25, linewidth=0)
    ax.errorbar(
        x,
        curve.mean[keep],
        yerr=[curve.mean[keep] - curve.lo[keep], curve.hi[keep] - curve.mean[keep]],
        fmt="o",
        ms=3,
        color="C0",
        capsize=2,
        label=f"Monte Carlo E L(Phi) - L(w), 95% CI (n={curve.n_samples})",
    )
    ax.plot(x, curve.bound[keep], "--", color="C3", label="Corollary 1.1 bound m p / (2(1-p)) ||w-u||^2")
    if curve.exact is not None:
        ax.plot(x, curve.exact[keep], ":", color="k", label="exact (quadratic, closed form)")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("mixout probability p")
    ax.set_ylabel("penalty E L(Phi(w)) - L(w)  [units of L]")
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
    for p, (a, b), c in zip(fit.ps, fit.fits.tolist(), colors, strict=False):
        ax.plot(grid, a * grid + b, color=c, lw=1.2, label=f"mixout(u, p={p:g}) fit: {_line(a, b)}")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ps_text = ", ".join(f"{p:g}" for p in fit.ps)
    ax.set_title(
        title
        or f"Supplement D: least squares under mixout(u, p), p in {{{ps_text}}}\n"
        f"exact minimiser of E L(Phi(w)), m = lambda_min(X^T X / n) = {fit.m:.3f}",
        fontsize=9,
    )
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
    for ax, curve in zip(axes, curves, strict=False):
        plot_penalty_vs_p(ax, curve, logy=logy)
    for ax in axes[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Theorem 1 / Corollary 1.1 (eq. 9): Monte Carlo mixout penalty vs the lower bound", fontsize=11
    )
    return fig


def line_fit_figure(fit: LineFit) -> Figure:
    """Supplement D's line-fit picture (see :func:`plot_line_fit`) as a standalone ``Figure``."""
    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    plot_line_fit(fig.subplots(), fit)
    return fig


def compute_theory_curves(ps=DEFAULT_PS, n_samples: int = 2000, seed: int = 0) -> list[PenaltyCurve]:
    """Penalty curves of the four standard cases (:func:`mixout_theory.cases.theory_cases`)."""
    return [penalty_curve(case, ps, n_samples, seed=seed + i) for i, case in enumerate(theory_cases(seed))]


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``out_dir/stem.png`` and ``.pdf`` (150 dpi) and return the paths. The PDF
    carries no creation date, so the same figure gives the same bytes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150, metadata={"CreationDate": None} if ext == "pdf" else None)
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
    paths = save_figure(
        theory_penalty_figure(compute_theory_curves(ps, n_samples, seed)), out_dir, "theorem1_penalty_vs_p"
    )
    paths += save_figure(line_fit_figure(line_fit_experiment()), out_dir, "supplement_d_line_fit")
    return paths

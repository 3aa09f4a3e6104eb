"""The theory figures: files are written, panels show what their titles say, no pyplot state."""

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from mixout_theory import cases as C
from mixout_theory import figures as F


@pytest.fixture(scope="module")
def small_curves():
    return F.compute_theory_curves(ps=(0.0, 0.3, 0.6, 0.9), n_samples=300, seed=0)


def test_penalty_panel_draws_bound_exact_and_states_case_p_range_and_samples(small_curves):
    fig = F.theory_penalty_figure(small_curves)
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4
    for ax, curve in zip(axes, small_curves, strict=False):
        title = ax.get_title()
        assert curve.label in title and "p in [0, 0.9]" in title and "300 masks" in title
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("Corollary 1.1" in t for t in labels)
        assert any("n=300" in t for t in labels)
        assert any("exact" in t for t in labels) == (curve.exact is not None)
        # the dashed bound line carries the bound values at p > 0 (log axis drops p = 0)
        bound_line = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
        np.testing.assert_allclose(bound_line.get_ydata(), curve.bound[curve.ps > 0])
        assert ax.get_yscale() == "log"


def test_line_fit_panel_has_one_line_per_p():
    fit = C.line_fit_experiment(ps=(0.0, 0.3, 0.6, 0.9))
    fig = F.line_fit_figure(fit)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum("mixout(u, p=" in t for t in labels) == 4
    assert any("true line" in t for t in labels) and any("target u" in t for t in labels)
    assert "p in {0, 0.3, 0.6, 0.9}" in ax.get_title()


def test_render_theory_figures_writes_png_and_pdf(tmp_path):
    backend = matplotlib.get_backend()
    paths = F.render_theory_figures(tmp_path / "figs", n_samples=200, ps=(0.2, 0.5, 0.8))
    assert [p.suffix for p in paths] == [".png", ".pdf", ".png", ".pdf"]
    for path in paths:
        assert path.exists() and path.stat().st_size > 5_000
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else head.startswith(b"%PDF")
    assert matplotlib.get_backend() == backend  # rendering never switches the caller's backend


def test_save_figure_writes_png_and_pdf(tmp_path):
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    paths = F.save_figure(fig, tmp_path / "new" / "dir", "stem")
    assert paths == [tmp_path / "new" / "dir" / "stem.png", tmp_path / "new" / "dir" / "stem.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes().startswith(b"%PDF")
    assert F.FORMATS and not hasattr(F, "render_all") and not hasattr(F, "_save")


def test_empty_curve_list_raises():
    with pytest.raises(ValueError, match="at least one curve"):
        F.theory_penalty_figure([])

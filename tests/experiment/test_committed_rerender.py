"""Every committed export under docs/results/ re-renders from its own tables: its tables and reports to
the same bytes, and its figures to the same picture on the matplotlib and FreeType that drew them
(others may lay text out otherwise, so there the figures are not compared).

The committed ablations are the exception, named here: their export predates exact run tables and
keeps six significant digits of each run, while its summaries were computed from the stores' full
precision, so four summary files re-render with a last digit changed (an export written now keeps the
runs exact, and ``test_plots`` reads one back as the same results)."""

from pathlib import Path

import matplotlib
import matplotlib.style
import pytest
from matplotlib import ft2font
from matplotlib.testing.compare import compare_images

from mixout_theory.experiment import exports, fidelity, fidelity_report, theorem1, w_pre_spread
from mixout_theory.experiment.store import project_dir
from mixout_theory.figures import save_figure

COMMITTED = project_dir("docs") / "results"
FROM_FULL_PRECISION = {
    "new_head_summary.csv",
    "small_data_summary.csv",
    "trajectory_summary.csv",
    "tables.md",
}
#: what drew the committed figures: matplotlib (major.minor) and the FreeType it renders text with
DREW_THEM = ("3.11", "2.14.3")
#: RMS difference (of 0-255 pixel values) a redrawn PNG may have: another CPU's rounding moves an edge by
#: a pixel's antialiasing; a series, label or panel missing or moved is far more
PIXEL_RMS = 1.0


@pytest.fixture(scope="module")
def redrawn(tmp_path_factory) -> dict[str, Path]:
    """Every committed export rendered again from its own tables: ``{export folder name: new folder}``
    (figure 2, fidelity and the ablations exported whole; Theorem 1 and the spread over w_pre drawn)."""
    out, again = tmp_path_factory.mktemp("again"), {}

    def into(name):
        again[name] = out / name
        return COMMITTED / name, again[name]

    with matplotlib.style.context("default"):  # the figures as drawn, whatever the user's matplotlibrc
        folder, to = into("figure2-paper-stand-in")
        records, meta = exports.load_figure2(folder)
        exports.export_experiment(
            records, to, {"config": meta["config"], "pretrain": meta.get("pretrain")}, "std"
        )
        folder, to = into("fidelity-paper-stand-in")
        fidelity_report.export_fidelity(fidelity.load_fidelity(folder), to)
        folder, to = into("ablations")
        exports.export_ablations(exports.load_ablations(folder), to)
        folder, to = into("theorem1-paper-stand-in")
        for stem, fig in exports.theorem1_figures(theorem1.load_tables(folder)).items():
            save_figure(fig, to, stem)
        folder, to = into("w_pre-spread-paper-stand-in")
        rows, _, meta = w_pre_spread.load_spread(folder)
        save_figure(w_pre_spread.spread_figure(rows, meta), to, "figure2_w_pre")
    return again


def _same_text_files(name: str, again: Path, skip=()) -> int:
    committed = COMMITTED / name
    names = [p.name for p in committed.iterdir() if p.suffix in (".csv", ".md") and p.name != "README.md"]
    compared = [n for n in names if n not in skip]
    assert compared
    assert [n for n in compared if (again / n).read_bytes() != (committed / n).read_bytes()] == []
    return len(compared)


@pytest.mark.slow  # draws every committed figure again (~25 s, once for both tests)
def test_committed_exports_rerender_byte_identical(redrawn):
    assert _same_text_files("figure2-paper-stand-in", redrawn["figure2-paper-stand-in"]) == 3
    assert _same_text_files("fidelity-paper-stand-in", redrawn["fidelity-paper-stand-in"]) == 4
    assert _same_text_files("ablations", redrawn["ablations"], skip=FROM_FULL_PRECISION) == 5


@pytest.mark.slow
def test_committed_figures_redraw_the_same(redrawn):
    here = (".".join(matplotlib.__version__.split(".")[:2]), ft2font.__freetype_version__)
    if here != DREW_THEM:
        pytest.skip(f"the committed figures were drawn by matplotlib / FreeType {DREW_THEM}, not {here}")
    compared = 0
    for name, again in redrawn.items():
        pngs = sorted(p.name for p in (COMMITTED / name).glob("*.png"))
        assert pngs and pngs == sorted(p.name for p in again.glob("*.png")), name
        for png in pngs:
            differs = compare_images(str(COMMITTED / name / png), str(again / png), tol=PIXEL_RMS)
            assert differs is None, differs
            compared += 1
    assert compared == 12

"""Every committed export under docs/results/ re-renders from its own tables to the same bytes: its
tables and reports (figures too on the matplotlib that drew them, which a test cannot assume).

The committed ablations are the exception, named here: their export predates exact run tables and
keeps six significant digits of each run, while its summaries were computed from the stores' full
precision, so four summary files re-render with a last digit changed (an export written now keeps the
runs exact, and ``test_plots`` reads one back as the same results)."""

from pathlib import Path

import pytest

from mixout_theory.experiment import exports, fidelity, fidelity_report
from mixout_theory.experiment.store import project_dir

COMMITTED = project_dir("docs") / "results"
FROM_FULL_PRECISION = {
    "new_head_summary.csv",
    "small_data_summary.csv",
    "trajectory_summary.csv",
    "tables.md",
}


def _same_text_files(committed: Path, again: Path, skip=()) -> list[str]:
    names = [p.name for p in committed.iterdir() if p.suffix in (".csv", ".md") and p.name != "README.md"]
    compared = [n for n in names if n not in skip]
    assert compared
    assert [n for n in compared if (again / n).read_bytes() != (committed / n).read_bytes()] == []
    return compared


@pytest.mark.slow  # draws every committed figure again (~20 s)
def test_committed_exports_rerender_byte_identical(tmp_path):
    folder = COMMITTED / "figure2-paper-stand-in"
    records, meta = exports.load_figure2(folder)
    context = {"config": meta["config"], "pretrain": meta.get("pretrain")}
    exports.export_experiment(records, tmp_path / "f2", context, "std")
    assert len(_same_text_files(folder, tmp_path / "f2")) == 3

    folder = COMMITTED / "fidelity-paper-stand-in"
    fidelity_report.export_fidelity(fidelity.load_fidelity(folder), tmp_path / "fi")
    assert len(_same_text_files(folder, tmp_path / "fi")) == 4

    folder = COMMITTED / "ablations"
    exports.export_ablations(exports.load_ablations(folder), tmp_path / "ab")
    assert len(_same_text_files(folder, tmp_path / "ab", skip=FROM_FULL_PRECISION)) == 5

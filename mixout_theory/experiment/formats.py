"""The raw files' formats, read and written safely, and the data layer's errors.

* IDX ("ubyte") format of LeCun et al.'s MNIST files and of EMNIST (Cohen et al., 2017): a big-endian
  header ``0x00000803, N, 28, 28`` (images, uint8) or ``0x00000801, N`` (labels, uint8), then raw bytes.
* manifests in the ``sha256sum`` format; zip archives and gzip members, streamed.
* :class:`NumpyOnlyUnpickler` -- unpickles plain numpy arrays and refuses any other global, as a
  second line of defence after a file's sha256 has been checked.
* :class:`DataUnavailableError` / :class:`DataIntegrityError` -- each message names the file, says what to do.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mixout_theory.experiment.store import atomic_write, md5_file

SIDE = 28
#: IDX files by kind: (magic, header bytes, header layout, bytes per item); uint8 images 3-d, labels 1-d
IDX = {"images": (0x00000803, 16, ">IIII", SIDE * SIDE), "labels": (0x00000801, 8, ">II", 1)}


class DataError(Exception):
    """Base class of the data layer's errors (each message says which file and what to do)."""


class DataUnavailableError(DataError, FileNotFoundError):
    """No route to a dataset: not on disk, not supplied, and no download possible."""


class DataIntegrityError(DataError, ValueError):
    """A file exists but is truncated, altered or not what its name says (never silently replaced)."""


def write_idx_images(f: BinaryIO, images: np.ndarray) -> None:
    """Write uint8 images of shape (N, 28, 28) as an IDX3 stream."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise TypeError(f"IDX images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    f.write(struct.pack(">IIII", IDX["images"][0], *images.shape))
    f.write(memoryview(images).cast("B"))


def write_idx_labels(f: BinaryIO, labels: np.ndarray) -> None:
    """Write labels (values 0..255) of shape (N,) as an IDX1 stream."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"IDX labels must be 1-d with values in 0..255, got shape {labels.shape}")
    f.write(struct.pack(">II", IDX["labels"][0], labels.shape[0]))
    f.write(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())


def idx_bytes(kind: str, count: int) -> int:
    """Exact size in bytes of an uncompressed IDX file holding ``count`` 28x28 images or labels."""
    if kind not in IDX:
        raise ValueError(f"kind must be 'images' or 'labels', got {kind!r}")
    return IDX[kind][1] + count * IDX[kind][3]


def check_idx(path: Path, kind: str, count: int, what: str, shown: str | None = None) -> None:
    """Check an IDX file's header and exact size; raise :class:`DataIntegrityError` naming the file
    (``shown`` when ``path`` is a temporary copy, e.g. ``zip!member``)."""
    expected, (magic, header, layout, _) = idx_bytes(kind, count), IDX[kind]
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(header)
    want = (magic, count, SIDE, SIDE) if kind == "images" else (magic, count)
    got = struct.unpack(layout, head) if len(head) == header else None
    if got != want or size != expected:
        found = "unreadable header" if got is None else f"magic 0x{got[0]:08x}, dims {list(got[1:])}"
        fate = "It was left as it is; replace it with a good copy (see data/README.md)."
        if shown:
            fate = "Nothing was written; the source was left as it is."
        raise DataIntegrityError(
            f"{shown or path}: not a complete {what} file: expected {expected:,} bytes (magic "
            f"0x{want[0]:08x}, dims {list(want[1:])}), found {size:,} bytes ({found}). {fate}"
        )


def read_idx_labels(path: Path) -> np.ndarray:
    """Labels of an IDX1 file as a uint8 array (header already checked by :func:`check_idx`)."""
    with open(path, "rb") as f:
        f.seek(IDX["labels"][1])
        return np.frombuffer(f.read(), dtype=np.uint8)


def check_class_balance(path: Path, labels: np.ndarray, n_classes: int, per_class: int) -> None:
    """EMNIST Digits is balanced: every class 0..n-1 exactly ``per_class`` times."""
    if labels.size and int(labels.max()) >= n_classes:
        raise DataIntegrityError(
            f"{path}: label {int(labels.max())} found, but digits labels are 0..{n_classes - 1}: "
            "altered file or another EMNIST split. It was left as it is."
        )
    counts = np.bincount(labels, minlength=n_classes)
    if not np.all(counts == per_class):
        raise DataIntegrityError(
            f"{path}: class counts {counts.tolist()} but EMNIST Digits has exactly {per_class:,} per "
            "class: altered file or another EMNIST split. It was left as it is."
        )


def write_manifest(path: Path, digests: dict[str, str]) -> None:
    """Write ``<sha256>  <name>`` lines (the ``sha256sum`` format) atomically."""
    atomic_write(path, "".join(f"{h}  {name}\n" for name, h in sorted(digests.items())))


def read_manifest(path: Path) -> dict[str, str]:
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataIntegrityError(f"{path}: line {i} is not '<sha256>  <file name>': {line!r}")
        out[parts[1]] = parts[0]
    return out


class SizeLimitExceeded(DataIntegrityError):
    """A stream held more bytes than the file it should be (:func:`stream_copy`)."""


def stream_copy(src: BinaryIO, dst_path: Path, gunzip: bool, limit: int | None = None) -> None:
    """Copy a (possibly gzip-compressed) stream to ``dst_path``; CRC errors surface as exceptions.
    ``limit``: the most bytes the (decompressed) copy may hold; writing stops at the first chunk past
    it with :class:`SizeLimitExceeded`, so a zip bomb never fills the disk."""
    chunk = 1 << 22
    with open(dst_path, "wb") as out, gzip.GzipFile(fileobj=src) if gunzip else src as stream:
        written = 0
        while block := stream.read(chunk if limit is None else min(chunk, limit + 1 - written)):
            written += len(block)
            if limit is not None and written > limit:
                raise SizeLimitExceeded(f"holds more than the {limit:,} bytes expected")
            out.write(block)


def find_members(names: Iterable[str], wanted: Iterable[str]) -> dict[str, tuple[str, bool]]:
    """Map each wanted base name to an archive member ``(member, is_gzipped)`` whose base name is the
    wanted name (preferred) or the name plus ``.gz``, in any folder (NIST's zip uses ``gzip/``)."""
    first: dict[str, str] = {}  # base name -> the first member with it
    for name in names:
        first.setdefault(name.replace("\\", "/").rsplit("/", 1)[-1], name)
    found = {}
    for want in wanted:
        if want in first or want + ".gz" in first:
            found[want] = (first[want], False) if want in first else (first[want + ".gz"], True)
    return found


def open_zip(path: Path, known_md5: str | None, what: str) -> zipfile.ZipFile:
    """Open a zip archive, turning a truncated or non-zip file into a clear integrity error."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        size, md5 = path.stat().st_size, ""
        if known_md5:
            md5 = f" NIST's gzip.zip has md5 {known_md5}; this file's md5 is {md5_file(path)}."
        raise DataIntegrityError(
            f"{path}: not a readable zip archive ({e}; {size:,} bytes), so it cannot be {what}: "
            f"truncated or altered download?{md5} It was left as it is."
        ) from None


try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (and tuples/lists/numbers); any other global fails
    (used after the file's sha256 matched, so that even a wrong pin could not run code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at protocol 2 (harmless)
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data pickle")
        return self._ALLOWED[module, name]


def load_numpy_pickle(raw: bytes):
    """Unpickle bytes (latin1 strings, as Python 2 pickles need) with :class:`NumpyOnlyUnpickler`."""
    return NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()

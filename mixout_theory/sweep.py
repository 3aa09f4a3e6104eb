"""Pretraining, the p-sweep of the paper's Figure 2, and the results store they write to.

Protocol: paper Section 4 / Supplement C.1 (see ``shared/paper-notes.md`` section 3).

* :func:`pretrain` trains ``w_pre`` on the source task and keeps the best validation checkpoint;
  it is cached in the store with its configuration and reused.
* :func:`run_sweep` finetunes ``w_pre`` on MNIST for every (method, p, restart): p = 0 is the
  unregularised run, shared by both methods; restarts differ only in data order, and restart ``r``
  uses the same data order in every setting, so comparisons across p and method are paired.
* :class:`Store` keeps one folder per configuration hash; every finished run is one JSON record,
  written atomically as its ensemble chunk finishes, so an interrupted sweep resumes where it stopped
  and a changed configuration never mixes with old records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mixout_theory import __version__, models, training
from mixout_theory.profiles import PROFILES

METHODS = ("dropout", "mixout")
PAPER_PS = tuple(round(0.1 * k, 1) for k in range(9))  # 0.0, 0.1, ..., 0.8
#: The paper's selection of w_pre: every seed for every epoch budget, best final validation accuracy.
SEARCH_BUDGETS, SEARCH_SEEDS = range(1, 21), range(5)


@dataclass(frozen=True)
class SweepConfig:
    """Everything that determines the numbers of a sweep (its hash keys the results store).

    ``None`` sizes mean the whole split. ``pretrain_search`` runs the paper's selection (5 seeds x
    epoch budgets 1..20, best final validation accuracy); the default instead trains one seed for
    ``pretrain_epochs`` epochs and keeps the epoch with the best source validation accuracy.
    """

    profile: str = "paper"
    source: str = "stand-in"  # the source task actually used: "emnist" or "stand-in"
    source_train: int | None = None
    target_train: int | None = None
    eval_size: int | None = None
    pretrain_epochs: int = 10
    pretrain_seed: int = 0
    pretrain_search: bool = False
    finetune_epochs: int = 5
    ps: tuple = PAPER_PS
    restarts: int = 10
    batch_size: int = 32
    lr_pretrain: float = 1e-4
    lr_finetune: float = 5e-5
    weight_decay_pretrain: float = 0.01
    dropout_pretrain: float = 0.1
    warmup: float = 0.1
    dropout_placement: str = "after LayerNorm"
    normalisation: str = "per-task mean/std of the training split"
    data: str = ""  # fingerprint of the prepared data (see data_fingerprint)
    engine: str = training.ENGINE_VERSION  # how masks and data orders are drawn from the seeds

    def key(self) -> str:
        """Short hash of every field that changes the numbers."""
        return _hash(dataclasses.asdict(self))

    def pretrain_key(self) -> str:
        """Short hash of the fields that change ``w_pre``."""
        keep = ("source", "source_train", "eval_size", "pretrain_epochs", "pretrain_seed", "pretrain_search",
                "batch_size", "lr_pretrain", "weight_decay_pretrain", "dropout_pretrain", "warmup",
                "dropout_placement", "normalisation", "data", "engine")  # fmt: skip
        return _hash({k: getattr(self, k) for k in keep})


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def data_fingerprint(exp) -> str:
    """Hash of what the prepared data says about itself (sizes, seeds, checksums, constants)."""
    return _hash(_jsonable({"source": exp.source_key, "info": exp.info}))


def profile_config(profile: str, **overrides) -> SweepConfig:
    """The sizes of each profile: ``smoke`` (CI), ``quick`` (minutes), ``paper`` (full protocol)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    sizes = {
        # smoke: 1,250 finetuning steps; with fewer (e.g. 470), dropout(0.8) barely leaves w_pre
        # and so forgets less than mixout: the paper's regime needs the model to actually train.
        "smoke": dict(source_train=None, target_train=8000, eval_size=None, pretrain_epochs=3,
                      ps=(0.0, 0.3, 0.6, 0.8), restarts=4),
        "quick": dict(pretrain_epochs=5, restarts=4),
        "paper": dict(),
    }[profile]  # fmt: skip
    return SweepConfig(profile=profile, **{**sizes, **overrides})


# --------------------------------------------------------------------------------------------
# the store


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(path: Path, rows, columns, lineterminator: str = "\r\n") -> Path:
    """``rows`` (dicts) as a CSV table with ``columns`` (other keys ignored), via :func:`atomic_write`."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator=lineterminator)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())
    return path


class RunStore:
    """A folder of runs: ``config.json`` (written once) and ``runs/<run id>.json``, one record per
    finished run, each written atomically, so a rerun can skip what is ``done()``."""

    def __init__(self, folder: str | Path, config: dict):
        self.dir = Path(folder)
        self.runs = self.dir / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "config.json").exists():
            atomic_write(self.dir / "config.json", json.dumps(_jsonable(config), indent=1, sort_keys=True))

    def done(self) -> set[str]:
        return {p.stem for p in self.runs.glob("*.json")}

    def write(self, record: dict) -> None:
        atomic_write(self.runs / f"{record['run_id']}.json", json.dumps(_jsonable(record), indent=1, sort_keys=True))

    def _read(self) -> list[dict]:
        return _read_runs(self.dir)


def _read_runs(folder) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder, "runs").glob("*.json"))]


class Store(RunStore):
    """The sweep's store: ``root/<profile>-<source>-<config hash>/``, plus ``runs.csv``."""

    def __init__(self, root: str | Path, config: SweepConfig):
        self.config = config
        super().__init__(Path(root) / f"{config.profile}-{config.source}-{config.key()}", dataclasses.asdict(config))

    def records(self) -> list[dict]:
        return load_records(self.dir)

    def export_csv(self) -> Path:
        return export_csv(self.records(), self.dir / "runs.csv")


def load_records(folder: str | Path) -> list[dict]:
    """Every run record stored under ``folder`` (a store folder), sorted by method, p, seed."""
    return sorted(_read_runs(folder), key=lambda r: (r["method"], r["p"], r["seed"]))


def export_csv(records: list[dict], path: Path) -> Path:
    """One row per run, one column per scalar field (a tidy table)."""
    cols = sorted({k for r in records for k, v in r.items() if not isinstance(v, (dict, list))})
    first = ["run_id", "method", "p", "seed", "source", "profile"]
    return atomic_write_csv(path, records, [c for c in first if c in cols] + [c for c in cols if c not in first])


def find_stores(root: str | Path) -> list[Path]:
    """Store folders under ``root`` that hold at least one run, newest first."""
    root = Path(root)
    found = [d for d in root.glob("*-*") if d.is_dir() and any((d / "runs").glob("*.json"))]
    return sorted(found, key=lambda d: max(p.stat().st_mtime for p in (d / "runs").glob("*.json")), reverse=True)


# --------------------------------------------------------------------------------------------
# data


def _subset(split, n: int | None, seed: int):
    x, y = split
    if n is None or n >= x.shape[0]:
        return x, y
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]


def experiment_tensors(exp, config: SweepConfig) -> dict:
    """The (x, y) pairs the sweep uses, sized by the profile (fixed, seeded subsets)."""
    return {
        "source_train": _subset(_xy(exp.source.train), config.source_train, 1),
        "source_val": _subset(_xy(exp.source.val), config.eval_size, 2),
        "target_train": _subset(_xy(exp.target.train), config.target_train, 3),
        "target_val": _subset(_xy(exp.target.val), config.eval_size, 4),
        "target_test": _subset(_xy(exp.target.test), config.eval_size, 5),
    }


def _xy(split):
    return (split.x, split.y) if hasattr(split, "x") else tuple(split)


# --------------------------------------------------------------------------------------------
# pretraining


def pretrain(store_root, config: SweepConfig, tensors: dict, device="auto", progress=True) -> dict:
    """``w_pre``: best source-validation checkpoint, cached as ``pretrain-<hash>.pt`` and reused."""
    path = Path(store_root) / "pretrain" / f"{config.source}-{config.pretrain_key()}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)["params"]
    xs, ys = tensors["source_train"]
    xv, yv = tensors["source_val"]
    budgets = SEARCH_BUDGETS if config.pretrain_search else [config.pretrain_epochs]
    seeds = SEARCH_SEEDS if config.pretrain_search else [config.pretrain_seed]
    best = {"acc": -1.0}
    t0 = time.perf_counter()
    for epochs in budgets:
        members = [training.Member(dropout=config.dropout_pretrain, wdecay=config.weight_decay_pretrain,
                                   data_seed=s, mask_seed=10_000 + s) for s in seeds]  # fmt: skip

        def keep_best(epoch, params, epochs=epochs):
            acc = training.evaluate(params, xv, yv)["acc"]
            k = int(acc.argmax())
            # with the search, only a run's final epoch counts (each budget is its own run)
            if (not config.pretrain_search or epoch == epochs - 1) and acc[k] > best["acc"]:
                best.update(acc=float(acc[k]), epoch=epoch + 1, budget=epochs, seed=seeds[k],
                            params={n: v[k].detach().cpu().clone() for n, v in params.items()})  # fmt: skip

        training.train_ensemble(
            models.init_params(len(members), seed=1000 * config.pretrain_seed),
            members, xs, ys, epochs=epochs, lr=config.lr_pretrain, batch_size=config.batch_size,
            warmup=config.warmup, device=device,
            on_epoch_end=keep_best, progress=f"pretrain ({config.source}, {epochs} epochs)" if progress else False,
        )  # fmt: skip
    meta = {k: v for k, v in best.items() if k != "params"}
    meta.update(seconds=time.perf_counter() - t0, config=_jsonable(dataclasses.asdict(config)))
    buf = _to_bytes({"params": best["params"], "meta": meta})
    atomic_write(path, buf)
    atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True))
    return best["params"]


def _to_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# the sweep


def sweep_members(config: SweepConfig) -> list[tuple[str, dict, training.Member]]:
    """``(run_id, fields, Member)`` for every run of the sweep; p = 0 appears once (method "none")."""
    runs = []
    for seed in range(config.restarts):
        for p in config.ps:
            for method in ("none",) if p == 0 else METHODS:
                mask_seed = int(hashlib.sha256(f"{method}/{p}/{seed}".encode()).hexdigest()[:8], 16)
                member = training.Member(
                    dropout=p if method == "dropout" else 0.0,
                    mixout=p if method == "mixout" else 0.0,
                    data_seed=seed,
                    mask_seed=mask_seed,
                )
                runs.append((f"{method}-p{p:.2f}-seed{seed}", {"method": method, "p": p, "seed": seed}, member))
    return runs


def run_sweep(
    store_root,
    config: SweepConfig,
    tensors: dict,
    w_pre: dict,
    *,
    chunk: int = 17,
    workers: int = 1,
    device="auto",
    progress=True,
    source_name: str = "",
) -> Store:
    """Finetune ``w_pre`` for every run not yet in the store, ``chunk`` runs per batched ensemble.

    Each chunk's records are written as soon as it finishes, so an interrupted sweep keeps them.
    ``workers`` is passed to :func:`training.train_ensemble` (CPU cores used side by side). Each run's
    numbers are the same for any ``chunk`` and ``workers`` to rounding (the matrix library may round
    differently for a different grouping of members), and bit for bit for the same ones.
    """
    store = Store(store_root, config)
    todo = [r for r in sweep_members(config) if r[0] not in store.done()]
    xt, yt = tensors["target_train"]
    steps = config.finetune_epochs * -(-xt.shape[0] // config.batch_size)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo) * steps, desc=f"sweep ({config.profile})", unit="member-step", unit_scale=True)
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        result = training.train_ensemble(
            w_pre, [m for _, _, m in part], xt, yt, epochs=config.finetune_epochs, lr=config.lr_finetune,
            batch_size=config.batch_size, warmup=config.warmup, target=w_pre, device=device, workers=workers,
            progress=bar if bar is not None else False,
        )  # fmt: skip
        for record in _records(part, result, w_pre, tensors, config, source_name, device):
            store.write(record)
    if bar is not None:
        bar.close()
    store.export_csv()
    return store


def run_env(device="auto") -> dict:
    """What a stored run was computed with: library, torch and Python versions, and the device the
    run used (``device`` resolved as :func:`training.train_ensemble` resolves it)."""
    return {"mixout_theory": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(training.resolve_device(device))}  # fmt: skip


def _records(part, result, w_pre, tensors, config, source_name, device) -> list[dict]:
    dist = models.squared_distances(result.params, w_pre)
    ev = {k: training.evaluate(result.params, *tensors[k]) for k in ("target_val", "target_test", "source_val")}
    env = run_env(device)
    out = []
    for e, (run_id, fields, _) in enumerate(part):
        rec = {"run_id": run_id, **fields, "source": config.source, "source_name": source_name,
               "profile": config.profile, "config": config.key()}  # fmt: skip
        rec.update({f"dist_{k}": float(v[e]) for k, v in dist.items() if "." not in k})
        rec.update({f"{k}_acc": float(v["acc"][e]) for k, v in ev.items()})
        rec.update({f"{k}_loss": float(v["loss"][e]) for k, v in ev.items()})
        rec.update(train_loss=float(result.train_loss[e]), chunk_seconds=result.seconds,
                   chunk_members=len(part), steps=result.steps, **env)  # fmt: skip
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------
# summaries and the whole pipeline

SUMMARY_METRICS = ("dist_all", "dist_mixed", "dist_fc1", "dist_fc2", "dist_fc3",
                   "target_val_acc", "target_test_acc", "source_val_acc")  # fmt: skip


def summarise(records: list[dict], metrics=SUMMARY_METRICS) -> list[dict]:
    """Mean and sample std (ddof=1) over restarts for every (method, p); the shared p = 0 run
    ("none") is listed under both methods, as in the paper's figure."""
    rows = []
    for method in METHODS:
        ps = sorted({r["p"] for r in records})
        for p in ps:
            group = [r for r in records if r["p"] == p and r["method"] in ((method, "none") if p == 0 else (method,))]
            if not group:
                continue
            row = {"method": method, "p": p, "n": len(group)}
            for m in metrics:
                vals = torch.tensor([r[m] for r in group], dtype=torch.float64)
                row[f"{m}_mean"] = float(vals.mean())
                row[f"{m}_std"] = float(vals.std()) if len(vals) > 1 else 0.0
            rows.append(row)
    return rows


def figure2_claims(records: list[dict]) -> dict:
    """Check, on stored runs, what the theory and the paper's Figure 2 claim.

    1. mixout's squared distance to ``w_pre`` over the mixed weights (``dist_mixed``) falls as p
       grows, in every restart; ``mixed_distance_margin`` is the smallest drop of the mean between
       neighbouring p, in units of the larger of the two standard deviations.
    2. mixout's source validation accuracy is at least dropout's at every p > 0 (restart means;
       ``source_acc_gaps`` maps p to mean(mixout - dropout), paired by restart).
    """
    mix = [r for r in records if r["method"] in ("mixout", "none")]
    ps = sorted({r["p"] for r in mix})
    seeds = sorted({r["seed"] for r in mix})
    dist = {(r["seed"], r["p"]): r["dist_mixed"] for r in mix}
    every = all(dist[s, a] > dist[s, b] for s in seeds for a, b in zip(ps, ps[1:]))
    rows = {r["p"]: r for r in summarise(records, metrics=("dist_mixed",)) if r["method"] == "mixout"}
    margin = min(
        (rows[a]["dist_mixed_mean"] - rows[b]["dist_mixed_mean"]) / max(rows[a]["dist_mixed_std"], rows[b]["dist_mixed_std"], 1e-12)
        for a, b in zip(ps, ps[1:])
    )  # fmt: skip
    acc = {(r["method"], r["seed"], r["p"]): r["source_val_acc"] for r in records}
    gaps = {}
    for p in (p for p in ps if p > 0):
        diffs = [acc["mixout", s, p] - acc["dropout", s, p] for s in seeds if ("dropout", s, p) in acc]
        gaps[p] = round(sum(diffs) / len(diffs), 4)
    report = [f"mixout dist_mixed mean by p: " + ", ".join(f"{p}: {rows[p]['dist_mixed_mean']:.4f}" for p in ps),
              f"decreasing in every one of {len(seeds)} restarts: {every}; smallest drop = {margin:.1f} std",
              "source acc, mixout - dropout by p: " + ", ".join(f"{p}: {g:+.4f}" for p, g in gaps.items())]  # fmt: skip
    return {"mixed_distance_decreasing_every_restart": every, "mixed_distance_margin": margin,
            "source_acc_gaps": gaps, "source_acc_mixout_ge_dropout": all(g >= 0 for g in gaps.values()),
            "report": report}  # fmt: skip


def project_dir(name: str) -> Path:
    """``name`` inside this checkout when running from one (results/, figures/), else ``./name``."""
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file() and (repo / "mixout_theory").is_dir():
        return repo / name
    return Path(name)


def run_experiment(
    profile: str = "paper",
    *,
    data_root=None,
    results=None,
    source: str = "auto",
    emnist_from=None,
    device="auto",
    chunk: int = 17,
    workers: int | None = None,
    progress: bool = True,
    **overrides,
) -> Store:
    """Data, pretraining and the sweep for one profile; every stage resumes from what is stored.

    ``workers``: CPU cores each ensemble uses side by side (default: 2 when the machine has 2 or
    more cores, else 1)."""
    from mixout_theory import data

    results = project_dir("results") if results is None else Path(results)
    exp = data.load_experiment(root=data_root, source=source, emnist_from=emnist_from)
    config = profile_config(profile, source=exp.source_key, data=data_fingerprint(exp), **overrides)
    tensors = experiment_tensors(exp, config)
    w_pre = pretrain(results, config, tensors, device=device, progress=progress)
    if workers is None:
        workers = 2 if (os.cpu_count() or 1) >= 2 else 1
    return run_sweep(results, config, tensors, w_pre, chunk=chunk, workers=workers, device=device,
                     progress=progress, source_name=exp.source_name)  # fmt: skip


def reproduce(profile: str = "paper", *, results=None, figures_dir=None, **kwargs) -> Store:
    """:func:`run_experiment`, then every figure (theory and experiment) into ``figures_dir``."""
    from mixout_theory import figures

    results = project_dir("results") if results is None else Path(results)
    store = run_experiment(profile, results=results, **kwargs)
    figures.render_all(project_dir("figures") if figures_dir is None else Path(figures_dir), results=results)
    return store

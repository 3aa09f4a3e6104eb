"""The p-sweep of the paper's Figure 2 from a cached ``w_pre`` (:func:`pretrained`), and its results store.

Protocol: paper Section 4 / Supplement C.1 (Adam, lr 1e-4 pretraining / 5e-5 finetuning, batch 32,
10% warm-up then linear decay, 5 finetuning epochs, p in {0, 0.1, ..., 0.8}, 10 restarts).
:func:`run_sweep` finetunes ``w_pre`` on MNIST for every (method, p, restart): p = 0 is the unregularised
run, shared by both methods; restart ``r`` uses the same data order in every setting, so comparisons
across p and method are paired. :class:`SweepStore` keeps one folder per configuration hash, one JSON
record per run written as its ensemble finishes (a sweep resumes; configurations never mix).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from mixout_theory.experiment import engine, mlp, pretraining
from mixout_theory.experiment.data import check_orientation, oriented_name
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.machine import machines_of
from mixout_theory.experiment.store import (
    IntegrityError,
    RunStore,
    config_hash,
    export_csv,
    pending_chunks,
    read_config,
    read_json_object,
    read_runs,
    run_env,
    tensors_sha256,
    write_meta,
)
from mixout_theory.experiment.study import Context, profile_sizes
from mixout_theory.profiles import PROFILES

METHODS = ("dropout", "mixout")
PAPER_PS = tuple(round(0.1 * k, 1) for k in range(9))  # 0.0, 0.1, ..., 0.8
#: the numbers of every run that Figure 2 summarises (:func:`report.summarise`)
SUMMARY_METRICS = (
    *(f"dist_{k}" for k in ("all", "mixed", "fc1", "fc2", "fc3")),
    *(f"{k}_acc" for k in ("target_val", "target_test", "source_val")),
)


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
    data: str = ""  # fingerprint of the prepared data, its content included (see data_fingerprint)
    engine: str = engine.ENGINE_VERSION  # how masks and data orders are drawn from the seeds
    w_pre: str = ""  # content hash of the w_pre the runs start from (set by pretrained())
    orientation: str = "upright"  # the source images as MNIST's, or transposed (ORIENTATIONS)
    mixed_layers: str = "hidden"  # what mixout and dropout act on (MIXED_LAYERS)

    def __post_init__(self):
        check_orientation(self.orientation)
        if self.mixed_layers not in MIXED_LAYERS:
            choices = ", ".join(map(repr, MIXED_LAYERS))
            raise ValueError(f"mixed_layers must be one of {choices}, got {self.mixed_layers!r}")

    def _fields(self, names=None) -> dict:
        """The fields (all, or ``names``), without the later ones at their defaults: configurations
        from before those fields existed keep their keys (and their stored runs)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if names is None or k in names}
        return {k: v for k, v in d.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}

    def key(self) -> str:
        """Short hash of every field that changes the numbers."""
        return config_hash(self._fields())

    def pretrain_key(self) -> str:
        """Short hash of the fields that change ``w_pre``."""
        return config_hash(self._fields(PRETRAIN_FIELDS))

    @property
    def mixed(self) -> tuple:
        """The weights mixout mixes (and whose inputs dropout drops) under ``mixed_layers``."""
        return mlp.MIXED_BY_LAYERS[self.mixed_layers]


#: What mixout and dropout act on: the hidden layers (fc2 / fc3 mixed, dropout on the hidden units:
#: the paper's description) or every Linear layer (fc1 too: the input pixels).
MIXED_LAYERS = tuple(mlp.MIXED_BY_LAYERS)
#: The fields that change ``w_pre``.
PRETRAIN_FIELDS = (
    "source source_train eval_size pretrain_epochs pretrain_seed pretrain_search batch_size lr_pretrain "
    "weight_decay_pretrain dropout_pretrain warmup dropout_placement normalisation data engine orientation"
).split()
#: Fields added after results were stored, with the defaults that leave those results' keys alone.
LATER_FIELDS = {"orientation": "upright", "mixed_layers": "hidden"}


def data_fingerprint(exp) -> str:
    """Hash of what the prepared data says about itself (sizes, seeds, checksums, constants) and of its
    content (the cache file's verified sha256, ``info["cache_sha256"]``)."""
    return config_hash({"source": exp.source_key, "info": exp.info})


#: What each profile means for the sweep (overrides of :class:`SweepConfig`'s paper-size defaults):
#: ``smoke`` (CI, about a minute), ``quick`` (minutes), ``paper`` (the full protocol). Smoke has 1,250
#: finetuning steps; with fewer (e.g. 470), dropout(0.8) barely leaves w_pre and so forgets less than
#: mixout: the paper's regime needs the model to actually train.
SIZES = {
    "smoke": dict(target_train=8000, pretrain_epochs=3, ps=(0.0, 0.3, 0.6, 0.8), restarts=4),
    "quick": dict(pretrain_epochs=5, restarts=4),
    "paper": dict(),
}


def profile_config(profile: str, **overrides) -> SweepConfig:
    """The sweep's configuration for a profile (:data:`SIZES`), with ``overrides``."""
    return SweepConfig(profile=profile, **{**profile_sizes(SIZES, profile), **overrides})


# --------------------------------------------------------------------------------------------
# the store


class SweepStore(RunStore):
    """The sweep's store: ``root/<profile>-<source>-<config hash>/``, plus ``runs.csv``."""

    REQUIRED = ("run_id", "method", "p", "seed", "source", "profile", "config", *SUMMARY_METRICS)

    def __init__(self, root: str | Path, config: SweepConfig):
        self.config, folder = config, Path(root) / f"{config.profile}-{config.source}-{config.key()}"
        super().__init__(folder, dataclasses.asdict(config))

    def records(self) -> list[dict]:
        return load_records(self.dir)

    def export_csv(self) -> Path:
        return export_csv(self.records(), self.dir / "runs.csv")


def is_figure2_reading(config: dict) -> bool:
    """Whether a sweep configuration (``config.json``) is Figure 2's reading of the protocol (the
    source upright, the hidden layers mixed, the profile's finetuning epochs) rather than one of the
    fidelity study's variants."""
    profile = config.get("profile")
    epochs = profile_config(profile).finetune_epochs if profile in PROFILES else SweepConfig.finetune_epochs
    return all(config.get(k, v) == v for k, v in {**LATER_FIELDS, "finetune_epochs": epochs}.items())


def is_figure2_store(folder: str | Path) -> bool:
    """Whether a sweep store holds Figure 2: its reading (:func:`is_figure2_reading`) from the ``w_pre``
    of pretraining seed 0 (the other seeds of ``reproduce --pretrain-seeds`` are :mod:`w_pre_spread`'s)."""
    config = read_config(folder)
    return is_figure2_reading(config) and config.get("pretrain_seed", 0) == SweepConfig.pretrain_seed


def is_complete(folder: str | Path) -> bool:
    """Whether a sweep store holds every run of its configuration's run list (no shard still missing)."""
    planned = _run_list(folder)
    return len(read_runs(folder, SweepStore.REQUIRED, planned)) == len(planned)  # only planned runs count


def stored_config(folder: str | Path) -> SweepConfig:
    """The configuration a sweep store's ``config.json`` records, checked against the key its folder is
    named for (an altered ``config.json`` is one line naming it)."""
    config, path = read_config(folder), Path(folder) / "config.json"
    try:
        config = SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    except (TypeError, ValueError) as e:
        raise IntegrityError(f"{path}: not a sweep's configuration ({e})") from None
    if not Path(folder).name.endswith(f"-{config.key()}"):
        raise IntegrityError(f"{path}: does not hash to its folder's name (the file was altered)")
    return config


def load_records(folder: str | Path) -> list[dict]:
    """Every run record stored under ``folder`` (a sweep store folder) of its configuration's run list
    (another run's record is set aside), sorted by method, p, seed."""
    return sorted_records(read_runs(folder, SweepStore.REQUIRED, _run_list(folder)))


def _run_list(folder) -> list[str]:
    """The run ids of a sweep store's whole run list, from its (checked) configuration."""
    return [run_id for run_id, _, _ in sweep_members(stored_config(folder))]


def sorted_records(records: list[dict]) -> list[dict]:
    """Sweep records in the store's order: by method, p, seed."""
    return sorted(records, key=lambda r: (r["method"], r["p"], r["seed"]))


def store_context(folder: str | Path) -> dict:
    """What an export records about the runs of a store: its ``config.json`` and, when cached next to
    it, the pretraining's summary (``pretrain/<source>-<key>.json``: best epoch, accuracy, seconds)."""
    config, sweep_config = read_config(folder), stored_config(folder)
    pre = Path(folder).parent / "pretrain" / f"{sweep_config.source}-{sweep_config.pretrain_key()}.json"
    pretrain = None
    if pre.is_file():
        pretrain = {k: v for k, v in read_json_object(pre, "pretrain again").items() if k != "config"}
    return {"config": config, "pretrain": pretrain}


#: the exported tables whose sha256 ``meta.json`` records (``table.csv``: the Figure 2 summary)
EXPORT_TABLES = ("runs.csv", "table.csv")


def export_runs(records: list[dict], out_dir, context: dict, claims: dict) -> list[Path]:
    """``runs.csv`` (one row per run, every scalar field, lossless) and ``meta.json`` (``context`` from
    :func:`store_context`, the Figure 2 ``claims``, the sha256 of :data:`EXPORT_TABLES`, the machine
    that exported (``env``) and the machines the runs were computed on) into ``out_dir``;
    ``table.csv`` must already be there."""
    out = Path(out_dir)
    export_csv(records, out / "runs.csv")
    meta = dict(context, claims=claims, env=run_env(), machines=machines_of(records))
    return [out / "runs.csv", write_meta(out, meta, EXPORT_TABLES)]


# --------------------------------------------------------------------------------------------
# the sweep


def run_id_of(method: str, p: float, seed: int) -> str:
    """The id of one run of the sweep, e.g. ``mixout-p0.50-seed3`` (method ``none`` at p = 0)."""
    return f"{method}-p{p:.2f}-seed{seed}"


def sweep_members(config: SweepConfig) -> list[tuple[str, dict, engine.Member]]:
    """``(run_id, fields, Member)`` for every run of the sweep; p = 0 appears once (method "none")."""
    all_layers = config.mixed_layers == "all"  # fc1 too: the input pixels
    runs = []
    for seed in range(config.restarts):
        for p in config.ps:
            for method in ("none",) if p == 0 else METHODS:
                mask_seed = int(hashlib.sha256(f"{method}/{p}/{seed}".encode()).hexdigest()[:8], 16)
                rates = {m: p if m == method else 0.0 for m in METHODS}  # dropout, mixout
                inputs = {f"input_{m}": r for m, r in rates.items()} if all_layers else {}
                member = engine.Member(**rates, **inputs, data_seed=seed, mask_seed=mask_seed)
                runs.append((run_id_of(method, p, seed), {"method": method, "p": p, "seed": seed}, member))
    return runs


#: Runs per ensemble unless :class:`RunOptions` says otherwise: one restart's 17 runs of the paper's sweep.
CHUNK = 17


def run_sweep(
    store_root, config: SweepConfig, tensors: dict, w_pre: dict, options=RunOptions(), *, source_name=""
) -> SweepStore:
    """Finetune ``w_pre`` for every run not yet in the store, ``options.chunk`` runs per batched ensemble.

    Each chunk's records are written as it finishes. Chunks are fixed by the whole run list
    (:func:`store.pending_chunks`), so a resumed sweep trains the same ensembles, bit for bit. A run's
    numbers are the same for any ``chunk`` and ``workers`` to rounding (the matrix library may round
    differently for another grouping of members), and bit for bit for the same ones.
    """
    store = SweepStore(store_root, config)
    done, members = store.done(), sweep_members(config)
    store.planned = [run_id for run_id, _, _ in members]
    store.fix_chunk(options.chunk_or(CHUNK))
    chunks = pending_chunks(members, options.chunk_or(CHUNK), done, shard=options.shard)
    steps = config.finetune_epochs * -(-tensors["target_train"][0].shape[0] // config.batch_size)
    bar = engine.member_step_bar(options.progress, sum(map(len, chunks)) * steps, f"sweep ({config.profile})")
    for part in chunks:
        result = finetune(config, w_pre, [m for _, _, m in part], tensors, options, bar)
        for record in _records(part, result, w_pre, tensors, config, source_name, options.device):
            if record["run_id"] not in done:
                store.write(record)
    if bar is not None:
        bar.close()
    store.export_csv()
    return store


def finetune(config: SweepConfig, w_pre: dict, members: list, tensors: dict, options: RunOptions, progress):
    """One ensemble of ``members`` finetuning ``w_pre`` on the target training split with the sweep's
    protocol (Supplement C.1: Adam, ``lr_finetune``, batch 32, warm-up then linear decay); mixout
    mixes towards ``w_pre``. The result of :func:`engine.train_ensemble`."""
    fit = dict(epochs=config.finetune_epochs, lr=config.lr_finetune, batch_size=config.batch_size)
    run = dict(warmup=config.warmup, target=w_pre, device=options.device, workers=options.n_workers)
    return engine.train_ensemble(w_pre, members, *tensors["target_train"], progress=progress, **fit, **run)


def _records(part, result, w_pre, tensors, config, source_name, device) -> list[dict]:
    dist = mlp.squared_distances(result.params, w_pre, config.mixed)
    ev = {k: engine.evaluate(result.params, *tensors[k]) for k in ("target_val", "target_test", "source_val")}
    head = dict(source=config.source, source_name=source_name, profile=config.profile, config=config.key())
    head |= {k: getattr(config, k) for k in ("orientation", "mixed_layers", "finetune_epochs")}
    tail = dict(chunk_seconds=result.seconds, chunk_members=len(part), steps=result.steps, **run_env(device))
    out = []
    for e, (run_id, fields, _) in enumerate(part):
        rec = {"run_id": run_id, **fields, **head}
        rec.update({f"dist_{k}": float(v[e]) for k, v in dist.items() if "." not in k})
        rec.update({f"{k}_acc": float(v["acc"][e]) for k, v in ev.items()})
        rec.update({f"{k}_loss": float(v["loss"][e]) for k, v in ev.items()})
        out.append(dict(rec, train_loss=float(result.train_loss[e]), **tail))
    return out


# --------------------------------------------------------------------------------------------
# the whole experiment


def run_experiment(ctx: Context, **overrides) -> SweepStore:
    """Data, pretraining and the sweep for ``ctx.profile``; every stage resumes from what is stored.

    ``overrides``: fields of :class:`SweepConfig` (e.g. ``pretrain_search=True``)."""
    exp = ctx.experiment()
    config, tensors, w_pre = pretrained(ctx.results_dir, ctx.profile, exp, ctx.options, **overrides)
    name = oriented_name(exp.source_name, config.orientation)
    return run_sweep(ctx.results_dir, config, tensors, w_pre, ctx.options, source_name=name)


def pretrained(results, profile: str, exp, options: RunOptions = RunOptions(), **overrides):
    """``(config, tensors, w_pre)`` of ``profile`` on the prepared data ``exp``: the configuration
    (:func:`profile_config`, with ``overrides``), the tensors, and ``w_pre`` (:func:`pretrain`). The
    configuration records the content hashes of the data and of ``w_pre`` (``data``, ``w_pre``), so
    runs computed from other inputs never share a store folder."""
    config = profile_config(profile, source=exp.source_key, data=data_fingerprint(exp), **overrides)
    tensors = pretraining.experiment_tensors(exp, config)
    w_pre = pretraining.pretrain(results, config, tensors, options)
    return dataclasses.replace(config, w_pre=tensors_sha256(w_pre)[:16]), tensors, w_pre

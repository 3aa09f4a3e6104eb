"""Ablations: the paper's BERT / GLUE questions (20 restarts per setting, degenerate runs, Table 3's
new output layer; C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020, arXiv:1909.11299) asked on EMNIST Digits -> MNIST. Every run
trains in the batched engine (:func:`mixout_theory.experiment.engine.train_ensemble`) from the sweep's
cached ``w_pre`` (:func:`mixout_theory.experiment.pretraining.pretrain`), with the protocol of
Supplement C.1 (Adam, lr 5e-5, batch 32, 10% warm-up then linear decay to 0).

Studies (each a resumable store under ``results/ablations/`` with a ``context.json``: ``w_pre``'s
target test accuracy, the source task, the subset checksum; so figures render without training):

* ``small_data`` -- fixed nested target subsets (100, 300, 1,000, 3,000 images), 20 restarts, for
  :data:`SMALL_DATA_SETTINGS` (the usual recipe, L2-SP, mixout(w_pre, p), mixout + L2-SP); failed
  runs are counted by :func:`failure_thresholds`.
* ``new_head`` -- the 100->10 layer re-initialised (``N(0, 0.02^2)``, bias 0) before finetuning, with
  mixout(w_pre, 0.7) on fc2 and, on the new head, nothing, dropout(0.7) on its inputs, or
  mixout(w_0, 0.7) towards its own initialisation ``w_0`` (Table 3's design, :data:`HEAD_SETTINGS`).
* ``trajectory`` -- the L2 coefficient that mixout(w_pre, p) implies along a finetuning run (eq. 9
  read backwards): ``m_t = 2 (E L(Phi(w_t)) - L(w_t)) / ((p / (1 - p)) ||w_t - w_pre||^2)`` on the
  mixed weights, at epoch-end checkpoints (:func:`mixout_theory.experiment.effective_l2.effective_l2`).

Summaries and claims: :mod:`~mixout_theory.experiment.report`; figures and exported tables:
:mod:`~mixout_theory.experiment.plots`.

Step budget: every subset trains for the steps of ``reference_epochs`` (5) epochs of the
``reference_size`` (3,000) subset, about 470: 3,000 images get the paper's 5 epochs, 100 images 118.
The paper's 5 epochs of 100 images would be 20 steps at lr 5e-5, too few for any regulariser to
matter (the weights move at most about ``lr * steps``); fixed steps keep the regularisers' room to
act, and the learning-rate schedule, the same for every size.

Pairing: restart ``r`` uses data order ``data_seed = r``, mask stream ``mask_seed = 1000 + r`` and
(new head) head initialisation seed ``5000 + r`` in every setting and at every size.

Weight decay is *coupled* (the engine adds ``lambda (w - u)`` to the gradient before Adam, on the
three Linear weights only): the gradient of :func:`mixout_theory.penalty.wdecay`, the loss
``L(w) + (lambda / 2) ||w - u||^2`` that Corollary 1.1 compares mixout with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mixout_theory.experiment import engine, mlp, sweep
from mixout_theory.experiment.effective_l2 import effective_l2
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.pretraining import seeded_subset
from mixout_theory.experiment.store import (
    IntegrityError,
    RunStore,
    atomic_write,
    config_hash,
    pending_chunks,
    project_dir,
    read_config,
    read_json_object,
    run_env,
)
from mixout_theory.experiment.study import Context, profile_sizes

__all__ = ["STUDIES", "Setting", "SMALL_DATA_SETTINGS", "HEAD_SETTINGS", "AblationConfig", "ablation_config"]
__all__ += ["AblationStore", "steps_budget", "epochs_for", "nested_subsets", "ablation_tensors", "head_init"]
__all__ += ["run_small_data", "run_new_head", "run_trajectory", "run_ablations", "AblationResults"]
__all__ += ["load_stored", "subset_sha256"]

STUDIES = ("small_data", "new_head", "trajectory")
MASK_SEED0 = 1000
HEAD_SEED0 = 5000
SUBSET_SEED = 11


# --------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class Setting:
    """One regularisation recipe, as engine members.

    ``dropout`` / ``mixout``: one p or a pair (hidden layer 1 -> fc2, hidden layer 2 -> fc3), as in
    :class:`mixout_theory.experiment.engine.Member`. ``wdecay``: lambda of ``wdecay(u, lambda)`` with
    ``u = 0`` (``wdecay_to="origin"``) or ``u = w_pre`` (``"w_pre"``). ``head``: ``"pretrained"``
    keeps the pretrained 100->10 layer, ``"new"`` re-initialises it; mixout of a new head mixes
    towards its own initialisation ``w_0``.
    """

    name: str
    label: str
    dropout: float | tuple = 0.0
    mixout: float | tuple = 0.0
    wdecay: float = 0.0
    wdecay_to: str = "origin"
    head: str = "pretrained"

    def __post_init__(self):
        for name, allowed in (("wdecay_to", ("origin", "w_pre")), ("head", ("pretrained", "new"))):
            if (value := getattr(self, name)) not in allowed:
                raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, got {value!r}")

    def member(self, restart: int) -> engine.Member:
        """The engine member of restart ``restart`` (seeds shared by every setting: paired runs)."""
        rates = {k: getattr(self, k) for k in ("dropout", "mixout", "wdecay")}
        return engine.Member(**rates, data_seed=restart, mask_seed=MASK_SEED0 + restart)

    @property
    def group(self) -> str:
        """Settings of one group share the engine's (single) wdecay target and can train together."""
        return self.wdecay_to if self.wdecay > 0 else "any"


def _mixout(p: float) -> Setting:
    return Setting(f"mixout{p:g}", f"mixout(w_pre, {p:g})", mixout=p)


SMALL_DATA_SETTINGS = (
    Setting("dropout0.1+wd0.01", "dropout(0.1) + wdecay(0, 0.01)", dropout=0.1, wdecay=0.01),
    *(Setting(f"l2sp{w:g}", f"wdecay(w_pre, {w:g})", wdecay=w, wdecay_to="w_pre") for w in (0.01, 0.1, 1.0)),
    *map(_mixout, (0.5, 0.7, 0.8, 0.9)),
    Setting(
        "mixout0.8+l2sp0.01",
        "mixout(w_pre, 0.8) + wdecay(w_pre, 0.01)",
        mixout=0.8,
        wdecay=0.01,
        wdecay_to="w_pre",
    ),
)

HEAD_SETTINGS = (
    Setting("head-none", "new head: no regularisation", mixout=(0.7, 0.0), head="new"),
    Setting(
        "head-dropout0.7",
        "new head: dropout(0.7) on its inputs",
        dropout=(0.0, 0.7),
        mixout=(0.7, 0.0),
        head="new",
    ),
    Setting("head-mixout-w0-0.7", "new head: mixout(w_0, 0.7)", mixout=(0.7, 0.7), head="new"),
)


# --------------------------------------------------------------------------------------------
# configuration and store


@dataclass(frozen=True)
class AblationConfig:
    """Everything that determines the numbers of the three studies (hashed per study into the store).

    ``sizes`` are nested subsets of the target training split (``subset_seed``); every size trains
    for :func:`steps_budget` steps (``reference_epochs`` epochs of ``reference_size`` images).
    ``test_size=None``: the whole target test set (10,000 MNIST images). ``pretrain`` is the key of
    the sweep's pretraining that gave ``w_pre``; ``data`` the data fingerprint.
    """

    profile: str = "paper"
    source: str = "stand-in"
    data: str = ""
    pretrain: str = ""
    w_pre: str = ""  # content hash of w_pre (SweepConfig.w_pre)
    sizes: tuple = (100, 300, 1000, 3000)
    restarts: int = 20
    reference_size: int = 3000
    reference_epochs: int = 5
    lr: float = 5e-5
    batch_size: int = 32
    warmup: float = 0.1
    subset_seed: int = SUBSET_SEED
    test_size: int | None = None
    head_sizes: tuple = (100, 300, 1000, 3000)
    head_restarts: int = 20
    head_std: float = mlp.INIT_STD
    trajectory_size: int = 300
    trajectory_ps: tuple = (0.5, 0.7, 0.8, 0.9)
    trajectory_restarts: int = 2
    trajectory_every: int = 1
    trajectory_samples: int = 256
    trajectory_eval: int | None = None  # None: the whole training subset is the evaluation batch
    trajectory_mc_seed: int = 7

    COMMON = ("profile", "source", "data", "pretrain", "w_pre", "reference_size", "reference_epochs", "lr")
    COMMON += ("batch_size", "warmup", "subset_seed", "test_size")
    FIELDS = {
        "small_data": ("sizes", "restarts"),
        "new_head": ("head_sizes", "head_restarts", "head_std"),
        "trajectory": tuple(f"trajectory_{k}" for k in "size ps restarts every samples eval mc_seed".split()),
    }

    def key(self, study: str) -> str:
        """Short hash of what changes ``study``'s numbers (its settings included)."""
        if study not in STUDIES:
            raise ValueError(f"study must be one of {STUDIES}, got {study!r}")
        d = {k: getattr(self, k) for k in self.COMMON + self.FIELDS[study]}
        settings = {"small_data": SMALL_DATA_SETTINGS, "new_head": HEAD_SETTINGS}.get(study, ())
        return config_hash(d | {"settings": list(map(repr, settings)), "seeds": (MASK_SEED0, HEAD_SEED0)})

    def asdict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def pool_sizes(self) -> list[int]:
        """Every subset size the three studies use, ascending (the nested subsets' cut points)."""
        return sorted(set(self.sizes) | set(self.head_sizes) | {self.trajectory_size})


#: What each profile means for the ablations (overrides of :class:`AblationConfig`'s paper-size defaults).
SIZES = {
    "smoke": dict(
        sizes=(100, 300),
        restarts=3,
        reference_size=300,
        test_size=2000,
        head_sizes=(300,),
        head_restarts=3,
        trajectory_ps=(0.5, 0.8),
        trajectory_restarts=1,
        trajectory_samples=96,
    ),
    "quick": dict(restarts=5, head_restarts=5, trajectory_restarts=1, trajectory_samples=128),
    "paper": dict(),
}


def ablation_config(profile: str, **overrides) -> AblationConfig:
    """The ablations' configuration for a profile (:data:`SIZES`), with ``overrides``."""
    return AblationConfig(profile=profile, **{**profile_sizes(SIZES, profile), **overrides})


def sweep_ablation_config(profile: str, exp, sweep_cfg, **overrides) -> AblationConfig:
    """:func:`ablation_config` from the sweep's data and ``w_pre`` (``sweep_cfg``) for ``exp``'s source."""
    keys = dict(data=sweep_cfg.data, pretrain=sweep_cfg.pretrain_key(), w_pre=sweep_cfg.w_pre)
    return ablation_config(profile, source=exp.source_key, **keys, **overrides)


class AblationStore(RunStore):
    """``root/ablations/<study>-<profile>-<source>-<key>/``: ``config.json`` and one JSON per run,
    written atomically as each ensemble chunk finishes (an interrupted study resumes where it stopped;
    a changed configuration never mixes with old runs)."""

    REQUIRED = ("run_id", "study", "size", "setting", "restart", "test_acc")

    def __init__(self, root, study: str, config: AblationConfig):
        self.study, self.config = study, config
        super().__init__(self.folder(root, study, config), config.asdict())

    @staticmethod
    def folder(root, study: str, config: AblationConfig) -> Path:
        return Path(root) / "ablations" / f"{study}-{config.profile}-{config.source}-{config.key(study)}"

    def records(self) -> list[dict]:
        return sorted(self.read(), key=lambda r: (r.get("size", 0), r.get("order", 0), r.get("restart", 0)))


# --------------------------------------------------------------------------------------------
# data, step budget, head initialisation


def steps_budget(config: AblationConfig) -> int:
    """Optimiser steps of every run: ``reference_epochs`` epochs of ``reference_size`` images."""
    return config.reference_epochs * math.ceil(config.reference_size / config.batch_size)


def epochs_for(size: int, config: AblationConfig) -> int:
    """Epochs that give ``size`` images (about) :func:`steps_budget` steps (at least one epoch)."""
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return max(1, round(steps_budget(config) / math.ceil(size / config.batch_size)))


def nested_subsets(n_pool: int, sizes, seed: int = SUBSET_SEED) -> torch.Tensor:
    """Indices into a pool of ``n_pool`` examples whose first ``n`` entries are the size-``n`` subset.

    One seeded permutation (``torch.Generator().manual_seed(seed)``) cut at ``max(sizes)``; every
    smaller subset is a prefix, so the subsets are nested and fixed.
    """
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive, got {sizes}")
    if max(sizes) > n_pool:
        raise ValueError(f"the largest subset ({max(sizes)}) exceeds the pool of {n_pool} training examples")
    return torch.randperm(n_pool, generator=torch.Generator().manual_seed(seed))[: max(sizes)]


def ablation_tensors(exp, config: AblationConfig) -> dict:
    """``pool`` (x, y) of the nested training subsets in subset order, its ``index`` into the target
    training split, and ``test`` (x, y): the whole test split, or a seeded ``test_size`` subset."""
    idx = nested_subsets(exp.target.train.x.shape[0], config.pool_sizes(), config.subset_seed)
    test = seeded_subset(exp.target.test, config.test_size, 5)
    return {"pool": (exp.target.train.x[idx], exp.target.train.y[idx]), "index": idx, "test": test}


def _subset(tensors: dict, size: int):
    x, y = tensors["pool"]
    if size > x.shape[0]:
        raise ValueError(f"size {size} exceeds the pool of {x.shape[0]} prepared examples")
    return x[:size], y[:size]


def head_init(restart: int, std: float = mlp.INIT_STD, sizes=mlp.SIZES) -> dict:
    """A new 100->10 layer for restart ``restart``: ``N(0, std^2)`` weight (seed ``5000 + restart``),
    zero bias."""
    g = torch.Generator().manual_seed(HEAD_SEED0 + int(restart))
    w = torch.randn(sizes[3], sizes[2], generator=g) * std
    return {"fc3.weight": w, "fc3.bias": torch.zeros(sizes[3])}


# --------------------------------------------------------------------------------------------
# training the studies


def _fields(setting: Setting, order: int, size: int, restart: int, config, study: str) -> dict:
    run = dict(run_id=f"n{size}-{setting.name}-r{restart}", study=study, size=size, setting=setting.name)
    seeds = dict(restart=restart, data_seed=restart, mask_seed=MASK_SEED0 + restart)
    where = dict(profile=config.profile, source=config.source, config=config.key(study))
    return dict(run, label=setting.label, order=order, **seeds, **where)


def _train(config: AblationConfig, init, members, x, y, epochs: int, options: RunOptions, progress, **kw):
    """:func:`engine.train_ensemble` with the finetuning protocol of ``config`` (lr, batch, warm-up)."""
    kw.update(lr=config.lr, batch_size=config.batch_size, warmup=config.warmup, device=options.device)
    kw.update(workers=options.n_workers, progress=progress)
    return engine.train_ensemble(init, members, x, y, epochs=epochs, **kw)


def _run_chunks(study, store_root, config, todo, tensors, w_pre, options, start) -> AblationStore:
    """Train each chunk of ``todo`` (``(key, fields, member)``, ``key[0]`` the size) holding an unstored
    run, one ensemble each; write its missing records. ``start(key, fields)`` gives ``init``, further
    :func:`engine.train_ensemble` arguments and the new head's ``w_0`` (or ``None``)."""
    store = AblationStore(store_root, study, config)
    done = store.done()
    store.planned = [f["run_id"] for _, f, _ in todo]
    size = options.chunk_or(CHUNK)
    store.fix_chunk(size)
    plan = pending_chunks(todo, size, done, lambda t: t[1]["run_id"], options.shard, group=lambda t: t[0])
    steps = sum(
        len(c) * epochs_for(c[0][0][0], config) * math.ceil(c[0][0][0] / config.batch_size) for c in plan
    )
    label = f"{study.replace('_', ' ')} ({config.profile})"
    bar = engine.member_step_bar(options.progress, steps, label, leave=False)
    for chunk in plan:
        key, part = chunk[0][0], [f for _, f, _ in chunk]
        x, y = _subset(tensors, key[0])
        epochs = epochs_for(key[0], config)
        init, kw, w_0 = start(key, part)
        result = _train(config, init, [m for _, _, m in chunk], x, y, epochs, options, bar, **kw)
        ev = engine.evaluate(result.params, *tensors["test"])
        dist = mlp.squared_distances(result.params, w_pre)
        run = dict(epochs=epochs, steps=result.steps, chunk_seconds=result.seconds, chunk_members=len(part))
        run.update(run_env(options.device))
        for e, fields in enumerate(part):
            scores = dict(test_acc=float(ev["acc"][e]), test_loss=float(ev["loss"][e]))
            rec = dict(fields, **scores, train_loss=float(result.train_loss[e]), **run)
            rec.update({f"dist_{k}": float(v[e]) for k, v in dist.items() if "." not in k})
            if w_0 is not None:
                rec["dist_fc3_w0"] = float((result.params["fc3.weight"][e] - w_0[e]).double().pow(2).sum())
            if rec["run_id"] not in done:  # a half-stored chunk is retrained whole; its stored records stay
                store.write(rec)
    if bar is not None:
        bar.close()
    return store


def run_small_data(
    store_root, config: AblationConfig, tensors: dict, w_pre: dict, options: RunOptions = RunOptions()
) -> AblationStore:
    """Study 1: every (size, setting, restart) of :data:`SMALL_DATA_SETTINGS` not yet stored.

    Settings that decay towards the origin and towards ``w_pre`` train in separate ensembles (the
    engine takes one ``wdecay_target``). Ensembles hold at most ``options.chunk`` members
    (:data:`CHUNK` by default): on the 2-core development machine a member-step costs about 0.85 ms up
    to 20 members and twice that from 24 on (the stacked state outgrows the CPU cache).
    """
    todo = [
        ((size, group), _fields(s, i, size, r, config, "small_data"), s.member(r))
        for size in config.sizes
        for group in ("origin", "w_pre")
        for r in range(config.restarts)
        for i, s in enumerate(SMALL_DATA_SETTINGS)
        if (s.group == group or (group == "w_pre" and s.group == "any"))
    ]

    def start(key, part):
        return w_pre, dict(target=w_pre, wdecay_target=w_pre if key[1] == "w_pre" else None), None

    return _run_chunks("small_data", store_root, config, todo, tensors, w_pre, options, start)


def run_new_head(
    store_root, config: AblationConfig, tensors: dict, w_pre: dict, options: RunOptions = RunOptions()
) -> AblationStore:
    """Study 2: the re-initialised output layer under :data:`HEAD_SETTINGS` at every head size.

    Restart ``r`` starts from ``w_pre`` with the new head :func:`head_init` ``(r)`` in every setting;
    mixout of fc3 mixes towards that restart's own ``w_0`` (a stacked, per-member target).
    """
    todo = [
        ((size,), dict(_fields(s, i, size, r, config, "new_head"), head_seed=HEAD_SEED0 + r), s.member(r))
        for size in config.head_sizes
        for r in range(config.head_restarts)
        for i, s in enumerate(HEAD_SETTINGS)
    ]

    def start(key, part):
        heads = [head_init(f["restart"], config.head_std) for f in part]
        init = mlp.stack(w_pre, len(part)) | {k: torch.stack([h[k] for h in heads]) for k in heads[0]}
        target = {"fc2.weight": w_pre["fc2.weight"], "fc3.weight": init["fc3.weight"].clone()}
        return init, dict(target=target), target["fc3.weight"]

    return _run_chunks("new_head", store_root, config, todo, tensors, w_pre, options, start)


def trajectory_runs(config: AblationConfig, tensors, w_pre, members, options, marks, measure, progress):
    """``(result, n_eval)``: ``members`` trained from ``w_pre`` (mixout's target) on the first
    ``trajectory_size`` pool images, with ``measure(e, params_e, x_eval, y_eval, epoch, step)`` for
    each member after each epoch in ``marks`` (1-based), on the first ``trajectory_eval`` images."""
    size = config.trajectory_size
    x, y = _subset(tensors, size)
    n_eval = size if config.trajectory_eval is None else min(config.trajectory_eval, size)
    spe = math.ceil(size / config.batch_size)

    def on_epoch_end(epoch, params):
        if epoch + 1 in marks:
            for e in range(len(members)):
                one = {k: v[e].detach().cpu() for k, v in params.items()}
                measure(e, one, x[:n_eval], y[:n_eval], epoch + 1, (epoch + 1) * spe)

    kw = dict(target=w_pre, on_epoch_end=on_epoch_end)
    return _train(config, w_pre, members, x, y, epochs_for(size, config), options, progress, **kw), n_eval


def run_trajectory(
    store_root, config: AblationConfig, tensors: dict, w_pre: dict, options: RunOptions = RunOptions()
) -> AblationStore:
    """Study 3: mixout(w_pre, p) runs on ``trajectory_size`` images, :func:`effective_l2` at epoch ends.

    Checkpoints: the first epoch, every ``trajectory_every``-th epoch and the last. ``L`` is the
    training loss being minimised (:func:`trajectory_runs`); the Monte Carlo masks are the same at
    every checkpoint (seed ``trajectory_mc_seed``), so the curve's wiggles are not mask noise. One
    record per run; all runs train as one ensemble (``options.chunk`` does not apply).
    """
    store = AblationStore(store_root, "trajectory", config)
    done, size = store.done(), config.trajectory_size
    todo = [
        (_fields(s, i, size, r, config, "trajectory"), s.member(r), s.mixout)
        for r in range(config.trajectory_restarts)
        for i, s in enumerate(map(_mixout, config.trajectory_ps))
    ]
    store.planned = [f["run_id"] for f, _, _ in todo]
    if all(f["run_id"] in done for f, _, _ in todo) or not options.owns(0):
        return store  # else all runs train again as one ensemble (bit for bit); only missing ones are written
    epochs = epochs_for(size, config)
    marks = {1, epochs} | {e for e in range(1, epochs + 1) if e % config.trajectory_every == 0}
    checkpoints = [[] for _ in todo]
    steps = len(todo) * epochs * math.ceil(size / config.batch_size)
    bar = engine.member_step_bar(options.progress, steps, f"trajectory ({config.profile})", leave=False)
    mc = dict(n_samples=config.trajectory_samples, generator=config.trajectory_mc_seed)

    def measure(e, one, xe, ye, epoch, step):
        est = effective_l2(one, w_pre, todo[e][2], xe, ye, **mc)
        checkpoints[e].append(
            {"epoch": epoch, "step": step, "penalty": est.penalty.mean, "penalty_se": est.penalty.se}
            | {k: getattr(est, k) for k in ("loss", "dist2", "m", "m_lo", "m_hi", "lam")}
        )

    t0 = time.perf_counter()
    members = [m for _, m, _ in todo]
    result, n_eval = trajectory_runs(config, tensors, w_pre, members, options, marks, measure, bar)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    ev = engine.evaluate(result.params, *tensors["test"])
    run = dict(epochs=epochs, steps=result.steps, eval_size=n_eval, mc_samples=config.trajectory_samples)
    for e, (fields, _, p) in enumerate(todo):
        if fields["run_id"] not in done:
            rec = dict(fields, p=p, **run, test_acc=float(ev["acc"][e]), seconds=seconds)
            store.write(dict(rec, checkpoints=checkpoints[e], **run_env(options.device)))
    return store


# --------------------------------------------------------------------------------------------
# the whole pipeline


@dataclass
class AblationResults:
    """The studies' configuration, ``w_pre``'s target test accuracy, the source task's name, the
    nested subsets' indices, the stores and their records by study, and wall seconds by stage (of
    this invocation; empty when loaded from disk by :func:`load_stored`)."""

    config: AblationConfig
    w_pre_acc: float
    source_name: str
    subset_index: torch.Tensor
    stores: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


#: Runs per ensemble unless :class:`RunOptions` says otherwise (see :func:`run_small_data`).
CHUNK = 16
CONTEXT = "context.json"


def subset_sha256(index: torch.Tensor) -> str:
    """sha256 of the nested subsets' indices as little-endian int64 (recorded with the studies)."""
    return hashlib.sha256(index.numpy().astype("<i8").tobytes()).hexdigest()


def run_ablations(ctx: Context, studies=STUDIES, **overrides) -> AblationResults:
    """Data, ``w_pre`` (the sweep's cached pretraining for ``ctx.profile``) and the chosen studies.

    Every stage resumes from what is stored under ``ctx.results_dir``; ``overrides`` are fields of
    :class:`AblationConfig`.
    """
    if unknown := [s for s in studies if s not in STUDIES]:
        raise ValueError(f"unknown studies {unknown}; choose from {STUDIES}")
    results, options, t0 = ctx.results_dir, ctx.options, time.perf_counter()
    exp = ctx.experiment()
    sweep_cfg, _, w_pre = sweep.pretrained(results, ctx.profile, exp, options)
    config = sweep_ablation_config(ctx.profile, exp, sweep_cfg, **overrides)
    tensors = ablation_tensors(exp, config)
    w_pre_acc = float(engine.evaluate(w_pre, *tensors["test"])["acc"][0])
    out = AblationResults(
        config, w_pre_acc, exp.source_name, tensors["index"], seconds={"setup": time.perf_counter() - t0}
    )
    context = {
        "w_pre_test_acc": w_pre_acc,
        "source_name": exp.source_name,
        "target_train_size": int(exp.target.train.x.shape[0]),
        "subset_sha256": subset_sha256(tensors["index"]),
    }
    runners = {"small_data": run_small_data, "new_head": run_new_head, "trajectory": run_trajectory}
    for study in studies:
        t = time.perf_counter()
        store = runners[study](results, config, tensors, w_pre, options)
        atomic_write(store.dir / CONTEXT, json.dumps(context, indent=1, sort_keys=True))
        out.stores[study], out.records[study] = store, store.records()
        out.seconds[study] = time.perf_counter() - t
    return out


def config_from_dict(d: dict, cls=AblationConfig):
    """A ``cls`` (a frozen dataclass) from its fields in ``d`` (lists as tuples, other keys ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def load_stored(results=None) -> list[AblationResults]:
    """The stored studies under ``results/ablations/`` (no training, no data): for each profile and
    source task, the newest configuration with a stored ``context.json``, and every study stored for
    that same configuration."""
    root = (project_dir("results") if results is None else Path(results)) / "ablations"
    folders = sorted(
        (d for d in root.glob("*-*") if (d / CONTEXT).is_file() and any((d / "runs").glob("*.json"))),
        key=lambda d: (d / CONTEXT).stat().st_mtime,
        reverse=True,
    )
    out, seen = [], set()
    for folder in folders:
        config, study = config_from_dict(read_config(folder)), folder.name.split("-", 1)[0]
        if study not in STUDIES or not folder.name.endswith(f"-{config.key(study)}"):
            raise IntegrityError(
                f"{folder / 'config.json'}: does not hash to its folder's name (the file was altered)"
            )
        if (config.profile, config.source) in seen:
            continue
        seen.add((config.profile, config.source))
        context = read_json_object(folder / CONTEXT, "rerun the ablations command (nothing is retrained)")
        index = nested_subsets(context["target_train_size"], config.pool_sizes(), config.subset_seed)
        if subset_sha256(index) != context["subset_sha256"]:
            raise ValueError(f"{folder / CONTEXT}: the nested subsets do not match their recorded checksum")
        res = AblationResults(config, context["w_pre_test_acc"], context["source_name"], index)
        for study in STUDIES:
            if AblationStore.folder(root.parent, study, config).is_dir():
                store = AblationStore(root.parent, study, config)
                if records := store.records():
                    res.stores[study], res.records[study] = store, records
        out.append(res)
    return out

"""Ablations: the paper's BERT / GLUE questions asked on the EMNIST Digits -> MNIST setting.

Reference: C. Lee, K. Cho, W. Kang, "Mixout: Effective Regularization to Finetune Large-scale
Pretrained Language Models", ICLR 2020 (arXiv:1909.11299); ``shared/paper-notes.md`` Section 4 gives
the GLUE protocol (20 restarts per setting, degenerate runs, Table 3's new output layer). Every run
uses the batched engine (:func:`mixout_theory.training.train_ensemble`) from the sweep's cached
``w_pre`` (:func:`mixout_theory.sweep.pretrain`), with the finetuning protocol of Supplement C.1
(Adam, lr 5e-5, batch 32, 10% warm-up then linear decay to 0).

Studies (each a resumable store under ``results/ablations/``, a table, a figure):

* ``small_data`` -- fixed nested target subsets (100, 300, 1,000, 3,000 images), 20 restarts, for the
  usual recipe dropout(0.1) + wdecay(0, 0.01), L2-SP wdecay(w_pre, lambda), mixout(w_pre, p) and
  mixout(w_pre, 0.8) + wdecay(w_pre, 0.01) (:data:`SMALL_DATA_SETTINGS`). Failed runs are counted
  by :func:`failure_thresholds`.
* ``new_head`` -- the 100->10 layer re-initialised (``N(0, 0.02^2)``, bias 0) before finetuning, with
  mixout(w_pre, 0.7) on fc2 and, on the new head, nothing, dropout(0.7) on its inputs, or
  mixout(w_0, 0.7) towards its own initialisation ``w_0`` (the paper's Table 3 design,
  :data:`HEAD_SETTINGS`).
* ``trajectory`` -- the L2 coefficient that mixout(w_pre, p) implies along a finetuning run (eq. 9
  read backwards): ``m_t = 2 (E L(Phi(w_t)) - L(w_t)) / ((p / (1 - p)) ||w_t - w_pre||^2)`` on the
  mixed weights, at epoch-end checkpoints (:func:`effective_l2`).

Step budget: every subset trains for the same number of optimiser steps, that of
``reference_epochs`` (5) epochs of the ``reference_size`` (3,000) subset, i.e. about 470 steps; the
3,000-image subset gets exactly the paper's 5 epochs, 100 images get 118 epochs. With lr 5e-5, the
paper's 5 epochs of 100 images are 20 steps, and the weights can move at most about ``lr * steps``
each: too little for any regulariser to matter. Fixing steps keeps the regularisers' room to act, and
the learning-rate schedule, the same for every size.

Pairing: restart ``r`` uses data order ``data_seed = r``, mask stream ``mask_seed = 1000 + r`` and
(new head) head initialisation seed ``5000 + r`` in every setting and at every size.

Weight decay is *coupled* (the engine adds ``lambda (w - u)`` to the gradient before Adam, on the
three Linear weights only): it is the gradient of the penalty :func:`mixout_theory.penalty.wdecay`,
the loss ``L(w) + (lambda / 2) ||w - u||^2`` that Corollary 1.1 compares mixout with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixout_theory import models, penalty, training
from mixout_theory.profiles import PROFILES
from mixout_theory.sweep import RunStore, _jsonable, atomic_write, atomic_write_csv, run_env

__all__ = [
    "STUDIES",
    "Setting",
    "SMALL_DATA_SETTINGS",
    "HEAD_SETTINGS",
    "AblationConfig",
    "ablation_config",
    "AblationStore",
    "steps_budget",
    "epochs_for",
    "nested_subsets",
    "ablation_tensors",
    "head_init",
    "run_small_data",
    "run_new_head",
    "run_trajectory",
    "run_ablations",
    "EffectiveL2",
    "effective_l2",
    "failure_thresholds",
    "summarise_runs",
    "SUMMARY_COLUMNS",
    "HEAD_COLUMNS",
    "PAIRED_COMPARISONS",
    "paired_differences",
    "trajectory_summary",
    "TRAJECTORY_COLUMNS",
    "trajectory_rows",
    "AblationResults",
    "markdown_table",
    "small_data_figure",
    "new_head_figure",
    "trajectory_figure",
    "claims",
    "export_results",
]

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
    :class:`mixout_theory.training.Member`. ``wdecay``: lambda of ``wdecay(u, lambda)`` with
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
        if self.wdecay_to not in ("origin", "w_pre"):
            raise ValueError(f"wdecay_to must be 'origin' or 'w_pre', got {self.wdecay_to!r}")
        if self.head not in ("pretrained", "new"):
            raise ValueError(f"head must be 'pretrained' or 'new', got {self.head!r}")

    def member(self, restart: int) -> training.Member:
        """The engine member of restart ``restart`` (seeds shared by every setting: paired runs)."""
        return training.Member(dropout=self.dropout, mixout=self.mixout, wdecay=self.wdecay,
                               data_seed=restart, mask_seed=MASK_SEED0 + restart)  # fmt: skip

    @property
    def group(self) -> str:
        """Settings of one group share the engine's (single) wdecay target and can train together."""
        return self.wdecay_to if self.wdecay > 0 else "any"


SMALL_DATA_SETTINGS = (
    Setting("dropout0.1+wd0.01", "dropout(0.1) + wdecay(0, 0.01)", dropout=0.1, wdecay=0.01),
    Setting("l2sp0.01", "wdecay(w_pre, 0.01)", wdecay=0.01, wdecay_to="w_pre"),
    Setting("l2sp0.1", "wdecay(w_pre, 0.1)", wdecay=0.1, wdecay_to="w_pre"),
    Setting("l2sp1", "wdecay(w_pre, 1)", wdecay=1.0, wdecay_to="w_pre"),
    Setting("mixout0.5", "mixout(w_pre, 0.5)", mixout=0.5),
    Setting("mixout0.7", "mixout(w_pre, 0.7)", mixout=0.7),
    Setting("mixout0.8", "mixout(w_pre, 0.8)", mixout=0.8),
    Setting("mixout0.9", "mixout(w_pre, 0.9)", mixout=0.9),
    Setting("mixout0.8+l2sp0.01", "mixout(w_pre, 0.8) + wdecay(w_pre, 0.01)", mixout=0.8, wdecay=0.01,
            wdecay_to="w_pre"),
)  # fmt: skip

HEAD_SETTINGS = (
    Setting("head-none", "new head: no regularisation", mixout=(0.7, 0.0), head="new"),
    Setting("head-dropout0.7", "new head: dropout(0.7) on its inputs", dropout=(0.0, 0.7), mixout=(0.7, 0.0),
            head="new"),
    Setting("head-mixout-w0-0.7", "new head: mixout(w_0, 0.7)", mixout=(0.7, 0.7), head="new"),
)  # fmt: skip


def _settings_by_name(settings) -> dict:
    return {s.name: s for s in settings}


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
    head_std: float = models.INIT_STD
    trajectory_size: int = 300
    trajectory_ps: tuple = (0.5, 0.7, 0.8, 0.9)
    trajectory_restarts: int = 2
    trajectory_every: int = 1
    trajectory_samples: int = 256
    trajectory_eval: int | None = None  # None: the whole training subset is the evaluation batch
    trajectory_mc_seed: int = 7

    COMMON = ("profile", "source", "data", "pretrain", "reference_size", "reference_epochs", "lr",
              "batch_size", "warmup", "subset_seed", "test_size")  # fmt: skip
    FIELDS = {
        "small_data": ("sizes", "restarts"),
        "new_head": ("head_sizes", "head_restarts", "head_std"),
        "trajectory": ("trajectory_size", "trajectory_ps", "trajectory_restarts", "trajectory_every",
                       "trajectory_samples", "trajectory_eval", "trajectory_mc_seed"),
    }  # fmt: skip

    def key(self, study: str) -> str:
        """Short hash of what changes ``study``'s numbers (its settings included)."""
        if study not in STUDIES:
            raise ValueError(f"study must be one of {STUDIES}, got {study!r}")
        d = {k: getattr(self, k) for k in self.COMMON + self.FIELDS[study]}
        d["settings"] = [repr(s) for s in {"small_data": SMALL_DATA_SETTINGS, "new_head": HEAD_SETTINGS}.get(study, ())]
        d["seeds"] = (MASK_SEED0, HEAD_SEED0)
        return _hash(d)

    def asdict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def ablation_config(profile: str, **overrides) -> AblationConfig:
    """Sizes of each profile: ``smoke`` (CI, seconds), ``quick`` (a few minutes), ``paper`` (full)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    sizes = {
        "smoke": dict(sizes=(100, 300), restarts=3, reference_size=300, test_size=2000, head_sizes=(300,),
                      head_restarts=3, trajectory_size=300, trajectory_ps=(0.5, 0.8), trajectory_restarts=1,
                      trajectory_every=1, trajectory_samples=96),
        "quick": dict(restarts=5, head_restarts=5, trajectory_restarts=1, trajectory_samples=128),
        "paper": dict(),
    }[profile]  # fmt: skip
    return AblationConfig(profile=profile, **{**sizes, **overrides})


def _hash(d) -> str:
    return hashlib.sha256(json.dumps(_jsonable(d), sort_keys=True).encode()).hexdigest()[:12]


class AblationStore(RunStore):
    """``root/ablations/<study>-<profile>-<source>-<key>/``: ``config.json`` and one JSON per run.

    Records are written atomically (temporary file + rename) as each ensemble chunk finishes, so an
    interrupted study resumes where it stopped and a changed configuration never mixes with old runs.
    """

    def __init__(self, root, study: str, config: AblationConfig):
        self.study, self.config = study, config
        super().__init__(Path(root) / "ablations" / f"{study}-{config.profile}-{config.source}-{config.key(study)}",
                         config.asdict())  # fmt: skip

    def records(self) -> list[dict]:
        return sorted(self._read(), key=lambda r: (r.get("size", 0), r.get("order", 0), r.get("restart", 0)))


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
    sizes = set(config.sizes) | set(config.head_sizes) | {config.trajectory_size}
    idx = nested_subsets(exp.target.train.x.shape[0], sorted(sizes), config.subset_seed)
    xt, yt = exp.target.test.x, exp.target.test.y
    if config.test_size is not None and config.test_size < xt.shape[0]:
        keep = torch.randperm(xt.shape[0], generator=torch.Generator().manual_seed(5))[: config.test_size].sort().values
        xt, yt = xt[keep], yt[keep]
    return {"pool": (exp.target.train.x[idx], exp.target.train.y[idx]), "index": idx, "test": (xt, yt)}


def _subset(tensors: dict, size: int):
    x, y = tensors["pool"]
    if size > x.shape[0]:
        raise ValueError(f"size {size} exceeds the pool of {x.shape[0]} prepared examples")
    return x[:size], y[:size]


def head_init(restart: int, std: float = models.INIT_STD, sizes=models.SIZES) -> dict:
    """A new 100->10 layer for restart ``restart``: ``N(0, std^2)`` weight (seed ``5000 + restart``), zero bias."""
    g = torch.Generator().manual_seed(HEAD_SEED0 + int(restart))
    w = torch.randn(sizes[3], sizes[2], generator=g) * std
    return {"fc3.weight": w, "fc3.bias": torch.zeros(sizes[3])}


# --------------------------------------------------------------------------------------------
# training the studies


def _chunks(items: list, size: int):
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


def _bar(progress, total: int, label: str):
    if not progress or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="member-step", unit_scale=True, leave=False)


def _fields(setting: Setting, order: int, size: int, restart: int, config: AblationConfig, study: str) -> dict:
    return {"run_id": f"n{size}-{setting.name}-r{restart}", "study": study, "size": size, "setting": setting.name,
            "label": setting.label, "order": order, "restart": restart, "data_seed": restart,
            "mask_seed": MASK_SEED0 + restart, "profile": config.profile, "source": config.source,
            "config": config.key(study)}  # fmt: skip


def _finish(store, part, result, tensors, w_pre, device, reference_fc3=None) -> None:
    ev = training.evaluate(result.params, *tensors["test"])
    dist = models.squared_distances(result.params, w_pre)
    env = run_env(device)
    for e, (fields, _) in enumerate(part):
        rec = dict(fields)
        rec.update(test_acc=float(ev["acc"][e]), test_loss=float(ev["loss"][e]), train_loss=float(result.train_loss[e]),
                   steps=result.steps, chunk_seconds=result.seconds, chunk_members=len(part), **env)  # fmt: skip
        rec.update({f"dist_{k}": float(v[e]) for k, v in dist.items() if "." not in k})
        if reference_fc3 is not None:
            rec["dist_fc3_w0"] = float((result.params["fc3.weight"][e] - reference_fc3[e]).double().pow(2).sum())
        store.write(rec)


def run_small_data(store_root, config: AblationConfig, tensors: dict, w_pre: dict, *, chunk: int = 16, workers: int = 1,
                   device="auto", progress=False) -> AblationStore:  # fmt: skip
    """Study 1: every (size, setting, restart) of :data:`SMALL_DATA_SETTINGS` not yet stored.

    Settings that decay towards the origin and towards ``w_pre`` train in separate ensembles (the
    engine takes one ``wdecay_target``); each ensemble writes its records when it finishes. Ensembles
    hold at most ``chunk`` members: on the 2-core development machine a member-step cost about
    0.85 ms up to 20 members and about twice that from 24 members on (the stacked state outgrows
    the CPU cache), so small ensembles are faster.
    """
    store = AblationStore(store_root, "small_data", config)
    done = store.done()
    plan = []
    for size in config.sizes:
        for group in ("origin", "w_pre"):
            todo = [(_fields(s, i, size, r, config, "small_data"), s.member(r))
                    for r in range(config.restarts) for i, s in enumerate(SMALL_DATA_SETTINGS)
                    if (s.group == group or (group == "w_pre" and s.group == "any"))]  # fmt: skip
            todo = [t for t in todo if t[0]["run_id"] not in done]
            plan += [(size, group, part) for part in _chunks(todo, chunk)]
    bar = _bar(progress, sum(len(p) * epochs_for(s, config) * math.ceil(s / config.batch_size) for s, _, p in plan),
               f"small data ({config.profile})")  # fmt: skip
    for size, group, part in plan:
        x, y = _subset(tensors, size)
        result = training.train_ensemble(
            w_pre, [m for _, m in part], x, y, epochs=epochs_for(size, config), lr=config.lr,
            batch_size=config.batch_size, warmup=config.warmup, target=w_pre,
            wdecay_target=w_pre if group == "w_pre" else None, device=device, workers=workers,
            progress=bar if bar is not None else False,
        )  # fmt: skip
        for fields, _ in part:
            fields["epochs"] = epochs_for(size, config)
        _finish(store, part, result, tensors, w_pre, device)
    if bar is not None:
        bar.close()
    return store


def run_new_head(store_root, config: AblationConfig, tensors: dict, w_pre: dict, *, chunk: int = 16, workers: int = 1,
                 device="auto", progress=False) -> AblationStore:  # fmt: skip
    """Study 2: the re-initialised output layer under :data:`HEAD_SETTINGS` at every head size.

    Restart ``r`` starts from ``w_pre`` with the new head :func:`head_init` ``(r)`` in every setting;
    mixout of fc3 mixes towards that restart's own ``w_0`` (a stacked, per-member target).
    """
    store = AblationStore(store_root, "new_head", config)
    done = store.done()
    plan = []
    for size in config.head_sizes:
        todo = [(_fields(s, i, size, r, config, "new_head"), s.member(r))
                for r in range(config.head_restarts) for i, s in enumerate(HEAD_SETTINGS)]  # fmt: skip
        todo = [t for t in todo if t[0]["run_id"] not in done]
        plan += [(size, part) for part in _chunks(todo, chunk)]
    bar = _bar(progress, sum(len(p) * epochs_for(s, config) * math.ceil(s / config.batch_size) for s, p in plan),
               f"new head ({config.profile})")  # fmt: skip
    for size, part in plan:
        x, y = _subset(tensors, size)
        init = models.stack(w_pre, len(part))
        heads = [head_init(f["restart"], config.head_std) for f, _ in part]
        init["fc3.weight"] = torch.stack([h["fc3.weight"] for h in heads])
        init["fc3.bias"] = torch.stack([h["fc3.bias"] for h in heads])
        target = {"fc2.weight": w_pre["fc2.weight"], "fc3.weight": init["fc3.weight"].clone()}
        result = training.train_ensemble(
            init, [m for _, m in part], x, y, epochs=epochs_for(size, config), lr=config.lr,
            batch_size=config.batch_size, warmup=config.warmup, target=target, device=device, workers=workers,
            progress=bar if bar is not None else False,
        )  # fmt: skip
        for fields, _ in part:
            fields.update(epochs=epochs_for(size, config), head_seed=HEAD_SEED0 + fields["restart"])
        _finish(store, part, result, tensors, w_pre, device, reference_fc3=target["fc3.weight"])
    if bar is not None:
        bar.close()
    return store


# --------------------------------------------------------------------------------------------
# the effective L2 coefficient of mixout


@dataclass(frozen=True)
class EffectiveL2:
    """The L2 coefficient that mixout(u, p) implies at one point ``w`` (Corollary 1.1 read backwards).

    ``penalty``: Monte Carlo ``E L(Phi(w)) - L(w)`` (:class:`~mixout_theory.penalty.PenaltyEstimate`),
    ``dist2 = ||w - u||^2`` over the mixed weights, ``m = 2 penalty / ((p / (1 - p)) dist2)`` (the
    modulus that would make eq. 9 an equality) with its 95% interval ``(m_lo, m_hi)``, and
    ``lam = m p / (1 - p) = 2 penalty / dist2``: the lambda of the ``wdecay(u, lambda)`` whose penalty
    equals mixout's at ``w``. ``loss`` is ``L(w)`` on the evaluation batch.
    """

    p: float
    loss: float
    dist2: float
    penalty: penalty.PenaltyEstimate
    m: float
    m_lo: float
    m_hi: float
    lam: float


def _hidden1(params: dict, x: torch.Tensor) -> torch.Tensor:
    """The first hidden layer's output (eval mode): fc1 is never mixed, so it is computed once."""
    a = F.linear(x, params["fc1.weight"], params["fc1.bias"]).relu()
    return F.layer_norm(a, a.shape[-1:], params["ln1.weight"], params["ln1.bias"], models.LN_EPS)


def _tail_losses(params: dict, h1: torch.Tensor, y: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for each of ``S`` samples of the mixed weights ``w2 (S, 100, 300)``,
    ``w3 (S, 10, 100)``, the rest of the network fixed: the same function as
    :func:`mixout_theory.models.forward` in eval mode."""
    a = torch.matmul(h1, w2.transpose(-1, -2)) + params["fc2.bias"]
    h2 = F.layer_norm(a.relu(), a.shape[-1:], params["ln2.weight"], params["ln2.bias"], models.LN_EPS)
    z = torch.matmul(h2, w3.transpose(-1, -2)) + params["fc3.bias"]  # (S, B, 10)
    return F.cross_entropy(z.transpose(1, 2), y.expand(z.shape[0], -1), reduction="none").mean(-1)


def effective_l2(params: dict, reference: dict, p: float, x: torch.Tensor, y: torch.Tensor, *,
                 n_samples: int = 256, generator=0, batch_size: int = 64,
                 control_variate: bool = True) -> EffectiveL2:  # fmt: skip
    """The coefficient ``2 (E L(Phi(w)) - L(w)) / ((p / (1 - p)) ||w - u||^2)`` at one network.

    ``params``: one network (unstacked); ``reference``: ``u`` (``w_pre``, or any network holding
    ``fc2.weight`` / ``fc3.weight``). ``Phi`` mixes fc2 and fc3 with neuron-level masks (eq. 8, one
    Bernoulli(1-p) value per input unit, shared by the whole batch ``x, y``), estimated with
    :func:`mixout_theory.penalty.empirical_penalty` from ``n_samples`` masks (``generator``: a seed or
    ``torch.Generator``; the same seed gives the same masks at every checkpoint). The norm is over the
    mixed weights only (Supplement B). Undefined at ``w = u`` (0 / 0): raises ``ValueError``.

    ``control_variate=True`` estimates the same expectation from ``L(Phi) - g^T (Phi - w)``, ``g`` the
    exact gradient of ``L`` at ``w``: the subtracted term has mean exactly 0 (``E Phi = w``, eq. 4),
    so the estimate stays unbiased, while the first-order noise, which is ``O(||w - u||)`` against a
    penalty of ``O(||w - u||^2)``, is removed (the residual is second order).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1) for an effective L2 coefficient, got p={p!r}")
    w = {k: params[k].detach() for k in models.MIXED}
    u = {k: reference[k].detach().to(w[k].dtype) for k in models.MIXED}
    dist2 = float(sum((w[k] - u[k]).double().pow(2).sum() for k in models.MIXED))
    if dist2 == 0.0:
        raise ValueError("w equals u on the mixed weights: the effective coefficient is 0/0 there (undefined)")
    with torch.no_grad():
        h1 = _hidden1(params, x.to(w["fc2.weight"].dtype))
    tail = lambda b: _tail_losses(params, h1, y, b["fc2.weight"], b["fc3.weight"])  # noqa: E731
    grad = None
    if control_variate:
        leaves = {k: v.clone().requires_grad_(True) for k, v in w.items()}
        value = tail({k: v.unsqueeze(0) for k, v in leaves.items()})[0]
        grad = dict(zip(leaves, torch.autograd.grad(value, list(leaves.values()))))

    def loss(b):
        out = tail(b)
        if grad is not None:  # minus the first-order term g^T (Phi - w), whose mean is exactly 0
            for k, g in grad.items():
                out = out - ((b[k] - w[k]) * g).flatten(1).sum(1)
        return out

    with torch.no_grad():
        est = penalty.empirical_penalty(loss, w, u, p, n_samples, scheme="neuron", generator=generator,
                                        batch_size=batch_size)  # fmt: skip
        base = float(tail({k: v.unsqueeze(0) for k, v in w.items()})[0])
    k = p / (1.0 - p)
    scale = 2.0 / (k * dist2)
    return EffectiveL2(p=float(p), loss=base, dist2=dist2, penalty=est, m=scale * est.mean, m_lo=scale * est.lo,
                       m_hi=scale * est.hi, lam=2.0 * est.mean / dist2)  # fmt: skip


def run_trajectory(store_root, config: AblationConfig, tensors: dict, w_pre: dict, *, workers: int = 1, device="auto",
                   progress=False) -> AblationStore:  # fmt: skip
    """Study 3: mixout(w_pre, p) runs on ``trajectory_size`` images, :func:`effective_l2` at epoch ends.

    Checkpoints: the first epoch, every ``trajectory_every``-th epoch and the last. The evaluation
    batch is the first ``trajectory_eval`` images of the training subset (all of it by default), so
    ``L`` is the training loss being minimised; the Monte Carlo masks are the same at every checkpoint
    (seed ``trajectory_mc_seed``), so the curve's wiggles are not mask noise. One record per run.
    """
    store = AblationStore(store_root, "trajectory", config)
    done = store.done()
    size = config.trajectory_size
    settings = [Setting(f"mixout{p:g}", f"mixout(w_pre, {p:g})", mixout=p) for p in config.trajectory_ps]
    todo = [(_fields(s, i, size, r, config, "trajectory"), s.member(r), p)
            for r in range(config.trajectory_restarts) for i, (s, p) in enumerate(zip(settings, config.trajectory_ps))]
    todo = [t for t in todo if t[0]["run_id"] not in done]  # fmt: skip
    if not todo:
        return store
    x, y = _subset(tensors, size)
    n_eval = size if config.trajectory_eval is None else min(config.trajectory_eval, size)
    xe, ye = x[:n_eval], y[:n_eval]
    epochs = epochs_for(size, config)
    spe = math.ceil(size / config.batch_size)
    marks = {0, epochs - 1} | {e for e in range(epochs) if (e + 1) % config.trajectory_every == 0}
    checkpoints = [[] for _ in todo]
    bar = _bar(progress, len(todo) * epochs * spe, f"trajectory ({config.profile})")

    def on_epoch_end(epoch, params):
        if epoch not in marks:
            return
        for e, (_, _, p) in enumerate(todo):
            one = {k: v[e].detach().cpu() for k, v in params.items()}
            est = effective_l2(one, w_pre, p, xe, ye, n_samples=config.trajectory_samples,
                               generator=config.trajectory_mc_seed)  # fmt: skip
            checkpoints[e].append({"epoch": epoch + 1, "step": (epoch + 1) * spe, "loss": est.loss,
                                   "dist2": est.dist2, "penalty": est.penalty.mean, "penalty_se": est.penalty.se,
                                   "m": est.m, "m_lo": est.m_lo, "m_hi": est.m_hi, "lam": est.lam})  # fmt: skip

    t0 = time.perf_counter()
    result = training.train_ensemble(
        w_pre, [m for _, m, _ in todo], x, y, epochs=epochs, lr=config.lr, batch_size=config.batch_size,
        warmup=config.warmup, target=w_pre, device=device, on_epoch_end=on_epoch_end, workers=workers,
        progress=bar if bar is not None else False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    ev = training.evaluate(result.params, *tensors["test"])
    for e, (fields, _, p) in enumerate(todo):
        rec = dict(fields, p=p, epochs=epochs, steps=result.steps, eval_size=n_eval,
                   mc_samples=config.trajectory_samples, test_acc=float(ev["acc"][e]),
                   seconds=seconds, checkpoints=checkpoints[e], **run_env(device))  # fmt: skip
        store.write(rec)
    return store


def trajectory_rows(records: list[dict]) -> list[dict]:
    """One flat row per (run, checkpoint) of the trajectory study (a tidy table)."""
    rows = []
    for r in records:
        for c in r["checkpoints"]:
            rows.append({"p": r["p"], "restart": r["restart"], "size": r["size"], "eval_size": r["eval_size"],
                         "mc_samples": r["mc_samples"], **c})  # fmt: skip
    return sorted(rows, key=lambda q: (q["p"], q["restart"], q["step"]))


# --------------------------------------------------------------------------------------------
# the whole pipeline


@dataclass
class AblationResults:
    """What :func:`run_ablations` produced: the config, ``w_pre``'s target test accuracy, the stores,
    their records by study, and wall seconds by stage."""

    config: AblationConfig
    w_pre_acc: float
    source_name: str
    subset_index: torch.Tensor
    stores: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def run_ablations(profile: str = "paper", studies=STUDIES, *, results=None, data_root=None, source: str = "auto",
                  device="auto", chunk: int = 16, workers: int | None = None, progress: bool = True,
                  **overrides) -> AblationResults:  # fmt: skip
    """Data, ``w_pre`` (the sweep's cached pretraining for ``profile``) and the chosen studies.

    Every stage resumes from what is stored under ``results`` (default: the checkout's ``results/``).
    ``workers``: CPU cores each ensemble uses side by side (default: 2 on a machine with 2+ cores).
    """
    import os

    from mixout_theory import data, sweep

    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise ValueError(f"unknown studies {unknown}; choose from {STUDIES}")
    results = sweep.project_dir("results") if results is None else Path(results)
    t0 = time.perf_counter()
    exp = data.load_experiment(root=data_root, source=source)
    sweep_cfg = sweep.profile_config(profile, source=exp.source_key, data=sweep.data_fingerprint(exp))
    w_pre = sweep.pretrain(results, sweep_cfg, sweep.experiment_tensors(exp, sweep_cfg), device=device,
                           progress=progress)  # fmt: skip
    config = ablation_config(profile, source=exp.source_key, data=sweep_cfg.data, pretrain=sweep_cfg.pretrain_key(),
                             **overrides)  # fmt: skip
    tensors = ablation_tensors(exp, config)
    w_pre_acc = float(training.evaluate(w_pre, *tensors["test"])["acc"][0])
    out = AblationResults(config, w_pre_acc, exp.source_name, tensors["index"],
                          seconds={"setup": time.perf_counter() - t0})
    runners = {"small_data": run_small_data, "new_head": run_new_head, "trajectory": run_trajectory}
    for study in studies:
        t = time.perf_counter()
        kw = {"workers": workers or min(2, os.cpu_count() or 1)}
        if study != "trajectory":
            kw["chunk"] = chunk
        store = runners[study](results, config, tensors, w_pre, device=device, progress=progress, **kw)
        out.stores[study], out.records[study] = store, store.records()
        out.seconds[study] = time.perf_counter() - t
    return out


# --------------------------------------------------------------------------------------------
# failure definition and summaries


def failure_thresholds(records: list[dict], w_pre_acc: float) -> dict:
    """The two cut-offs under which a run counts as failed, for the runs of one study at one size.

    * ``failed_below = w_pre_acc``: the target test accuracy of ``w_pre`` itself (pretrained head, no
      finetuning). A run below it ended worse than not finetuning at all, the analogue of the paper's
      degenerate (chance-level) GLUE runs. It is fixed before any finetuning, the same for every
      setting, and does not count a setting as failing merely for being slightly worse.
    * ``outlier_below = median_best - 3 sd_best``: the best setting (highest median) and its sample
      standard deviation (ddof=1). A normal run of the best setting falls below it with probability
      0.13%; it flags unlucky runs, and also every run of a setting that is uniformly worse by more
      than 3 sd_best, so it is reported as a second count, not as the failure count.
    """
    by = {}
    for r in records:
        by.setdefault(r["setting"], []).append(r["test_acc"])
    med = {k: float(np.median(v)) for k, v in by.items()}
    best = max(med, key=med.get)
    sd = float(np.std(by[best], ddof=1)) if len(by[best]) > 1 else 0.0
    return {"failed_below": float(w_pre_acc), "outlier_below": med[best] - 3.0 * sd, "best_setting": best,
            "best_median": med[best], "best_sd": sd}  # fmt: skip


def summarise_runs(records: list[dict], w_pre_acc: float) -> list[dict]:
    """Per (size, setting): n, mean, sample std (ddof=1), min, median, max of target test accuracy,
    failed / outlier counts (:func:`failure_thresholds`), and mean squared distances to ``w_pre``."""
    rows = []
    for size in sorted({r["size"] for r in records}):
        at = [r for r in records if r["size"] == size]
        th = failure_thresholds(at, w_pre_acc)
        for name in sorted({r["setting"] for r in at}, key=lambda s: min(r["order"] for r in at if r["setting"] == s)):
            g = [r for r in at if r["setting"] == name]
            acc = np.array([r["test_acc"] for r in g])
            row = {"size": size, "setting": name, "label": g[0]["label"], "n": len(g),
                   "mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                   "min": float(acc.min()), "median": float(np.median(acc)), "max": float(acc.max()),
                   "failed": int((acc < th["failed_below"]).sum()), "outliers": int((acc < th["outlier_below"]).sum()),
                   "failed_below": th["failed_below"], "outlier_below": th["outlier_below"],
                   "dist_mixed": float(np.mean([r["dist_mixed"] for r in g])),
                   "dist_all": float(np.mean([r["dist_all"] for r in g]))}  # fmt: skip
            if "dist_fc3_w0" in g[0]:
                row["dist_fc3_w0"] = float(np.mean([r["dist_fc3_w0"] for r in g]))
            rows.append(row)
    return rows


#: (a, b) pairs of study 1 compared restart by restart (same data order and mask seed)
PAIRED_COMPARISONS = (("mixout0.8", "dropout0.1+wd0.01"), ("mixout0.8", "l2sp0.1"), ("l2sp0.1", "dropout0.1+wd0.01"),
                      ("mixout0.8+l2sp0.01", "mixout0.8"), ("mixout0.9", "mixout0.5"))  # fmt: skip


def paired_differences(records: list[dict], pairs=PAIRED_COMPARISONS, metric: str = "test_acc") -> list[dict]:
    """Per size and pair ``(a, b)``: the mean and sample sd (ddof=1) over restarts of ``metric(a) -
    metric(b)``, with how many restarts ``a`` beat, tied or lost to ``b``, restart by restart."""
    rows = []
    for size in sorted({r["size"] for r in records}):
        val = {(r["setting"], r["restart"]): r[metric] for r in records if r["size"] == size}
        for a, b in pairs:
            d = np.array([val[a, k] - val[b, k] for (s, k) in val if s == a and (b, k) in val])
            if d.size == 0:
                continue
            rows.append({"size": size, "a": a, "b": b, "n": int(d.size), "mean_diff": float(d.mean()),
                         "sd_diff": float(d.std(ddof=1)) if d.size > 1 else 0.0, "a_wins": int((d > 0).sum()),
                         "ties": int((d == 0).sum()), "b_wins": int((d < 0).sum())})  # fmt: skip
    return rows


def markdown_table(rows: list[dict], columns, digits: int = 4) -> str:
    """``rows`` as a GitHub markdown table of ``columns`` (``(key, header)`` pairs or keys)."""
    cols = [(c, c) if isinstance(c, str) else tuple(c) for c in columns]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2e}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


SUMMARY_COLUMNS = (("size", "n train"), ("label", "setting"), ("n", "runs"), ("mean", "mean acc"),
                   ("std", "sd"), ("min", "min"), ("median", "median"), ("max", "max"), ("failed", "failed"),
                   ("outliers", "3-sd outliers"), ("dist_mixed", "mean ‖w − w_pre‖² (fc2, fc3)"))  # fmt: skip
HEAD_COLUMNS = SUMMARY_COLUMNS[:-1] + (("dist_fc3_w0", "mean ‖w_fc3 − w_0‖²"),)


def trajectory_summary(records: list[dict]) -> list[dict]:
    """Per p, over restarts (mean curve): the implied modulus ``m`` at the first checkpoint, at its
    peak (and the step of the peak), at the last checkpoint, ``peak / last``, the implied wdecay
    lambda ``m p / (1 - p)`` at the peak and at the end, the evaluation-batch loss ``L(w_t)`` at the
    peak and at the end, and the final target test accuracy."""
    rows = []
    for p in sorted({r["p"] for r in records}):
        runs = [r["checkpoints"] for r in records if r["p"] == p]
        m = np.array([[q["m"] for q in c] for c in runs]).mean(0)
        loss = np.array([[q["loss"] for q in c] for c in runs]).mean(0)
        steps = [q["step"] for q in runs[0]]
        k = p / (1 - p)
        i = int(m.argmax())
        rows.append({"p": p, "restarts": len(runs), "checkpoints": len(steps), "m_first": float(m[0]),
                     "first_step": steps[0], "m_peak": float(m[i]), "peak_step": steps[i], "m_last": float(m[-1]),
                     "last_step": steps[-1], "peak_over_last": float(m[i] / m[-1]), "lam_peak": float(m[i] * k),
                     "lam_last": float(m[-1] * k), "loss_peak": float(loss[i]), "loss_last": float(loss[-1]),
                     "min_m_lo_after_first": (float(min(q["m_lo"] for c in runs for q in c[1:]))
                                              if len(steps) > 1 else float("nan")),
                     "test_acc": float(np.mean([r["test_acc"] for r in records if r["p"] == p]))})  # fmt: skip
    return rows


TRAJECTORY_COLUMNS = (("p", "p"), ("restarts", "restarts"), ("checkpoints", "checkpoints"),
                      ("first_step", "first step"), ("m_first", "m (first)"), ("peak_step", "peak step"),
                      ("m_peak", "m (peak)"), ("m_last", "m (last)"), ("peak_over_last", "peak / last"),
                      ("lam_peak", "lambda (peak)"), ("lam_last", "lambda (last)"), ("loss_peak", "L at peak"),
                      ("loss_last", "L (last)"), ("test_acc", "test acc"))  # fmt: skip


# --------------------------------------------------------------------------------------------
# figures (matplotlib Figure objects, no pyplot state)


def _strip_box(ax, groups: list[tuple[str, np.ndarray]], colors, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data = [g for _, g in groups]
    bp = ax.boxplot(data, positions=range(len(data)), widths=0.55, showfliers=False, patch_artist=True)
    for patch, c in zip(bp["boxes"], colors):
        patch.set(facecolor=c, alpha=0.25)
    for i, (vals, c) in enumerate(zip(data, colors)):
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(vals)), vals, s=9, color=c, zorder=3, linewidths=0)
    ax.set_xticks(range(len(data)))
    ax.set_xticklabels([n for n, _ in groups], rotation=60, ha="right", fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)


def _threshold_lines(ax, th: dict) -> None:
    lo, hi = ax.get_ylim()
    lines = (("failed_below", "-", "w_pre (failed below)"), ("outlier_below", ":", "best median - 3 sd"))
    for key, style, text in lines:
        v = th[key]
        if lo <= v <= hi:
            ax.axhline(v, ls=style, color="0.3", lw=0.9, label=f"{text} = {v:.3f}")


def _short(label: str) -> str:
    return label.replace("wdecay", "wd").replace("mixout", "mix").replace("new head: ", "")


def small_data_figure(records: list[dict], w_pre_acc: float, source_name: str = "") -> Figure:
    """Study 1: target test accuracy of every run, box + strip per setting, one panel per size."""
    from matplotlib.figure import Figure

    sizes = sorted({r["size"] for r in records})
    fig = Figure(figsize=(3.6 * len(sizes), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sizes)))
    names = [s.name for s in SMALL_DATA_SETTINGS]
    labels = {s.name: _short(s.label) for s in SMALL_DATA_SETTINGS}
    colors = ["C3"] + ["C2"] * 3 + ["C0"] * 4 + ["C4"]
    for ax, size in zip(axes, sizes):
        at = [r for r in records if r["size"] == size]
        present = [n for n in names if any(r["setting"] == n for r in at)]
        groups = [(labels[n], np.array([r["test_acc"] for r in at if r["setting"] == n])) for n in present]
        _strip_box(ax, groups, [colors[names.index(n)] for n in present], seed=size)
        th = failure_thresholds(at, w_pre_acc)
        _threshold_lines(ax, th)
        restarts = len({r["restart"] for r in at})
        steps, epochs = at[0]["steps"], at[0].get("epochs", "?")
        ax.set_title(f"{size} target images, {restarts} restarts\n{steps} steps ({epochs} epochs)", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower left")
    axes[0].set_ylabel("target test accuracy")
    fig.suptitle(f"Small target sets, many restarts (w_pre test acc {w_pre_acc:.3f}; failed: below it)"
                 + (f"\nsource: {source_name}" if source_name else ""), fontsize=10)  # fmt: skip
    return fig


def new_head_figure(records: list[dict], w_pre_acc: float, reference: list[dict] | None = None,
                    source_name: str = "") -> Figure:  # fmt: skip
    """Study 2: test accuracy with a re-initialised head, per head regulariser (mixout(w_pre, 0.7) on
    fc2 throughout); ``reference`` (study 1's mixout(w_pre, 0.7) runs, pretrained head) in grey."""
    from matplotlib.figure import Figure

    sizes = sorted({r["size"] for r in records})
    fig = Figure(figsize=(3.0 * len(sizes), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sizes)))
    for ax, size in zip(axes, sizes):
        at = [r for r in records if r["size"] == size]
        groups = [(_short(s.label), np.array([r["test_acc"] for r in at if r["setting"] == s.name]))
                  for s in HEAD_SETTINGS if any(r["setting"] == s.name for r in at)]  # fmt: skip
        colors = ["C1", "C3", "C0"][: len(groups)]
        ref = [r["test_acc"] for r in (reference or []) if r["size"] == size and r["setting"] == "mixout0.7"]
        if ref:
            groups.append(("pretrained head,\nmix(w_pre, 0.7)", np.array(ref)))
            colors.append("0.5")
        _strip_box(ax, groups, colors, seed=size)
        _threshold_lines(ax, failure_thresholds(at, w_pre_acc))
        ax.set_title(f"{size} target images, {len({r['restart'] for r in at})} restarts", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower left")
    axes[0].set_ylabel("target test accuracy")
    fig.suptitle("A new output layer (N(0, 0.02^2)), mixout(w_pre, 0.7) on fc2; regulariser on the new head"
                 + (f"\nsource: {source_name}" if source_name else ""), fontsize=10)  # fmt: skip
    return fig


def trajectory_figure(records: list[dict], lambdas=(0.01, 0.1, 1.0)) -> Figure:
    """Study 3: (a) the implied modulus ``m_t`` with its 95% interval, (b) the implied wdecay lambda
    ``m_t p / (1 - p)`` against the L2-SP lambdas of study 1, (c) ``||w_t - w_pre||^2`` (mixed), vs step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    ps = sorted({r["p"] for r in records})
    for i, p in enumerate(ps):
        for j, r in enumerate(rr for rr in records if rr["p"] == p):
            c = r["checkpoints"]
            step = np.array([q["step"] for q in c])
            lab = f"p = {p:g}" if j == 0 else None
            axes[0].plot(step, [q["m"] for q in c], "-o", ms=2.5, color=f"C{i}", label=lab, alpha=0.9)
            axes[0].fill_between(step, [q["m_lo"] for q in c], [q["m_hi"] for q in c], color=f"C{i}", alpha=0.15, lw=0)
            axes[1].plot(step, [q["lam"] for q in c], "-o", ms=2.5, color=f"C{i}", label=lab)
            axes[2].plot(step, [q["dist2"] for q in c], "-o", ms=2.5, color=f"C{i}", label=lab)
    for lam in lambdas:
        axes[1].axhline(lam, ls="--", color="0.4", lw=0.8)
        axes[1].annotate(f"L2-SP lambda={lam:g}", (0.01, lam), xycoords=("axes fraction", "data"), fontsize=7,
                         va="bottom", color="0.3")  # fmt: skip
    r0 = records[0]
    warm = int(r0.get("warmup", 0.1) * r0["steps"])
    for ax in axes[:2]:
        ax.axvline(warm, color="0.6", lw=0.8, ls=":")
        ax.annotate("end of warm-up", (warm, 0.98), xycoords=("data", "axes fraction"), fontsize=7, color="0.4",
                    ha="left", va="top", rotation=90)  # fmt: skip
    axes[0].set_title("implied modulus m_t = 2 (E L(Phi) - L) / ((p/(1-p)) ||w_t - w_pre||^2)", fontsize=9)
    axes[1].set_title("implied wdecay(w_pre, lambda): lambda_t = m_t p / (1-p)", fontsize=9)
    axes[2].set_title("||w_t - w_pre||^2 over the mixed weights (fc2, fc3)", fontsize=9)
    axes[1].set_yscale("log", nonpositive="mask")
    axes[2].set_yscale("log", nonpositive="mask")
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Mixout as an adaptive L2 penalty along finetuning ({r0['size']} target images, "
                 f"evaluation batch {r0['eval_size']}, {r0['mc_samples']} masks per checkpoint, 95% intervals)",
                 fontsize=10)  # fmt: skip
    return fig


# --------------------------------------------------------------------------------------------
# the paper's claims, checked on the stored runs


def claims(small: list[dict], head: list[dict], traj: list[dict], small_records: list[dict] | None = None) -> dict:
    """What the paper claims, as numbers on these runs (summaries from :func:`summarise_runs` and
    :func:`trajectory_summary`; ``small_records`` for paired differences).

    * ``mixout_fewer_failures``: per size, failed runs of the best mixout(w_pre, p >= 0.7) vs the
      usual recipe dropout(0.1) + wdecay(0, 0.01) (paper: mixout cuts degenerate runs);
    * ``mixout_mean_gain``: per size, best mixout mean minus the usual recipe's mean;
    * ``paired_gain_mixout0.8``: per size, mean over restarts of acc(mixout 0.8) - acc(usual recipe);
    * ``mixout_wd_gain``: per size, mixout(0.8) + wdecay(w_pre, 0.01) minus mixout(0.8) alone;
    * ``head``: per size, the head regulariser with the best mean;
    * ``m_peak_over_last``: per p, peak / final implied modulus along the run (adaptive L2 if >> 1).
    """
    out = {"mixout_fewer_failures": {}, "mixout_mean_gain": {}, "paired_gain_mixout0.8": {}, "mixout_wd_gain": {},
           "head": {}, "m_peak_over_last": {t["p"]: t["peak_over_last"] for t in traj}}  # fmt: skip
    for size in sorted({r["size"] for r in small}):
        at = {r["setting"]: r for r in small if r["size"] == size}
        usual = at.get("dropout0.1+wd0.01")
        mix = [at[k] for k in ("mixout0.7", "mixout0.8", "mixout0.9") if k in at]
        if usual and mix:
            best = max(mix, key=lambda r: r["mean"])
            out["mixout_fewer_failures"][size] = (best["failed"], usual["failed"])
            out["mixout_mean_gain"][size] = best["mean"] - usual["mean"]
        if "mixout0.8" in at and "mixout0.8+l2sp0.01" in at:
            out["mixout_wd_gain"][size] = at["mixout0.8+l2sp0.01"]["mean"] - at["mixout0.8"]["mean"]
        if small_records:
            acc = {(r["setting"], r["restart"]): r["test_acc"] for r in small_records if r["size"] == size}
            d = [acc["mixout0.8", k] - acc["dropout0.1+wd0.01", k] for (s, k) in acc if s == "mixout0.8"
                 and ("dropout0.1+wd0.01", k) in acc]  # fmt: skip
            if d:
                sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
                out["paired_gain_mixout0.8"][size] = (float(np.mean(d)), sd)
    for size in sorted({r["size"] for r in head}):
        at = [r for r in head if r["size"] == size]
        out["head"][size] = max(at, key=lambda r: r["mean"])["setting"]
    return out


# --------------------------------------------------------------------------------------------
# export of the committed results


def export_results(res: AblationResults, out_dir) -> dict:
    """Write tidy CSVs, summary CSVs, PNG figures, ``tables.md`` and ``meta.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}

    def write_csv(name, rows, cols=None):
        if not rows:
            return
        cols = cols or [k for k in rows[0] if not isinstance(rows[0][k], (list, dict))]
        rows = [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in cols} for r in rows]
        written[name] = atomic_write_csv(out_dir / name, rows, cols, lineterminator="\n")

    run_cols = ["size", "setting", "restart", "data_seed", "mask_seed", "epochs", "steps", "test_acc", "test_loss",
                "train_loss", "dist_mixed", "dist_fc1", "dist_fc2", "dist_fc3", "dist_all"]  # fmt: skip
    tables, meta = [], {"config": _jsonable(res.config.asdict()), "w_pre_test_acc": res.w_pre_acc,
                        "source_name": res.source_name, "this_invocation_seconds": res.seconds, "env": run_env(),
                        "training": {s: _training_cost(r) for s, r in res.records.items()},
                        "subset_sha256": hashlib.sha256(res.subset_index.numpy().astype("<i8").tobytes()).hexdigest(),
                        "store_keys": {s: res.config.key(s) for s in res.records}}  # fmt: skip
    small = head = traj = []
    if "small_data" in res.records:
        recs = res.records["small_data"]
        small = summarise_runs(recs, res.w_pre_acc)
        write_csv("small_data_runs.csv", recs, run_cols)
        write_csv("small_data_summary.csv", small)
        _save(small_data_figure(recs, res.w_pre_acc, res.source_name), out_dir / "small_data.png", written)
        tables.append("## Small data, many restarts\n\n" + markdown_table(small, SUMMARY_COLUMNS))
        paired = paired_differences(recs)
        write_csv("small_data_paired.csv", paired)
        tables.append("### Paired differences (restart by restart)\n\n" + markdown_table(
            paired, [("size", "n train"), ("a", "a"), ("b", "b"), ("n", "restarts"),
                     ("mean_diff", "mean acc(a) - acc(b)"), ("sd_diff", "sd"), ("a_wins", "a better"), ("ties", "ties"),
                     ("b_wins", "b better")]))
    if "new_head" in res.records:
        recs = res.records["new_head"]
        head = summarise_runs(recs, res.w_pre_acc)
        write_csv("new_head_runs.csv", recs, run_cols[:3] + ["head_seed"] + run_cols[3:] + ["dist_fc3_w0"])
        write_csv("new_head_summary.csv", head)
        _save(new_head_figure(recs, res.w_pre_acc, res.records.get("small_data"), res.source_name),
              out_dir / "new_head.png", written)  # fmt: skip
        tables.append("## A new output layer\n\n" + markdown_table(head, HEAD_COLUMNS))
    if "trajectory" in res.records:
        recs = res.records["trajectory"]
        traj = trajectory_summary(recs)
        write_csv("trajectory.csv", trajectory_rows(recs))
        write_csv("trajectory_summary.csv", traj)
        _save(trajectory_figure(recs), out_dir / "trajectory.png", written)
        tables.append("## Effective L2 coefficient along the run\n\n" + markdown_table(traj, TRAJECTORY_COLUMNS))
    idx = res.subset_index.tolist()
    write_csv("subsets.csv", [{"rank": i, "target_train_index": j} for i, j in enumerate(idx)])
    meta["claims"] = _jsonable(claims(small, head, traj, res.records.get("small_data")))
    atomic_write(out_dir / "tables.md", "\n\n".join(tables) + "\n")
    atomic_write(out_dir / "meta.json", json.dumps(_jsonable(meta), indent=1, sort_keys=True))
    written["tables.md"], written["meta.json"] = out_dir / "tables.md", out_dir / "meta.json"
    return written


def _training_cost(records: list[dict]) -> dict:
    """Runs, member-steps and wall seconds of training (evaluation excluded) summed over the stored
    runs: each run carries its ensemble's seconds and size (``seconds`` of a trajectory ensemble
    include its Monte Carlo checkpoints)."""
    secs = sum(r.get("chunk_seconds", r.get("seconds", 0.0)) / r.get("chunk_members", len(records)) for r in records)
    return {"runs": len(records), "member_steps": int(sum(r["steps"] for r in records)), "seconds": float(secs)}


def _save(fig, path: Path, written: dict) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    written[path.name] = path


def main(argv=None) -> None:
    """``python -m mixout_theory.ablations [--profile P] [--studies ...] [--export DIR]``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper", choices=PROFILES)
    ap.add_argument("--studies", nargs="+", default=list(STUDIES), choices=STUDIES)
    ap.add_argument("--results", default=None, help="results root (default: the checkout's results/)")
    ap.add_argument("--export", default=None, help="write CSV / PNG / tables here")
    ap.add_argument("--source", default="auto")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    res = run_ablations(args.profile, tuple(args.studies), results=args.results, source=args.source,
                        progress=not args.no_progress)  # fmt: skip
    print(json.dumps({"seconds": res.seconds, "w_pre_acc": res.w_pre_acc}, indent=1))
    if args.export:
        for name in export_results(res, args.export):
            print("wrote", Path(args.export) / name)


if __name__ == "__main__":
    main()

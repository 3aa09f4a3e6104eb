"""Synthetic run records shaped like the stored ones, for the report and plot tests (no training).

``sweep_records`` -- the Figure 2 sweep (:mod:`mixout_theory.experiment.sweep` records): restarts
(``seed``) 0, 1, 2; p = 0 stored once as method ``"none"``, p = 0.4 and 0.8 for ``"dropout"`` and
``"mixout"``. Every metric is ``base + step * seed`` (so a group's mean is ``base + step`` and its
sample std (ddof=1) is ``|step|``), with these (base, step):

=============  ==============  ===========  ==============  ===========  ==============
metric         none, p=0       dropout 0.4  dropout 0.8     mixout 0.4   mixout 0.8
=============  ==============  ===========  ==============  ===========  ==============
dist_mixed     (10, 1)         (8, 1)       (12, 1)         (6, 1)       (2, 1)
dist_fc1       (1, 0.5)        (2, 0.5)     (3, 0.5)        (4, 0.5)     (5, 0.5)
dist_fc2       dist_mixed * 0.75 (fc3 the rest: dist_fc3 = dist_mixed * 0.25)
dist_all       dist_mixed + dist_fc1 + 0.125
target_val     (0.90, 0.01)    (0.91, 0.01) (0.92, 0.01)    (0.93, 0.01) (0.94, 0.01)
target_test    target_val - 0.005
source_val     (0.99, -0.01)   (0.95, 0)    (0.90, 0.02)    (0.97, -0.01) (0.96, -0.01)
=============  ==============  ===========  ==============  ===========  ==============

so mixout's ``dist_mixed`` falls 11 -> 7 -> 3 (means, std 1) in every restart, and mixout - dropout
on the source task is (0.02, 0.01, 0) at p = 0.4 and (0.06, 0.03, 0) at p = 0.8, restart by restart.

``ablation_records`` -- the three ablation studies (:mod:`mixout_theory.experiment.ablations`), see
:data:`SMALL_ACC`, :data:`HEAD_ACC` and the fixture's docstring for the numbers.

``make_sweep_record``, ``make_ablation_record``, ``make_trajectory_record`` -- the builders themselves,
for tests that need records of their own.

``make_exp`` -- prepared data for the pipelines (a seeded synthetic task of chosen split sizes).
"""

from __future__ import annotations

import types

import pytest
import torch

SWEEP_TABLE = {  # (method, p) -> metric -> (base, step over seeds)
    ("none", 0.0): {
        "dist_mixed": (10, 1),
        "dist_fc1": (1, 0.5),
        "target_val_acc": (0.90, 0.01),
        "source_val_acc": (0.99, -0.01),
    },
    ("dropout", 0.4): {
        "dist_mixed": (8, 1),
        "dist_fc1": (2, 0.5),
        "target_val_acc": (0.91, 0.01),
        "source_val_acc": (0.95, 0.0),
    },
    ("dropout", 0.8): {
        "dist_mixed": (12, 1),
        "dist_fc1": (3, 0.5),
        "target_val_acc": (0.92, 0.01),
        "source_val_acc": (0.90, 0.02),
    },
    ("mixout", 0.4): {
        "dist_mixed": (6, 1),
        "dist_fc1": (4, 0.5),
        "target_val_acc": (0.93, 0.01),
        "source_val_acc": (0.97, -0.01),
    },
    ("mixout", 0.8): {
        "dist_mixed": (2, 1),
        "dist_fc1": (5, 0.5),
        "target_val_acc": (0.94, 0.01),
        "source_val_acc": (0.96, -0.01),
    },
}
SWEEP_SOURCE_NAME = "stand-in: EMNIST-style MNIST (not EMNIST)"


def sweep_record(method: str, p: float, seed: int, **metrics) -> dict:
    """One stored sweep record (the keys :func:`mixout_theory.experiment.sweep._records` writes)."""
    rec = {
        "run_id": f"{method}-p{p:.2f}-seed{seed}",
        "method": method,
        "p": p,
        "seed": seed,
        "source": "stand-in",
        "source_name": SWEEP_SOURCE_NAME,
        "profile": "smoke",
        "config": "0123456789ab",
    }
    rec.update(metrics)
    rec["dist_fc2"], rec["dist_fc3"] = 0.75 * rec["dist_mixed"], 0.25 * rec["dist_mixed"]
    rec["dist_ln1"] = rec["dist_ln2"] = 0.0625
    rec["dist_all"] = rec["dist_mixed"] + rec["dist_fc1"] + 0.125
    rec["target_test_acc"] = rec["target_val_acc"] - 0.005
    rec.update(train_loss=0.1, steps=1250, chunk_seconds=1.0, chunk_members=7, device="cpu")
    return rec


def _sweep_records() -> list[dict]:
    return [
        sweep_record(method, p, s, **{m: base + step * s for m, (base, step) in table.items()})
        for (method, p), table in SWEEP_TABLE.items()
        for s in range(3)
    ]


@pytest.fixture
def sweep_records():
    """15 sweep records (3 restarts x (p = 0 + 2 p x 2 methods)), fresh for every test."""
    return _sweep_records()


def ablation_record(size, setting, restart, test_acc, *, order=0, label=None, **extra) -> dict:
    """One stored small-data / new-head record (the keys ``ablations._fields`` and ``_finish`` write)."""
    rec = {
        "run_id": f"n{size}-{setting}-r{restart}",
        "study": "small_data",
        "size": size,
        "setting": setting,
        "label": label or setting,
        "order": order,
        "restart": restart,
        "data_seed": restart,
        "mask_seed": 1000 + restart,
        "profile": "smoke",
        "source": "stand-in",
        "config": "abc",
        "test_acc": test_acc,
        "test_loss": 0.3,
        "train_loss": 0.2,
        "steps": 40,
        "epochs": 4,
        "chunk_seconds": 2.0,
        "chunk_members": 4,
        "dist_mixed": 1.0 + restart,
        "dist_all": 3.0 + restart,
        "dist_fc1": 1.5,
        "dist_fc2": 0.75,
        "dist_fc3": 0.25,
    }
    rec.update(extra)
    return rec


def trajectory_record(p, restart, ms, *, size=300, eval_size=300, mc_samples=96, test_acc=0.9, width=0.01):
    """One trajectory record: checkpoints at epochs 1, 2, ... (step 10 per epoch), ``m_t`` from ``ms``,
    ``m_lo`` / ``m_hi`` = ``m -+ width``, ``L(w_t) = 1 / epoch``."""
    cps = [
        {
            "epoch": i + 1,
            "step": 10 * (i + 1),
            "loss": 1.0 / (i + 1),
            "dist2": 0.1 * (i + 1),
            "penalty": m * 0.05,
            "penalty_se": 0.001,
            "m": m,
            "m_lo": m - width,
            "m_hi": m + width,
            "lam": m * p / (1 - p),
        }
        for i, m in enumerate(ms)
    ]
    return {
        "run_id": f"n{size}-mixout{p:g}-r{restart}",
        "study": "trajectory",
        "size": size,
        "setting": f"mixout{p:g}",
        "label": f"mixout(w_pre, {p:g})",
        "order": 0,
        "restart": restart,
        "data_seed": restart,
        "mask_seed": 1000 + restart,
        "p": p,
        "epochs": len(ms),
        "steps": 10 * len(ms),
        "eval_size": eval_size,
        "mc_samples": mc_samples,
        "test_acc": test_acc,
        "seconds": 3.0,
        "checkpoints": cps,
    }


SMALL_ACC = {  # setting -> test accuracy of restarts 0, 1, 2 at size 100 (w_pre_acc 0.80 in the tests)
    "dropout0.1+wd0.01": (0.85, 0.70, 0.87),
    "mixout0.7": (0.87, 0.87, 0.87),
    "mixout0.8": (0.88, 0.87, 0.89),
    "mixout0.9": (0.87, 0.87, 0.84),
    "mixout0.8+l2sp0.01": (0.89, 0.88, 0.90),
}
HEAD_ACC = {  # setting -> (test accuracy, ||w_fc3 - w_0||^2) of restarts 0, 1 at size 100
    "head-none": ((0.80, 0.82), (4.0, 2.0)),
    "head-dropout0.7": ((0.83, 0.85), (3.0, 3.0)),
    "head-mixout-w0-0.7": ((0.84, 0.86), (1.0, 1.5)),
}


def _ablation_records() -> dict:
    from mixout_theory.experiment.ablations import HEAD_SETTINGS, SMALL_DATA_SETTINGS

    order = {s.name: i for i, s in enumerate(SMALL_DATA_SETTINGS)}
    labels = {s.name: s.label for s in SMALL_DATA_SETTINGS + HEAD_SETTINGS}
    small = [
        ablation_record(100, name, r, acc, order=order[name], label=labels[name])
        for name, accs in SMALL_ACC.items()
        for r, acc in enumerate(accs)
    ]
    horder = {s.name: i for i, s in enumerate(HEAD_SETTINGS)}
    head = [
        ablation_record(
            100,
            name,
            r,
            acc,
            order=horder[name],
            label=labels[name],
            study="new_head",
            head_seed=5000 + r,
            dist_fc3_w0=d,
        )
        for name, (accs, dists) in HEAD_ACC.items()
        for r, (acc, d) in enumerate(zip(accs, dists, strict=False))
    ]
    traj = [
        trajectory_record(0.5, 0, [0.1, 0.5, 0.2]),
        trajectory_record(0.8, 0, [0.3, 0.35, 0.2], width=0.1),
    ]
    return {"small_data": small, "new_head": head, "trajectory": traj}


@pytest.fixture
def ablation_records():
    """``{"small_data": 15 records, "new_head": 6, "trajectory": 2}`` (size 100), fresh for every test:
    :data:`SMALL_ACC`, :data:`HEAD_ACC`, and trajectories ``m_t`` = (0.1, 0.5, 0.2) at p = 0.5 (interval
    +- 0.01) and (0.3, 0.35, 0.2) at p = 0.8 (interval +- 0.1)."""
    return _ablation_records()


@pytest.fixture(scope="session")
def make_sweep_record():
    """``make_sweep_record(method, p, seed, dist_mixed=..., dist_fc1=..., target_val_acc=...,
    source_val_acc=...)``."""
    return sweep_record


@pytest.fixture(scope="session")
def make_ablation_record():
    """``make_ablation_record(size, setting, restart, test_acc, *, order=0, label=None, **extra)``."""
    return ablation_record


@pytest.fixture(scope="session")
def make_trajectory_record():
    """``make_trajectory_record(p, restart, ms, *, size=300, eval_size=300, mc_samples=96, test_acc=0.9,
    width=0.01)``."""
    return trajectory_record


def _split(n: int, seed: int, shift: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    means = torch.randn(10, 784, generator=torch.Generator().manual_seed(shift))
    return types.SimpleNamespace(x=means[y] * 0.5 + torch.randn(n, 784, generator=g), y=y)


@pytest.fixture(scope="session")
def make_exp():
    """``make_exp(source=(train, val, test), target=(...))``: prepared data shaped like
    ``data.load_experiment``'s, a seeded synthetic 10-class task (source means seed 0, target seed 1)."""

    def make(source=(400, 200, 200), target=(160, 200, 200)):
        S = types.SimpleNamespace
        src = [_split(n, seed, 0) for n, seed in zip(source, (1, 2, 3), strict=False)]
        tgt = [_split(n, seed, 1) for n, seed in zip(target, (4, 5, 6), strict=False)]
        return S(
            source=S(train=src[0], val=src[1], test=src[2]),
            target=S(train=tgt[0], val=tgt[1], test=tgt[2]),
            source_key="stand-in",
            source_name="synthetic test task",
            info={"n": source[0]},
        )

    return make


@pytest.fixture(scope="session")
def small_sweep(make_exp):
    """``small_sweep(**overrides) -> (exp, config)``: the small sweep that the resume, integrity and
    shard tests run (300 / 100 / 100 source and 96 / 100 / 100 target images; p = 0, 0.3, 0.6; two
    restarts; one pretraining epoch), ``overrides`` changing its configuration."""
    from mixout_theory.experiment import sweep

    def build(**overrides):
        exp = make_exp(source=(300, 100, 100), target=(96, 100, 100))
        fields = dict(source="stand-in", target_train=None, pretrain_epochs=1, ps=(0.0, 0.3, 0.6), restarts=2)
        return exp, sweep.profile_config("smoke", data=sweep.data_fingerprint(exp), **(fields | overrides))

    return build

"""Theorem 1 on the paper's MLP itself: the finetuned network's mixout penalty, its second-order
value, the curvature behind it, and where Corollary 1.1 (eq. 9) holds.

The loss is the finetuning loss: ``L(w)`` = mean cross-entropy of the MLP in eval mode over a fixed,
seeded subset of the MNIST training split (``loss_size`` images, 5,000 at the paper profile; seed
``loss_seed``), in float64, as a function of the mixed weights ``fc2.weight`` / ``fc3.weight``
(31,000 coordinates; ``fc1``, the biases and LayerNorm stay fixed). For a point ``w`` and a target
``u``, with ``d = w - u`` and ``k = p / (1 - p)``, each record holds

* ``mc``: the Monte Carlo ``E L(Phi(w)) - L(w)`` of mixout(u, p) with its 95% interval
  (:func:`mixout_theory.experiment.curvature.effective_l2`, control variate, float64);
* ``second_order = (k / 2) sum_g d_g^T H_gg d_g`` (:func:`mixout_theory.second_order.second_order_terms`,
  one exact Hessian-vector product per input neuron) and ``m_eff = sum_g d_g^T H_gg d_g / ||d||^2``;
* ``m_min`` / ``m_max``: the extreme eigenvalues of ``H`` on the mixed coordinates (Lanczos,
  :func:`mixout_theory.second_order.curvature`), and Corollary 1.1's value ``m (k / 2) ||d||^2`` with
  ``m = m_min`` (vacuous when ``m_min <= 0``) and with ``m = m_eff`` (= ``second_order``).

Three parts, each a set of records in one resumable store (``results/theorem1/<profile>-<source>-<key>/``):

* ``finetuned`` -- at the final weights of the sweep's mixout(w_pre, p) run of restart ``restart``
  for every p (retrained here with the sweep's seeds; the weights are kept in the store's
  ``weights/`` folder with their sha256, never committed), ``u = w_pre``.
* ``displaced`` -- the same displacement ``d_p = w_p - w_pre`` taken at ``w_pre`` itself
  (``w = w_pre``, ``u = w_pre - d_p``): what the penalty would be if only ``d`` changed and the
  curvature stayed that of ``w_pre``. ``m_eff`` there against ``m_eff`` at ``w_p`` separates "the
  curvature changes" from "the displacement changes".
* ``trajectory`` -- the ablations' trajectory runs (restart 0, ``trajectory_size`` images, the same
  seeds, :mod:`mixout_theory.experiment.ablations`), at geometrically spaced epoch ends: the Monte Carlo
  coefficient ``2 mc / (k ||d||^2)`` the ablations store, beside ``m_eff(w_t)`` on the same batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mixout_theory import second_order
from mixout_theory.experiment import ablations, data, engine, mlp, sweep
from mixout_theory.experiment.curvature import effective_l2
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.store import RunStore, atomic_write, config_hash, project_dir, run_env, sha256_file

__all__ = ["Theorem1Config", "theorem1_config", "Theorem1Store", "network_loss", "measure_point",
           "checkpoint_epochs", "run_theorem1", "PARTS"]  # fmt: skip

PARTS = ("finetuned", "displaced", "trajectory")


@dataclass(frozen=True)
class Theorem1Config:
    """What determines the study's numbers (its hash keys the store). ``ps`` default: the sweep's p > 0."""

    profile: str = "paper"
    source: str = "stand-in"
    sweep_key: str = ""  # SweepConfig.key(): the finetuning protocol and w_pre
    trajectory_key: str = ""  # AblationConfig.key("trajectory"): the trajectory runs
    ps: tuple = tuple(p for p in sweep.PAPER_PS if p > 0)
    restart: int = 0
    loss_size: int = 5000
    loss_seed: int = 21
    mc_samples: int = 1000
    mc_seed: int = 3
    lanczos_tol: float = 1e-6
    checkpoints: int = 10
    version: int = 1

    def key(self) -> str:
        return config_hash(dataclasses.asdict(self))


#: overrides of the paper-size defaults, per profile (the sweep's and the ablations' are in sweep.PROFILE_SIZES)
PROFILE_SIZES = {"smoke": dict(loss_size=500, mc_samples=256, checkpoints=4),
                 "quick": dict(loss_size=2000, mc_samples=500), "paper": {}}  # fmt: skip


def theorem1_config(profile: str, **overrides) -> Theorem1Config:
    """The study's configuration for a profile (:data:`PROFILE_SIZES`), with ``overrides``."""
    sweep.profile_sizes(profile, "sweep")  # validates the profile's name
    return Theorem1Config(profile=profile, **{**PROFILE_SIZES[profile], **overrides})


class Theorem1Store(RunStore):
    """``root/theorem1/<profile>-<source>-<key>/``: ``config.json``, ``runs/<part>-p<p>.json`` and ``weights/``."""

    def __init__(self, root, config: Theorem1Config):
        self.config = config
        super().__init__(Path(root) / "theorem1" / f"{config.profile}-{config.source}-{config.key()}",
                         dataclasses.asdict(config))  # fmt: skip
        self.weights = self.dir / "weights"

    def save_weights(self, run_id: str, params: dict) -> Path:
        """One network's parameters as ``weights/<run_id>.pt``, its sha256 beside it in ``<run_id>.sha256``."""
        path = self.weights / f"{run_id}.pt"
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in params.items()}, buf)
        atomic_write(path, buf.getvalue())
        atomic_write(path.with_suffix(".sha256"), f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {path.name}\n")
        return path

    def load_weights(self, run_id: str) -> dict | None:
        """The kept weights of ``run_id`` (``None`` if not kept); a file whose sha256 differs is an error."""
        path = self.weights / f"{run_id}.pt"
        if not path.is_file():
            return None
        sums = path.with_suffix(".sha256")
        want = sums.read_text().split()[0] if sums.is_file() else "(no checksum recorded)"
        got = sha256_file(path)
        if got != want:
            raise ValueError(f"{path}: sha256 {got[:12]}... differs from the recorded {want[:12]}...; "
                             "the file was altered: delete it and rerun (it is recomputed)")  # fmt: skip
        return torch.load(path, map_location="cpu", weights_only=True)

    def records(self) -> list[dict]:
        order = ("w_pre",) + PARTS
        return sorted(self.read(), key=lambda r: (order.index(r["part"]), r["p"]))


# --------------------------------------------------------------------------------------------
# the measurement at one point


def network_loss(params: dict, x: torch.Tensor, y: torch.Tensor):
    """``(loss_fn, w)``: the mean cross-entropy as a function of the mixed weights, and their values.

    Float64, eval mode; ``fc1``'s output :func:`mlp.hidden1` is computed once, ``loss_fn`` runs
    :func:`mlp.tail` with the given ``fc2.weight`` / ``fc3.weight``.
    """
    net = {k: v.detach().double() for k, v in params.items()}
    h1 = mlp.hidden1(net, x.double())

    def loss_fn(mixed: dict) -> torch.Tensor:
        return F.cross_entropy(mlp.tail(net, h1, mixed["fc2.weight"], mixed["fc3.weight"]), y)

    return loss_fn, {k: net[k] for k in mlp.MIXED}


def measure_point(params: dict, reference: dict, p: float, x, y, *, mc_samples: int, mc_seed: int,
                  lanczos_tol: float | None = None) -> dict:  # fmt: skip
    """Every quantity of the module docstring at ``w = params`` with ``u = reference`` (mixed weights), one dict."""
    t0 = time.perf_counter()
    loss_fn, w = network_loss(params, x, y)
    u = {k: reference[k].detach().double() for k in mlp.MIXED}
    terms = second_order.second_order_terms(loss_fn, w, u)
    t_second = time.perf_counter() - t0
    net = {k: v.detach().double() for k, v in params.items()}
    mc = effective_l2(net, u, p, x.double(), y, n_samples=mc_samples, generator=mc_seed)
    k = p / (1.0 - p)
    row = {"p": p, "loss": terms.loss, "dist2": terms.dist2, "mc": mc.penalty.mean, "mc_se": mc.penalty.se,
           "mc_lo": mc.penalty.lo, "mc_hi": mc.penalty.hi, "mc_samples": mc_samples, "m_mc": mc.m,
           "m_mc_lo": mc.m_lo, "m_mc_hi": mc.m_hi, "second_order": terms.penalty(p), "m_eff": terms.m_eff,
           "quad_fc2": terms.by_entry["fc2.weight"], "quad_fc3": terms.by_entry["fc3.weight"],
           "dist2_fc2": float((w["fc2.weight"] - u["fc2.weight"]).pow(2).sum()),
           "dist2_fc3": float((w["fc3.weight"] - u["fc3.weight"]).pow(2).sum()),
           "corollary_m_eff": terms.m_eff * k / 2.0 * terms.dist2, "seconds_second_order": t_second}  # fmt: skip
    if lanczos_tol is not None:
        t1 = time.perf_counter()
        c = second_order.curvature(loss_fn, w, tol=lanczos_tol)
        row.update(m_min=c.m_min, m_max=c.m_max, lanczos_hvp=c.n_hvp, seconds_lanczos=time.perf_counter() - t1,
                   corollary_m_min=c.m_min * k / 2.0 * terms.dist2 if c.m_min > 0 else None)  # fmt: skip
    row["seconds"] = time.perf_counter() - t0
    return row


def checkpoint_epochs(epochs: int, n: int) -> list[int]:
    """About ``n`` epoch numbers from 1 to ``epochs``, geometrically spaced (1 and ``epochs`` included)."""
    if n <= 1 or epochs <= 1:
        return [epochs]
    return sorted({max(1, round(epochs ** (i / (n - 1)))) for i in range(n)})


# --------------------------------------------------------------------------------------------
# the study


def _loss_batch(exp, config: Theorem1Config):
    x, y = exp.target.train.x, exp.target.train.y
    n = min(config.loss_size, x.shape[0])
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(config.loss_seed))[:n].sort().values
    return x[idx], y[idx], hashlib.sha256(idx.numpy().astype("<i8").tobytes()).hexdigest()


def _finetuned(store, config, sweep_cfg, tensors, w_pre, options) -> dict:
    """The final weights of the sweep's mixout runs of restart ``config.restart``: kept ones, or retrained."""
    runs = {rid: m for rid, f, m in sweep.sweep_members(sweep_cfg)
            if f["method"] == "mixout" and f["seed"] == config.restart and f["p"] in config.ps}  # fmt: skip
    kept = {rid: store.load_weights(rid) for rid in runs}
    todo = [rid for rid, w in kept.items() if w is None]
    if todo:
        xt, yt = tensors["target_train"]
        result = engine.train_ensemble(
            w_pre, [runs[r] for r in todo], xt, yt, epochs=sweep_cfg.finetune_epochs, lr=sweep_cfg.lr_finetune,
            batch_size=sweep_cfg.batch_size, warmup=sweep_cfg.warmup, target=w_pre, device=options.device,
            workers=options.n_workers, progress="finetune (mixout, one restart)" if options.progress else False,
        )  # fmt: skip
        for e, rid in enumerate(todo):
            kept[rid] = {k: v[e] for k, v in result.params.items()}
            store.save_weights(rid, kept[rid])
    return {p: kept[f"mixout-p{p:.2f}-seed{config.restart}"] for p in config.ps}


def _trajectory(store, config, acfg, atensors, w_pre, options) -> None:
    """The ablations' trajectory runs of restart 0, measured at :func:`checkpoint_epochs`."""
    todo = [p for p in acfg.trajectory_ps if f"trajectory-p{p:.2f}" not in store.done()]
    if not todo:
        return
    x, y = atensors["pool"][0][: acfg.trajectory_size], atensors["pool"][1][: acfg.trajectory_size]
    n_eval = x.shape[0] if acfg.trajectory_eval is None else min(acfg.trajectory_eval, x.shape[0])
    epochs = ablations.epochs_for(acfg.trajectory_size, acfg)
    marks = checkpoint_epochs(epochs, config.checkpoints)
    spe = math.ceil(acfg.trajectory_size / acfg.batch_size)
    points = {p: [] for p in todo}

    def on_epoch_end(epoch, params):
        if epoch + 1 not in marks:
            return
        for e, p in enumerate(todo):
            one = {k: v[e].detach().cpu() for k, v in params.items()}
            row = measure_point(one, w_pre, p, x[:n_eval], y[:n_eval], mc_samples=acfg.trajectory_samples,
                                mc_seed=acfg.trajectory_mc_seed)  # fmt: skip
            points[p].append(dict(row, epoch=epoch + 1, step=(epoch + 1) * spe))

    members = [ablations.Setting(f"mixout{p:g}", f"mixout(w_pre, {p:g})", mixout=p).member(0) for p in todo]
    engine.train_ensemble(w_pre, members, x, y, epochs=epochs, lr=acfg.lr, batch_size=acfg.batch_size,
                          warmup=acfg.warmup, target=w_pre, device=options.device, on_epoch_end=on_epoch_end,
                          workers=options.n_workers,
                          progress="trajectory runs" if options.progress else False)  # fmt: skip
    for p in todo:
        store.write({"run_id": f"trajectory-p{p:.2f}", "part": "trajectory", "p": p, "epochs": epochs,
                     "eval_size": n_eval, "checkpoints": points[p], **run_env(options.device)})  # fmt: skip


@dataclass
class Theorem1Results:
    """The study's configuration, store, records by part, and what the records were measured on."""

    config: Theorem1Config
    store: Theorem1Store
    records: dict
    context: dict


def run_theorem1(profile: str = "paper", options: RunOptions = RunOptions(), *, results=None, data_root=None,
                 source: str = "auto", exp=None, parts=PARTS, **overrides) -> Theorem1Results:  # fmt: skip
    """Data, ``w_pre`` (the sweep's cached pretraining), the finetuned weights and the three parts.

    Every record is written as it is measured, so an interrupted study resumes where it stopped;
    ``exp``: prepared data (default :func:`mixout_theory.experiment.data.load_experiment`);
    ``overrides``: fields of :class:`Theorem1Config`.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {PARTS}")
    results = project_dir("results") if results is None else Path(results)
    exp = data.load_experiment(root=data_root, source=source) if exp is None else exp
    sweep_cfg = sweep.profile_config(profile, source=exp.source_key, data=sweep.data_fingerprint(exp))
    tensors = sweep.experiment_tensors(exp, sweep_cfg)
    w_pre = sweep.pretrain(results, sweep_cfg, tensors, options)
    acfg = ablations.ablation_config(profile, source=exp.source_key, data=sweep_cfg.data,
                                     pretrain=sweep_cfg.pretrain_key())  # fmt: skip
    overrides.setdefault("ps", tuple(p for p in sweep_cfg.ps if p > 0))
    config = theorem1_config(profile, source=exp.source_key, sweep_key=sweep_cfg.key(),
                             trajectory_key=acfg.key("trajectory"),
                             **overrides)  # fmt: skip
    store = Theorem1Store(results, config)
    x, y, loss_sha = _loss_batch(exp, config)
    context = {"source_name": exp.source_name, "loss_size": int(x.shape[0]), "loss_subset_sha256": loss_sha,
               "trajectory_size": acfg.trajectory_size, "trajectory_ps": list(acfg.trajectory_ps),
               "trajectory_samples": acfg.trajectory_samples, "finetune_epochs": sweep_cfg.finetune_epochs,
               "target_train": int(tensors["target_train"][0].shape[0])}  # fmt: skip
    atomic_write(store.dir / "context.json", json.dumps(context, indent=1, sort_keys=True))
    done = store.done()
    if "w_pre" not in done and ("finetuned" in parts or "displaced" in parts):
        loss_fn, w = network_loss(w_pre, x, y)
        c = second_order.curvature(loss_fn, w, tol=config.lanczos_tol)
        store.write({"run_id": "w_pre", "part": "w_pre", "p": 0.0, "loss": float(loss_fn(w)), "m_min": c.m_min,
                     "m_max": c.m_max, "lanczos_hvp": c.n_hvp, "point": "w_pre"})  # fmt: skip
    need = [p for p in config.ps for part in ("finetuned", "displaced") if part in parts
            and f"{part}-p{p:.2f}" not in done]  # fmt: skip
    if need:
        weights = _finetuned(store, config, sweep_cfg, tensors, w_pre, options)
        sweep_runs = {r["run_id"]: r for r in sweep.SweepStore(results, sweep_cfg).records()}
        for p in sorted(set(need)):
            w_p = weights[p]
            rid = f"mixout-p{p:.2f}-seed{config.restart}"
            if "finetuned" in parts and f"finetuned-p{p:.2f}" not in done:
                row = measure_point(w_p, w_pre, p, x, y, mc_samples=config.mc_samples, mc_seed=config.mc_seed,
                                    lanczos_tol=config.lanczos_tol)  # fmt: skip
                row["sweep_dist_mixed"] = sweep_runs.get(rid, {}).get("dist_mixed")
                store.write(dict(row, run_id=f"finetuned-p{p:.2f}", part="finetuned", point="w_p", sweep_run=rid))
                if options.progress:
                    print(f"finetuned p={p:g}: mc {row['mc']:.4g}, second order {row['second_order']:.4g}, "
                          f"m_eff {row['m_eff']:.4g}, m_min {row['m_min']:.4g} ({row['seconds']:.0f} s)", flush=True)
            if "displaced" in parts and f"displaced-p{p:.2f}" not in done:
                shifted = {k: w_pre[k] - (w_p[k] - w_pre[k]) if k in mlp.MIXED else w_pre[k] for k in w_pre}
                row = measure_point(w_pre, shifted, p, x, y, mc_samples=config.mc_samples, mc_seed=config.mc_seed)
                store.write(dict(row, run_id=f"displaced-p{p:.2f}", part="displaced", point="w_pre", sweep_run=rid))
    if "trajectory" in parts:
        _trajectory(store, config, acfg, ablations.ablation_tensors(exp, acfg), w_pre, options)
    by_part = {part: [r for r in store.records() if r["part"] == part] for part in ("w_pre",) + PARTS}
    return Theorem1Results(config, store, by_part, context)

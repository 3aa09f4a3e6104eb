"""Theorem 1 on the paper's MLP itself: the finetuned network's mixout penalty, its second-order
value, the curvature behind it, and where Corollary 1.1 (eq. 9) holds.

``L(w)``: the finetuning loss, mean cross-entropy of the MLP in eval mode (float64) over a fixed,
seeded subset of the MNIST training split (``loss_size`` images, 5,000 at the paper profile; seed
``loss_seed``), as a function of the mixed weights ``fc2.weight`` / ``fc3.weight`` (31,000
coordinates; ``fc1``, the biases and LayerNorm stay fixed). For a point ``w`` and a target ``u``,
with ``d = w - u`` and ``k = p / (1 - p)``, each record holds

* ``mc``: the Monte Carlo ``E L(Phi(w)) - L(w)`` of mixout(u, p) with its 95% interval
  (:func:`mixout_theory.experiment.effective_l2.effective_l2`, control variate, float64);
* ``second_order = (k / 2) sum_g d_g^T H_gg d_g`` (:func:`mixout_theory.second_order.second_order_terms`,
  one exact Hessian-vector product per input neuron) and ``m_eff = sum_g d_g^T H_gg d_g / ||d||^2``;
* ``m_min`` / ``m_max``: the extreme eigenvalues of ``H`` on the mixed coordinates (Lanczos,
  :func:`mixout_theory.second_order.curvature`), and Corollary 1.1's value ``m (k / 2) ||d||^2`` with
  ``m = m_min`` (vacuous when ``m_min <= 0``) and with ``m = m_eff`` (= ``second_order``).

Six parts, records of one resumable store (``results/theorem1/<profile>-<source>-<key>/``):

* ``finetuned`` -- at the final weights ``w_p`` of the sweep's mixout(w_pre, p) run of restart
  ``restart`` for every p (retrained with the sweep's seeds; kept in the store's ``weights/`` with
  their sha256, never committed), ``u = w_pre``.
* ``displaced`` -- the same ``d_p = w_p - w_pre`` taken at ``w_pre`` (``w = w_pre``,
  ``u = w_pre - d_p``): ``m_eff`` there against ``m_eff`` at ``w_p`` separates "the curvature
  changes" from "the displacement changes".
* ``scan`` -- at the finetuned and the displaced point of ``p* = ps[len(ps) // 2]``, the Monte Carlo
  penalty of masks with other probabilities ``q`` (``scan_ps``) against the second-order value
  ``(q / (2 (1 - q))) sum_g d_g^T H_gg d_g`` (the sum does not depend on ``q``). With
  ``X = M / mu - 1``, a third-order remainder grows relative to the second-order term like
  ``E X^3 / E X^2 = (2q - 1) / (1 - q)``; a term that is itself of second order in the mask (such as
  ReLU units pushed across 0 by a dropped neuron, which the almost-everywhere Hessian does not see)
  scales like ``E X^2`` and leaves the ratio Monte Carlo / second order flat in ``q``.
* ``layers`` and ``scale`` -- the penalty split into its second-order, smooth higher-order and kink parts,
  with mixout on ``fc2``, ``fc3`` or both, and for the displacement scaled by ``t``
  (:mod:`mixout_theory.experiment.beyond_second_order`; both read the points' second-order terms, so
  they measure ``finetuned`` and ``displaced`` first).
* ``trajectory`` -- the ablations' trajectory runs (restart 0, ``trajectory_size`` images, the same
  seeds, :mod:`mixout_theory.experiment.ablations`), at geometrically spaced epoch ends: the Monte Carlo
  coefficient ``2 mc / (k ||d||^2)`` the ablations store, beside ``m_eff(w_t)`` on the same batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mixout_theory import second_order
from mixout_theory.experiment import ablations, beyond_second_order, mlp, sweep
from mixout_theory.experiment.effective_l2 import effective_l2
from mixout_theory.experiment.machine import machines_of, run_env
from mixout_theory.experiment.penalty_parts import LAYERS
from mixout_theory.experiment.pretraining import seeded_index
from mixout_theory.experiment.store import (
    IntegrityError,
    RunStore,
    Staging,
    atomic_write,
    atomic_write_csv,
    checked_meta,
    config_hash,
    find_stores,
    is_sha256,
    project_dir,
    read_config,
    read_csv,
    read_json_object,
    verify_sha256,
    write_meta,
)
from mixout_theory.experiment.study import Context, profile_sizes

__all__ = ["PARTS", "Theorem1Config", "theorem1_config", "Theorem1Store", "Theorem1Results", "network_loss"]
__all__ += ["measure_point", "checkpoint_epochs", "run_theorem1", "load_stored", "table_rows"]
__all__ += ["export_tables", "load_tables", "claims", "SUMMARY_COLUMNS"]

PARTS = ("finetuned", "displaced", "scan", "layers", "scale", "trajectory")
POINTS = {"finetuned": "w_p", "displaced": "w_pre"}  # where each part measures


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
    scan_ps: tuple = (0.1, 0.3, 0.5, 0.7, 0.9)
    scale_ps: tuple = (0.8,)
    scale_ts: tuple = tuple(round(0.05 * 20 ** (i / 6), 4) for i in range(7))  # 0.05 ... 1, geometric
    parts_batch: int = 4  # masks per evaluation in the layers / scale parts (sets which masks are drawn)
    version: int = 2

    def key(self) -> str:
        return config_hash(dataclasses.asdict(self))


#: What each profile means for the study (overrides of :class:`Theorem1Config`'s paper-size defaults).
SIZES = {
    "smoke": dict(loss_size=500, mc_samples=256, checkpoints=4, scale_ts=(0.1, 0.3, 1.0)),
    "quick": dict(loss_size=2000, mc_samples=500),
    "paper": {},
}


def theorem1_config(profile: str, **overrides) -> Theorem1Config:
    """The study's configuration for a profile (:data:`SIZES`), with ``overrides``."""
    return Theorem1Config(profile=profile, **{**profile_sizes(SIZES, profile), **overrides})


class Theorem1Store(RunStore):
    """``root/theorem1/<profile>-<source>-<key>/``: ``config.json``, ``runs/<part>-p<p>.json``, weights."""

    REQUIRED = ("run_id", "part", "p")

    def __init__(self, root, config: Theorem1Config):
        self.config = config
        folder = Path(root) / "theorem1" / f"{config.profile}-{config.source}-{config.key()}"
        super().__init__(folder, dataclasses.asdict(config))
        self.weights = self.dir / "weights"

    def save_weights(self, run_id: str, params: dict) -> Path:
        """One network's parameters as ``weights/<run_id>.pt``, its sha256 in ``<run_id>.sha256``."""
        path, buf = self.weights / f"{run_id}.pt", io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in params.items()}, buf)
        sha = hashlib.sha256(buf.getvalue()).hexdigest()
        with Staging() as st:  # the weights and their checksum appear together
            st.path_for(path).write_bytes(buf.getvalue())
            st.path_for(path.with_suffix(".sha256")).write_text(f"{sha}  {path.name}\n")
            st.commit()
        return path

    def load_weights(self, run_id: str) -> dict | None:
        """The kept weights of ``run_id`` (``None`` if not kept); a file whose sha256 differs is an error."""
        path = self.weights / f"{run_id}.pt"
        if not path.is_file():
            return None
        sums, remedy = path.with_suffix(".sha256"), "delete it and rerun (it is recomputed)"
        want = (sums.read_text().split() or [""])[0] if sums.is_file() else ""
        if not is_sha256(want):
            what = f"no valid sha256 recorded for {path.name} (missing or garbled)"
            raise IntegrityError(f"{sums}: {what}; {remedy}")
        verify_sha256(path, want, sums.name, f"the file was altered: {remedy}")
        return torch.load(path, map_location="cpu", weights_only=True)

    def records(self) -> list[dict]:
        order = ("w_pre",) + PARTS
        return sorted(self.read(), key=lambda r: (order.index(r["part"]), r.get("point", ""), r["p"]))


# --------------------------------------------------------------------------------------------
# the measurement at one point


def network_loss(params: dict, x: torch.Tensor, y: torch.Tensor):
    """``(loss_fn, w)``: the mean cross-entropy (float64, eval mode) as a function of the mixed weights,
    and their values; ``fc1``'s output :func:`mlp.hidden1` is computed once, ``loss_fn`` runs
    :func:`mlp.tail` with the given ``fc2.weight`` / ``fc3.weight``."""
    net = {k: v.detach().double() for k, v in params.items()}
    h1 = mlp.hidden1(net, x.double())

    def loss_fn(mixed: dict) -> torch.Tensor:
        return F.cross_entropy(mlp.tail(net, h1, mixed["fc2.weight"], mixed["fc3.weight"]), y)

    return loss_fn, {k: net[k] for k in mlp.MIXED}


def _mc_fields(penalty, n_samples: int) -> dict:
    return dict(mc=penalty.mean, mc_se=penalty.se, mc_lo=penalty.lo, mc_hi=penalty.hi, mc_samples=n_samples)


def measure_point(
    params: dict, reference: dict, p: float, x, y, *, mc_samples: int, mc_seed: int, lanczos_tol=None
) -> dict:
    """Every quantity of the module docstring at ``w = params`` with ``u = reference`` (mixed weights),
    one dict (``lanczos_tol=None``: without the extreme eigenvalues)."""
    t0 = time.perf_counter()
    net = {k: v.detach().double() for k, v in params.items()}  # float64 once, for both estimates
    x = x.double()
    loss_fn, w = network_loss(net, x, y)
    u = {k: reference[k].detach().double() for k in mlp.MIXED}
    terms = second_order.second_order_terms(loss_fn, w, u)
    t_second = time.perf_counter() - t0
    mc = effective_l2(net, u, p, x, y, n_samples=mc_samples, generator=mc_seed)
    k = p / (1.0 - p)
    row = dict(p=p, loss=terms.loss, dist2=terms.dist2, **_mc_fields(mc.penalty, mc_samples))
    row.update(m_mc=mc.m, m_mc_lo=mc.m_lo, m_mc_hi=mc.m_hi, second_order=terms.penalty(p), m_eff=terms.m_eff)
    row.update({f"quad_{n[:3]}": terms.by_entry[n] for n in mlp.MIXED})  # quad_fc2, quad_fc3
    row.update({f"dist2_{n[:3]}": float((w[n] - u[n]).pow(2).sum()) for n in mlp.MIXED})
    row.update(corollary_m_eff=terms.m_eff * k / 2.0 * terms.dist2, seconds_second_order=t_second)
    if lanczos_tol is not None:
        t1 = time.perf_counter()
        c = second_order.curvature(loss_fn, w, tol=lanczos_tol)
        row.update(m_min=c.m_min, m_max=c.m_max, lanczos_hvp=c.n_hvp)
        row["seconds_lanczos"] = time.perf_counter() - t1
        row["corollary_m_min"] = c.m_min * k / 2.0 * terms.dist2 if c.m_min > 0 else None
    row["seconds"] = time.perf_counter() - t0
    return row


def checkpoint_epochs(epochs: int, n: int) -> list[int]:
    """About ``n`` epoch numbers from 1 to ``epochs``, geometrically spaced (1 and ``epochs`` included)."""
    if n <= 1 or epochs <= 1:
        return [epochs]
    return sorted({max(1, round(epochs ** (i / (n - 1)))) for i in range(n)})


# --------------------------------------------------------------------------------------------
# the study


def _finetuned(store, config, sweep_cfg, tensors, w_pre, options) -> dict:
    """The sweep's mixout weights of restart ``config.restart`` by p: kept, or all retrained (bit for bit)."""
    ids = {p: sweep.run_id_of("mixout", p, config.restart) for p in config.ps}
    runs = {rid: m for rid, _, m in sweep.sweep_members(sweep_cfg) if rid in ids.values()}
    kept = {rid: store.load_weights(rid) for rid in runs}
    if any(w is None for w in kept.values()):
        progress = "finetune (mixout, one restart)" if options.progress else False
        result = sweep.finetune(sweep_cfg, w_pre, list(runs.values()), tensors, options, progress)
        for e, rid in enumerate(runs):
            if kept[rid] is None:
                kept[rid] = {k: v[e] for k, v in result.params.items()}
                store.save_weights(rid, kept[rid])
    return {p: kept[rid] for p, rid in ids.items()}


def _w_u(point: str, w_pre: dict, w_p: dict) -> tuple[dict, dict]:
    """``(w, u)`` at ``w_p`` (``u = w_pre``), or at ``w_pre`` with ``u = w_pre - d`` (mixed, float64)."""
    if point == "w_p":
        return w_p, w_pre
    return w_pre, {k: 2 * w_pre[k].double() - w_p[k].double() for k in mlp.MIXED}


def _points(store, config, parts, weights, w_pre, x, y, sweep_runs, progress) -> None:
    """The ``finetuned`` and ``displaced`` records of every p, then the ``scan`` at ``ps[len(ps) // 2]``."""
    kw = dict(mc_samples=config.mc_samples, mc_seed=config.mc_seed)
    done = store.done()  # the ids written below are new ones
    for p in config.ps:
        rid = sweep.run_id_of("mixout", p, config.restart)
        for part, point in POINTS.items():
            if part not in parts or f"{part}-p{p:.2f}" in done:
                continue
            tol = config.lanczos_tol if part == "finetuned" else None
            row = measure_point(*_w_u(point, w_pre, weights[p]), p, x, y, lanczos_tol=tol, **kw)
            row.update(run_id=f"{part}-p{p:.2f}", part=part, point=point)
            store.write(dict(row, sweep_run=rid, sweep_dist_mixed=sweep_runs.get(rid, {}).get("dist_mixed")))
            if progress:
                print(
                    f"{part} p={p:g}: Monte Carlo {row['mc']:.4g} [{row['mc_lo']:.4g}, {row['mc_hi']:.4g}], "
                    f"second order {row['second_order']:.4g}, m_eff {row['m_eff']:.4g} "
                    f"({row['seconds']:.0f} s)",
                    flush=True,
                )
    if "scan" not in parts:
        return
    at, x = config.ps[len(config.ps) // 2], x.double()
    base = {r["point"]: r for r in store.read() if r["run_id"] in {f"{part}-p{at:.2f}" for part in POINTS}}
    for point in POINTS.values():
        w, u = _w_u(point, w_pre, weights[at])
        quad = base[point]["m_eff"] * base[point]["dist2"]  # sum_g d_g^T H_gg d_g does not depend on p
        net = {k: v.double() for k, v in w.items()}
        for q in config.scan_ps:
            if f"scan-{point}-p{q:.2f}" in done:
                continue
            mc = effective_l2(net, u, q, x, y, n_samples=config.mc_samples, generator=config.mc_seed).penalty
            rec = dict(run_id=f"scan-{point}-p{q:.2f}", part="scan", point=point, at_p=at, p=q)
            rec.update({k: base[point][k] for k in ("dist2", "m_eff")}, **_mc_fields(mc, mc.n_samples))
            store.write(dict(rec, second_order=q / (2.0 * (1.0 - q)) * quad))


def _trajectory(store, config, acfg, atensors, w_pre, options) -> None:
    """The ablations' trajectory runs measured at :func:`checkpoint_epochs`, all rerun if one is missing."""
    done, ps = store.done(), list(acfg.trajectory_ps)
    if all(f"trajectory-p{p:.2f}" in done for p in ps):
        return
    epochs = ablations.epochs_for(acfg.trajectory_size, acfg)
    marks = checkpoint_epochs(epochs, config.checkpoints)
    points = {p: [] for p in ps}
    mc = dict(mc_samples=acfg.trajectory_samples, mc_seed=acfg.trajectory_mc_seed)

    def measure(e, one, xe, ye, epoch, step):
        points[ps[e]].append(dict(measure_point(one, w_pre, ps[e], xe, ye, **mc), epoch=epoch, step=step))

    members = [ablations.Setting(f"mixout{p:g}", f"mixout(w_pre, {p:g})", mixout=p).member(0) for p in ps]
    progress = "trajectory runs" if options.progress else False
    _, n_eval = ablations.trajectory_runs(acfg, atensors, w_pre, members, options, marks, measure, progress)
    run = dict(part="trajectory", epochs=epochs, eval_size=n_eval, **run_env(options.device))
    for p in (p for p in ps if f"trajectory-p{p:.2f}" not in done):
        store.write(dict(run, run_id=f"trajectory-p{p:.2f}", p=p, checkpoints=points[p]))


@dataclass
class Theorem1Results:
    """The study's configuration, store, records by part, and what the records were measured on."""

    config: Theorem1Config
    store: Theorem1Store
    records: dict
    context: dict


def run_theorem1(ctx: Context, *, exp=None, parts=PARTS, **overrides) -> Theorem1Results:
    """Data, ``w_pre`` (the sweep's cached pretraining), the finetuned weights and the parts asked for
    (:data:`PARTS`); every record is written as it is measured, so an interrupted study resumes there.

    ``exp``: prepared data (default: ``ctx.experiment()``); ``overrides``: fields of :class:`Theorem1Config`.
    The run list is two chunks: the measurements at the finetuned weights and at ``w_pre`` (chunk 0) and
    the trajectory runs (chunk 1), so two shards share it.
    """
    profile, options, results = ctx.profile, ctx.options, ctx.results_dir
    if unknown := [p for p in parts if p not in PARTS]:
        raise ValueError(f"unknown parts {unknown}; choose from {PARTS}")
    if {"layers", "scale"} & set(parts):  # both read the second-order terms of the points' records
        parts = tuple(dict.fromkeys(("finetuned", "displaced", *parts)))
    mixout_ps = [p for p in sweep.profile_config(profile).ps if p > 0]  # stray ps: refused before any work
    if stray := [p for p in overrides.setdefault("ps", tuple(mixout_ps)) if p not in mixout_ps]:
        raise ValueError(f"ps {stray} are not mixout runs of the {profile} sweep (its p > 0: {mixout_ps})")
    if "scale" in parts:  # refused before any work, too
        scale_ps = overrides.get("scale_ps", Theorem1Config.scale_ps)
        if stray := [p for p in scale_ps if p not in overrides["ps"]]:
            raise ValueError(f"scale_ps {stray} are not among the study's ps {list(overrides['ps'])}")
        ts = overrides.get("scale_ts", theorem1_config(profile).scale_ts)
        if any(t <= 0 for t in ts) or len({f"{t:.4f}" for t in ts}) != len(ts):
            raise ValueError(f"scale_ts must be positive and distinct to 4 decimals, got {list(ts)}")
    exp = ctx.experiment() if exp is None else exp
    sweep_cfg, tensors, w_pre = sweep.pretrained(results, profile, exp, options)
    acfg = ablations.sweep_ablation_config(profile, exp, sweep_cfg)
    keys = dict(source=exp.source_key, sweep_key=sweep_cfg.key(), trajectory_key=acfg.key("trajectory"))
    config = theorem1_config(profile, **keys, **overrides)
    store = Theorem1Store(results, config)
    x, y = exp.target.train.x, exp.target.train.y
    idx = seeded_index(x.shape[0], min(config.loss_size, x.shape[0]), config.loss_seed)  # the loss batch
    x, y, loss_sha = x[idx], y[idx], ablations.subset_sha256(idx)
    context = dict(source_name=exp.source_name, loss_size=int(x.shape[0]), loss_subset_sha256=loss_sha)
    context.update(trajectory_size=acfg.trajectory_size, trajectory_ps=list(acfg.trajectory_ps))
    context.update(trajectory_samples=acfg.trajectory_samples, finetune_epochs=sweep_cfg.finetune_epochs)
    context["target_train"] = int(tensors["target_train"][0].shape[0])
    atomic_write(store.dir / "context.json", json.dumps(context, indent=1, sort_keys=True))
    points = [f"{part}-p{p:.2f}" for p in config.ps for part in POINTS if part in parts]
    points += [f"scan-{pt}-p{q:.2f}" for pt in POINTS.values() for q in config.scan_ps if "scan" in parts]
    points += beyond_second_order.planned(config, parts, POINTS.values())
    measured = ["w_pre"] * ("finetuned" in parts or "displaced" in parts) + points
    traj = [f"trajectory-p{p:.2f}" for p in acfg.trajectory_ps] if "trajectory" in parts else []
    store.planned = measured + traj
    done = store.done()
    if "w_pre" not in done and "w_pre" in measured and options.owns(0):
        loss_fn, w = network_loss(w_pre, x, y)
        c = second_order.curvature(loss_fn, w, tol=config.lanczos_tol)
        rec = dict(run_id="w_pre", part="w_pre", point="w_pre", p=0.0, loss=float(loss_fn(w)))
        store.write(dict(rec, m_min=c.m_min, m_max=c.m_max, lanczos_hvp=c.n_hvp))
    if options.owns(0) and any(rid not in done for rid in points):
        weights = _finetuned(store, config, sweep_cfg, tensors, w_pre, options)
        sweep_runs = {r["run_id"]: r for r in sweep.SweepStore(results, sweep_cfg).records()}
        _points(store, config, parts, weights, w_pre, x, y, sweep_runs, options.progress)
        at = {pt: {p: _w_u(pt, w_pre, weights[p]) for p in config.ps} for pt in POINTS.values()}
        base = {(r["point"], r["p"]): r for r in store.read() if r["part"] in POINTS}
        for part, measure in (
            ("layers", beyond_second_order.measure_layers),
            ("scale", beyond_second_order.measure_scale),
        ):
            if part in parts:
                measure(store, config, at, base, x, y, options.progress)
    if traj and options.owns(1):
        _trajectory(store, config, acfg, ablations.ablation_tensors(exp, acfg), w_pre, options)
    return _results(config, store, context)


def _results(config: Theorem1Config, store: Theorem1Store, context: dict) -> Theorem1Results:
    recs = store.records()
    by_part = {part: [r for r in recs if r["part"] == part] for part in ("w_pre",) + PARTS}
    return Theorem1Results(config, store, by_part, context)


# --------------------------------------------------------------------------------------------
# tables (what the figures and the notebook read) and the claims they support

POINT_COLUMNS = tuple(
    "part point at_p p loss dist2 dist2_fc2 dist2_fc3 mc mc_se mc_lo mc_hi mc_samples second_order ratio "
    "m_eff m_mc m_mc_lo m_mc_hi quad_fc2 quad_fc3 m_min m_max lanczos_hvp corollary_m_min corollary_m_eff "
    "sweep_run sweep_dist_mixed seconds_second_order seconds_lanczos seconds".split()
)
TRAJECTORY_COLUMNS = tuple(
    "p epoch step loss dist2 mc mc_lo mc_hi second_order m_mc m_mc_lo m_mc_hi m_eff "
    "seconds_second_order".split()
)
TABLES = ("network_penalty.csv", "trajectory.csv", "beyond_second_order.csv", "scale_scan.csv")
COLUMNS = (
    POINT_COLUMNS,
    TRAJECTORY_COLUMNS,
    beyond_second_order.LAYER_COLUMNS,
    beyond_second_order.SCALE_COLUMNS,
)
TEXT_COLUMNS = ("part", "point", "mixed")
#: the columns a reader looks at first, as ``(key, header)`` for :func:`report.markdown_table`
SUMMARY_COLUMNS = (
    ("part", "point"),
    ("p", "p"),
    ("dist2", "‖d‖² (fc2, fc3)"),
    ("mc", "Monte Carlo"),
    ("mc_lo", "95% lo"),
    ("mc_hi", "95% hi"),
    ("second_order", "second order"),
    ("ratio", "MC / 2nd order"),
    ("m_eff", "m_eff"),
    ("m_min", "m_min"),
    ("m_max", "m_max"),
    ("corollary_m_min", "Cor. 1.1, m = m_min"),
)


def table_rows(res: Theorem1Results) -> tuple[list[dict], ...]:
    """The study's four tidy tables (:data:`TABLES`) from its records: one row per point (``w_pre``;
    finetuned and displaced per p; the scan per point and q), one per trajectory checkpoint, one per
    point, p and mixed layers (``layers``), and one per point, p and scale t (``scale``)."""
    recs = [r for part in ("w_pre", "finetuned", "displaced", "scan") for r in res.records.get(part, [])]
    points = [dict(r, ratio=r["mc"] / r["second_order"]) if "mc" in r else r for r in recs]
    traj = [dict(c, p=r["p"]) for r in res.records.get("trajectory", []) for c in r["checkpoints"]]
    order = list(LAYERS)
    layers = sorted(
        res.records.get("layers", []), key=lambda r: (r["point"], r["p"], order.index(r["mixed"]))
    )
    scan = sorted(res.records.get("scale", []), key=lambda r: (r["point"], r["p"], r["t"]))
    return points, traj, layers, scan


def _cell(v):
    return "" if v is None else (f"{v:.10g}" if isinstance(v, float) else v)


def export_tables(res: Theorem1Results, out_dir) -> dict:
    """``network_penalty.csv``, ``trajectory.csv`` and ``meta.json`` (configuration, what the loss is,
    the sha256 of each table) in ``out_dir``; returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, rows, cols in zip(TABLES, table_rows(res), COLUMNS, strict=True):
        rows = [{k: _cell(r.get(k)) for k in cols} for r in rows]
        written[name] = atomic_write_csv(out / name, rows, cols, lineterminator="\n")
    meta = dict(config=dataclasses.asdict(res.config), store_key=res.config.key(), context=res.context)
    meta.update(env=run_env(), machines=machines_of(r for recs in res.records.values() for r in recs))
    meta["claims"] = claims(*load_tables_from(written))
    written["meta.json"] = write_meta(out, meta, TABLES)
    return written


def load_tables_from(paths: dict) -> tuple[list[dict], ...]:
    """The four tables read back from their CSV files (numbers parsed)."""
    return tuple(read_csv(paths[name], text=TEXT_COLUMNS) for name in TABLES)


class Tables(NamedTuple):
    """An exported study read back: its four tables (:data:`TABLES`) and ``meta.json``."""

    points: list
    trajectory: list
    layers: list
    scale: list
    meta: dict


def load_tables(folder) -> Tables:
    """:class:`Tables` from an exported folder, every table checked against its sha256."""
    meta = checked_meta(folder, TABLES, "export the study again (python -m mixout_theory theorem1)")
    return Tables(*load_tables_from({n: Path(folder) / n for n in TABLES}), meta)


def claims(points: list[dict], trajectory: list[dict], layers=(), scale=()) -> dict:
    """What the tables say, as numbers (the notebook states and asserts them; nothing here is a threshold).

    ``ratio``: Monte Carlo / second order per p (finetuned and displaced), with the ratio's 95%
    interval ``ratio_lo``/``ratio_hi``; ``so_in_ci``: the p whose second-order value lies inside the
    Monte Carlo 95% interval; ``m_min``: the smallest eigenvalue at ``w_pre`` and at each finetuned
    point; ``m_eff``; ``curvature_change``: ``m_eff(w_p) / m_eff(w_pre along d_p)``; for the
    trajectory, per p, the range of ``m_t / m_eff(w_t)`` and the fraction of checkpoints where
    ``m_eff`` lies inside the Monte Carlo 95% interval; ``beyond``: the layer split and the scale scan
    (:func:`beyond_second_order.claims`).
    """
    out = {}
    for part in ("finetuned", "displaced"):
        rows = sorted((r for r in points if r["part"] == part), key=lambda r: r["p"])
        out[part] = {
            "ps": [r["p"] for r in rows],
            **{f"ratio{s}": [r[f"mc{s}"] / r["second_order"] for r in rows] for s in ("", "_lo", "_hi")},
            "so_in_ci": [r["p"] for r in rows if r["mc_lo"] <= r["second_order"] <= r["mc_hi"]],
            "m_eff": [r["m_eff"] for r in rows],
            "m_min": [r.get("m_min") for r in rows],
        }
    pre = [r for r in points if r["part"] == "w_pre"]
    out["w_pre"] = {"m_min": pre[0]["m_min"], "m_max": pre[0]["m_max"]} if pre else {}
    fin = {r["p"]: r for r in points if r["part"] == "finetuned"}
    disp = [r for r in points if r["part"] == "displaced" and r["p"] in fin]
    out["curvature_change"] = {r["p"]: fin[r["p"]]["m_eff"] / r["m_eff"] for r in disp}
    mins = [m for m in out["finetuned"]["m_min"] + [out["w_pre"].get("m_min")] if m is not None]
    out["corollary_vacuous"] = bool(mins) and max(mins) <= 0.0
    out["trajectory"] = {}
    for p in sorted({r["p"] for r in trajectory}):
        rows = [r for r in trajectory if r["p"] == p]
        ratio = [r["m_mc"] / r["m_eff"] for r in rows]
        in_ci = sum(r["m_mc_lo"] <= r["m_eff"] <= r["m_mc_hi"] for r in rows) / len(rows)
        out["trajectory"][p] = dict(ratio_min=min(ratio), ratio_max=max(ratio), m_eff_in_ci=in_ci)
        out["trajectory"][p].update(m_eff_first=rows[0]["m_eff"], m_eff_last=rows[-1]["m_eff"], n=len(rows))
    out["beyond"] = beyond_second_order.claims(list(layers), list(scale))
    return out


def load_stored(results=None) -> list[Theorem1Results]:
    """The studies stored under ``results/theorem1/`` (no data, no training): the newest per profile and
    source."""
    root = (project_dir("results") if results is None else Path(results)) / "theorem1"
    out, seen = [], set()
    for folder in (d for d in find_stores(root) if (d / "context.json").is_file()):  # newest first
        config = ablations.config_from_dict(read_config(folder), Theorem1Config)
        if (config.profile, config.source) in seen:
            continue
        seen.add((config.profile, config.source))
        store = Theorem1Store(root.parent, config)
        if store.dir != folder:
            path = folder / "config.json"
            raise ValueError(f"{path} does not hash to its folder's name: the file was altered")
        remedy = "rerun the theorem1 command (nothing is recomputed)"
        out.append(_results(config, store, read_json_object(folder / "context.json", remedy)))
    return out

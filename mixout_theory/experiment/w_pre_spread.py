"""How much Figure 2 depends on ``w_pre``: the sweep from several pretraining seeds.

The paper's restarts share one ``w_pre`` and differ only in data order, so the +-1 std band of
Figure 2 measures data-order noise. A second machine pretrains a slightly different ``w_pre``
(float32 rounds differently), and so does a second pretraining seed. ``reproduce --pretrain-seeds N``
runs the whole sweep from ``w_pre`` of seeds 0..N-1; this module says how the numbers move.

For each (method, p, quantity), with ``K`` pretraining seeds and ``n`` restarts each, ``m_k`` and
``s_k`` the mean and std over the restarts of seed ``k``:

* ``mean`` = mean_k m_k, ``sd_restarts`` = sqrt(mean_k s_k^2) (the band the paper draws),
* ``sd_w_pre`` = std_k m_k (ddof 1): how far one ``w_pre``'s mean of ``n`` restarts moves with ``w_pre``,
* ``tau`` = sqrt(max(0, sd_w_pre^2 - sd_restarts^2 / n)): the part of that due to ``w_pre`` alone
  (the one-way random-effects estimate), so a mean of ``n`` restarts from a fresh ``w_pre`` has
  variance ``tau^2 + sd_restarts^2 / n``, what :mod:`~mixout_theory.experiment.compare` uses,
* ``ratio`` = sd_w_pre / (sd_restarts / sqrt(n)): the spread across ``w_pre`` in standard errors of
  the restarts (about 1 when ``w_pre`` does not matter).

Quantities: the levels of Figure 2 (:data:`SPREAD_METRICS`) and its claim's sizes, the paired source
accuracy gap mixout - dropout per p (method ``gap``, quantity ``source_acc_gap``).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mixout_theory.experiment import report, store, sweep
from mixout_theory.experiment.machine import machines_of, run_env
from mixout_theory.experiment.plots import FIG2_PANELS, METHOD_LABEL, METHOD_STYLE
from mixout_theory.figures import save_figure

#: Figure 2's levels whose spread is reported: the two distances, target and source accuracy
SPREAD_METRICS = ("dist_mixed", "dist_all", "target_val_acc", "source_val_acc")
GAP = ("gap", "source_acc_gap")  # (method, quantity) of the paired gap mixout - dropout
SPREAD_COLUMNS = tuple(
    "method p quantity w_pre_seeds restarts mean sd_restarts sd_w_pre tau ratio min_seed_mean "
    "max_seed_mean".split()
)
CLAIM_COLUMNS = tuple(
    "pretrain_seed config w_pre_source_acc w_pre_epoch mixed_distance_decreasing_every_restart "
    "mixed_distance_margin source_acc_mixout_ge_dropout min_source_acc_gap".split()
)
TABLES = ("w_pre_spread.csv", "w_pre_claims.csv")
#: what the export folder is called (under the figure folder and ``docs/results/``)
STUDY = "w_pre-spread"


def seed_stats(records: list[dict]) -> dict[tuple, tuple[float, float, int]]:
    """``{(method, p, quantity): (mean, std, n)}`` over the restarts of one ``w_pre``'s sweep: the levels of
    :data:`SPREAD_METRICS` (:func:`report.summarise`; p = 0, shared by both methods, once as method ``none``)
    and the paired gap of source accuracy mixout - dropout per p > 0 (:func:`report.paired_source_diffs`)."""
    out = {}
    for row in report.summarise(records, SPREAD_METRICS):
        method = "none" if row["p"] == 0 else row["method"]
        for m in SPREAD_METRICS:
            out[method, row["p"], m] = (row[f"{m}_mean"], row[f"{m}_std"], row["n"])
    for p, diffs in report.paired_source_diffs(report.usable(records)).items():
        out[GAP[0], p, GAP[1]] = (float(np.mean(diffs)), report.sample_sd(diffs), len(diffs))
    return out


def spread_rows(records_by_seed: dict[int, list[dict]]) -> list[dict]:
    """One row per (method, p, quantity): the spread across ``w_pre`` beside the spread across restarts
    (the module docstring gives each column's formula)."""
    stats = {seed: seed_stats(recs) for seed, recs in sorted(records_by_seed.items())}
    keys = sorted(set.intersection(*(set(s) for s in stats.values())), key=lambda k: (k[0], k[2], k[1]))
    rows = []
    for key in keys:
        means = np.array([stats[s][key][0] for s in stats])
        sds = np.array([stats[s][key][1] for s in stats])
        n = min(stats[s][key][2] for s in stats)
        sd_r = float(math.sqrt(np.mean(sds**2)))
        sd_w = float(np.std(means, ddof=1)) if len(means) > 1 else float("nan")
        tau = math.sqrt(max(0.0, sd_w**2 - sd_r**2 / n)) if len(means) > 1 else float("nan")
        se_r = sd_r / math.sqrt(n)
        spread = (sd_r, sd_w, tau, sd_w / se_r if se_r > 0 else float("nan"))
        row = (*key, len(means), n, float(means.mean()), *spread, float(means.min()), float(means.max()))
        rows.append(dict(zip(SPREAD_COLUMNS, row, strict=True)))  # (method, p, quantity) is the key
    return rows


def claim_rows(records_by_seed: dict[int, list[dict]], w_pre_info: dict[int, dict]) -> list[dict]:
    """Figure 2's claims (:func:`report.figure2_claims`) for each ``w_pre``, one row per seed."""
    rows = []
    for seed, recs in sorted(records_by_seed.items()):
        c, info = report.figure2_claims(recs), w_pre_info.get(seed, {})
        row = {"pretrain_seed": seed, "config": recs[0]["config"] if recs else ""}
        row |= {"w_pre_source_acc": info.get("acc"), "w_pre_epoch": info.get("epoch")}
        row |= {k: c[k] for k in CLAIM_COLUMNS[4:7]}  # the claims' checks, as figure2_claims names them
        rows.append(row | {"min_source_acc_gap": min(c["source_acc_gaps"].values(), default=float("nan"))})
    return rows


def claims_for_every_w_pre(claims: list[dict]) -> dict:
    """Which of Figure 2's claims hold for every ``w_pre`` (and for how many)."""
    held = {name: sum(bool(r[name]) for r in claims) for name in report.FIGURE2_CLAIMS}
    return {name: {"held": h, "of": len(claims), "every_w_pre": h == len(claims)} for name, h in held.items()}


# --------------------------------------------------------------------------------------------
# the stores: which sweeps differ only in their w_pre
def seed_stores(results) -> dict[tuple, dict[int, Path]]:
    """``{(profile, source, config without seed): {pretraining seed: store folder}}`` for every group of
    Figure 2 sweep stores under ``results`` that differ only in ``pretrain_seed`` (and so ``w_pre``);
    only groups with two or more seeds."""
    groups: dict[tuple, dict[int, Path]] = {}
    for folder in store.find_stores(results):
        config = store.read_config(folder)
        if isinstance(config, dict) and "pretrain_seed" in config and sweep.is_figure2_reading(config):
            rest = {k: v for k, v in config.items() if k not in ("pretrain_seed", "w_pre")}
            key = (config.get("profile"), config.get("source"), json.dumps(rest, sort_keys=True))
            groups.setdefault(key, {}).setdefault(config["pretrain_seed"], folder)
    return {k: v for k, v in groups.items() if len(v) > 1}


def export_spread(stores: dict[int, Path], out_dir) -> list[Path]:
    """``w_pre_spread.csv``, ``w_pre_claims.csv``, the figure (PNG, PDF) and ``meta.json`` (the
    configuration of seed 0's sweep, each seed's store and ``w_pre``, the claims that hold for every
    ``w_pre``, the tables' sha256, the machines) of one group of :func:`seed_stores` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = {seed: sweep.load_records(folder) for seed, folder in sorted(stores.items())}
    spread = spread_rows(records)
    w_pre_info = {seed: sweep.store_context(folder).get("pretrain") or {} for seed, folder in stores.items()}
    claims = claim_rows(records, w_pre_info)
    store.atomic_write_csv(out / TABLES[0], spread, SPREAD_COLUMNS, lineterminator="\n")
    store.atomic_write_csv(out / TABLES[1], claims, CLAIM_COLUMNS, lineterminator="\n")
    first, config = records[min(records)][0], sweep.store_context(stores[min(stores)])["config"]
    meta = {"study": STUDY, "profile": first["profile"], "source": first["source"]}
    meta |= {"source_name": first.get("source_name", ""), "config": config}
    meta |= {"stores": {str(s): f.name for s, f in sorted(stores.items())}}
    meta |= {"claims_for_every_w_pre": claims_for_every_w_pre(claims), "env": run_env()}
    meta["machines"] = machines_of(r for recs in records.values() for r in recs)
    paths = save_figure(spread_figure(spread, meta), out, "figure2_w_pre")
    return [out / t for t in TABLES] + paths + [store.write_meta(out, meta, TABLES)]


def load_spread(folder) -> tuple[list[dict], list[dict], dict]:
    """``(spread rows, claim rows, meta)`` of an exported folder, its tables checked against ``meta.json``."""
    meta = store.checked_meta(folder, TABLES, "export it again (python -m mixout_theory figures)")
    spread = store.read_csv(Path(folder) / TABLES[0], text=("method", "quantity"))
    return spread, store.read_csv(Path(folder) / TABLES[1], text=("config",)), meta


# --------------------------------------------------------------------------------------------
# the figure
def spread_figure(rows: list[dict], meta: dict) -> Figure:
    """Figure 2's three panels, mean over every ``w_pre`` and restart, with +-1 std over the restarts of one
    ``w_pre`` (pooled: the paper's band) and +-1 std of a ``w_pre``'s mean across ``w_pre``."""
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    for ax, (metric, title, ylabel) in zip(fig.subplots(1, 3), FIG2_PANELS, strict=False):
        at = [r for r in rows if r["quantity"] == metric]
        for method, style in METHOD_STYLE.items():
            sel = sorted((r for r in at if r["method"] in (method, "none")), key=lambda r: r["p"])
            if not sel:
                continue
            p, mean, sd_r, sd_w = (
                np.array([r[k] for r in sel]) for k in ("p", "mean", "sd_restarts", "sd_w_pre")
            )
            name, color = METHOD_LABEL[method], style["color"]
            ax.plot(p, mean, label=f"{name}: mean", lw=1.6, ms=4, **style)
            band = f"{name}: +-1 std across w_pre (of a w_pre's mean)"
            ax.fill_between(p, mean - sd_w, mean + sd_w, color=color, alpha=0.35, lw=0, label=band)
            dotted = dict(ls=":", color=color, lw=1.0)
            ax.plot(p, mean - sd_r, label=f"{name}: +-1 std across restarts (one w_pre)", **dotted)
            ax.plot(p, mean + sd_r, **dotted)
        ax.set(xlabel="p (dropout or mixout probability)", ylabel=ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    n, restarts = (rows[0]["w_pre_seeds"], rows[0]["restarts"]) if rows else (0, 0)
    fig.suptitle(
        f"Figure 2 from {n} pretrained w_pre (seeds 0..{n - 1}), {restarts} restarts each\n"
        f"{report.task_line(meta.get('source_name') or meta.get('source'))} | profile: {meta.get('profile')}",
        fontsize=10,
    )
    return fig


def render_spreads(results, out_dir) -> list[Path]:
    """The export of every group of :func:`seed_stores` under ``results`` into
    ``out_dir/w_pre-spread-<profile>-<source>/`` (the newest group per profile and source)."""
    paths, seen = [], set()
    for (profile, source, _), stores in seed_stores(results).items():
        if (profile, source) not in seen:
            seen.add((profile, source))
            paths += export_spread(stores, Path(out_dir) / f"{STUDY}-{profile}-{source}")
    return paths


def summary_lines(folder) -> list[str]:
    """What ``reproduce --pretrain-seeds`` prints: the claims that held for every w_pre, the spreads."""
    rows, claims, meta = load_spread(folder)
    lines = [f"across {len(claims)} w_pre (pretraining seeds 0..{len(claims) - 1}):"]
    for name, c in meta["claims_for_every_w_pre"].items():
        lines.append(f"  {name}: held for {c['held']} of {c['of']} w_pre")
    levels = [r for r in rows if r["quantity"] != "source_acc_gap" and r["p"] > 0]
    if levels:
        widest = max(levels, key=lambda r: r["ratio"])
        lines.append(
            f"  spread of a w_pre's mean across w_pre: median "
            f"{statistics.median(r['ratio'] for r in levels):.1f}x the restarts' standard error "
            f"(largest {widest['ratio']:.1f}x: {widest['method']} p={widest['p']:g} {widest['quantity']})"
        )
    return lines + [f"  tables and figure: {folder} (w_pre_spread.csv, w_pre_claims.csv, figure2_w_pre.png)"]

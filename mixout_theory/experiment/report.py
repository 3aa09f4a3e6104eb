"""What the stored runs say: summaries over restarts, the paper's claims checked, tables.

Pure functions of the run records :mod:`~mixout_theory.experiment.sweep` and
:mod:`~mixout_theory.experiment.ablations` store: Figure 2's (paper Section 4), then the ablations'
(the paper's GLUE questions, Table 3's new output layer) with the checks notebook 04 asserts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mixout_theory.experiment.data import task_line  # noqa: F401 - the line every figure names (report.task_line)
from mixout_theory.experiment.store import atomic_write, atomic_write_csv
from mixout_theory.experiment.sweep import METHODS, SUMMARY_METRICS

# --------------------------------------------------------------------------------------------
# Figure 2
#: the bands a figure can draw around a mean over restarts (``std``: the paper's Figure 2)
BANDS = {"std": "mean +- 1 std", "ci95": "mean with its 95% CI (t, n - 1 dof)"}


def check_band(band: str) -> str:
    """``band`` if it is one of :data:`BANDS`, else a one-line ``ValueError``."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {tuple(BANDS)}, got {band!r}")
    return band


def band_halfwidth(std, n, band: str = "std"):
    """Half-width of the band around a mean of ``n`` restarts with sample std ``std`` (ddof=1):
    ``std`` for ``band="std"``; ``t_{0.975, n-1} std / sqrt(n)`` for ``band="ci95"`` (Student t, the
    95% confidence interval of the mean; 0 where ``n < 2``)."""
    std, n = np.asarray(std, dtype=float), np.asarray(n, dtype=float)
    if check_band(band) == "std":
        return std
    from scipy import stats

    safe = np.maximum(n, 2.0)
    return np.where(n >= 2, stats.t.ppf(0.975, safe - 1) * std / np.sqrt(safe), 0.0)


def caption(meta: dict, band: str = "std") -> str:
    return (
        f"{task_line(meta.get('source_name') or meta.get('source'))} | profile: {meta.get('profile')} | "
        f"{meta.get('restarts')} restarts per setting, {BANDS[band]} | config {meta.get('config')}"
    )


def experiment_meta(records: list[dict]) -> dict:
    """What every experiment figure states about the runs behind it."""
    r = records[0]
    meta = {"source": r["source"], "source_name": r.get("source_name", ""), "profile": r["profile"]}
    return meta | {"config": r["config"], "restarts": len({x["seed"] for x in records}), "runs": len(records)}


def usable(records: list[dict]) -> list[dict]:
    """The records of runs that did not fail (a failed run, e.g. one that diverged, carries ``failed``)."""
    return [r for r in records if not r.get("failed")]


def summarise(records: list[dict], metrics=SUMMARY_METRICS) -> list[dict]:
    """Mean and sample std (ddof=1) over restarts for every (method, p); the shared p = 0 run
    ("none") is listed under both methods, as in the paper's figure. Failed runs are left out of the
    means; ``failed`` counts them."""
    failed = [r for r in records if r.get("failed")]
    records = usable(records)
    rows = []
    for method in METHODS:
        for p in sorted({r["p"] for r in records}):
            methods = (method, "none") if p == 0 else (method,)
            group = [r for r in records if r["p"] == p and r["method"] in methods]
            if not group:
                continue
            failed_here = sum(r["p"] == p and r["method"] in (method, "none") for r in failed)
            row = {"method": method, "p": p, "n": len(group), "failed": failed_here}
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
    records = usable(records)  # a failed run is no evidence either way
    mix = [r for r in records if r["method"] in ("mixout", "none")]
    ps = sorted({r["p"] for r in mix})
    dist = {(r["seed"], r["p"]): r["dist_mixed"] for r in mix}
    seeds = sorted(s for s in {s for s, _ in dist} if all((s, p) in dist for p in ps))  # complete restarts
    neighbours = list(zip(ps, ps[1:], strict=False))
    every = all(dist[s, a] > dist[s, b] for s in seeds for a, b in neighbours)
    rows = [r for r in summarise(records, metrics=("dist_mixed",)) if r["method"] == "mixout"]
    mean, std = ({r["p"]: r[f"dist_mixed_{k}"] for r in rows} for k in ("mean", "std"))
    margin = min((mean[a] - mean[b]) / max(std[a], std[b], 1e-12) for a, b in neighbours)
    gaps = {p: round(sum(d) / len(d), 4) for p, d in paired_source_diffs(records, seeds).items()}
    report = [
        "mixout dist_mixed mean by p: " + ", ".join(f"{p}: {mean[p]:.4f}" for p in ps),
        f"decreasing in every one of {len(seeds)} restarts: {every}; smallest drop = {margin:.1f} std",
        "source acc, mixout - dropout by p: " + ", ".join(f"{p}: {g:+.4f}" for p, g in gaps.items()),
    ]
    checks = {"mixed_distance_decreasing_every_restart": every, "mixed_distance_margin": margin}
    checks |= {"source_acc_gaps": gaps, "source_acc_mixout_ge_dropout": all(g >= 0 for g in gaps.values())}
    return checks | {"report": report}


#: the two claims of :func:`figure2_claims` that hold or do not
FIGURE2_CLAIMS = ("mixed_distance_decreasing_every_restart", "source_acc_mixout_ge_dropout")


def paired_source_diffs(records: list[dict], seeds=None) -> dict[float, list[float]]:
    """Per p > 0, mixout's minus dropout's source validation accuracy, restart by restart (the restarts
    in ``seeds``, default every one; a restart counts at p when it has both runs there)."""
    acc = {(r["method"], r["seed"], r["p"]): r["source_val_acc"] for r in records}
    seeds = sorted({s for (_, s, _) in acc}) if seeds is None else seeds
    out = {}
    for p in sorted({p for (m, _, p) in acc if m == "mixout" and p > 0}):
        both = [s for s in seeds if ("mixout", s, p) in acc and ("dropout", s, p) in acc]
        diffs = [acc["mixout", s, p] - acc["dropout", s, p] for s in both]
        if diffs:
            out[p] = diffs
    return out


def claims_in_words(checks: dict) -> list[str]:
    """The two claims of :func:`figure2_claims` as sentences, each starting ``held`` or ``did NOT hold``."""
    distance, source = ("held" if checks[k] else "did NOT hold" for k in FIGURE2_CLAIMS)
    gaps = checks["source_acc_gaps"]
    worst = min(gaps.items(), key=lambda kv: kv[1]) if gaps else (float("nan"), float("nan"))
    return [
        f"{distance}: mixout's squared distance to w_pre over the mixed weights (fc2, fc3) falls as p grows, "
        f"in every restart (smallest drop of the mean {checks['mixed_distance_margin']:.1f} std)",
        f"{source}: mixout keeps at least dropout's source-task accuracy at every p > 0 "
        f"(smallest mean advantage {worst[1]:+.4f}, at p = {worst[0]:g})",
    ]


TABLE_COLUMNS = ("dist_all", "dist_mixed", "dist_fc1", "target_val_acc", "target_test_acc", "source_val_acc")


def summary_table(summary: list[dict], meta: dict, out_dir: Path) -> list[Path]:
    """The figure's numbers as ``table.csv`` (mean and std columns) and ``table.md`` (mean +- std)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["method", "p", "n"] + [f"{c}_{s}" for c in TABLE_COLUMNS for s in ("mean", "std")]
    atomic_write_csv(out_dir / "table.csv", summary, cols, lineterminator="\n")
    cells = [
        {"method": r["method"], "p": f"{r['p']:.1f}", "n": str(r["n"])}
        | {c: f"{r[c + '_mean']:.4f} +- {r[c + '_std']:.4f}" for c in TABLE_COLUMNS}
        for r in summary
    ]
    table = markdown_table(cells, ("method", "p", "n", *TABLE_COLUMNS))
    atomic_write(out_dir / "table.md", f"<!-- {caption(meta)} -->\n*{caption(meta)}*\n\n{table}\n")
    return [out_dir / "table.csv", out_dir / "table.md"]


# --------------------------------------------------------------------------------------------
# the ablations
def failure_thresholds(records: list[dict], w_pre_acc: float) -> dict:
    """The two cut-offs under which a run counts as failed, for the runs of one study at one size.

    * ``failed_below = w_pre_acc``: the target test accuracy of ``w_pre`` itself (no finetuning): a run
      below it ended worse than not finetuning at all (the paper's degenerate GLUE runs). Fixed before
      any finetuning, the same for every setting.
    * ``outlier_below = median_best - 3 sd_best``: the best setting (highest median) and its sample
      std (ddof=1). A normal run of it falls below with probability 0.13%; every run of a setting
      uniformly worse by over 3 sd_best falls below too, so it is a second count, not the failure count.
    """
    by = {}
    for r in records:
        by.setdefault(r["setting"], []).append(r["test_acc"])
    med = {k: float(np.median(v)) for k, v in by.items()}
    best = max(med, key=med.get)
    sd = sample_sd(by[best])
    cuts = {"failed_below": float(w_pre_acc), "outlier_below": med[best] - 3.0 * sd}
    return cuts | {"best_setting": best, "best_median": med[best], "best_sd": sd}


def summarise_runs(records: list[dict], w_pre_acc: float) -> list[dict]:
    """Per (size, setting): n, mean, sample std (ddof=1), min, median, max of target test accuracy,
    failed / outlier counts (:func:`failure_thresholds`), and mean squared distances to ``w_pre``."""
    rows = []
    for size in sorted({r["size"] for r in records}):
        at = [r for r in records if r["size"] == size]
        th = failure_thresholds(at, w_pre_acc)
        settings = {r["setting"] for r in at}
        for name in sorted(settings, key=lambda s: min(r["order"] for r in at if r["setting"] == s)):
            g = [r for r in at if r["setting"] == name]
            acc = np.array([r["test_acc"] for r in g])
            flagged = np.array([bool(r.get("failed")) for r in g])  # stored as failed (non-finite numbers)
            row = {"size": size, "setting": name, "label": g[0]["label"], "n": len(g)}
            row |= {"mean": float(acc.mean()), "std": sample_sd(acc), "min": float(acc.min())}
            row |= {"median": float(np.median(acc)), "max": float(acc.max())}
            row |= {"failed": int(((acc < th["failed_below"]) | flagged).sum())}
            row |= {"outliers": int((acc < th["outlier_below"]).sum())}
            row |= {k: th[k] for k in ("failed_below", "outlier_below")}
            dists = ("dist_mixed", "dist_all") + (("dist_fc3_w0",) if "dist_fc3_w0" in g[0] else ())
            rows.append(row | {k: _finite_mean(r[k] for r in g) for k in dists})
    return rows


def sample_sd(values) -> float:
    """The sample standard deviation (ddof=1) of ``values``; 0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _finite_mean(values) -> float:
    """Mean over the values a failed run did not leave empty (``None``)."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


#: (a, b) pairs of study 1 compared restart by restart (same data order and mask seed)
PAIRED_COMPARISONS = (
    ("mixout0.8", "dropout0.1+wd0.01"),
    ("mixout0.8", "l2sp0.1"),
    ("l2sp0.1", "dropout0.1+wd0.01"),
    ("mixout0.8+l2sp0.01", "mixout0.8"),
    ("mixout0.9", "mixout0.5"),
)


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
            row = {"size": size, "a": a, "b": b, "n": int(d.size), "mean_diff": float(d.mean())}
            row |= {"sd_diff": sample_sd(d), "a_wins": int((d > 0).sum()), "ties": int((d == 0).sum())}
            rows.append(row | {"b_wins": int((d < 0).sum())})
    return rows


def markdown_table(rows: list[dict], columns, digits: int = 4) -> str:
    """``rows`` as a GitHub markdown table of ``columns`` (``(key, header)`` pairs or keys)."""
    cols = [(c, c) if isinstance(c, str) else tuple(c) for c in columns]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.{digits}f}" if abs(v) >= 10**-digits or v == 0 else f"{v:.2e}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


SUMMARY_COLUMNS = (
    ("size", "n train"),
    ("label", "setting"),
    ("n", "runs"),
    ("mean", "mean acc"),
    ("std", "sd"),
    ("min", "min"),
    ("median", "median"),
    ("max", "max"),
    ("failed", "failed"),
    ("outliers", "3-sd outliers"),
    ("dist_mixed", "mean ‖w − w_pre‖² (fc2, fc3)"),
)
HEAD_COLUMNS = SUMMARY_COLUMNS[:-1] + (("dist_fc3_w0", "mean ‖w_fc3 − w_0‖²"),)


def trajectory_summary(records: list[dict]) -> list[dict]:
    """Per p, over restarts (mean curve): the implied modulus ``m`` at the first checkpoint, at its
    peak (and the step of the peak), at the last checkpoint, ``peak / last``, the implied wdecay
    lambda ``m p / (1 - p)`` at the peak and at the end, the evaluation-batch loss ``L(w_t)`` at the
    peak and at the end, and the final target test accuracy."""
    rows = []
    for p in sorted({r["p"] for r in records}):
        runs = [r["checkpoints"] for r in records if r["p"] == p]
        m, loss = (np.array([[q[key] for q in c] for c in runs]).mean(0) for key in ("m", "loss"))
        steps = [q["step"] for q in runs[0]]
        k = p / (1 - p)
        i = int(m.argmax())
        row = {"p": p, "restarts": len(runs), "checkpoints": len(steps)}
        for at, j in (("first", 0), ("peak", i), ("last", -1)):
            row |= {f"m_{at}": float(m[j]), f"{at}_step": steps[j]}
        row |= {"peak_over_last": float(m[i] / m[-1]), "lam_peak": float(m[i] * k)}
        row |= {"lam_last": float(m[-1] * k), "loss_peak": float(loss[i]), "loss_last": float(loss[-1])}
        later = [q["m_lo"] for c in runs for q in c[1:]]
        row["min_m_lo_after_first"] = float(min(later)) if len(steps) > 1 else float("nan")
        rows.append(row | {"test_acc": float(np.mean([r["test_acc"] for r in records if r["p"] == p]))})
    return rows


TRAJECTORY_COLUMNS = (
    ("p", "p"),
    ("restarts", "restarts"),
    ("checkpoints", "checkpoints"),
    ("first_step", "first step"),
    ("m_first", "m (first)"),
    ("peak_step", "peak step"),
    ("m_peak", "m (peak)"),
    ("m_last", "m (last)"),
    ("peak_over_last", "peak / last"),
    ("lam_peak", "lambda (peak)"),
    ("lam_last", "lambda (last)"),
    ("loss_peak", "L at peak"),
    ("loss_last", "L (last)"),
    ("test_acc", "test acc"),
)


#: what every checkpoint of one trajectory run shares (``trajectory.csv`` repeats it on each)
PER_RUN = ("p", "restart", "size", "eval_size", "mc_samples")


def trajectory_rows(records: list[dict]) -> list[dict]:
    """One flat row per (run, checkpoint) of the trajectory study (a tidy table)."""
    rows = [{**{k: r[k] for k in PER_RUN}, **c} for r in records for c in r["checkpoints"]]
    return sorted(rows, key=lambda q: (q["p"], q["restart"], q["step"]))


def claims(
    small: list[dict], head: list[dict], traj: list[dict], small_records: list[dict] | None = None
) -> dict:
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
    keys = ("mixout_fewer_failures", "mixout_mean_gain", "paired_gain_mixout0.8", "mixout_wd_gain", "head")
    out = {k: {} for k in keys} | {"m_peak_over_last": {t["p"]: t["peak_over_last"] for t in traj}}
    usual_pair = [("mixout0.8", "dropout0.1+wd0.01")]
    paired = {d["size"]: d for d in paired_differences(small_records, usual_pair)} if small_records else {}
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
        if size in paired:
            out["paired_gain_mixout0.8"][size] = (paired[size]["mean_diff"], paired[size]["sd_diff"])
    for size in sorted({r["size"] for r in head}):
        at = [r for r in head if r["size"] == size]
        out["head"][size] = max(at, key=lambda r: r["mean"])["setting"]
    return out


# --------------------------------------------------------------------------------------------
# what notebook 04 asserts, as functions
def pairing_check(records: list[dict]) -> tuple[bool, int]:
    """Whether every (size, setting) holds the same restarts with the same data and mask seeds, and
    how many restarts that is (the comparisons of a study are paired only if so)."""
    seeds: dict = {}
    for r in records:
        seeds.setdefault((r["size"], r["setting"]), set()).add((r["restart"], r["data_seed"], r["mask_seed"]))
    return len(set(map(frozenset, seeds.values()))) == 1, len(next(iter(seeds.values()))) if seeds else 0


def mixed_distance_ratios(
    records: list[dict], settings=("mixout0.5", "mixout0.7", "mixout0.8", "mixout0.9")
) -> list[float]:
    """``dist_mixed(p_next) / dist_mixed(p)`` for neighbouring mixout settings, at every size and
    restart where both are stored (below 1: the pull towards ``w_pre`` grows with p, Corollary 1.1)."""
    dist = {(r["size"], r["setting"], r["restart"]): r["dist_mixed"] for r in records}
    keys = {(n, k) for n, _, k in dist}
    return [
        dist[n, b, k] / dist[n, a, k]
        for n, k in sorted(keys)
        for a, b in zip(settings, settings[1:], strict=False)
        if (n, a, k) in dist and (n, b, k) in dist
    ]


def head_pull_ratios(records: list[dict]) -> list[float]:
    """``||w_fc3 - w_0||^2`` of mixout(w_0, 0.7) on the new head over that of no regularisation,
    restart by restart (below 1: mixout pulls the new head towards its own initialisation)."""
    d0 = {(r["size"], r["setting"], r["restart"]): r["dist_fc3_w0"] for r in records}
    return [
        d0[n, "head-mixout-w0-0.7", k] / d0[n, "head-none", k]
        for (n, s, k) in sorted(d0)
        if s == "head-none" and (n, "head-mixout-w0-0.7", k) in d0
    ]


def trajectory_checks(records: list[dict]) -> dict:
    """Along each trajectory run: the smallest lower 95% bound of ``m_t`` after the first checkpoint
    (``> 0``: a positive L2 strength), and per run the first, peak and last ``m_t`` with whether the
    peak's interval lies above the first checkpoint's (``m_t`` not constant: an adaptive penalty)."""
    later = [r for r in trajectory_rows(records) if r["epoch"] > 1]
    runs = []
    for r in records:
        c = r["checkpoints"]
        first, peak = c[0], max(c, key=lambda q: q["m"])
        run = {"p": r["p"], "restart": r["restart"], "first_m": first["m"], "first_step": first["step"]}
        run |= {"peak_m": peak["m"], "peak_step": peak["step"], "last_m": c[-1]["m"]}
        runs.append(run | {"peak_above_first": peak["m_lo"] > first["m_hi"]})
    lowest = min((q["m_lo"] for q in later), default=float("nan"))
    return {"checkpoints_after_first": len(later), "min_m_lo_after_first": lowest, "runs": runs}

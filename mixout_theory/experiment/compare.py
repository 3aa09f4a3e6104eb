"""Do two results of one study agree, number by number, within noise? (``python -m mixout_theory compare``)

A result is a study's exported folder (e.g. ``docs/results/figure2-paper-stand-in/``) or a results store
(a sweep's, or one of the ablations or of Theorem 1, exported on the fly). Its numbers are **claims** (the
study's findings: gaps, ratios, which method wins, which claims held) and **levels** (the means they rest
on: accuracy and distance per method and p, Monte Carlo penalties).

The rule: with ``se_a``, ``se_b`` the standard errors over the restarts (the jackknife: leave each restart
out, recompute; ``std / sqrt(n)`` for a mean; Theorem 1's Monte Carlo values carry their own) and ``tau``
the spread a different ``w_pre`` brings (:mod:`~mixout_theory.experiment.w_pre_spread`; for Figure 2's
numbers, from a w_pre-spread export of the same profile and source, given or committed),

    |a - b| <= 3 sqrt(se_a^2 + se_b^2 + 2 tau^2)

is within noise. Booleans, counts and names must be equal. A number with no noise estimate on either side
(a deterministic function of trained weights, e.g. a Hessian eigenvalue) is not judged: it is listed with
its relative difference and never decides the verdict.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixout_theory.experiment import report, sweep
from mixout_theory.experiment.store import project_dir, read_config
from mixout_theory.experiment.w_pre_spread import STUDY, load_spread, seed_stats

#: how many standard errors of the difference count as noise
SIGMAS = 3.0


class CompareError(ValueError):
    """Two results that cannot be compared (bad folder, different studies, profiles or sources)."""


@dataclass(frozen=True)
class Number:
    """One compared quantity: ``key`` names it (study-specific tuple), ``kind`` is ``claim`` or ``level``,
    ``value`` a float, bool, int or str, ``se`` its standard error (``None``: no noise estimate)."""

    key: tuple
    kind: str
    value: object
    se: float | None = None


@dataclass
class Result:
    """A study's result read for comparison: its numbers by key, and the folder it was read from."""

    study: str
    profile: str
    source: str
    numbers: dict
    where: Path


# --------------------------------------------------------------------------------------------
# the jackknife over restarts: one rule for every claim's noise
def jackknife(records: list[dict], restart_key: str, fn) -> dict[tuple, tuple[object, float | None]]:
    """``{key: (value, se)}`` of the numbers ``fn(records)`` returns, with the jackknife standard error
    over restarts: ``se^2 = (n - 1) / n * sum_r (f_(-r) - mean_r f_(-r))^2`` where ``f_(-r)`` is ``fn``
    on the records without restart ``r``. Non-numbers and numbers that no restart moves get ``None``."""
    full = fn(records)
    restarts = sorted({r[restart_key] for r in records if restart_key in r})
    if len(restarts) < 2:
        return {k: (v, None) for k, v in full.items()}
    loo = [fn([r for r in records if r.get(restart_key) != k]) for k in restarts]
    n, out = len(restarts), {}
    for key, value in full.items():
        se = None
        if _is_float(value):
            vals = np.array([d.get(key, math.nan) for d in loo], dtype=float)
            if np.all(np.isfinite(vals)) and np.ptp(vals) > 0:  # else no restart moves it: no noise estimate
                se = float(math.sqrt((n - 1) / n * np.sum((vals - vals.mean()) ** 2)))
        out[key] = (value, se)
    return out


def _is_float(v) -> bool:
    return isinstance(v, (float, np.floating)) and not isinstance(v, bool)


def _numbers(records: list[dict], restart_key: str, fn) -> dict:
    """A :class:`Number` per value of ``fn(records) -> {(kind, key): value}``, its :func:`jackknife` se."""
    return {k: Number(k, kind, v, se) for (kind, k), (v, se) in jackknife(records, restart_key, fn).items()}


# --------------------------------------------------------------------------------------------
# each study's claims and levels
def figure2_values(records: list[dict]) -> dict:
    """``{(kind, key): value}`` of one sweep. Levels: the mean of each of :data:`w_pre_spread.SPREAD_METRICS`
    per (method, p). Claims: the paired source-accuracy gap mixout - dropout per p, mixout's mixed-distance
    ratio between the largest p and p = 0, and the two claims of :func:`report.figure2_claims`."""
    stats = seed_stats(records)
    out = {("claim" if k[0] == "gap" else "level", k): v[0] for k, v in stats.items()}
    ps = sorted(p for (m, p, q) in stats if m == "mixout" and q == "dist_mixed")
    if ps and ("none", 0.0, "dist_mixed") in stats:
        out["claim", ("mixout", ps[-1], "dist_mixed_ratio_to_p0")] = (
            stats["mixout", ps[-1], "dist_mixed"][0] / stats["none", 0.0, "dist_mixed"][0]
        )
    c = report.figure2_claims(records)
    return out | {("claim", ("claim", "", name)): bool(c[name]) for name in report.FIGURE2_CLAIMS}


def _figure2_numbers(records: list[dict]) -> dict:
    return _numbers(report.usable(records), "seed", figure2_values)


def _fidelity_numbers(res) -> dict:
    from mixout_theory.experiment import fidelity

    def values(recs):
        out = {}
        for v in dict.fromkeys(r["variant"] for r in recs):
            mine = [r for r in recs if r["variant"] == v]
            out |= {(kind, (v, *k)): x for (kind, k), x in figure2_values(mine).items() if kind == "level"}
            ours = fidelity.ours(mine, res.w_pre_accs[v])
            out |= {("claim", (v, "", n)): float(x) for n, x in ours.items()}
        return out

    return _numbers(report.usable(res.runs), "seed", values)


def _ablation_numbers(res) -> dict:
    studies = ("small_data", "new_head")
    recs = [dict(r, _study=s) for s in studies for r in res.records.get(s, [])]
    traj = report.trajectory_summary(res.records["trajectory"]) if res.records.get("trajectory") else []

    def values(rs):
        by = {s: [r for r in rs if r["_study"] == s] for s in studies}
        summaries = {s: report.summarise_runs(by[s], res.w_pre_acc) for s in studies}
        out = {
            ("level", (s, row["size"], row["setting"], "test_acc")): row["mean"]
            for s, rows in summaries.items()
            for row in rows
        }
        c = report.claims(summaries["small_data"], summaries["new_head"], traj, by["small_data"])
        return out | {("claim", k): v for k, v in _flatten(c)}

    return _numbers(recs, "restart", values)


def _flatten(obj, prefix=()):
    """Leaves of nested dicts / lists as ``(path tuple, value)``; ints, bools and strings kept as they are."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, (*prefix, k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, (*prefix, i))
    else:
        yield prefix, float(obj) if isinstance(obj, (float, np.floating)) else obj


def _theorem1_numbers(points: list[dict]) -> dict:
    """Levels: each point's Monte Carlo penalty (with its own standard error) and its deterministic
    values (loss, second-order penalty, m_eff: no noise estimate). Claims: the ratio Monte Carlo /
    second order per part and p (its 95% interval's half-width / 1.96 as the standard error), and
    whether Corollary 1.1 is vacuous (no positive smallest eigenvalue)."""
    out = []
    for r in [q for q in points if q["part"] in ("finetuned", "displaced")]:
        key = (r["part"], r["p"])
        out.append(Number((*key, "mc"), "level", r["mc"], r.get("mc_se")))
        for q in ("loss", "second_order", "m_eff"):
            if _finite(r.get(q)):
                out.append(Number((*key, q), "level", float(r[q])))
        if _finite(r.get("mc")) and _finite(r.get("second_order")) and r["second_order"]:
            so = r["second_order"]
            se = (r["mc_hi"] - r["mc_lo"]) / (2 * 1.959964) / so if _finite(r.get("mc_hi")) else None
            out.append(Number((*key, "ratio"), "claim", r["mc"] / so, se))
    mins = [r["m_min"] for r in points if r["part"] in ("w_pre", "finetuned") and _finite(r.get("m_min"))]
    if mins:
        out.append(Number(("all", "", "corollary_vacuous"), "claim", max(mins) <= 0.0))
    return {n.key: n for n in out}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------------------------
# reading a folder
def detect(folder) -> str:
    """Which study a folder holds: an export (by its tables) or a store (by its ``config.json`` and runs)."""
    f = Path(folder)
    if not f.is_dir():
        raise CompareError(f"{f}: not a folder")
    if (f / "meta.json").is_file():
        if (f / "w_pre_spread.csv").is_file():
            return "w_pre-spread"
        if (f / "network_penalty.csv").is_file():
            return "theorem1"
        if (f / "claims.csv").is_file() and (f / "scores.csv").is_file():
            return "fidelity"
        if (f / "subsets.csv").is_file():
            return "ablations"
        if (f / "runs.csv").is_file() and (f / "table.csv").is_file():
            return "figure2"
    if (f / "config.json").is_file() and (f / "runs").is_dir():
        return f"{f.parent.name}-store" if f.parent.name in ("ablations", "theorem1") else "sweep-store"
    raise CompareError(
        f"{f}: neither an exported study (meta.json and its tables) nor a results store "
        "(config.json and runs/)"
    )


def read(folder) -> Result:
    """A folder as a :class:`Result` (:func:`detect` says how to read it)."""
    f = Path(folder)
    kind = detect(f)
    try:
        return _read(f, kind)
    except (KeyError, TypeError, IndexError, AttributeError, json.JSONDecodeError) as e:
        raise CompareError(f"{f}: not a readable {kind} result ({type(e).__name__}: {e})") from None


def _read(f: Path, kind: str) -> Result:
    from mixout_theory.experiment import exports, fidelity, theorem1

    if kind in ("ablations-store", "theorem1-store"):
        return _read(_exported_store(f, kind), kind.split("-")[0])
    if kind == "w_pre-spread":
        raise CompareError(
            f"{f}: a w_pre-spread export; compare two Figure 2 results and pass it with --spread"
        )
    if kind == "figure2":
        records, meta = exports.load_figure2(f)
        return Result(kind, meta["config"]["profile"], meta["config"]["source"], _figure2_numbers(records), f)
    if kind == "fidelity":
        res = fidelity.load_fidelity(f)
        return Result(kind, res.profile, res.runs[0]["source"], _fidelity_numbers(res), f)
    if kind == "ablations":
        res = exports.load_ablations(f)
        return Result(kind, res.config.profile, res.config.source, _ablation_numbers(res), f)
    if kind == "theorem1":
        tables = theorem1.load_tables(f)
        cfg = tables.meta["config"]
        return Result(kind, cfg["profile"], cfg["source"], _theorem1_numbers(tables.points), f)
    config = read_config(f)  # a sweep store
    if not isinstance(config, dict) or "ps" not in config:
        raise CompareError(f"{f}: config.json is not a sweep's configuration")
    if not sweep.is_figure2_reading(config):
        raise CompareError(f"{f}: a fidelity variant's sweep, not Figure 2's: compare the fidelity exports")
    return Result("figure2", config["profile"], config["source"], _figure2_numbers(sweep.load_records(f)), f)


def _exported_store(folder: Path, kind: str) -> Path:
    """A store of the ablations or of Theorem 1, exported (from its results root) into a temporary folder."""
    from mixout_theory.experiment import ablations, exports, theorem1

    root = folder.parent.parent
    out = Path(tempfile.mkdtemp(prefix=f"mixout-compare-{kind}-"))
    if kind == "ablations-store":
        found = [r for r in ablations.load_stored(root) if any(s.dir == folder for s in r.stores.values())]
        export = exports.export_ablations
    else:
        found = [r for r in theorem1.load_stored(root) if r.store.dir == folder]
        export = theorem1.export_tables
    if not found:
        raise CompareError(
            f"{folder}: not the newest complete store of its study under {root}; compare its export instead"
        )
    export(found[0], out)
    return out


# --------------------------------------------------------------------------------------------
# comparing
@dataclass(frozen=True)
class Row:
    """One compared number: both values, the difference, its noise and the verdict (``None``: not judged)."""

    key: tuple
    kind: str
    a: object
    b: object
    diff: float | None
    sigma: float | None
    within: bool | None

    @property
    def sigmas(self) -> float | None:
        return None if self.diff is None or not self.sigma else abs(self.diff) / self.sigma


def compare(a: Result, b: Result, taus: dict | None = None) -> list[Row]:
    """Every number both results hold, compared by the rule of the module docstring (``taus``: the
    w_pre spread of Figure 2's numbers, ``{(method, p, quantity): tau}``; applied to Figure 2 only)."""
    if a.study != b.study:
        raise CompareError(
            f"{a.where} holds the {a.study} study, {b.where} the {b.study} study: "
            "compare results of one study"
        )
    if (a.profile, a.source) != (b.profile, b.source):
        raise CompareError(
            f"{a.where} is profile {a.profile!r}, source {a.source!r}; {b.where} is profile "
            f"{b.profile!r}, source {b.source!r}: compare results of the same profile and source"
        )
    taus = taus if a.study == "figure2" else {}
    rows = []
    for key in [k for k in a.numbers if k in b.numbers]:
        x, y = a.numbers[key], b.numbers[key]
        diff = sigma = None
        if not (_is_float(x.value) and _is_float(y.value)):
            within = x.value == y.value
        else:
            diff, within = float(y.value) - float(x.value), None
            if x.se is not None and y.se is not None:
                sigma = math.sqrt(x.se**2 + y.se**2 + 2 * (taus or {}).get(key, 0.0) ** 2)
                within = abs(diff) <= SIGMAS * sigma if sigma > 0 else diff == 0
        rows.append(Row(key, x.kind, x.value, y.value, diff, sigma, within))
    return rows


def name(study: str, key: tuple) -> str:
    """A compared number in words: study, method / part / variant, p, quantity."""
    parts = [str(k) for k in key if k != ""]
    if study in ("figure2", "fidelity") and len(key) >= 3:
        *head, p, q = key
        parts = [str(h) for h in head if h not in ("", "claim")]
        parts += [f"p={p:g}", q] if isinstance(p, float) else [q]
    return f"{study}: " + " ".join(parts)


def outside_lines(study: str, rows: list[Row]) -> list[str]:
    """One line per number outside noise (claims first, then levels, the largest deviations first)."""
    bad = [r for r in rows if r.within is False]
    bad.sort(key=lambda r: (r.kind != "claim", -(r.sigmas or math.inf)))
    return [f"{name(study, r.key)} ({r.kind}): {_values(r)}" for r in bad]


def _values(r: Row) -> str:
    if r.diff is None:
        return f"{r.a} vs {r.b}"
    return f"{r.a:.6g} vs {r.b:.6g}, difference {r.diff:+.4g} = {r.sigmas:.1f} sigma (sigma {r.sigma:.3g})"


def summary(study: str, rows: list[Row], spread_known: bool) -> str:
    """``claims: N of M within noise; levels: K of L within noise; largest deviation ...; not judged ...``."""

    def count(kind):
        judged = [r for r in rows if r.kind == kind and r.within is not None]
        return f"{sum(r.within for r in judged)} of {len(judged)} within noise"

    worst = max((r for r in rows if r.sigmas is not None), key=lambda r: r.sigmas, default=None)
    loose = [r for r in rows if r.within is None]
    text = f"claims: {count('claim')}; levels: {count('level')}"
    if worst is not None:
        text += f"; largest deviation {name(study, worst.key)}, {worst.sigmas:.1f} sigma"
    if loose:
        rel = max((abs(r.diff) / max(abs(r.a), 1e-300) for r in loose if r.diff is not None), default=0.0)
        text += f"; not judged (no noise estimate): {len(loose)}, largest relative difference {rel:.2%}"
    tau = " + 2 tau_w_pre^2" if spread_known else ""
    return f"{text} (rule: |difference| <= {SIGMAS:g} sigma, sigma^2 = se_a^2 + se_b^2{tau})"


def agrees(rows: list[Row]) -> bool:
    """Every judged claim within noise (levels inform, claims decide)."""
    return all(r.within is not False for r in rows if r.kind == "claim")


def compare_results(ra: Result, rb: Result, spread=None) -> tuple[bool, list[str]]:
    """Compare two results read by :func:`read`: ``(every claim within noise, the lines to print)``;
    ``spread``: a w_pre-spread export (default: the committed one of the same profile and source, for
    Figure 2; ``"none"``: restarts only)."""
    taus = {}
    if ra.study == "figure2":
        if spread is None:  # the committed w_pre-spread export, if there is one
            spread = project_dir("docs") / "results" / f"{STUDY}-{ra.profile}-{ra.source}"
            spread = spread if (spread / "meta.json").is_file() else None
        if spread is not None and str(spread) != "none":
            found = load_spread(spread)[0]
            taus = {(r["method"], r["p"], r["quantity"]): r["tau"] for r in found if _finite(r.get("tau"))}
    rows = compare(ra, rb, taus)
    return agrees(rows), outside_lines(ra.study, rows) + [summary(ra.study, rows, bool(taus))]


def compare_folders(a, b, spread=None) -> tuple[bool, list[str]]:
    """:func:`compare_results` of two folders (exports or stores)."""
    return compare_results(read(a), read(b), spread)


def against_committed(study: str, folder, profile: str, source: str) -> list[str]:
    """What a study command prints at its end: the comparison of its export with the committed one
    (``docs/results/``) of the same profile and source, or a line saying there is none."""
    from mixout_theory.experiment.studies import REGISTRY

    committed = REGISTRY[study].committed_dir()
    try:
        ref = read(committed) if (committed / "meta.json").is_file() else None
    except (CompareError, ValueError, OSError):
        ref = None
    if ref is None or (ref.profile, ref.source) != (profile, source):
        return [
            f"compare: no committed {study} results of profile {profile!r}, source {source!r} to compare with"
        ]
    ok, lines = compare_results(ref, read(folder))
    verdict = "every claim within noise" if ok else "a claim differs"
    return [f"compare with the committed results ({ref.where}): {verdict}", *("  " + line for line in lines)]

"""Where the quadratic picture of mixout breaks on the paper's MLP: two parts of the Theorem 1 study.

Both split the penalty ``E L(Phi(w)) - L(w)`` into the exact second-order value, the smooth
higher-order part and the kink part (:mod:`mixout_theory.experiment.penalty_parts`), at the study's two
kinds of point (``w_p`` with ``u = w_pre``; ``w_pre`` with ``u = w_pre - d_p``):

* ``layers`` -- mixout on ``fc2`` only, on ``fc3`` only and on both (independent masks), for every p.
  No ReLU follows ``fc3``, so its kink part is exactly 0; with ``fc2`` mixed, the ReLU after it flips.
  The second-order value of one layer is ``(k / 2) sum_g d_g^T H_gg d_g`` over that layer's groups
  (``quad_fc2`` / ``quad_fc3`` of the point's record), of both their sum (the masks are independent).
* ``scale`` -- the displacement scaled by ``t`` (``u_t = w - t d``,
  :func:`mixout_theory.scale.scaled_target`) on the same masks at every ``t`` (``scale_ts``), both
  layers, at the p of ``scale_ps``: the second-order value is ``t^2`` times its value at ``t = 1``; a
  smooth part starts at ``t^3`` (``E X^3 != 0``) and a kink part at ``t^2``, which
  :func:`mixout_theory.scale.scale_fit` reads off.
"""

from __future__ import annotations

import math
import time

from mixout_theory import scale
from mixout_theory.experiment import mlp
from mixout_theory.experiment.penalty_parts import LAYERS, penalty_parts

__all__ = ["LAYER_COLUMNS", "SCALE_COLUMNS", "measure_layers", "measure_scale", "claims"]

ESTIMATES = ("mc", "mc_frozen", "kink", "smooth", "quadratic")
_NUMBERS = tuple(f"{e}{s}" for e in ESTIMATES for s in ("", "_lo", "_hi")) + ("second_order", "flips")
#: the columns of ``beyond_second_order.csv`` (one row per point, p and mixed layers)
LAYER_COLUMNS = ("point", "p", "mixed") + _NUMBERS + ("dist2", "mc_samples", "seconds")
#: the columns of ``scale_scan.csv`` (one row per point, p and scale t)
SCALE_COLUMNS = ("point", "p", "t") + _NUMBERS + ("mc_samples", "seconds")


def _fields(parts, n_samples: int, second_order: float, t0: float) -> dict:
    row = {
        f"{e}{s}": getattr(getattr(parts, e), a)
        for e in ESTIMATES
        for s, a in zip(("", "_lo", "_hi"), ("mean", "lo", "hi"), strict=True)
    }
    return dict(
        row,
        second_order=second_order,
        flips=parts.flips,
        mc_samples=n_samples,
        seconds=time.perf_counter() - t0,
    )


def _second_order(base: dict, layer: str) -> float:
    """``(k / 2) sum_g d_g^T H_gg d_g`` over the groups of ``layer`` from a point's record."""
    quad = sum(base[f"quad_{n[:3]}"] for n in LAYERS[layer])
    return base["p"] / (1.0 - base["p"]) / 2.0 * quad


def measure_layers(store, config, points: dict, base: dict, x, y, progress: bool) -> None:
    """The ``layers`` records: every p of ``config.ps``, every point of ``points`` (``{point: {p: (w, u)}}``)
    and every layer split, from the point's record ``base[point, p]`` for the second-order value."""
    done = store.done()
    for p in config.ps:
        for point, at in points.items():
            for layer in LAYERS:
                rid = f"layers-{point}-{layer}-p{p:.2f}"
                if rid in done:
                    continue
                t0 = time.perf_counter()
                parts = penalty_parts(*at[p], p, x, y, layer=layer, **_mc(config))
                row = _fields(parts, config.mc_samples, _second_order(base[point, p], layer), t0)
                w, u = at[p]
                dist2 = sum(float((w[n].double() - u[n].double()).pow(2).sum()) for n in LAYERS[layer])
                store.write(dict(row, run_id=rid, part="layers", point=point, p=p, mixed=layer, dist2=dist2))
                _say(progress, f"layers {point} {layer} p={p:g}", row)


def measure_scale(store, config, points: dict, base: dict, x, y, progress: bool) -> None:
    """The ``scale`` records: for every p of ``config.scale_ps`` and point, the displacement scaled by every
    ``t`` of ``config.scale_ts`` (both layers, the same masks at every ``t``)."""
    done = store.done()
    for p in config.scale_ps:
        for point, at in points.items():
            w, u = at[p]
            for t in config.scale_ts:
                rid = f"scale-{point}-p{p:.2f}-t{t:.4f}"
                if rid in done:
                    continue
                t0 = time.perf_counter()
                target = scale.scaled_target(
                    {n: w[n].double() for n in mlp.MIXED}, {n: u[n].double() for n in mlp.MIXED}, t
                )
                parts = penalty_parts(w, target, p, x, y, **_mc(config))
                row = _fields(parts, config.mc_samples, t * t * _second_order(base[point, p], "both"), t0)
                store.write(dict(row, run_id=rid, part="scale", point=point, p=p, t=t))
                _say(progress, f"scale {point} p={p:g} t={t:g}", row)


def _mc(config) -> dict:
    return dict(n_samples=config.mc_samples, seed=config.mc_seed, batch_size=config.parts_batch)


def _say(progress: bool, what: str, row: dict) -> None:
    if progress:
        print(
            f"{what}: Monte Carlo {row['mc']:.4g} = second order {row['second_order']:.4g} + smooth "
            f"{row['smooth']:.3g} + kink {row['kink']:.3g}; {100 * row['flips']:.2f}% of units flip "
            f"({row['seconds']:.0f} s)",
            flush=True,
        )


def _slope(ts, values) -> float | None:
    """The least-squares slope of ``log |value|`` against ``log t`` (None unless all share one sign)."""
    if len(ts) < 2 or not (all(v > 0 for v in values) or all(v < 0 for v in values)):
        return None
    lt, lv = [math.log(t) for t in ts], [math.log(abs(v)) for v in values]
    mt, mv = sum(lt) / len(lt), sum(lv) / len(lv)
    return sum((a - mt) * (b - mv) for a, b in zip(lt, lv, strict=True)) / sum((a - mt) ** 2 for a in lt)


def claims(layers: list[dict], scan: list[dict]) -> dict:
    """What the two tables say, as numbers (nothing here is a threshold).

    ``shares``: per point, the fractions of the penalty (both layers) that are second order, smooth and
    kink, per p; ``kink_in_ci`` / ``smooth_in_ci``: the p where 0 lies inside the part's 95% interval;
    ``flips``: the flipped fraction per p; ``fc3_kink_max``: the largest ``|kink|`` with ``fc3`` alone
    (0: no ReLU follows it); ``scale``: per point and p, the fits of the smooth part (orders 3, 4) and of
    the kink part (orders 2, 3) with :func:`mixout_theory.scale.scale_fit`, their log-log slopes, and
    ``E X^3``.
    """
    out = {
        "shares": {},
        "fc3_kink_max": max((abs(r["kink"]) for r in layers if r["mixed"] == "fc3"), default=None),
    }
    for point in sorted({r["point"] for r in layers}):
        rows = sorted(
            (r for r in layers if r["point"] == point and r["mixed"] == "both"), key=lambda r: r["p"]
        )
        share = {k: [r[k] / r["mc"] for r in rows] for k in ("second_order", "smooth", "kink")}
        out["shares"][point] = dict(ps=[r["p"] for r in rows], flips=[r["flips"] for r in rows], **share)
        for part in ("kink", "smooth"):
            out["shares"][point][f"{part}_in_ci"] = [
                r["p"] for r in rows if r[f"{part}_lo"] <= 0 <= r[f"{part}_hi"]
            ]
    out["scale"] = {}
    for point, p in sorted({(r["point"], r["p"]) for r in scan}):
        rows = sorted((r for r in scan if r["point"] == point and r["p"] == p), key=lambda r: r["t"])
        ts = [r["t"] for r in rows]
        fit = {}
        for part, orders in (("smooth", (3, 4)), ("kink", (2, 3))):
            values = [r[part] for r in rows]
            fit[part] = dict(coef=scale.scale_fit(ts, values, orders), slope=_slope(ts, values))
        fit["second_order_coef"] = rows[-1]["second_order"] / rows[-1]["t"] ** 2
        fit["mask_moment_3"] = scale.mask_moment(p, 3)
        fit["flips"] = [r["flips"] for r in rows]
        out["scale"][f"{point} p={p:g}"] = fit
    return out

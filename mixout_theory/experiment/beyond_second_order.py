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

import time

from mixout_theory import scale
from mixout_theory.experiment import mlp
from mixout_theory.experiment.penalty_parts import LAYERS, penalty_parts

__all__ = ["LAYER_COLUMNS", "SCALE_COLUMNS", "planned", "measure_layers", "measure_scale", "claims"]

ESTIMATES = ("mc", "mc_frozen", "kink", "smooth", "quadratic", "beyond")
_SUFFIXES = {"": "mean", "_lo": "lo", "_hi": "hi"}  # a column's suffix: the estimate's field it holds
_INTERVALS = tuple(f"{e}{s}" for e in ESTIMATES for s in _SUFFIXES)
_NUMBERS = (*_INTERVALS[:6], "second_order", *_INTERVALS[6:], "flips")  # mc, mc_frozen, second order first
#: the columns of ``beyond_second_order.csv`` (one row per point, p and mixed layers)
LAYER_COLUMNS = ("point", "p", "mixed") + _NUMBERS + ("dist2", "mc_samples", "seconds")
#: the columns of ``scale_scan.csv`` (one row per point, p and scale t)
SCALE_COLUMNS = ("point", "p", "t") + _NUMBERS + ("mc_samples", "seconds")


def _layers_id(point: str, layer: str, p: float) -> str:
    return f"layers-{point}-{layer}-p{p:.2f}"


def _scale_id(point: str, p: float, t: float) -> str:
    return f"scale-{point}-p{p:.2f}-t{t:.4f}"


def planned(config, parts, points) -> list[str]:
    """The run ids of the ``layers`` and ``scale`` parts (those in ``parts``) at ``points``."""
    layers = [_layers_id(pt, m, p) for p in config.ps for pt in points for m in LAYERS]
    scales = [_scale_id(pt, p, t) for p in config.scale_ps for pt in points for t in config.scale_ts]
    return (layers if "layers" in parts else []) + (scales if "scale" in parts else [])


def _fields(parts, n_samples: int, second_order: float, t0: float) -> dict:
    row = {f"{e}{s}": getattr(getattr(parts, e), a) for e in ESTIMATES for s, a in _SUFFIXES.items()}
    row.update(second_order=second_order, flips=parts.flips, mc_samples=n_samples)
    return dict(row, seconds=time.perf_counter() - t0)


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
                rid = _layers_id(point, layer, p)
                if rid in done:
                    continue
                t0, (w, u) = time.perf_counter(), at[p]
                parts = penalty_parts(w, u, p, x, y, layer=layer, **_mc(config))
                row = _fields(parts, config.mc_samples, _second_order(base[point, p], layer), t0)
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
            w64, u64 = ({n: v[n].double() for n in mlp.MIXED} for v in (w, u))
            for t in config.scale_ts:
                rid = _scale_id(point, p, t)
                if rid in done:
                    continue
                t0 = time.perf_counter()
                parts = penalty_parts(w, scale.scaled_target(w64, u64, t), p, x, y, **_mc(config))
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


#: the orders fitted to each part of the scale scan (:func:`mixout_theory.scale.scale_fit`)
FIT_ORDERS = (2, 3, 4)


def _per_p(rows: list[dict]) -> dict:
    """Per p (both layers mixed): the parts as shares of ``total = second order + beyond`` (None where
    ``total <= 0``), ``ratio = total / second order`` with its 95% interval, where 0 lies inside each
    part's interval, and the flipped fraction."""
    total = [r["second_order"] + r["beyond"] for r in rows]
    out = dict(ps=[r["p"] for r in rows], flips=[r["flips"] for r in rows], total=total)
    for k in ("second_order", "smooth", "kink", "beyond"):
        out[k] = [r[k] / t if t > 0 else None for r, t in zip(rows, total, strict=True)]
    for s in _SUFFIXES:
        out[f"ratio{s}"] = [
            1 + r[f"beyond{s}"] / r["second_order"] if r["second_order"] > 0 else None for r in rows
        ]
    for part in ("kink", "smooth", "beyond"):
        out[f"{part}_in_ci"] = [r["p"] for r in rows if r[f"{part}_lo"] <= 0 <= r[f"{part}_hi"]]
    return out


def _scan(rows: list[dict], p: float) -> dict:
    """One scale scan: ``t``; each part over the second-order value at its ``t`` (a part of second order
    in ``t`` keeps its ratio as ``t -> 0``, a third-order one falls like ``t``; None where the second order
    is not positive), with its interval; its fit (:data:`FIT_ORDERS`; None with fewer scales); ``E X^3``."""
    ts = [r["t"] for r in rows]
    out = dict(t=ts, flips=[r["flips"] for r in rows], mask_moment_3=scale.mask_moment(p, 3))
    out["second_order_coef"] = rows[-1]["second_order"] / rows[-1]["t"] ** 2
    for part in ("kink", "smooth"):
        for s in _SUFFIXES:
            out[f"{part}{s}_over_second_order"] = [
                r[f"{part}{s}"] / r["second_order"] if r["second_order"] > 0 else None for r in rows
            ]
        enough = len(ts) >= len(FIT_ORDERS)
        out[f"{part}_fit"] = scale.scale_fit(ts, [r[part] for r in rows], FIT_ORDERS) if enough else None
    return out


def claims(layers: list[dict], scan: list[dict]) -> dict:
    """What the two tables say, as numbers (nothing here is a threshold).

    ``shares``: per point, :func:`_per_p` of the rows with both layers mixed; ``layers``: per point and
    mixed layers, ``ratio = (second order + beyond) / second order`` per p (None where the layer's
    second-order value is not positive); ``fc3_kink_max``: the largest ``|kink|`` with ``fc3`` alone (0:
    no ReLU follows it); ``scale``: per point and p, :func:`_scan`.
    """
    out = {"shares": {}, "layers": {}, "scale": {}}
    out["fc3_kink_max"] = max((abs(r["kink"]) for r in layers if r["mixed"] == "fc3"), default=None)
    for point in sorted({r["point"] for r in layers}):
        at = sorted((r for r in layers if r["point"] == point), key=lambda r: r["p"])
        by_layer = {m: [r for r in at if r["mixed"] == m] for m in LAYERS}
        out["shares"][point] = _per_p(by_layer["both"])
        out["layers"][point] = {m: _per_p(rows)["ratio"] for m, rows in by_layer.items()}
    for point, p in sorted({(r["point"], r["p"]) for r in scan}):
        rows = sorted((r for r in scan if r["point"] == point and r["p"] == p), key=lambda r: r["t"])
        out["scale"][f"{point} p={p:g}"] = _scan(rows, p)
    return out

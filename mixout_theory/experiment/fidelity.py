"""Figure 2 reconciled: the p-sweep under each reading of the protocol, claim by claim beside the paper.

The paper's Figure 2 (Section 4) leaves three things open that change its numbers; each is a recorded
option of the sweep (:class:`~mixout_theory.experiment.sweep.SweepConfig`), so each reading is its own
store and never mixes with another:

* ``orientation`` -- the source images upright (as MNIST's) or transposed (EMNIST as its files store
  it, which ``torchvision.datasets.EMNIST`` returns; the stand-in transposed the same way);
* ``mixed_layers`` -- mixout (and dropout) on the hidden layers (fc2, fc3: the paper's description)
  or on every Linear layer (fc1 too, i.e. the input pixels);
* ``finetune_epochs`` -- the stand-in's target half has 27,000 images where MNIST's training split
  has 54,000, so 5 epochs are half the paper's 8,440 steps; "matched steps" doubles the epochs.

:data:`GRID` runs the four orientation x layers variants; the matched-steps option is then run on the
variant of the four that reproduces the most claims (ties: the smaller median ``|log(ours / paper)|``),
since doubling every variant would double the cost for the one comparison the option is for.

:data:`CLAIMS` are the paper's statements and the endpoints read off its figure, each with the rule
by which ours reproduces it: a *level* (an accuracy) within 0.01 of the paper's (the precision of a
value read off the figure), a *size* (a distance, a gap, a ratio) within a factor 1.25 either way.
Every distance claim is checked for every distance definition (whole vector, mixed weights, each
layer). Everything is recomputable from ``runs.csv``: :func:`claim_rows`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from mixout_theory.experiment import engine, exports, sweep
from mixout_theory.experiment.data import ORIENTATIONS, oriented_name
from mixout_theory.experiment.store import (
    checked_meta,
    read_csv,
)
from mixout_theory.experiment.study import Context, profile_sizes

__all__ = [
    "Variant",
    "GRID",
    "CLAIMS",
    "DISTANCES",
    "PAPER_STEPS",
    "run_fidelity",
    "claim_rows",
    "scores",
    "load_fidelity",
    "EXPORT_TABLES",
]

PAPER_TARGET_TRAIN = 54_000  # MNIST's training split less its 6,000 validation images (Supplement C.1)
PAPER_STEPS = 5 * math.ceil(PAPER_TARGET_TRAIN / 32)  # 8,440 finetuning steps
FIGURE, TEXT = "read off the paper's figure", "the paper's text"
LEVEL_TOLERANCE, SIZE_FACTOR = 0.01, 1.25
#: What each profile means: the sweep's sizes (:data:`mixout_theory.experiment.sweep.SIZES`) with these
#: overrides, for each of the study's five sweeps.
SIZES = {
    "smoke": dict(restarts=2, ps=(0.0, 0.3, 0.8)),
    "quick": dict(restarts=2, ps=(0.0, 0.1, 0.2, 0.3, 0.5, 0.8)),
    "paper": dict(),
}


@dataclass(frozen=True)
class Variant:
    """One reading of the protocol: the source's orientation, the layers mixed, matched steps or not."""

    orientation: str = "upright"
    mixed_layers: str = "hidden"
    matched_steps: bool = False

    def __post_init__(self):
        sweep.SweepConfig(orientation=self.orientation, mixed_layers=self.mixed_layers)  # one-line errors

    @property
    def name(self) -> str:
        layers = "hidden layers" if self.mixed_layers == "hidden" else "every Linear"
        return f"{self.orientation} source, {layers}" + (", matched steps" if self.matched_steps else "")

    def overrides(self, epochs: int, target_train: int) -> dict:
        """The sweep fields of this variant (``epochs``: the profile's; ``target_train``: its size)."""
        if self.matched_steps:
            epochs = max(epochs, round(epochs * PAPER_TARGET_TRAIN / target_train))
        return {"orientation": self.orientation, "mixed_layers": self.mixed_layers, "finetune_epochs": epochs}


GRID = tuple(Variant(o, m) for o in ORIENTATIONS for m in sweep.MIXED_LAYERS)
#: the distance definitions, as the records' ``dist_<name>`` columns
DISTANCES = {"all": "whole vector", "mixed": "mixed weights", "fc1": "fc1", "fc2": "fc2", "fc3": "fc3"}


@dataclass(frozen=True)
class Claim:
    """A number the paper gives, what it is of, where it comes from, and how it is compared."""

    key: str
    what: str
    paper: float
    source: str  # TEXT or FIGURE
    kind: str  # "level" or "size"


CLAIMS = (
    Claim("w_pre_source_acc", "source accuracy of w_pre", 0.992, TEXT, "level"),
    Claim("source_acc_p0", "source accuracy after finetuning, p = 0", 0.72, FIGURE, "level"),
    Claim(
        "source_acc_mixout", "source accuracy after finetuning, mixout, mean over p > 0", 0.723, TEXT, "level"
    ),
    Claim(
        "source_acc_dropout_p0.8",
        "source accuracy after finetuning, dropout, p = 0.8",
        0.522,
        FIGURE,
        "level",
    ),
    *(
        Claim(f"source_gap_p{p}", f"dropout's source accuracy below mixout's, p = {p}", g, TEXT, "size")
        for p, g in ((0.1, 0.041), (0.2, 0.074), (0.3, 0.105))
    ),
    Claim("target_acc_p0", "MNIST validation accuracy, p = 0", 0.972, FIGURE, "level"),
    Claim("target_acc_dropout_p0.8", "MNIST validation accuracy, dropout, p = 0.8", 0.917, FIGURE, "level"),
    Claim("target_acc_mixout_p0.8", "MNIST validation accuracy, mixout, p = 0.8", 0.970, FIGURE, "level"),
    Claim(
        "target_fall_dropout",
        "MNIST validation accuracy, dropout, fall from p = 0 to 0.8",
        0.055,
        FIGURE,
        "size",
    ),
    *(
        c
        for d in DISTANCES
        for c in (
            Claim(f"dist_{d}_p0", f"distance at p = 0 [{DISTANCES[d]}]", 1.55, FIGURE, "size"),
            Claim(
                f"dist_{d}_mixout_p0.8", f"distance, mixout, p = 0.8 [{DISTANCES[d]}]", 0.40, FIGURE, "size"
            ),
            Claim(
                f"dist_{d}_dropout_p0.8", f"distance, dropout, p = 0.8 [{DISTANCES[d]}]", 2.51, FIGURE, "size"
            ),
            Claim(
                f"dist_{d}_mixout_ratio",
                f"distance, mixout, p = 0.8 over p = 0 [{DISTANCES[d]}]",
                0.40 / 1.55,
                FIGURE,
                "size",
            ),
            Claim(
                f"dist_{d}_dropout_ratio",
                f"distance, dropout, p = 0.8 over p = 0 [{DISTANCES[d]}]",
                2.51 / 1.55,
                FIGURE,
                "size",
            ),
        )
    ),
)


def group_mean(records: list[dict], method: str, p: float, metric: str) -> float:
    """Mean of ``metric`` over the usable runs of (method, p); p = 0 is the shared run ("none")."""
    vals = [
        r[metric]
        for r in records
        if r["p"] == p and r["method"] == ("none" if p == 0 else method) and not r.get("failed")
    ]
    return statistics.fmean(vals) if vals else math.nan


def ours(records: list[dict], w_pre_acc: float) -> dict:
    """Our value of every claim from one variant's run records (NaN where its p grid lacks the p)."""
    ps = sorted({r["p"] for r in records if r["p"] > 0})
    src, tgt = "source_val_acc", "target_val_acc"
    out = {
        "w_pre_source_acc": w_pre_acc,
        "source_acc_p0": group_mean(records, "none", 0.0, src),
        "source_acc_mixout": statistics.fmean(group_mean(records, "mixout", p, src) for p in ps)
        if ps
        else math.nan,
        "source_acc_dropout_p0.8": group_mean(records, "dropout", 0.8, src),
        "target_acc_p0": group_mean(records, "none", 0.0, tgt),
        "target_acc_dropout_p0.8": group_mean(records, "dropout", 0.8, tgt),
        "target_acc_mixout_p0.8": group_mean(records, "mixout", 0.8, tgt),
    }
    for p in (0.1, 0.2, 0.3):
        out[f"source_gap_p{p}"] = group_mean(records, "mixout", p, src) - group_mean(
            records, "dropout", p, src
        )
    out["target_fall_dropout"] = out["target_acc_p0"] - out["target_acc_dropout_p0.8"]
    for d in DISTANCES:
        at0 = group_mean(records, "none", 0.0, f"dist_{d}")
        out[f"dist_{d}_p0"] = at0
        for method in sweep.METHODS:
            end = group_mean(records, method, 0.8, f"dist_{d}")
            out[f"dist_{d}_{method}_p0.8"], out[f"dist_{d}_{method}_ratio"] = (
                end,
                end / at0 if at0 else math.nan,
            )
    return out


def reproduced(claim: Claim, value: float) -> bool | None:
    """Whether ``value`` reproduces ``claim`` (None: not measured)."""
    if not math.isfinite(value):
        return None
    if claim.kind == "level":
        return abs(value - claim.paper) <= LEVEL_TOLERANCE + 1e-12
    return value > 0 and 1 / SIZE_FACTOR <= value / claim.paper <= SIZE_FACTOR


def claim_rows(runs: list[dict], w_pre_accs: dict) -> list[dict]:
    """The tidy claims table: one row per (variant, claim) with ours, the paper's, their ratio and
    whether it is reproduced. ``runs``: every variant's records with a ``variant`` column;
    ``w_pre_accs``: each variant's w_pre source accuracy."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in runs):
        values = ours([r for r in runs if r["variant"] == name], w_pre_accs[name])
        for c in CLAIMS:
            v = values[c.key]
            ok = reproduced(c, v)
            rows.append(
                {
                    "variant": name,
                    "claim": c.key,
                    "what": c.what,
                    "paper": c.paper,
                    "paper_source": c.source,
                    "kind": c.kind,
                    "ours": v,
                    "ratio": v / c.paper if math.isfinite(v) else math.nan,
                    "reproduced": "" if ok is None else ("yes" if ok else "no"),
                }
            )
    return rows


def scores(rows: list[dict]) -> list[dict]:
    """Per variant: claims reproduced, claims measured, median ``|log(ours / paper)|``, best first."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name and r["reproduced"]]
        logs = [abs(math.log(r["ratio"])) for r in mine if r["ratio"] > 0]
        out.append(
            {
                "variant": name,
                "reproduced": sum(r["reproduced"] == "yes" for r in mine),
                "measured": len(mine),
                "median_abs_log_ratio": statistics.median(logs) if logs else math.nan,
            }
        )
    return sorted(out, key=lambda s: (-s["reproduced"], s["median_abs_log_ratio"]))


# --------------------------------------------------------------------------------------------
# running the study


@dataclass
class FidelityResults:
    profile: str
    source_name: str
    runs: list[dict]  # every variant's records, with "variant"
    variants: dict  # name -> {"config": key, "store": folder, "w_pre_source_acc": ..., "fields": {...}}
    rows: list[dict]  # claim_rows
    stores: list = field(default_factory=list)  # the sweep stores (when computed, not when read back)
    pending: list = field(default_factory=list)  # sweeps not started yet (another shard's runs missing)

    @property
    def w_pre_accs(self) -> dict:
        return _accs(self.variants)


def _accs(variants: dict) -> dict:
    """Each variant's w_pre source accuracy, from the variants' summaries."""
    return {k: v["w_pre_source_acc"] for k, v in variants.items()}


def run_fidelity(ctx: Context) -> FidelityResults:
    """The study: :data:`GRID`, then matched steps on the best of it (stand-in only: with EMNIST the
    target is MNIST's 54,000 images and the steps match already). Every sweep resumes from its store;
    under a shard, the matched-steps sweep waits until every run of the grid is stored."""
    profile, results, options = ctx.profile, ctx.results_dir, ctx.options
    exp = ctx.experiment()
    sizes = profile_sizes(SIZES, profile)
    base = sweep.profile_config(profile, **sizes)
    n_target = base.target_train or len(exp.target.train.y)
    runs, variants, stores, pending = [], {}, [], []

    def run(variant: Variant) -> None:
        fields = variant.overrides(base.finetune_epochs, len(exp.target.train.y))
        config, tensors, w_pre = sweep.pretrained(results, profile, exp, options, **sizes, **fields)
        store = sweep.run_sweep(
            results,
            config,
            tensors,
            w_pre,
            options,
            source_name=oriented_name(exp.source_name, variant.orientation),
        )
        acc = float(engine.evaluate(w_pre, *tensors["source_val"])["acc"][0])
        stores.append(store)
        runs.extend(dict(r, variant=variant.name) for r in store.records())
        variants[variant.name] = {
            "config": config.key(),
            "store": store.dir.name,
            "w_pre_source_acc": acc,
            "fields": dataclasses.asdict(variant),
            "finetune_epochs": config.finetune_epochs,
            "finetune_steps": config.finetune_epochs * math.ceil(n_target / config.batch_size),
        }

    for variant in GRID:
        run(variant)
    if len(exp.target.train.y) < PAPER_TARGET_TRAIN:
        if any(r not in s.done() for s in stores for r in s.planned):
            pending.append("the matched-steps sweep (it follows the grid's best variant)")
        else:
            best = scores(claim_rows(runs, _accs(variants)))[0]["variant"]
            run(dataclasses.replace(next(v for v in GRID if v.name == best), matched_steps=True))
    return FidelityResults(
        profile, exp.source_name, runs, variants, claim_rows(runs, _accs(variants)), stores, pending
    )


# --------------------------------------------------------------------------------------------
# the exported tables (written by fidelity_report.export_fidelity), read back

EXPORT_TABLES = ("runs.csv", "claims.csv", "scores.csv")
RUN_TEXT = (*exports.RUN_TEXT, "variant", "orientation", "mixed_layers")


def load_fidelity(folder) -> FidelityResults:
    """An exported study read back, every table checked against the sha256 in its ``meta.json``."""
    folder = Path(folder)
    meta = checked_meta(folder, EXPORT_TABLES, "export the study again (python -m mixout_theory fidelity)")
    runs = read_csv(folder / "runs.csv", text=RUN_TEXT)
    variants = {
        n: meta["variants"][n] for n in dict.fromkeys(r["variant"] for r in runs)
    }  # the study's order
    return FidelityResults(
        meta["profile"], meta["source_name"], runs, variants, claim_rows(runs, _accs(variants))
    )

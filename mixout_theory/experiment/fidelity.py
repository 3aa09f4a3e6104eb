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
from functools import partial
from pathlib import Path

from mixout_theory.experiment import engine, exports, sweep
from mixout_theory.experiment.data import ORIENTATIONS, oriented_name
from mixout_theory.experiment.store import checked_meta, read_csv
from mixout_theory.experiment.study import Context, profile_sizes

__all__ = ["Variant", "GRID", "CLAIMS", "DISTANCES", "PAPER_STEPS", "run_fidelity", "claim_rows", "scores"]
__all__ += ["load_fidelity", "EXPORT_TABLES"]

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


_AFTER, _MNIST = "source accuracy after finetuning", "MNIST validation accuracy"
CLAIMS = (
    Claim("w_pre_source_acc", "source accuracy of w_pre", 0.992, TEXT, "level"),
    Claim("source_acc_p0", f"{_AFTER}, p = 0", 0.72, FIGURE, "level"),
    Claim("source_acc_mixout", f"{_AFTER}, mixout, mean over p > 0", 0.723, TEXT, "level"),
    Claim("source_acc_dropout_p0.8", f"{_AFTER}, dropout, p = 0.8", 0.522, FIGURE, "level"),
    *(
        Claim(f"source_gap_p{p}", f"dropout's source accuracy below mixout's, p = {p}", g, TEXT, "size")
        for p, g in ((0.1, 0.041), (0.2, 0.074), (0.3, 0.105))
    ),
    Claim("target_acc_p0", f"{_MNIST}, p = 0", 0.972, FIGURE, "level"),
    Claim("target_acc_dropout_p0.8", f"{_MNIST}, dropout, p = 0.8", 0.917, FIGURE, "level"),
    Claim("target_acc_mixout_p0.8", f"{_MNIST}, mixout, p = 0.8", 0.970, FIGURE, "level"),
    Claim("target_fall_dropout", f"{_MNIST}, dropout, fall from p = 0 to 0.8", 0.055, FIGURE, "size"),
    *(
        Claim(f"dist_{d}_{key}", f"distance{what} [{name}]", paper, FIGURE, "size")
        for d, name in DISTANCES.items()
        for key, what, paper in (
            ("p0", " at p = 0", 1.55),
            ("mixout_p0.8", ", mixout, p = 0.8", 0.40),
            ("dropout_p0.8", ", dropout, p = 0.8", 2.51),
            ("mixout_ratio", ", mixout, p = 0.8 over p = 0", 0.40 / 1.55),
            ("dropout_ratio", ", dropout, p = 0.8 over p = 0", 2.51 / 1.55),
        )
    ),
)


def group_mean(records: list[dict], method: str, p: float, metric: str) -> float:
    """Mean of ``metric`` over the usable runs of (method, p); p = 0 is the shared run ("none")."""
    method = "none" if p == 0 else method
    vals = [r[metric] for r in records if r["p"] == p and r["method"] == method and not r.get("failed")]
    return statistics.fmean(vals) if vals else math.nan


def ours(records: list[dict], w_pre_acc: float) -> dict:
    """Our value of every claim from one variant's run records (NaN where its p grid lacks the p)."""
    ps = sorted({r["p"] for r in records if r["p"] > 0})
    mean = partial(group_mean, records)
    src, tgt = "source_val_acc", "target_val_acc"
    out = {
        "w_pre_source_acc": w_pre_acc,
        "source_acc_p0": mean("none", 0.0, src),
        "source_acc_mixout": statistics.fmean(mean("mixout", p, src) for p in ps) if ps else math.nan,
        "source_acc_dropout_p0.8": mean("dropout", 0.8, src),
        "target_acc_p0": mean("none", 0.0, tgt),
        "target_acc_dropout_p0.8": mean("dropout", 0.8, tgt),
        "target_acc_mixout_p0.8": mean("mixout", 0.8, tgt),
    }
    for p in (0.1, 0.2, 0.3):
        out[f"source_gap_p{p}"] = mean("mixout", p, src) - mean("dropout", p, src)
    out["target_fall_dropout"] = out["target_acc_p0"] - out["target_acc_dropout_p0.8"]
    for d in DISTANCES:
        out[f"dist_{d}_p0"] = at0 = mean("none", 0.0, f"dist_{d}")
        for method in sweep.METHODS:
            out[f"dist_{d}_{method}_p0.8"] = end = mean(method, 0.8, f"dist_{d}")
            out[f"dist_{d}_{method}_ratio"] = end / at0 if at0 else math.nan
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
            v, ok = values[c.key], reproduced(c, values[c.key])
            row = dict(variant=name, claim=c.key, what=c.what, paper=c.paper, paper_source=c.source)
            row |= dict(kind=c.kind, ours=v, ratio=v / c.paper if math.isfinite(v) else math.nan)
            rows.append(row | dict(reproduced="" if ok is None else ("yes" if ok else "no")))
    return rows


def scores(rows: list[dict]) -> list[dict]:
    """Per variant: claims reproduced, claims measured, median ``|log(ours / paper)|``, best first."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name and r["reproduced"]]
        logs = [abs(math.log(r["ratio"])) for r in mine if r["ratio"] > 0]
        yes = sum(r["reproduced"] == "yes" for r in mine)
        median = statistics.median(logs) if logs else math.nan
        out.append(dict(variant=name, reproduced=yes, measured=len(mine), median_abs_log_ratio=median))
    return sorted(out, key=lambda s: (-s["reproduced"], s["median_abs_log_ratio"]))


# --------------------------------------------------------------------------------------------
# running the study


@dataclass
class FidelityResults:
    """The study's runs and variants, and their claims table ``rows`` (:func:`claim_rows`)."""

    profile: str
    source_name: str
    runs: list[dict]  # every variant's records, with "variant"
    variants: dict  # name -> {"config": key, "store": folder, "w_pre_source_acc": ..., "fields": {...}}
    stores: list = field(default_factory=list)  # the sweep stores (when computed, not when read back)
    pending: list = field(default_factory=list)  # sweeps not started yet (another shard's runs missing)

    def __post_init__(self):
        self.rows = claim_rows(self.runs, self.w_pre_accs)

    @property
    def w_pre_accs(self) -> dict:
        return {k: v["w_pre_source_acc"] for k, v in self.variants.items()}


def run_fidelity(ctx: Context) -> FidelityResults:
    """The study: :data:`GRID`, then matched steps on the best of it (stand-in only: with EMNIST the
    target is MNIST's 54,000 images and the steps match already). Every sweep resumes from its store;
    under a shard, the matched-steps sweep waits until every run of the grid is stored."""
    profile, results, options = ctx.profile, ctx.results_dir, ctx.options
    exp = ctx.experiment()
    sizes = profile_sizes(SIZES, profile)
    base = sweep.profile_config(profile, **sizes)
    n_train = len(exp.target.train.y)
    n_target = base.target_train or n_train
    runs, variants, stores, pending = [], {}, [], []

    def run(variant: Variant) -> None:
        fields = variant.overrides(base.finetune_epochs, n_train)
        config, tensors, w_pre = sweep.pretrained(results, profile, exp, options, **sizes, **fields)
        name = oriented_name(exp.source_name, variant.orientation)
        store = sweep.run_sweep(results, config, tensors, w_pre, options, source_name=name)
        stores.append(store)
        runs.extend(dict(r, variant=variant.name) for r in store.records())
        variants[variant.name] = {
            "config": config.key(),
            "store": store.dir.name,
            "w_pre_source_acc": float(engine.evaluate(w_pre, *tensors["source_val"])["acc"][0]),
            "fields": dataclasses.asdict(variant),
            "finetune_epochs": config.finetune_epochs,
            "finetune_steps": config.finetune_epochs * math.ceil(n_target / config.batch_size),
        }

    for variant in GRID:
        run(variant)
    if n_train < PAPER_TARGET_TRAIN:
        if any(r not in s.done() for s in stores for r in s.planned):
            pending.append("the matched-steps sweep (it follows the grid's best variant)")
        else:
            best = scores(FidelityResults(profile, exp.source_name, runs, variants).rows)[0]["variant"]
            run(dataclasses.replace(next(v for v in GRID if v.name == best), matched_steps=True))
    return FidelityResults(profile, exp.source_name, runs, variants, stores, pending)


# --------------------------------------------------------------------------------------------
# the exported tables (written by fidelity_report.export_fidelity), read back

EXPORT_TABLES = ("runs.csv", "claims.csv", "scores.csv")
RUN_TEXT = (*exports.RUN_TEXT, "variant", "orientation", "mixed_layers")


def load_fidelity(folder) -> FidelityResults:
    """An exported study read back, every table checked against the sha256 in its ``meta.json``."""
    folder = Path(folder)
    meta = checked_meta(folder, EXPORT_TABLES, "export the study again (python -m mixout_theory fidelity)")
    runs = read_csv(folder / "runs.csv", text=RUN_TEXT)
    variants = {n: meta["variants"][n] for n in dict.fromkeys(r["variant"] for r in runs)}  # study's order
    return FidelityResults(meta["profile"], meta["source_name"], runs, variants)

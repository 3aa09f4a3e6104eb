"""The registry of studies (:data:`REGISTRY`, read by the command line, ``figures`` and ``shown``), and
what is done the same way for each: :func:`complete_export` (nothing is exported from part of a study)
and :func:`render_stored` (the ``figures`` command). A fifth study is one new module with its
:class:`~mixout_theory.experiment.study.Study` subclass, and one line in :data:`REGISTRY`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mixout_theory.experiment import ablations, exports, fidelity, report, sweep, theorem1, w_pre_spread
from mixout_theory.experiment.fidelity_report import export_fidelity
from mixout_theory.experiment.store import find_stores
from mixout_theory.experiment.study import Context, Study
from mixout_theory.figures import render_theory_figures

__all__ = ["REGISTRY", "complete_export", "render_stored", "add_figure_options"]
__all__ += ["Figure2", "Ablations", "Theorem1", "Fidelity"]


class Figure2(Study):
    """Figure 2's p-sweep (:mod:`~mixout_theory.experiment.sweep`), from one or several ``w_pre``."""

    name, command, export_name, committed = "figure2", "reproduce", "experiment", "figure2-paper-stand-in"
    help = "the EMNIST Digits -> MNIST experiment end to end: data, pretraining, sweep, figures"
    description = (
        "Run the whole pipeline for a profile (smoke: CI-sized, about a minute; quick: minutes; paper: the "
        "full protocol of the paper's Section 4). Every finished run is stored as it ends and skipped on a "
        "rerun, so an interrupted reproduction continues where it stopped."
    )
    chunk, sizes = sweep.CHUNK, sweep.SIZES

    def run(self, ctx: Context, pretrain_seeds: int = 1, **overrides) -> list:
        """One sweep store per ``w_pre`` (pretraining seeds ``0 .. pretrain_seeds - 1``; seed 0 is
        Figure 2's)."""
        stores = []
        for seed in range(pretrain_seeds):
            if pretrain_seeds > 1:
                print(f"w_pre {seed + 1} of {pretrain_seeds} (pretraining seed {seed})", flush=True)
                overrides["pretrain_seed"] = seed
            stores.append(sweep.run_experiment(ctx, **overrides))
        return stores

    def stores(self, result) -> list:
        return list(result)

    def source(self, result) -> str:
        return result[0].config.source

    def source_name(self, result) -> str:
        return result[0].records()[0]["source_name"]

    def export(self, result, folder: Path, ctx: Context, band: str = "std") -> list[Path]:
        store = result[0]
        paths = exports.export_experiment(store.records(), folder, sweep.store_context(store.dir), band)
        if len(result) > 1:
            paths += w_pre_spread.render_spreads(ctx.results_dir, folder.parent)
        return paths

    def load(self, folder: Path) -> list[dict]:
        return exports.load_figure2(folder)[0]

    def shown(self, loaded) -> tuple[str, str, str]:
        r = loaded[0]
        return r["profile"], r.get("source_name") or r["source"], r["config"]

    def summary(self, result, folder: Path, written) -> list[str]:
        lines = ["Figure 2 claims on these runs:"]
        lines += ["  " + line for line in report.claims_in_words(report.figure2_claims(result[0].records()))]
        lines.append(f"table:   {folder / 'table.md'} (also table.csv, runs.csv, meta.json)")
        lines.append(f"figures: {folder}/figure2.png and layer_distances.png (and PDF)")
        if len(result) > 1:
            spread = folder.parent / f"{w_pre_spread.STUDY}-{folder.name.split('-', 1)[1]}"
            lines += w_pre_spread.summary_lines(spread)
        return lines

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--emnist-from",
            metavar="PATH",
            help="a local EMNIST gzip.zip or folder holding the digits files (default: none)",
        )
        parser.add_argument(
            "--pretrain-search",
            action="store_true",
            help="the paper's w_pre selection: 5 seeds x epoch budgets 1..20, slow "
            "(default: one seed, 10 epochs)",
        )
        parser.add_argument(
            "--pretrain-seeds",
            type=_positive_int,
            default=1,
            metavar="N",
            help="run the sweep from N w_pre pretrained with seeds 0..N-1 (each cached) and report every "
            "number's spread across w_pre beside its spread across restarts (default: 1, seed 0)",
        )
        add_figure_options(parser)

    def run_kwargs(self, args, parser) -> dict:
        if args.pretrain_search and args.pretrain_seeds > 1:
            parser.error(
                "--pretrain-search picks one w_pre from its own 5 seeds; use it without --pretrain-seeds"
            )
        kw = {"pretrain_search": True} if args.pretrain_search else {}
        return {**kw, "pretrain_seeds": args.pretrain_seeds}

    def export_kwargs(self, args) -> dict:
        return {"band": args.band}


def add_figure_options(parser) -> None:
    """``--out`` (the figure folder) and ``--band`` (what surrounds the means), for ``figures`` and
    ``reproduce``."""
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="figure folder (default: $MIXOUT_FIGURES, else the checkout's figures/)",
    )
    parser.add_argument(
        "--band",
        default="std",
        choices=tuple(report.BANDS),
        help="band around the means over restarts: +-1 std as in the paper, or the t-based 95%% "
        "confidence interval of the mean (default: std)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


class Ablations(Study):
    """The GLUE-study questions on this setting (:mod:`~mixout_theory.experiment.ablations`)."""

    name, command, export_name, committed = "ablations", "ablations", "ablations", "ablations"
    help = "the GLUE-study questions at laptop scale: small data, a new output layer, the effective L2"
    description = (
        "Run the ablation studies from the sweep's cached w_pre (pretrained if missing) and render their "
        "figures and tables; every finished run is stored and skipped on a rerun."
    )
    chunk, sizes = ablations.CHUNK, ablations.SIZES
    export_files = "tables.md, meta.json, the CSV tables and figures"

    def run(self, ctx: Context, studies=ablations.STUDIES, **overrides):
        return ablations.run_ablations(ctx, tuple(studies), **overrides)

    def stores(self, result) -> list:
        return list(result.stores.values())

    def export(self, result, folder: Path, ctx: Context) -> list[Path]:
        return list(exports.export_ablations(result, folder).values())

    load = staticmethod(exports.load_ablations)

    def shown(self, loaded) -> tuple[str, str, str]:
        keys = ", ".join(f"{s} {loaded.config.key(s)}" for s in loaded.records)
        return loaded.config.profile, loaded.source_name, keys

    def summary(self, result, folder: Path, written) -> list[str]:
        lines = super().summary(result, folder, written)
        return [f"w_pre target test accuracy {result.w_pre_acc:.4f}", *lines]

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--studies",
            nargs="+",
            default=list(ablations.STUDIES),
            choices=ablations.STUDIES,
            help="which studies (default: all three)",
        )
        super().add_arguments(parser)

    def run_kwargs(self, args, parser) -> dict:
        return {"studies": tuple(args.studies)}


class Theorem1(Study):
    """Theorem 1 on the finetuned network (:mod:`~mixout_theory.experiment.theorem1`)."""

    name, command, export_name, committed = "theorem1", "theorem1", "theorem1", "theorem1-paper-stand-in"
    help = (
        "Theorem 1 on the finetuned MLP: Monte Carlo vs exact second-order penalty, curvature, Corollary 1.1"
    )
    description = (
        "Measure the mixout penalty of the finetuned network (Monte Carlo), its exact second-order value "
        "from Hessian-vector products, the curvature m_eff along w - w_pre and the extreme eigenvalues of "
        "the Hessian (Lanczos), at the finetuned weights, at w_pre, and along finetuning runs; the penalty "
        "split into second order, smooth higher order and ReLU kinks per layer and against the scale of the "
        "displacement; export the tables and figures. Every finished measurement is stored and skipped on a "
        "rerun."
    )
    sizes, noun = theorem1.SIZES, "measurements"
    export_files = (
        "network_penalty.csv, trajectory.csv, beyond_second_order.csv, scale_scan.csv, meta.json, figures"
    )

    load = staticmethod(theorem1.load_tables)

    def run(self, ctx: Context, **overrides):
        return theorem1.run_theorem1(ctx, **overrides)

    def stores(self, result) -> list:
        return [result.store]

    def source_name(self, result) -> str:
        return result.context["source_name"]

    def export(self, result, folder: Path, ctx: Context) -> list[Path]:
        return list(exports.export_theorem1(result, folder).values())

    def shown(self, loaded) -> tuple[str, str, str]:
        meta = loaded.meta
        return meta["config"]["profile"], meta["context"]["source_name"], meta["store_key"]


class Fidelity(Study):
    """Figure 2 under each reading of the protocol (:mod:`~mixout_theory.experiment.fidelity`)."""

    name, command, export_name, committed = "fidelity", "fidelity", "fidelity", "fidelity-paper-stand-in"
    help = "Figure 2 under each reading of the protocol, claim by claim beside the paper"
    description = (
        "Run the Figure 2 sweep for the source upright and transposed (as torchvision delivers EMNIST) x "
        "mixout / dropout on the hidden layers or on every Linear layer, then with the paper's 8,440 "
        "finetuning steps on the variant that reproduces the most claims; export every claim beside the "
        "paper's value (claims.csv, fidelity.md), the runs and the figures. Every sweep resumes from its "
        "store."
    )
    chunk, sizes = sweep.CHUNK, fidelity.SIZES

    load = staticmethod(fidelity.load_fidelity)

    def run(self, ctx: Context):
        return fidelity.run_fidelity(ctx)

    def stores(self, result) -> list:
        return result.stores

    def missing(self, result) -> list[str]:
        return super().missing(result) + result.pending

    def source(self, result) -> str:
        return result.runs[0]["source"]

    def export(self, result, folder: Path, ctx: Context) -> list[Path]:
        written = export_fidelity(result, folder)
        return [written["report"], *written["figures"]]

    def shown(self, loaded) -> tuple[str, str, str]:
        return loaded.profile, loaded.source_name, ", ".join(v["config"] for v in loaded.variants.values())

    def summary(self, result, folder: Path, written) -> list[str]:
        last = f"report: {written[0]} (claims.csv, scores.csv, runs.csv, meta.json and figures beside it)"
        return [
            f"  {s['variant']}: {s['reproduced']} of {s['measured']} claims reproduced "
            f"(median |log(ours / paper)| {s['median_abs_log_ratio']:.2f})"
            for s in fidelity.scores(result.rows)
        ] + [last]


#: every study, by name (the order of the command line's commands)
REGISTRY: dict[str, Study] = {s.name: s for s in (Figure2(), Ablations(), Theorem1(), Fidelity())}


def complete_export(study: Study, result, ctx: Context, folder: Path, **export_kwargs):
    """``(written, [])``: ``result`` exported into ``folder`` when every run of its list is stored;
    else ``([], missing run ids)`` and nothing is written (another shard has not finished)."""
    if missing := study.missing(result):
        return [], missing
    return study.export(result, Path(folder), ctx, **export_kwargs), []


def render_stored(out_dir, results=None, band: str = "std") -> list[Path]:
    """Every figure from stored results only (never trains): the theory figures; Figure 2 of the newest
    complete sweep store per profile and source (``out_dir/experiment-<profile>-<source>/``, ``band``
    around the means; a store with runs missing is not rendered) and the spread across ``w_pre`` where
    several were swept; the ablations and Theorem 1 of every profile and source stored; the fidelity
    study's report and figures from its own exported tables (``out_dir/fidelity-*/``)."""
    report.check_band(band)  # a bad band fails before anything is drawn
    out_dir = Path(out_dir)
    paths = render_theory_figures(out_dir)
    if results is None or not Path(results).exists():
        return paths
    seen = set()
    for store in find_stores(results):  # newest first
        kind = store.name.rsplit("-", 1)[0]  # profile-source
        if kind not in seen and sweep.is_figure2_store(store) and sweep.is_complete(store):
            seen.add(kind)
            paths += exports.render_experiment(store, out_dir, band)
    paths += w_pre_spread.render_spreads(results, out_dir)
    for name, module in (("ablations", ablations), ("theorem1", theorem1)):
        for res in module.load_stored(results):
            folder = out_dir / f"{name}-{res.config.profile}-{res.config.source}"
            paths += REGISTRY[name].export(res, folder, None)
    for meta in sorted(out_dir.glob("fidelity-*/meta.json")):  # from the study's own tables
        paths += REGISTRY["fidelity"].export(fidelity.load_fidelity(meta.parent), meta.parent, None)
    return paths

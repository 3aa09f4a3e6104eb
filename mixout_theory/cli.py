"""Command line: ``python -m mixout_theory <command>`` (also installed as ``mixout-theory``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
mixout-theory: check the theory of Mixout (Lee, Cho, Kang, ICLR 2020) and reproduce its
EMNIST Digits -> MNIST experiment.

commands:
  figures     re-render every figure (theory figures, and experiment figures from stored results)
  data        make MNIST, EMNIST Digits (when it can be had) and the stand-in source task ready
  reproduce   the whole pipeline: data, pretraining, the p-sweep, figures
"""


def _cmd_figures(args) -> int:
    from mixout_theory import figures, sweep

    out = sweep.project_dir("figures") if args.out is None else Path(args.out)
    results = sweep.project_dir("results") if args.results is None else Path(args.results)
    for path in figures.render_all(out, results=results):
        print(path)
    return 0


def _add_figures(sub) -> None:
    p = sub.add_parser(
        "figures",
        help="re-render every figure from stored results (theory figures are recomputed, in seconds)",
        description="Render the theory figures and, where stored sweep results exist, Figure 2 and "
        "the per-layer distance figure. Never trains anything.",
    )
    p.add_argument("--out", default=None, help="output folder (default: the checkout's figures/)")
    p.add_argument("--results", default=None, help="results store (default: the checkout's results/)")
    p.set_defaults(func=_cmd_figures)


def _add_data(sub) -> None:
    from mixout_theory import data

    data.add_cli(sub)


def _add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the EMNIST Digits -> MNIST experiment end to end: data, pretraining, sweep, figures",
        description="Run the whole pipeline for a profile (smoke: CI-sized, about a minute; quick: "
        "minutes; paper: the full protocol of the paper's Section 4). Every finished run is stored "
        "as it ends and skipped on a rerun, so an interrupted reproduction continues where it stopped.",
    )
    p.add_argument("--profile", default="paper", choices=["smoke", "quick", "paper"])
    p.add_argument("--source", default="auto", choices=["auto", "emnist", "stand-in"],
                   help="source task: EMNIST Digits (the paper), the stand-in, or EMNIST when it can be had")  # fmt: skip
    p.add_argument("--emnist-from", default=None, metavar="PATH",
                   help="a local EMNIST gzip.zip or folder holding the digits files")  # fmt: skip
    p.add_argument("--pretrain-search", action="store_true",
                   help="the paper's w_pre selection: 5 seeds x epoch budgets 1..20 (slow)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--chunk", type=int, default=17, help="runs trained at once per ensemble (default 17)")
    p.add_argument("--workers", type=int, default=None,
                   help="CPU cores each ensemble uses side by side (default: 2 on a CPU with 2+ cores)")  # fmt: skip
    p.add_argument("--data-root", default=None, help="data folder (default: the checkout's data/)")
    p.add_argument("--results", default=None, help="results store (default: the checkout's results/)")
    p.add_argument("--out", default=None, help="figure folder (default: the checkout's figures/)")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args) -> int:
    from mixout_theory import sweep

    overrides = {"pretrain_search": True} if args.pretrain_search else {}
    store = sweep.reproduce(
        args.profile, data_root=args.data_root, results=args.results, figures_dir=args.out,
        source=args.source, emnist_from=args.emnist_from, device=args.device, chunk=args.chunk,
        workers=args.workers, **overrides,
    )  # fmt: skip
    print(f"results: {store.dir}\nfigures: {args.out or sweep.project_dir('figures')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixout-theory",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    _add_figures(sub)
    _add_data(sub)
    _add_reproduce(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

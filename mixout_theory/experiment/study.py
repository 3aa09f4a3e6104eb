"""The one shape every study has: a :class:`Study`, run from a :class:`Context`, cut into shards.

A study (Figure 2's sweep, the ablations, Theorem 1 on the network, the fidelity study) says what is its
own: name and command, profile sizes, how it computes its runs from a :class:`Context`, exports and
reads back its tables and figures, and what its command prints. Its runs are stored as they finish
(:class:`~mixout_theory.experiment.store.RunStore`), in ensembles fixed by its whole run list
(:func:`~mixout_theory.experiment.store.pending_chunks`), so a
:class:`~mixout_theory.experiment.shard.Shard` computes the same numbers bit for bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.store import project_dir
from mixout_theory.profiles import PROFILES

__all__ = ["Context", "Study", "profile_sizes"]


@dataclass(frozen=True)
class Context:
    """What every study is run with: the profile, the folders, the source task, how to run.

    ``results`` / ``figures`` / ``data_root``: ``None`` means ``$MIXOUT_RESULTS`` / ``$MIXOUT_FIGURES`` /
    ``$MIXOUT_DATA``, else the checkout's folders. ``source``: ``"auto"``, ``"emnist"`` or ``"stand-in"``;
    ``emnist_from``: a local EMNIST copy; ``options``: device, workers, chunk, progress and shard.

    Example:
        >>> Context("smoke").results_dir.name
        'results'
    """

    profile: str = "paper"
    results: Path | None = None
    figures: Path | None = None
    data_root: Path | None = None
    source: str = "auto"
    emnist_from: Path | None = None
    options: RunOptions = field(default_factory=RunOptions)

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")

    @property
    def results_dir(self) -> Path:
        return project_dir("results") if self.results is None else Path(self.results)

    @property
    def figures_dir(self) -> Path:
        return project_dir("figures") if self.figures is None else Path(self.figures)

    def experiment(self):
        """The prepared data (:func:`mixout_theory.experiment.data.load_experiment`)."""
        from mixout_theory.experiment import data

        return data.load_experiment(root=self.data_root, source=self.source, emnist_from=self.emnist_from)

    def replace(self, **changes) -> Context:
        return dataclasses.replace(self, **changes)


def profile_sizes(sizes: dict, profile: str) -> dict:
    """A study's overrides of its paper-size defaults for ``profile`` (a copy; a bad profile is an error)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    return dict(sizes[profile])


class Study:
    """The interface every study implements (one subclass per study module, one line in the registry).

    Attributes: ``name`` (the registry key, also ``compare``'s), ``command`` (the CLI command),
    ``help`` / ``description`` (its CLI texts), ``export_name`` (its export folder is
    ``figures/<export_name>-<profile>-<source>/``), ``committed`` (its paper-profile export under
    ``docs/results/``), ``chunk`` (runs per ensemble unless ``--chunk`` says otherwise), ``sizes``
    (``{profile: overrides of the configuration's paper-size defaults}``), ``noun`` (what a run is) and
    ``export_files`` (what the summary says an export holds).
    """

    name = command = help = description = export_name = committed = export_files = ""
    chunk: int | None = None
    sizes: dict = {}
    noun: str = "runs"

    def run(self, ctx: Context, **overrides):
        """Compute every run not yet stored (this shard's share under ``ctx.options.shard``); the results."""
        raise NotImplementedError

    def stores(self, result) -> list:
        """The run stores ``result`` was computed into (each with ``planned``, its whole run list)."""
        raise NotImplementedError

    def export(self, result, folder: Path, ctx: Context) -> list[Path]:
        """Tables (with ``meta.json`` and its sha256), figures and reports of ``result`` into ``folder``."""
        raise NotImplementedError

    def load(self, folder: Path):
        """What a notebook shows, read back from an export (every table checked against its sha256)."""
        raise NotImplementedError

    def shown(self, loaded) -> tuple[str, str, str]:
        """``(profile, source name, configuration key)`` of what :meth:`load` returned."""
        raise NotImplementedError

    def source(self, result) -> str:
        """The source task's key (``emnist`` / ``stand-in``) of ``result`` (names its export folder)."""
        return result.config.source

    def source_name(self, result) -> str:
        """The source task's name as figures and summaries state it (the stand-in said to be one)."""
        return result.source_name

    def summary(self, result, folder: Path, written) -> list[str]:
        """What the command prints after its export (the claims, where the files are)."""
        files = f" ({self.export_files})" if self.export_files else ""
        return [f"wrote {len(written)} files to {folder}{files}"]

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--export",
            metavar="DIR",
            help=f"folder for the tables, figures and meta.json (default: the figure folder's "
            f"{self.export_name}-<profile>-<source>/)",
        )

    def run_kwargs(self, args, parser) -> dict:
        """The study's own options as keyword arguments of :meth:`run`."""
        return {}

    def export_kwargs(self, args) -> dict:
        """The study's own options as keyword arguments of :meth:`export`."""
        return {}

    def export_folder(self, ctx: Context, result, args=None) -> Path:
        """``--export``, else ``figures/<export_name>-<profile>-<source>/``."""
        if args is not None and getattr(args, "export", None) is not None:
            return Path(args.export)
        return ctx.figures_dir / f"{self.export_name}-{ctx.profile}-{self.source(result)}"

    def missing(self, result) -> list[str]:
        """The run ids of the whole run list not stored yet (other shards' share, or an interruption)."""
        stores = [(s, s.done()) for s in self.stores(result)]
        return [f"{s.dir.name}/{r}" for s, done in stores for r in (s.planned or ()) if r not in done]

    def committed_dir(self) -> Path:
        return project_dir("docs") / "results" / self.committed

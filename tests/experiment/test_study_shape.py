"""A fifth study costs one Study subclass and one registry line: the command line (its shared options
and --shard), the export that waits for every shard, and what a notebook shows come with it."""

import pytest

from mixout_theory import cli
from mixout_theory.experiment import shown, studies
from mixout_theory.experiment.store import RunStore, atomic_write, checked_meta, pending_chunks, write_meta
from mixout_theory.experiment.study import Context, Study


class Squares(Study):
    """A toy study: the squares of 0..9, four to an ensemble."""

    name = command = export_name = committed = "squares"
    help = description = "squares of 0..9 (default: all)"
    chunk, sizes = 4, {"smoke": {}, "quick": {}, "paper": {}}

    def run(self, ctx: Context, **overrides):
        store = RunStore(ctx.results_dir / "squares" / ctx.profile, {"n": 10})
        items = [(f"r{i}", i) for i in range(10)]
        store.planned = [r for r, _ in items]
        for part in pending_chunks(
            items, ctx.options.chunk_or(self.chunk), store.done(), shard=ctx.options.shard
        ):
            for run_id, i in part:
                store.write({"run_id": run_id, "value": i * i})
        return store

    def stores(self, result):
        return [result]

    def source(self, result):
        return "none"

    def source_name(self, result):
        return "no source task"

    def export(self, result, folder, ctx):
        folder.mkdir(parents=True, exist_ok=True)
        table = folder / "squares.csv"
        atomic_write(table, "".join(f"{r['run_id']},{r['value']}\n" for r in result.read()))
        return [table, write_meta(folder, {"study": "squares"}, ["squares.csv"])]

    def load(self, folder):
        checked_meta(folder, ["squares.csv"], "export again")
        return sorted(int(line.split(",")[1]) for line in (folder / "squares.csv").read_text().split())

    def shown(self, loaded):
        return "smoke", "no source task", "toy"


@pytest.fixture
def registered(monkeypatch, tmp_path):
    monkeypatch.setitem(studies.REGISTRY, "squares", Squares())
    monkeypatch.setattr("mixout_theory.experiment.compare.against_committed", lambda *a: ["compare: none"])
    return [
        "squares",
        "--profile",
        "smoke",
        "--results",
        str(tmp_path / "r"),
        "--export",
        str(tmp_path / "e"),
    ]


def test_a_fifth_study_gets_the_command_line_shards_and_the_export(registered, tmp_path, capsys):
    assert cli.main([*registered, "--shard", "2/2"]) == 0  # chunks 1 (r4..r7): 4 of 10
    out = capsys.readouterr().out
    assert "runs: 4 computed now, 0 already stored; 4 of 10 in " in out
    assert "not exported yet: 6 of the study's runs not stored" in out and not (tmp_path / "e").exists()
    assert cli.main([*registered, "--shard", "1/2"]) == 0  # chunks 0 and 2: the other 6, then the export
    out = capsys.readouterr().out
    assert "runs: 6 computed now, 4 already stored; 10 of 10 in " in out and "wrote 2 files to " in out
    assert Squares().load(tmp_path / "e") == [i * i for i in range(10)]


def test_a_fifth_study_is_shown_by_the_one_loader(registered, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXOUT_RESULTS", str(tmp_path / "r"))
    monkeypatch.setenv("MIXOUT_FIGURES", str(tmp_path / "f"))
    values, what = shown.results("squares", "smoke", recompute=True)
    assert values == [i * i for i in range(10)] and what.origin == shown.COMPUTED
    assert what.where == tmp_path / "f" / "squares-smoke-none"
    values, what = shown.results("squares", "smoke", recompute=False)  # the user's export, read back
    assert what.origin == shown.STORED and values[-1] == 81

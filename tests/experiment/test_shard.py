"""``--shard K/N``: shards cut a study's run list by whole ensembles, so N shards run at the same time
into one store give, bit for bit, the runs of one unsharded run; the export waits for every shard."""

import csv
import subprocess
import sys
import textwrap

import pytest
import torch

from mixout_theory.experiment import pretraining, studies, sweep
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.shard import Shard
from mixout_theory.experiment.store import pending_chunks

OPTIONS = RunOptions(device="cpu", chunk=3, workers=1, progress=False)
TIMING = {"chunk_seconds"}


def test_shards_partition_the_chunks_of_the_whole_list():
    items = [(f"r{i}",) for i in range(10)]
    whole = pending_chunks(items, 3, set())
    parts = [pending_chunks(items, 3, set(), shard=Shard(k, 3)) for k in (1, 2, 3)]
    assert sorted(map(str, sum(parts, []))) == sorted(map(str, whole))  # every chunk once, none twice
    assert parts[1] == [whole[1]] and parts[0] == [whole[0], whole[3]]
    done = {r for (r,) in whole[0]}
    assert pending_chunks(items, 3, done, shard=Shard(1, 3)) == [whole[3]]  # a resumed shard: the rest


@pytest.mark.parametrize("text, says", [("0/2", "1 <= K <= N"), ("3/2", "1 <= K <= N"), ("2", "K/N")])
def test_a_bad_shard_is_one_line(text, says):
    with pytest.raises(ValueError, match=says):
        Shard.parse(text)


def _rows(folder) -> list[dict]:
    with open(folder / "runs.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


SHARD_JOB = textwrap.dedent(
    """
    import sys, torch
    from mixout_theory.experiment import sweep
    from mixout_theory.experiment.engine import RunOptions
    from mixout_theory.experiment.shard import Shard
    job = torch.load(sys.argv[1], weights_only=False)
    options = RunOptions(device="cpu", chunk=3, workers=1, progress=False, shard=Shard.parse(sys.argv[2]))
    sweep.run_sweep(job["root"], job["config"], job["tensors"], job["w_pre"], options)
    """
)


def test_two_shards_at_the_same_time_equal_one_unsharded_run_bit_for_bit(small_sweep, tmp_path):
    exp, config = small_sweep()
    tensors = pretraining.experiment_tensors(exp, config)
    w_pre = pretraining.pretrain(tmp_path / "whole", config, tensors, OPTIONS)
    whole = sweep.run_sweep(tmp_path / "whole", config, tensors, w_pre, OPTIONS)
    assert len(whole.records()) == 10  # 4 chunks of 3, 3, 3, 1

    job = tmp_path / "job.pt"
    torch.save({"root": tmp_path / "shared", "config": config, "tensors": tensors, "w_pre": w_pre}, job)
    procs = [
        subprocess.Popen([sys.executable, "-c", SHARD_JOB, str(job), k], stderr=subprocess.PIPE, text=True)
        for k in ("1/2", "2/2")
    ]  # at the same time, into one store
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()
    shared = sweep.SweepStore(tmp_path / "shared", config)
    shared.export_csv()
    assert _rows(shared.dir) == _rows(whole.dir)  # every run, bit for bit (every column but the timing)
    writers = {r["chunk_members"] for r in shared.records()}
    assert writers == {3, 1}  # the same ensembles as the unsharded run


def test_the_export_waits_for_every_shard(tmp_path):
    """A study with runs missing is not exported: the generic path names what is missing instead."""
    study = studies.REGISTRY["figure2"]
    store = sweep.SweepStore(tmp_path, sweep.profile_config("smoke", ps=(0.0, 0.3), restarts=1))
    store.planned = [run_id for run_id, _, _ in sweep.sweep_members(store.config)]
    written, missing = studies.complete_export(study, [store], None, tmp_path / "out")
    assert written == [] and not (tmp_path / "out").exists()
    assert missing == [f"{store.dir.name}/{r}" for r in store.planned] and len(missing) == 3
    assert not sweep.is_complete(store.dir)

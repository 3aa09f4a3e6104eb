"""What is stored is never used silently when damaged, and a resume is bit for bit (issue: integrity).

A sweep on a small synthetic task is killed at several points -- between chunks, while a chunk's
records are being written, during pretraining -- and resumed; every column of ``runs.csv`` but the
timing must equal that of an uninterrupted sweep, bit for bit. Damaged or stray run records are
named, set aside and recomputed; altered weights are refused by name, and the store key holds the
content of the data and of ``w_pre``."""

import csv
import dataclasses
import json
import struct
import types

import pytest

from mixout_theory.experiment import engine, pretraining, sweep
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.store import REJECTED, IntegrityError, RejectedRecordWarning, tensors_sha256

OPTIONS = RunOptions(device="cpu", chunk=4, workers=1, progress=False)
TIMING = {"chunk_seconds"}


@pytest.fixture(scope="module")
def small(small_sweep):
    return small_sweep(source_train=None, eval_size=None, pretrain_epochs=2)


@pytest.fixture(scope="module")
def exp(small):
    return small[0]


@pytest.fixture(scope="module")
def config(small):
    return small[1]


@pytest.fixture(scope="module")
def reference(exp, config, tmp_path_factory):
    """The uninterrupted sweep: its runs.csv rows (timing dropped) and its w_pre."""
    root = tmp_path_factory.mktemp("reference")
    tensors = pretraining.experiment_tensors(exp, config)
    w_pre = pretraining.pretrain(root, config, tensors, OPTIONS)
    store = sweep.run_sweep(root, config, tensors, w_pre, OPTIONS)
    assert len(store.records()) == 2 * (1 + 2 * 2) == 10  # 3 chunks of 4, 4, 2
    return _rows(store), w_pre


def _rows(store) -> list[dict]:
    with open(store.dir / "runs.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _interrupt_on(monkeypatch, target, attr, after: int):
    """Make ``target.attr`` raise KeyboardInterrupt on its call number ``after + 1`` (a kill)."""
    real, calls = getattr(target, attr), {"n": 0}

    def killed(*a, **k):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(target, attr, killed)


@pytest.mark.parametrize(
    "where, target, attr, after",
    [
        ("between chunks", engine, "train_ensemble", 1),  # the second chunk never starts
        (
            "while a chunk's records are written",
            sweep.SweepStore,
            "write",
            6,
        ),  # 2 of the 2nd chunk's 4 stored
        ("in the last chunk", sweep.SweepStore, "write", 9),
    ],
)
def test_a_killed_sweep_resumes_bit_for_bit(
    where, target, attr, after, exp, config, reference, tmp_path, monkeypatch
):
    want, w_pre = reference
    tensors = pretraining.experiment_tensors(exp, config)
    with monkeypatch.context() as m:
        _interrupt_on(m, target, attr, after)
        with pytest.raises(KeyboardInterrupt):
            sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)
    partial = sweep.SweepStore(tmp_path, config)
    assert 0 < len(partial.done()) < 10, where
    before = {r["run_id"]: r for r in partial.records()}
    store = sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)
    assert store.written == 10 - len(before)
    assert all(before[r["run_id"]] == r for r in store.records() if r["run_id"] in before)  # untouched
    assert _rows(store) == want, where  # every column but the timing, bit for bit


def test_a_kill_during_pretraining_resumes_bit_for_bit(exp, config, reference, tmp_path, monkeypatch):
    want, w_pre = reference
    tensors = pretraining.experiment_tensors(exp, config)
    real = engine.evaluate

    def killed(*a, **k):  # pretraining evaluates at every epoch end: kill at the second
        killed.n += 1
        if killed.n == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    killed.n = 0
    with monkeypatch.context() as m:
        m.setattr(engine, "evaluate", killed)
        with pytest.raises(KeyboardInterrupt):
            pretraining.pretrain(tmp_path, config, tensors, OPTIONS)
    assert not list((tmp_path / "pretrain").glob("*.pt"))  # nothing half-written is cached
    again = pretraining.pretrain(tmp_path, config, tensors, OPTIONS)
    assert all(bool((again[k] == w_pre[k]).all()) for k in w_pre)
    assert _rows(sweep.run_sweep(tmp_path, config, tensors, again, OPTIONS)) == want


def test_damaged_and_stray_records_are_named_set_aside_and_recomputed(exp, config, reference, tmp_path):
    want, w_pre = reference
    tensors = pretraining.experiment_tensors(exp, config)
    store = sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)
    runs = store.runs
    truncated = runs / "mixout-p0.30-seed1.json"
    truncated.write_text(truncated.read_text()[:40])  # a record cut short
    schema = runs / "dropout-p0.60-seed0.json"
    rec = json.loads(schema.read_text())
    del rec["dist_mixed"]
    schema.write_text(json.dumps(rec))  # parses, but lacks a field of its schema
    (runs / "notes.json").write_text('{"note": "my own file"}')  # stray
    edited = runs / "none-p0.00-seed0.json"
    edited.write_text(
        edited.read_text().replace('"seed": 0', '"seed": 0, "dist_fc9": 1.0')
    )  # valid, but altered
    (runs / "README.txt").write_text("not a record")  # not *.json: ignored
    with pytest.warns(RejectedRecordWarning) as caught:
        records = sweep.load_records(store.dir)
    messages = " ".join(str(w.message) for w in caught)
    for path, why in (
        (truncated, "does not parse"),
        (schema, "lacks the fields ['dist_mixed']"),
        (runs / "notes.json", "lacks the fields"),
        (edited, "differs from the sha256 written into it"),
    ):
        assert str(path) in messages and why in messages
    assert len(records) == 7 and "its run will be computed again" in messages
    assert sorted(p.name.split(".json")[0] for p in (runs / REJECTED).iterdir()) == [
        "dropout-p0.60-seed0",
        "mixout-p0.30-seed1",
        "none-p0.00-seed0",
        "notes",
    ]
    assert (runs / "README.txt").exists() and all("record_sha256" not in r for r in records)
    again = sweep.run_sweep(
        tmp_path, config, tensors, w_pre, OPTIONS
    )  # recomputes the three runs, whole chunks
    assert again.written == 3 and _rows(again) == want


def test_altered_or_truncated_pretrained_weights_are_refused_naming_the_file(
    exp, config, reference, tmp_path
):
    _, w_pre = reference
    tensors = pretraining.experiment_tensors(exp, config)
    pretraining.pretrain(tmp_path, config, tensors, OPTIONS)
    path = next((tmp_path / "pretrain").glob("*.pt"))
    good = path.read_bytes()
    with open(path, "r+b") as f:  # 64 floats of fc1.weight (most of the file) set to 3.4e38
        f.seek(len(good) // 2)
        f.write(struct.pack("<f", 3.4e38) * 64)
    with pytest.raises(IntegrityError, match="weights were altered or damaged") as e:
        pretraining.pretrain(tmp_path, config, tensors, OPTIONS)
    assert str(path) in str(e.value) and "delete" in str(e.value)
    path.write_bytes(good[: len(good) // 3])  # truncated
    with pytest.raises(IntegrityError, match="differs from"):
        pretraining.pretrain(tmp_path, config, tensors, OPTIONS)
    # a cache from before checksums were recorded is not trusted: pretrained again, the same weights
    path.write_bytes(good)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    del meta["sha256"]
    side.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="no checksum recorded"):
        again = pretraining.pretrain(tmp_path, config, tensors, OPTIONS)
    assert all(bool((again[k] == w_pre[k]).all()) for k in w_pre) and "sha256" in json.loads(side.read_text())


def test_the_store_key_holds_the_content_of_w_pre_and_of_the_data(exp, config, reference):
    _, w_pre = reference
    a = dataclasses.replace(config, w_pre=tensors_sha256(w_pre)[:16])
    nudged = {k: v.clone() for k, v in w_pre.items()}
    nudged["fc1.weight"][0, 0] += 1e-6
    b = dataclasses.replace(config, w_pre=tensors_sha256(nudged)[:16])
    assert a.key() != b.key() and a.pretrain_key() == b.pretrain_key() == config.pretrain_key()
    other = types.SimpleNamespace(source_key=exp.source_key, info=dict(exp.info, cache_sha256="0" * 64))
    assert sweep.data_fingerprint(other) != sweep.data_fingerprint(exp)


def test_a_run_with_non_finite_numbers_is_stored_as_failed_in_strict_json(
    tmp_path, sweep_records, make_ablation_record
):
    from mixout_theory.experiment import report, store

    s = store.RunStore(tmp_path / "s", {})
    bad = dict(sweep_records[-1], dist_mixed=float("nan"), dist_all=float("inf"))
    with pytest.warns(UserWarning, match="non-finite values in dist_all, dist_mixed; stored as failed"):
        s.write(bad)
    text = (s.runs / f"{bad['run_id']}.json").read_text()

    def no_constants(name):
        raise AssertionError(f"{name} is not strict JSON")

    rec = json.loads(text, parse_constant=no_constants)
    assert rec["dist_mixed"] is None and rec["failed"] == "non-finite values in dist_all, dist_mixed"
    # the failed run is left out of the means and counted; the claims use complete restarts only
    records = sweep_records[:-1] + [rec]
    rows = {(r["method"], r["p"]): r for r in report.summarise(records)}
    failed_row = rows[rec["method"], rec["p"]]
    assert failed_row["n"] == 2 and failed_row["failed"] == 1
    assert report.figure2_claims(records)["mixed_distance_decreasing_every_restart"]
    # under the ablations' summary a failed run counts as failed, whatever its accuracy
    runs = [make_ablation_record(100, "mixout0.8", k, 0.9) for k in range(3)]
    runs[2].update(dist_mixed=None, failed="non-finite values in dist_mixed")
    (row,) = report.summarise_runs(runs, w_pre_acc=0.5)
    assert row["failed"] == 1 and row["dist_mixed"] == pytest.approx(1.5)  # the mean of the two finite ones


def test_stored_files_get_the_usual_permissions(exp, config, reference, tmp_path):
    """Records, weights and their checksums are readable by others as any file the user writes (0644
    under the usual umask 022), not private like a mkstemp file (0600)."""
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    _, w_pre = reference
    store = sweep.run_sweep(tmp_path, config, pretraining.experiment_tensors(exp, config), w_pre, OPTIONS)
    pretraining.pretrain(tmp_path, config, pretraining.experiment_tensors(exp, config), OPTIONS)
    files = [*store.runs.glob("*.json"), store.dir / "runs.csv", *(tmp_path / "pretrain").iterdir()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~umask}

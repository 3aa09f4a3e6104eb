"""Nothing wrong gets through, round two: each hole a second attack found, built as it was found.

Records without their checksum, records copied from another store, a NaN in a record, malformed side
files, an edited export ``meta.json``, a Theorem 1 resume that retrained a smaller ensemble, and the
command line's smaller holes. The store classes of every study that stores runs (the sweep, which the
fidelity study's variants are, the ablations, Theorem 1) go through the one reading path
(:func:`mixout_theory.experiment.store.read_runs`), so each class of hole is tested on each of them."""

import csv
import dataclasses
import json
import shutil

import pytest
import torch

from mixout_theory import cli
from mixout_theory.experiment import ablations, data, pretraining, studies, sweep, theorem1
from mixout_theory.experiment.engine import RunOptions, check_device
from mixout_theory.experiment.store import (
    REJECTED,
    IntegrityError,
    RejectedRecordWarning,
    checked_meta,
    project_dir,
    read_config,
)

OPTIONS = RunOptions(device="cpu", chunk=4, workers=1, progress=False)
TIMING = {"chunk_seconds"}


@pytest.fixture(scope="module")
def small(small_sweep):
    return small_sweep()


@pytest.fixture(scope="module")
def exp(small):
    return small[0]


@pytest.fixture(scope="module")
def config(small):
    return small[1]


@pytest.fixture(scope="module")
def reference(exp, config, tmp_path_factory):
    """An uninterrupted sweep: its runs.csv rows (timing dropped), its tensors and w_pre."""
    root = tmp_path_factory.mktemp("reference")
    tensors = pretraining.experiment_tensors(exp, config)
    w_pre = pretraining.pretrain(root, config, tensors, OPTIONS)
    return _rows(sweep.run_sweep(root, config, tensors, w_pre, OPTIONS)), tensors, w_pre


def _rows(store) -> list[dict]:
    with open(store.dir / "runs.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _stores(root, restarts: int = 1):
    """One store of each class a study stores its runs in, each holding two records written by it
    (``restarts`` changes every configuration: the stores of another run of the same studies)."""
    acfg = ablations.ablation_config("smoke", source="stand-in", restarts=restarts)
    t1 = theorem1.theorem1_config("smoke", source="stand-in", restart=restarts - 1)
    out = {
        "sweep": sweep.SweepStore(root, sweep.profile_config("smoke", ps=(0.0, 0.3), restarts=restarts)),
        "small_data": ablations.AblationStore(root, "small_data", acfg),
        "trajectory": ablations.AblationStore(root, "trajectory", acfg),
        "theorem1": theorem1.Theorem1Store(root, t1),
    }
    for s in out.values():
        for i in range(2):
            s.write({k: 0.5 for k in s.REQUIRED} | {"run_id": f"n300-mixout0.5-r{i}", "study": "x"})
    return out


STORES = ("sweep", "small_data", "trajectory", "theorem1")


# ---------------------------------------------------------------- 1. a record without its checksum


def test_an_edited_sweep_record_without_its_checksum_is_set_aside_and_recomputed(config, reference, tmp_path):
    want, tensors, w_pre = reference
    store = sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)
    path = store.runs / "dropout-p0.60-seed0.json"
    rec = json.loads(path.read_text())
    rec.update(source_val_acc=0.111, dist_mixed=123)
    del rec["record_sha256"]
    path.write_text(json.dumps(rec))
    with pytest.warns(RejectedRecordWarning, match="no record_sha256 or store_key"):
        again = sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)
    assert again.written == 1 and _rows(again) == want  # recomputed: 123 never reaches runs.csv
    assert [p.name.split(".json")[0] for p in (store.runs / REJECTED).iterdir()] == ["dropout-p0.60-seed0"]


@pytest.mark.parametrize("kind", STORES)
def test_a_record_without_its_checksum_is_refused_in_every_store(kind, tmp_path):
    store = _stores(tmp_path)[kind]
    path = store.runs / "n300-mixout0.5-r0.json"
    rec = json.loads(path.read_text())
    del rec["record_sha256"]
    path.write_text(json.dumps(rec))
    with pytest.warns(RejectedRecordWarning, match=str(path)):
        assert store.done() == {"n300-mixout0.5-r1"}


# ----------------------------------------------------- 2. a valid record from another store


def test_a_record_copied_from_the_figure2_sweep_into_a_fidelity_variant_is_refused(
    config, reference, tmp_path
):
    _, tensors, w_pre = reference
    figure2 = sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)
    variant = dataclasses.replace(config, orientation="transposed", mixed_layers="all")
    other = sweep.run_sweep(tmp_path, variant, tensors, w_pre, OPTIONS)
    name = "dropout-p0.60-seed0.json"
    shutil.copy(figure2.runs / name, other.runs / name)  # same run id, other configuration
    with pytest.warns(RejectedRecordWarning, match="written into another store"):
        records = sweep.load_records(other.dir)
    assert len(records) == 9 and all(r["orientation"] == "transposed" for r in records)


@pytest.mark.parametrize("kind", STORES)
def test_a_record_from_another_store_is_refused_in_every_store(kind, tmp_path):
    stores = _stores(tmp_path)
    here = stores[kind]
    sources = [_stores(tmp_path / "other", restarts=2)[kind]]  # the same study with another configuration
    if kind in ("small_data", "trajectory"):  # and the other ablation study of the same configuration
        sources.append(stores["trajectory" if kind == "small_data" else "small_data"])
    for source in sources:  # same run id, other store
        shutil.copy(source.runs / "n300-mixout0.5-r0.json", here.runs / "n300-mixout0.5-r0.json")
        with pytest.warns(RejectedRecordWarning, match="written into another store"):
            assert here.done() == {"n300-mixout0.5-r1"}


# ----------------------------------------------------------------- 4. one NaN in one record


@pytest.mark.parametrize("kind", STORES)
def test_a_nan_in_one_record_is_named_and_set_aside_in_every_store(kind, tmp_path):
    store = _stores(tmp_path)[kind]
    path = store.runs / "n300-mixout0.5-r0.json"
    text = path.read_text()
    field = store.REQUIRED[-1]
    path.write_text(text.replace(f'"{field}": 0.5', f'"{field}": NaN'))
    with pytest.warns(RejectedRecordWarning, match=f"{path}.*NaN"):
        assert store.done() == {"n300-mixout0.5-r1"}
    assert any(p.name.startswith("n300-mixout0.5-r0.json") for p in (store.runs / REJECTED).iterdir())


def test_figures_goes_on_when_a_sweep_record_holds_a_nan(config, reference, tmp_path, capsys):
    _, tensors, w_pre = reference
    store = sweep.run_sweep(tmp_path / "r", config, tensors, w_pre, OPTIONS)
    path = store.runs / "mixout-p0.30-seed1.json"
    path.write_text(path.read_text().replace('"dist_fc1": ', '"dist_fc1": NaN, "was": '))
    assert cli.main(["figures", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "f")]) == 0
    err = capsys.readouterr().err
    assert str(path) in err and "NaN" in err  # named, set aside; the store is incomplete, so not drawn


# ------------------------------------------------------------------- 5. malformed side files


def test_malformed_pretraining_side_files_are_one_line(config, reference, tmp_path):
    _, tensors, _ = reference
    pretraining.pretrain(tmp_path, config, tensors, OPTIONS)
    side = next((tmp_path / "pretrain").glob("*.json"))
    good = side.read_text()
    for text, says in (
        ("[1,2]", "holds a JSON list, not an object"),
        ("{not json", "unreadable"),
        (json.dumps(dict(json.loads(good), sha256=12345)), "is not a sha256 (garbled)"),
        (json.dumps(dict(json.loads(good), sha256="zz" * 32)), "is not a sha256 (garbled)"),
    ):
        side.write_text(text)
        with pytest.raises(IntegrityError, match=r"\(garbled\)|unreadable|not an object") as e:
            pretraining.pretrain(tmp_path, config, tensors, OPTIONS)
        assert str(side) in str(e.value) and says in str(e.value) and "\n" not in str(e.value)
        assert "altered" not in str(e.value)  # a garbled checksum is not reported as altered weights


def test_malformed_store_config_and_export_meta_are_one_line(tmp_path):
    store = _stores(tmp_path)["sweep"]
    for text, says in (("[1,2]", "not an object"), ("{x", "unreadable")):
        (store.dir / "config.json").write_text(text)
        with pytest.raises(IntegrityError, match=says) as e:
            read_config(store.dir)
        assert str(store.dir / "config.json") in str(e.value)
    folder = tmp_path / "export"
    shutil.copytree(project_dir("docs") / "results" / "figure2-paper-stand-in", folder)
    for text, says in (("[]", "not an object"), ("{x", "unreadable")):
        (folder / "meta.json").write_text(text)
        with pytest.raises(IntegrityError, match=says) as e:
            checked_meta(folder, ["runs.csv"], "export again")
        assert str(folder / "meta.json") in str(e.value)


def test_a_malformed_data_cache_side_file_means_an_unverified_cache(tmp_path):
    cache = tmp_path / "cache.pt"
    torch.save({"info_json": json.dumps({"n": 1})}, cache)
    side = cache.with_suffix(".json")
    side.write_text("[1,2]")  # not an object: no checksum recorded, so the cache is rebuilt
    assert data._verified_cache(cache) is None and data._read_cache_info(cache) == {"n": 1}


def test_an_empty_or_garbled_weights_checksum_is_one_line(tmp_path):
    store = _stores(tmp_path)["theorem1"]
    path = store.save_weights("mixout-p0.30-seed0", {"w": torch.ones(2)})
    for text in ("", "not-a-checksum  x.pt\n"):
        path.with_suffix(".sha256").write_text(text)
        with pytest.raises(IntegrityError, match="no valid sha256 recorded") as e:
            store.load_weights("mixout-p0.30-seed0")
        assert str(path.with_suffix(".sha256")) in str(e.value)


def test_a_store_with_a_malformed_config_stops_figures_with_one_line(tmp_path, capsys):
    store = _stores(tmp_path / "r")["sweep"]
    (store.dir / "config.json").write_text("[1,2]")
    assert cli.main(["figures", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(store.dir / "config.json") in err[0]


# ------------------------------------------------------------ 6. an export's own meta.json


@pytest.mark.parametrize("study", list(studies.REGISTRY))
def test_an_edited_export_meta_is_refused_for_every_study(study, tmp_path):
    s = studies.REGISTRY[study]
    folder = tmp_path / study
    shutil.copytree(s.committed_dir(), folder)
    s.load(folder)  # the committed export reads back
    meta = json.loads((folder / "meta.json").read_text())
    if study == "fidelity":
        for v in meta["variants"].values():
            v["w_pre_source_acc"] = 0.5  # the attack as found
    else:
        meta["env"] = {"edited": True}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    with pytest.raises(IntegrityError, match="differs from the meta_sha256"):
        s.load(folder)


# ------------------------------------------------------- 3. theorem1 resumes bit for bit


def test_theorem1_finetuned_weights_are_the_same_after_a_lost_weights_file(config, reference, tmp_path):
    _, tensors, w_pre = reference
    t1 = theorem1.theorem1_config("smoke", source="stand-in", sweep_key=config.key(), ps=(0.3, 0.6))
    store = theorem1.Theorem1Store(tmp_path, t1)
    first = theorem1._finetuned(store, t1, config, tensors, w_pre, OPTIONS)
    lost = store.weights / "mixout-p0.30-seed0.pt"
    lost.unlink()  # killed before it was written, or deleted as the error message advises
    lost.with_suffix(".sha256").unlink()
    again = theorem1._finetuned(store, t1, config, tensors, w_pre, OPTIONS)
    assert all(torch.equal(first[p][k], again[p][k]) for p in (0.3, 0.6) for k in first[p])


# --------------------------------------------------------------------- the smaller ones


def test_the_meta_device_is_refused():
    with pytest.raises(ValueError, match="device must be"):
        check_device("meta")


@pytest.mark.parametrize(
    "argv",
    [
        ["reproduce", "--profile", "smoke", "--out", "FILE"],
        ["reproduce", "--profile", "smoke", "--data-root", "FILE"],
        ["ablations", "--profile", "smoke", "--export", "FILE"],
        ["figures", "--results", "FILE"],
    ],
)
def test_a_folder_option_naming_a_file_exits_2_before_any_work(argv, tmp_path, capsys, monkeypatch):
    (tmp_path / "FILE").write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ablations, "run_ablations", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(sweep, "run_experiment", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and "FILE is a file, not a folder" in capsys.readouterr().err


def test_figures_says_when_the_results_folder_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(studies, "render_theory_figures", lambda out_dir, **kw: [])
    assert cli.main(["figures", "--results", str(tmp_path / "nope"), "--out", str(tmp_path / "f")]) == 0
    assert f"no results folder at {tmp_path / 'nope'}" in capsys.readouterr().err


def test_data_leaves_no_empty_folders_behind_when_it_fails(tmp_path, capsys, monkeypatch):
    def fails(root, **kw):
        (tmp_path / "nope" / "deeper").mkdir(parents=True)
        raise OSError("no route to the data")

    monkeypatch.setattr(data, "prepare", fails)
    assert cli.main(["data", "--data-root", str(tmp_path / "nope" / "deeper")]) == 1
    assert not (tmp_path / "nope").exists() and "no route to the data" in capsys.readouterr().err


# ------------------------------------------- what an adversarial tester found after the fixes above


def test_a_resume_or_shard_with_another_chunk_size_is_refused(config, reference, tmp_path):
    _, tensors, w_pre = reference
    store = sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)  # ensembles of 4
    (store.runs / "mixout-p0.30-seed1.json").unlink()
    other = RunOptions(device="cpu", chunk=5, workers=1, progress=False)
    with pytest.raises(
        ValueError, match="trained in ensembles of 4, this command asks for 5: rerun with --chunk 4"
    ):
        sweep.run_sweep(tmp_path, config, tensors, w_pre, other)
    assert sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS).written == 1


def test_an_edited_config_is_one_line_and_loses_no_run(config, reference, tmp_path):
    want, tensors, w_pre = reference
    store = sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)
    path = store.dir / "config.json"
    good = path.read_text()
    path.write_text(good.replace('"lr_finetune": 5e-05', '"lr_finetune": 0.5'))
    with pytest.raises(IntegrityError, match="lr_finetune differ from the configuration the folder is named"):
        sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)
    with pytest.raises(IntegrityError, match="does not hash to its folder's name"):
        sweep.load_records(store.dir)  # what figures and compare read
    assert len(list(store.runs.glob("*.json"))) == 10 and not (store.runs / REJECTED).exists()  # none lost
    path.write_text(good)
    assert _rows(sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)) == want


def test_a_number_too_large_for_a_float_is_refused_like_nan(tmp_path):
    store = _stores(tmp_path)["sweep"]
    path = store.runs / "n300-mixout0.5-r0.json"
    path.write_text(path.read_text().replace('"source_val_acc": 0.5', '"source_val_acc": 1e400'))
    with pytest.warns(RejectedRecordWarning, match="1e400 is not a finite number"):
        assert store.done() == {"n300-mixout0.5-r1"}
    folder = tmp_path / "export"
    shutil.copytree(project_dir("docs") / "results" / "figure2-paper-stand-in", folder)
    meta = folder / "meta.json"
    meta.write_text(meta.read_text().replace('"batch_size": 32', '"batch_size": 1e400'))
    with pytest.raises(IntegrityError, match="not a finite number"):
        checked_meta(folder, ["runs.csv"], "export again")
    meta.write_text("[" * 100_000)
    with pytest.raises(IntegrityError, match="nested too deeply"):
        checked_meta(folder, ["runs.csv"], "export again")


def test_a_record_outside_the_run_list_is_set_aside(config, reference, tmp_path):
    want, tensors, w_pre = reference
    store = sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)
    planted = json.loads((store.runs / "mixout-p0.30-seed0.json").read_text())
    planted.update(run_id="mixout-p0.30-seed9", seed=9, target_test_acc=0.1)
    store.write(planted)  # checksum and store key as the store writes them: only the run list tells
    with pytest.warns(RejectedRecordWarning, match="not in this store's run list"):
        assert len(sweep.load_records(store.dir)) == 10
    assert _rows(sweep.run_sweep(tmp_path, config, tensors, w_pre, OPTIONS)) == want


@pytest.mark.parametrize("how", ["--out", "MIXOUT_FIGURES", "--data-root"])
def test_a_folder_below_a_file_exits_2_before_any_work(how, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(sweep, "run_experiment", lambda *a, **k: pytest.fail("work started"))
    argv = ["reproduce", "--profile", "smoke", "--results", str(tmp_path / "r")]
    if how.startswith("--"):
        argv += [how, str(tmp_path / "afile" / "sub")]
    else:
        monkeypatch.setenv(how, str(tmp_path / "afile"))
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err


def test_a_shard_is_ascii_digits():
    from mixout_theory.experiment.shard import Shard

    with pytest.raises(ValueError, match="K/N"):
        Shard.parse("١/٢")
    with pytest.raises(ValueError, match="K/N"):
        Shard.parse(" 1/2")

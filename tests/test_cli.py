"""The one command line (mixout_theory.cli): its choices agree with the experiment's, bad run
options are refused before any work, every option says its default, and errors and Ctrl-C end in
one line with exit codes 1, 2 or 130."""

import argparse

import pytest
import torch

from mixout_theory import __version__, cli
from mixout_theory.experiment import ablations, data, fidelity, report
from mixout_theory.profiles import PROFILES


def test_cli_choices_are_the_experiments():
    assert cli.SOURCES == data.SOURCE_CHOICES
    parser = cli.build_parser()
    assert parser.parse_args(["figures", "--band", "ci95"]).band in report.BANDS
    assert tuple(parser.parse_args(["ablations"]).studies) == ablations.STUDIES
    for command in ("reproduce", "ablations", "theorem1", "fidelity"):  # one per study, shared options
        args = parser.parse_args([command])
        assert args.profile == "paper" and args.source == "auto" and args.device == "auto"
        assert args.workers is None and args.chunk is None and args.shard is None
    assert set(PROFILES) == {"smoke", "quick", "paper"}


@pytest.mark.parametrize("command", ["reproduce", "ablations", "theorem1", "fidelity"])
@pytest.mark.parametrize(
    "bad, says",
    [
        (["--workers", "0"], "must be a positive integer"),
        (["--chunk", "-3"], "must be a positive integer"),
        (["--shard", "3/2"], "shard must be K/N with 1 <= K <= N, got 3/2"),
        (["--shard", "half"], "shard must be K/N (e.g. 2/8), got 'half'"),
    ],
)
def test_bad_run_options_exit_2_before_any_work(command, bad, says, tmp_path, capsys, monkeypatch):
    from mixout_theory.experiment import sweep, theorem1

    def no_work(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("work started despite a bad option")

    monkeypatch.setattr(sweep, "run_experiment", no_work)
    monkeypatch.setattr(ablations, "run_ablations", no_work)
    monkeypatch.setattr(theorem1, "run_theorem1", no_work)
    monkeypatch.setattr(fidelity, "run_fidelity", no_work)
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--profile", "smoke", "--results", str(tmp_path), *bad])
    assert e.value.code == 2
    assert says in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _actions(parser):
    """Every (command, option) of the command line, sub-commands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {a.option_strings[0]}", a) for a in sub._actions if a.option_strings)


def test_every_option_states_its_default_and_is_spelled_one_way():
    spelled = {}
    for where, action in _actions(cli.build_parser()):
        if action.dest in ("help",):
            continue
        assert action.help and "default" in action.help, f"{where}: the help does not say the default"
        spelled.setdefault(action.dest, set()).add(tuple(action.option_strings))
    assert all(len(s) == 1 for s in spelled.values()), spelled  # one spelling per option across commands
    assert ("--data-root",) in spelled["data_root"]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mixout-theory {__version__}"


def _no_work(monkeypatch):
    from mixout_theory.experiment import sweep, theorem1

    def no_work(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("work started despite a bad option")

    monkeypatch.setattr(sweep, "run_experiment", no_work)
    monkeypatch.setattr(ablations, "run_ablations", no_work)
    monkeypatch.setattr(theorem1, "run_theorem1", no_work)


@pytest.mark.parametrize("device", ["foo", "cuda:99"])
def test_a_device_this_machine_lacks_exits_2_before_any_work(device, tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "--profile", "smoke", "--results", str(tmp_path), "--device", device])
    err = capsys.readouterr().err
    assert (
        e.value.code == 2
        and err.startswith("usage: mixout-theory reproduce")
        and "device" in err.splitlines()[-1]
    )


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, capsys, monkeypatch):
    from mixout_theory.experiment import store, sweep

    def interrupted(ctx, **kwargs):
        s = store.RunStore(ctx.results_dir / "smoke-stand-in-0123456789ab", {})
        for i in range(3):
            s.write({"run_id": f"r{i}"})
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_experiment", interrupted)
    assert cli.main(["reproduce", "--profile", "smoke", "--results", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"interrupted: 3 runs stored in {tmp_path / 'smoke-stand-in-0123456789ab'} (3 by this command); "
        "run the same command to resume"
    )
    monkeypatch.setattr(sweep, "run_experiment", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(["reproduce", "--profile", "smoke", "--results", str(tmp_path)]) == 130
    assert "no run finished in this command" in capsys.readouterr().err


def test_user_errors_are_one_line_and_exit_1_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    from mixout_theory.experiment import sweep

    def fails(exc):
        def run(*args, **kwargs):
            raise exc

        return run

    monkeypatch.setattr(
        sweep, "run_experiment", fails(FileNotFoundError("no such file: x.csv\n  (second line)"))
    )
    assert cli.main(["reproduce", "--profile", "smoke", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no such file: x.csv (second line)") and err.count("\n") == 1
    monkeypatch.setattr(sweep, "run_experiment", fails(AttributeError("a bug")))
    with pytest.raises(AttributeError):
        cli.main(["reproduce", "--profile", "smoke", "--results", str(tmp_path)])
    monkeypatch.setenv("MIXOUT_DEBUG", "1")
    monkeypatch.setattr(sweep, "run_experiment", fails(ValueError("shown with its traceback")))
    with pytest.raises(ValueError):
        cli.main(["reproduce", "--profile", "smoke", "--results", str(tmp_path)])

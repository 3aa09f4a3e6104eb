"""The one command line (mixout_theory.cli): its choices agree with the experiment's, and bad run
options are refused before any work."""

import pytest

from mixout_theory import cli
from mixout_theory.experiment import ablations, data
from mixout_theory.profiles import PROFILES


def test_cli_choices_are_the_experiments():
    assert cli.SOURCES == data.SOURCE_CHOICES
    assert cli.STUDIES == ablations.STUDIES
    for command in ("reproduce", "ablations", "theorem1"):
        args = cli.build_parser().parse_args([command])
        assert args.profile == "paper" and args.source == "auto" and args.device == "auto"
        assert args.workers is None and args.chunk is None
    assert set(PROFILES) == {"smoke", "quick", "paper"}


@pytest.mark.parametrize("command", ["reproduce", "ablations", "theorem1"])
@pytest.mark.parametrize("bad", [["--workers", "0"], ["--chunk", "-3"]])
def test_bad_run_options_exit_2_before_any_work(command, bad, tmp_path, capsys, monkeypatch):
    from mixout_theory.experiment import sweep, theorem1

    def no_work(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("work started despite a bad option")

    monkeypatch.setattr(sweep, "run_experiment", no_work)
    monkeypatch.setattr(ablations, "run_ablations", no_work)
    monkeypatch.setattr(theorem1, "run_theorem1", no_work)
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--profile", "smoke", "--results", str(tmp_path), *bad])
    assert e.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

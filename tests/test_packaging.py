"""The project's own files: environment.yml in step with pyproject.toml, the CI and the CLI."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name where they differ


def _req(line: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", line)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = dict(
        _req(r) for r in project["dependencies"] + sum((extras[e] for e in ("dev", "models", "docs")), [])
    )
    wanted = {CONDA_NAMES.get(k, k): v for k, v in wanted.items()}
    text = (ROOT / "environment.yml").read_text()
    assert "conda-forge" in text and "defaults" not in text.split("dependencies:")[0]
    conda = {}
    for line in text.split("dependencies:")[1].splitlines():
        m = re.match(r"\s*-\s+([^:\s][^:]*)$", line)
        if m and not m.group(1).startswith(("-e", ".")):
            name, spec = _req(m.group(1))
            conda[name] = spec
    conda.pop("python"), conda.pop("pip")
    assert conda == wanted
    assert re.search(r"pip:\s*\n\s*-\s+-e\s+\.", text), (
        "environment.yml must install the package itself with pip"
    )


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make reproduce" in readme
    make = (ROOT / "Makefile").read_text()
    assert "--nbval-lax" in make and "--nbval-current-env" in make


def test_cli_help_names_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "mixout_theory", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0
    for cmd in ("figures", "data", "reproduce", "ablations", "theorem1"):
        assert re.search(rf"^\s+{cmd}\s+\S", out.stdout, re.M), cmd
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mixout-theory"] == "mixout_theory.cli:main"


def test_cli_version_and_no_command():
    import mixout_theory
    from mixout_theory import _version

    out = subprocess.run(
        [sys.executable, "-m", "mixout_theory", "--version"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0 and out.stdout.strip() == f"mixout-theory {mixout_theory.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert mixout_theory.__version__ == _version.__version__ == project["version"]
    bare = subprocess.run([sys.executable, "-m", "mixout_theory"], capture_output=True, text=True, cwd=ROOT)
    assert bare.returncode == 2 and "ablations" in bare.stdout  # no command: the help, and a usage error


def test_packaged_files_exist():
    """Every file the package declares as data is there (the C++ source left with the operator)."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    for package, patterns in tool.get("package-data", {}).items():
        for pattern in patterns:
            assert list((ROOT / package.replace(".", "/")).glob(pattern)), (package, pattern)
    assert (
        not (ROOT / "mixout_theory" / "csrc").exists()
        and not (ROOT / "mixout_theory" / "kernels.py").exists()
    )


def test_citation_and_changelog_name_the_current_version():
    """CITATION.cff (validated against its schema with cffconvert --validate when it changes) and
    CHANGELOG.md (Keep a Changelog) both carry the package's version."""
    import mixout_theory

    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(mixout_theory.__version__)}$", citation, re.M)
    assert "preferred-citation:" in citation and "1909.11299" in citation
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{mixout_theory.__version__}] - " in changelog


def test_every_figure_the_readme_shows_is_committed():
    images = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert len(images) >= 4 and all((ROOT / path).is_file() for path in images), images

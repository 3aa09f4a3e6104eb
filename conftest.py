"""The test suite writes only into temporary folders.

``pytest tests notebooks`` points ``$MIXOUT_RESULTS`` and ``$MIXOUT_FIGURES`` (see
``mixout_theory.experiment.store.project_dir``) at one fresh temporary folder for the whole session,
before any test or notebook kernel starts (kernels inherit the environment), and removes it at the
end. So the checkout's ``results/`` and ``figures/`` are only ever written by the user's own commands,
and a test never reuses what a user computed. ``data/`` stays shared: it holds downloaded data.
"""

import os
import shutil
import tempfile

_SESSION_DIR: list[str] = []


def pytest_configure(config):
    tmp = tempfile.mkdtemp(prefix="mixout-tests-")
    _SESSION_DIR.append(tmp)
    for name in ("results", "figures"):
        os.environ[f"MIXOUT_{name.upper()}"] = os.path.join(tmp, name)


def pytest_unconfigure(config):
    while _SESSION_DIR:
        shutil.rmtree(_SESSION_DIR.pop(), ignore_errors=True)

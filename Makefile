# Two commands do all the set-up on a fresh clone (see README.md):
#   make reproduce   create .venv if missing, then run the main job
#   make test        create .venv if missing, then run every test, notebooks included
#   make test-portable   the fast library tests again on torch's baseline CPU kernels (CI runs both)
#   make lint        ruff format --check and ruff check (configured in pyproject.toml; CI runs it first)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= paper
# Empty: pip's default PyTorch (on Linux the CUDA build, several GB). A CPU-only machine can use
# PyTorch's CPU wheels instead: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: reproduce test test-portable lint figures docs env clean-env

# Too little disk is said up front, as a warning, rather than as pip's "No space left on device" later.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); [ -n "$(TORCH_INDEX)" ] || [ "$$free" -ge 8 ] || \
		echo "warning: $$free GiB free here; the default PyTorch (CUDA build) needs about 8 GiB to install (see README.md)" >&2
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet torch torchvision --index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[dev,models]'
	touch $@

env: $(VENV)/.installed

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev,models,docs]'
	touch $@

reproduce: env
	$(PY) -m mixout_theory reproduce --profile $(PROFILE)

figures: env
	$(PY) -m mixout_theory figures

test: env
	MIXOUT_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env -q

# ATEN_CPU_CAPABILITY=default: torch's baseline CPU kernels (no AVX2 / AVX-512, no FMA), which round
# differently from the vectorised ones, as another CPU would; a test that compares two implementations
# bit for bit fails here. Tests marked slow are left out (make test runs them).
test-portable: env
	ATEN_CPU_CAPABILITY=default MIXOUT_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest tests/library -m "not slow" -q

# The documentation site: README, notebooks executed now (quick profile, committed results), results
# pages, API reference; open docs/_build/html/index.html. A warning (a broken link, a failing cell) fails it.
docs: $(VENV)/.docs-installed
	rm -rf docs/_build/html
	$(VENV)/bin/sphinx-build -W --keep-going -q -c docs . docs/_build/html

lint: env
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

clean-env:
	rm -rf $(VENV)

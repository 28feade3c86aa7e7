# Two commands on a fresh machine: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BROWSER := tests/browser/node_modules/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# OpenMP threads (LightGBM, XGBoost) spin while waiting by default; on a busy 2-core machine
# that made LightGBM ~25x slower. Passive waiting costs little when the machine is idle. The
# package sets the same default itself when imported (src/alphafactory/__init__.py), so plain
# `dvc repro` gets it too; this line also covers tools run here that do not import it.
export OMP_WAIT_POLICY ?= passive

.PHONY: run test test-fast lint install repro lock bench clean report-check

run: install  ## create .venv, install pinned dependencies, run the whole pipeline
	dvc repro

test: install $(BROWSER)  ## run the whole test suite (unit tests and real `dvc repro` runs)
	$(PY) -m pytest -q

test-fast: install  ## the unit tests only: no `dvc repro`, no browser (under 3 minutes on 2 cores)
	$(PY) -m pytest -q -m "not slow"

lint: install  ## ruff check (rules in pyproject.toml [tool.ruff]); a few seconds
	$(PY) -m ruff check .

install: $(STAMP)

# Vega, Vega-Lite and Vega-Embed for the browser tests (tests/test_plots_render.py), at the pinned
# versions of tests/browser/package-lock.json; Chromium itself comes from apt (.ci/run).
$(BROWSER): tests/browser/package.json tests/browser/package-lock.json tests/browser/.npmrc
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

repro: install
	dvc repro

lock: install  ## re-pin requirements.lock from the current environment
	{ sed -n '1,3p' requirements.lock; $(PY) -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

report-check: install  ## render reports/index.html in headless Chromium -> reports/screenshot.png
	dvc repro report
	scripts/report_check.sh reports/index.html reports/screenshot.png

bench: install  ## timing tables of the benchmarks in bench/
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache

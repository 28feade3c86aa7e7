# Two commands on a fresh machine: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test install repro lock bench clean

run: install  ## create .venv, install pinned dependencies, run the whole pipeline
	dvc repro

test: install  ## run the whole test suite (unit tests and real `dvc repro` runs)
	$(PY) -m pytest -q

install: $(STAMP)

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

bench: install  ## timing tables of the benchmarks in bench/
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache

# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make quickstart   creates .venv, installs the pinned requirements, trains the tiny model on the embedded corpus
#   make test         creates/updates the same .venv with the test requirements and runs the whole suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/quickstart

.PHONY: quickstart test venv test-venv benchmark clean

$(VENV)/.stamp-base: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	@touch $@

venv: $(VENV)/.stamp-base
test-venv: $(VENV)/.stamp-test

quickstart: venv
	$(PY) -m gpt3_jax.main --gin_file=gin_configs/experiments/quickstart.gin --workdir=$(WORKDIR) --cpu_devices=auto

test: test-venv
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

benchmark: venv
	$(PY) experiments/benchmark.py --gin_file=gin_configs/models/small.gin --gin_bindings="ModelConfig.scan_layers = False" --seq_len=256 --batch_size=4 --steps=10

clean:
	rm -rf $(WORKDIR) .pytest_cache

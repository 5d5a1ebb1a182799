# The README's two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(PLUGINS))

.PHONY: demo test venv install-all bench lint clean services

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"

venv: $(PY)

demo: $(PY)
	$(PY) -m pip install -q -e "core[rich]"
	$(PY) examples/quickstart.py

install-all: $(PY)
	$(PY) -m pip install -q -e "core[rich,test,sql,dashboard]" $(foreach d,$(PLUGIN_DIRS),-e $(d)) -r requirements-test.txt
	bash scripts/chromium.sh

test: install-all
	bash scripts/services.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install-all
	bash scripts/services.sh
	$(PY) bench/run_all.py $(BENCH_ARGS)

lint: install-all
	$(PY) -m ruff check core plugins tests bench examples

clean:
	rm -rf $(VENV)

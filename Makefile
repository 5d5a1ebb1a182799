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

# Two phases: most tests in 3 worker processes (grouped by broker, see conftest.py), then
# the tests that restart shared servers or measure timing closely, alone. Exit code 5 is
# "nothing selected" (a PYTEST_ARGS path without exclusive tests).
TEST_WORKERS ?= 3
test: install-all
	bash scripts/services.sh
	status=0; \
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not exclusive" $(PYTEST_ARGS) || status=1; \
	$(PY) -m pytest -q -m exclusive $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 0 -o $$rc -eq 5 ] || status=1; \
	exit $$status

bench: install-all
	bash scripts/services.sh
	$(PY) bench/run_all.py $(BENCH_ARGS)

lint: install-all
	$(PY) -m ruff check core plugins tests bench examples

clean:
	rm -rf $(VENV)

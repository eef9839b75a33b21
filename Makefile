# The README's two commands: `make demo` runs the default job, `make test` the
# tests. Each one first creates or refreshes the virtual environment and
# installs Fashion-MNIST where apt is available.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# Two test processes (pytest-xdist) on the 2-core CPU, a module's tests in
# the same one: the suite is mostly single-threaded tracing and process
# start-up (three measured no faster: 16.4 minutes). Modules go out in
# collection order (tests/conftest.py puts the longest first), not
# xdist's "most tests first", so the short ones fill the end.
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: demo test setup data

demo: setup
	$(PY) main.py $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

setup: $(VENV)/.installed data

# Reinstalled whenever setup.py changes.
$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

data:
	bash scripts/install_data.sh

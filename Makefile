# The two commands of the README:  `make demo` (install + run the whole chain on a
# synthetic corpus) and `make test` (install + run the test suite). CI runs `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO ?= demo

.PHONY: install test demo bench clean

# torch first, pinned to the CPU wheel on local disk: an unpinned torch (asked for by
# any dependency) would pull a multi-GB CUDA build. Our own range admits 2.13.0.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q --timeout=900 tests

demo: install
	$(PY) workflows/demo.py --workdir $(DEMO)

bench: install
	for b in benchmarks/*.py; do case $$b in *expert_curve.py) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO) mlruns.db mlartifacts

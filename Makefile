# `make train` and `make test` set up .venv on first use (about 2 minutes), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test docs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

train: $(STAMP)
	$(PY) -m mnist_lit fit --config configs/cnn.yaml

test: $(STAMP)
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

# the five tutorials executed as notebooks, uncut, and written to docs/tutorials/<name>.md with their figures
# (all five: about 4 minutes on two cores, 2 of them the cnn; `make docs TUTORIALS=cnn` renders one)
docs: $(STAMP)
	$(PY) docs/tutorials/render.py $(TUTORIALS)

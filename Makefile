# `make train` and `make test` set up .venv on first use (about 2 minutes), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test docs notebook notebook-run

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

# the tutorials as Jupyter notebooks in notebooks/ (ignored by git; an existing one newer than its source is
# kept), then JupyterLab on them; a notebook's outputs go to notebooks/checkpoints/tutorials/<name>/.
# NOTEBOOK_LANG=zh: the Chinese text (en, zh or both); MNIST_LIT_TUTORIAL_EPOCHS=1: train 1 epoch, not the recipe's
NOTEBOOKS ?= notebooks
NOTEBOOK_LANG ?= en
NOTEBOOK_STAMP := $(VENV)/.notebook

$(NOTEBOOK_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[notebook]"
	touch $@

notebook: $(NOTEBOOK_STAMP)
	$(PY) docs/tutorials/render.py --notebooks $(NOTEBOOKS) --lang $(NOTEBOOK_LANG) $(TUTORIALS)
	$(VENV)/bin/jupyter lab $(NOTEBOOKS)

# the same notebooks executed in place, headless (outputs saved in each .ipynb and in notebooks/checkpoints/)
notebook-run: $(NOTEBOOK_STAMP)
	$(PY) docs/tutorials/render.py --notebooks $(NOTEBOOKS) --lang $(NOTEBOOK_LANG) --execute $(TUTORIALS)

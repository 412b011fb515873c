# `make train` sets up .venv on first use with what fit, classify and export need, then trains the cnn;
# `make test` adds the test extra (ONNX, ExecuTorch, the server, a browser driver, notebooks) and runs pytest.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
TRAIN_STAMP := $(VENV)/.installed-train
STAMP := $(VENV)/.installed

.PHONY: train test docs notebook notebook-run

# the light install: `pip install -e .` (no extras); a torch already in .venv (say, PyTorch's CPU build,
# installed first as the README shows) is kept, as pip keeps any release that meets the pin
$(TRAIN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test]"
	touch $@

train: $(TRAIN_STAMP)
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

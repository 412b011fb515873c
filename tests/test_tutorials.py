"""The five tutorials in docs/tutorials/ run as notebooks through a real Jupyter kernel (jupytext turns each
`py:percent` script into a notebook, nbclient executes it with ipykernel), their training cut to one epoch
by MNIST_LIT_TUTORIAL_EPOCHS: a cell that fails fails the test, with its traceback. `make docs` runs them
uncut and writes the pages; the pages are checked here against the scripts they were made from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

from mnist_lit import data

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "docs" / "tutorials"
NAMES = ("dense512", "cnn", "tiny_mlp", "fashion_mlp", "softmax_regression")
# seed 0, one epoch (softmax_regression: 938 of its 2000 steps), on this repo's 2-core machine: dense512
# 0.9567, cnn 0.9540, tiny_mlp 0.9248, fashion_mlp 0.8442, softmax_regression 0.9017; the floors only
# catch a recipe that stopped learning
FLOORS = {"fashion_mlp": 0.75}
FLOOR = 0.85


def read(name: str):
    return jupytext.read(TUTORIALS / f"{name}.py", fmt="py:percent")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_tutorial_runs_as_a_notebook(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if name == "fashion_mlp":
        try:
            data.locate("fashion_mnist", tmp_path, allow_download=False)
        except data.DataError:
            pytest.skip("Fashion-MNIST not on this machine (apt-get install dataset-fashion-mnist)")
    monkeypatch.setenv("MNIST_LIT_TUTORIAL_EPOCHS", "1")
    # the kernel is a new process: it must import this checkout's mnist_lit, as the test does
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    # OpenMP's threads spin while they wait; beside a kernel's own threads on 2 cores, one cnn epoch took
    # 38-164 s instead of 12-14 s. Passive waiting changes no result, only the time (see render.py)
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    notebook = read(name)
    # the kernel works in an empty folder, as a reader's would: what the tutorial writes lands there
    NotebookClient(notebook, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    stdout = "".join(o.text for cell in code for o in cell.outputs if o.get("name") == "stdout")
    assert len(re.findall(r"^Epoch \d+/1 - ", stdout, re.M)) == 1, stdout  # the cut took effect
    accuracy = float(re.search(r"^Test: loss: [\d.]+ - acc: ([\d.]+)$", stdout, re.M)[1])
    assert accuracy >= FLOORS.get(name, FLOOR)
    for cell in code:  # every figure a cell draws is on the page
        if re.search(r"^(Image\(|show_images\()", cell.source, re.M):
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source
    written = {p.name for p in (tmp_path / "checkpoints" / "tutorials" / name).iterdir()}
    assert {"curves.png", "confusion.png"} <= written
    if name == "tiny_mlp":  # saved, reloaded from the exported file, and the photo classified
        assert {"model.ckpt", "model.pt2", "photo.png"} <= written
        assert "same predictions: True" in stdout
        assert re.search(r"^photo, framed: \d \(", stdout, re.M), stdout


@pytest.mark.parametrize("name", NAMES)
def test_page_is_rendered_from_its_tutorial(name: str):
    """docs/tutorials/<name>.md holds every cell of <name>.py as it now reads (so a changed tutorial without
    `make docs` fails here), and every figure it links to is in the repo."""
    page = (TUTORIALS / f"{name}.md").read_text()
    for cell in read(name).cells:
        assert cell.source.replace(f"{REPO}/", "") in page, f"{name}.md is older than {name}.py: run make docs"
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
        assert (TUTORIALS / link).is_file(), link

"""The five tutorials in docs/tutorials/ run as notebooks through a real Jupyter kernel, by the route
`make notebook-run` takes (render.py --notebooks: jupytext turns each `py:percent` script into a notebook,
nbclient executes it with ipykernel), their training cut to one epoch by MNIST_LIT_TUTORIAL_EPOCHS: a cell
that fails fails the test, with its traceback. Each runs once; its English and Chinese markdown cells
share the code cells, so one run covers both languages. `make docs` runs them uncut and writes both
pages; the pages are checked here against the script they were made from.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import tempfile
from pathlib import Path

import nbformat
import pytest


REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "docs" / "tutorials"
_spec = importlib.util.spec_from_file_location("render", TUTORIALS / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)
NAMES = render.NAMES
# seed 0, one epoch (softmax_regression: 938 of its 2000 steps), on this repo's 2-core machine: dense512
# 0.9567, cnn 0.9540, tiny_mlp 0.9248, fashion_mlp 0.8442, softmax_regression 0.9017; the floors only
# catch a recipe that stopped learning
FLOORS = {"fashion_mlp": 0.75}
FLOOR = 0.85


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_tutorial_runs_as_a_notebook(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MNIST_LIT_TUTORIAL_EPOCHS", "1")
    # render.py points the kernel (a new process) at this checkout's mnist_lit and makes OpenMP's threads
    # wait passively; set here first, so that the test leaves the environment as it found it
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    # the notebook lands in an empty folder and its kernel works there, as a learner's would
    render.notebooks([name], tmp_path, "both", run=True)
    notebook = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"  # opens in Jupyter without asking

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    stdout = "".join(o.text for cell in code for o in cell.outputs if o.get("name") == "stdout")
    stderr = "".join(o.text for cell in code for o in cell.outputs if o.get("name") == "stderr")
    assert len(re.findall(r"^Epoch \d+/1 - ", stdout, re.M)) == 1, stdout  # the cut took effect
    accuracy = float(re.search(r"^Test: loss: [\d.]+ - acc: ([\d.]+)$", stdout, re.M)[1])
    assert accuracy >= FLOORS.get(name, FLOOR)
    # Chinese text in figures needs a CJK font; without one matplotlib warns and draws empty boxes
    assert "missing from font" not in stderr, "no CJK font for the figures: apt-get install fonts-noto-cjk"
    for cell in code:  # every figure a cell shows is on the page
        if re.search(r"^show\(", cell.source, re.M):
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source
        if "show_source(" in cell.source.split("def show_source")[0]:  # mnist_lit's code, shown as it is now
            assert any("```python" in o.get("data", {}).get("text/markdown", "") for o in cell.outputs), cell.source
    written = {p.name for p in (tmp_path / "checkpoints" / "tutorials" / name).iterdir()}
    assert {"curves_en.png", "curves_zh.png", "confusion_en.png", "confusion_zh.png", "logs"} <= written
    for cell in code:  # a figure drawn per language is shown once per language, each tagged for its page
        tags = [o.get("metadata", {}).get("lang") for o in cell.outputs if "image/png" in o.get("data", {})]
        assert sorted(filter(None, tags)) == sorted(render.LANGS * (len(tags) // 2)) or not any(tags), cell.source
    if name == "tiny_mlp":  # saved, reloaded, exported, the exported file reloaded, and the photo classified
        assert {"model.ckpt", "model.pt2", "photo_en.png", "photo_zh.png"} <= written
        assert "same predictions: True" in stdout
        assert re.search(r"^photo, framed: \d \(", stdout, re.M), stdout


@pytest.mark.parametrize("lang", render.LANGS)
@pytest.mark.parametrize("name", NAMES)
def test_page_is_rendered_from_its_tutorial(name: str, lang: str):
    """docs/tutorials/<name>.md (English) and zh/<name>.md (Chinese) hold every code cell of <name>.py as it
    now reads and every markdown cell of their language, none of the other's (so a changed tutorial
    without `make docs` fails here), and every figure they link to is in the repo."""
    pages = render.PAGES[lang]
    page = (pages / f"{name}.md").read_text()
    for cell in render.read(name).cells:
        text = cell.source.replace(f"{REPO}/", "")
        mine = cell.metadata.get("lang", lang) == lang
        if cell.cell_type == "markdown" and lang == "zh":
            text = render.join_lines(text)
        if cell.cell_type == "code" or mine:
            assert text in page, f"{pages.name}/{name}.md is older than {name}.py: run make docs"
        else:
            assert text not in page, f"{pages.name}/{name}.md holds text of another language"
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
        assert (pages / link).is_file(), link


def test_every_markdown_cell_has_its_translation():
    """Each tutorial's markdown cells come in pairs, English then Chinese, so neither page skips a step."""
    for name in NAMES:
        langs = [cell.metadata.get("lang") for cell in render.read(name).cells if cell.cell_type == "markdown"]
        assert langs == ["en", "zh"] * (len(langs) // 2), f"{name}.py: {langs}"


def test_chinese_lines_join_without_spaces():
    """A line break inside a Chinese paragraph would show as a space between characters."""
    text = "第一行\n第二行，`code`\n和 English\ntext\n\n- 列表\n- 项目\n```\n代码\n保留\n```"
    assert render.join_lines(text) == "第一行第二行，`code` 和 English text\n\n- 列表\n- 项目\n```\n代码\n保留\n```"


def test_notebooks_keep_one_language(tmp_path: Path):
    """`make notebook NOTEBOOK_LANG=zh` writes notebooks with the Chinese text and every code cell."""
    render.notebooks(["dense512"], tmp_path, "zh", run=False)
    notebook = json.loads((tmp_path / "dense512.ipynb").read_text())
    source = render.read("dense512")
    markdown = [c for c in notebook["cells"] if c["cell_type"] == "markdown"]
    assert markdown and all(c["metadata"]["lang"] == "zh" for c in markdown)
    assert sum(c["cell_type"] == "code" for c in notebook["cells"]) == sum(c.cell_type == "code" for c in source.cells)


def prose(page: str) -> str:
    """A rendered page without its code and outputs (the fenced blocks)."""
    return re.sub(r"^```.*?^```$", "", page, flags=re.M | re.S)


@pytest.mark.parametrize("lang", render.LANGS)
@pytest.mark.parametrize("name", NAMES)
def test_page_quotes_only_its_own_result(name: str, lang: str):
    """A test accuracy in a page's text (0.dddd) is the one its own `Test:` line printed, so that the text
    cannot drift from the run shown under it; and no page names a temporary folder of the run that made it."""
    page = (render.PAGES[lang] / f"{name}.md").read_text()
    accuracy = re.search(r"^Test: loss: [\d.]+ - acc: ([\d.]+)$", page, re.M)[1]
    for quoted in re.findall(r"(?<![\d.])0\.\d{4}(?!\d)", prose(page)):
        assert quoted == accuracy, f"{render.PAGES[lang].name}/{name}.md quotes {quoted}; its Test line says {accuracy}"
    assert "/tmp/" not in page and tempfile.gettempdir() not in page


@pytest.mark.parametrize("name", NAMES)
def test_pages_explain_the_lightning_they_show(name: str):
    """Each page, in each language, maps Keras' calls to Lightning's in a table and walks through the training
    step line by line, and the DataModule calls it makes by hand; every line it quotes (a list item that
    opens with code) is in the LightningModule's source as it is now or in the page's own code, so neither
    walk-through can describe a line that no longer exists."""
    from mnist_lit.models.base import Tutorial

    source = inspect.getsource(Tutorial)
    code = "\n".join(cell.source for cell in render.read(name).cells if cell.cell_type == "code")
    for lang in render.LANGS:
        text = "\n".join(cell.source for cell in render.read(name).cells
                         if cell.cell_type == "markdown" and cell.metadata.get("lang") == lang)
        for keras, lightning in (("model.compile", "configure_optimizers"), ("model.fit", ".fit(model"),
                                 ("History", "metrics.csv"), ("model.evaluate", "trainer.test"),
                                 ("model.predict", "trainer.predict")):
            row = rf"^\| `{re.escape(keras)}[^|]*\|.*{re.escape(lightning)}"  # | `keras...` | ...lightning... |
            assert re.search(row, text, re.M), (name, lang, keras)
        quoted = re.findall(r"^- `([^`]+)`", text, re.M)
        assert sum(line in source for line in quoted) >= 5, (name, lang, quoted)  # the training step's lines
        assert sum(line.startswith("dm.") for line in quoted) >= 3, (name, lang, quoted)  # the DataModule's calls
        for line in quoted:
            assert line in source or line in code, f"{name}.py ({lang}) quotes `{line}`: in neither Tutorial nor the page"
        assert "zero_grad" in text and "automatic_optimization" in text, (name, lang)


def test_a_page_shows_only_its_own_languages_figures():
    """An output tagged with a language (a figure with words in it, drawn once per language) goes to that
    language's page only; untagged outputs go to both."""
    cell = nbformat.v4.new_code_cell("draw()")
    cell.outputs = [nbformat.v4.new_output("display_data", {"image/png": "AA=="}, metadata=meta)
                    for meta in ({}, {"lang": "en"}, {"lang": "zh"})]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    figures = {(0, 0): "both.png", (0, 1): "en.png", (0, 2): "zh.png"}
    for lang, other in (("en", "zh"), ("zh", "en")):
        page = render.markdown(notebook, "x", lang, figures)
        assert "both.png" in page and f"{lang}.png" in page and f"{other}.png" not in page


def test_a_page_names_no_folder_of_the_kernel(tmp_path: Path):
    """A path under the folder the kernel ran in is shown relative to it (the folder is temporary)."""
    cell = nbformat.v4.new_code_cell("print(path)")
    text = f"wrote {tmp_path}/logs/metrics.csv in {tmp_path}\n"
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    page = render.markdown(nbformat.v4.new_notebook(cells=[cell]), "x", "en", {}, tmp_path)
    assert "wrote logs/metrics.csv in ." in page and str(tmp_path) not in page

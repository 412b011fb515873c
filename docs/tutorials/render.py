"""Execute each tutorial once as a notebook and write its two pages from that one run: `<name>.md` (English)
and `zh/<name>.md` (Chinese), with the real outputs and the figures in `<name>_files/`, which both pages
link to. `make docs` runs this; the pages are never edited by hand.

    python docs/tutorials/render.py [name ...]      # all five when no name is given
    python docs/tutorials/render.py --notebooks DIR [--lang en|zh|both] [--execute] [name ...]

One source per tutorial holds both languages. `<name>.py` is a jupytext `py:percent` script: its code
cells are written once, and each markdown cell is there twice, tagged in its cell header with the
language it is written in (`# %% [markdown] lang="en"` / `lang="zh"`; untagged cells go to both pages).
A page keeps the markdown cells of its language and every code cell with its outputs, except an output
tagged with the other language (`display(..., metadata={"lang": "zh"})`): a figure with words in it is
drawn once per language in the same run, and each page shows its own. Why this mechanism:
- the code cannot differ between the languages, because there is one copy of it, and both pages come from
  one execution, so their outputs and figures are the same run's (half the time of two runs, too);
- the two texts of a step sit next to each other in the source, so whoever changes one sees the other;
- it is plain jupytext (cell metadata), so the source still opens in Jupyter as one notebook, and
  `--notebooks` writes one notebook per language without the other's cells.
Translation catalogues (gettext, as Sphinx uses) were the other choice: they fit prose that changes
rarely and is translated by others later, not pages whose code and text change together in one commit.

Each tutorial runs in a Jupyter kernel (jupytext -> notebook, nbclient executes it) from an empty
temporary folder, so what it writes (checkpoints, figures) stays out of the repo. The kernel imports this
repo's mnist_lit, with OpenMP threads that wait passively (OMP_WAIT_POLICY, unless set). Paths inside the
repo, or in the kernel's temporary folder, are shown relative to it, so a page names no machine's folders.
MNIST_LIT_TUTORIAL_EPOCHS is removed for pages: they show the published recipe in full.

`--notebooks DIR` (`make notebook`) writes the tutorials as `.ipynb` files into DIR instead, in one
language or both; with `--execute` it also runs them there, so their outputs land in
`DIR/checkpoints/tutorials/<name>/` (MNIST_LIT_TUTORIAL_EPOCHS is kept: set it to 1 for a quick run).
"""

from __future__ import annotations

import argparse
import base64
import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NAMES = ("dense512", "cnn", "tiny_mlp", "fashion_mlp", "softmax_regression")  # the order a reader follows
LANGS = ("en", "zh")
PAGES = {"en": HERE, "zh": HERE / "zh"}  # where each language's pages go
BANNER = {"en": "<!-- Made by `make docs` from {name}.py (docs/tutorials/render.py): do not edit by hand. -->",
          "zh": "<!-- 由 `make docs` 从 ../{name}.py 生成（docs/tutorials/render.py），请勿手工修改。 -->"}
FIGURE = {"en": "output of the cell above", "zh": "上面代码的输出"}


def read(name: str) -> nbformat.NotebookNode:
    """The tutorial as a notebook with both languages' markdown cells, for a Python 3 kernel."""
    notebook = jupytext.read(HERE / f"{name}.py", fmt="py:percent")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def in_language(notebook: nbformat.NotebookNode, lang: str) -> nbformat.NotebookNode:
    """The notebook without the markdown cells written in another language (code cells are shared)."""
    kept = copy.deepcopy(notebook)
    kept.cells = [cell for cell in kept.cells if cell.metadata.get("lang", lang) == lang]
    return kept


def link_data(folder: Path) -> None:
    """The tutorials read ./data (MNISTDataModule's default, the shipped files from the repo root): a kernel
    working in `folder` gets a link to the repo's data/ there."""
    if not os.path.lexists(folder / "data"):  # (a link of an earlier run, even a broken one, stays)
        (folder / "data").symlink_to(REPO / "data", target_is_directory=True)


def execute(notebook: nbformat.NotebookNode, cwd: Path, timeout: int = 3600) -> nbformat.NotebookNode:
    """Run the notebook cell by cell in a fresh kernel working in `cwd`; a cell that fails raises
    nbclient's CellExecutionError with its traceback."""
    link_data(cwd)
    # the kernel talks over local sockets in a folder of its own: over TCP, ipykernel warns at every start
    # that the traffic is unencrypted
    with tempfile.TemporaryDirectory() as sockets:
        km = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
        try:
            NotebookClient(notebook, km=km, timeout=timeout, resources={"metadata": {"path": str(cwd)}}).execute()
        finally:  # a kernel manager given to nbclient is not shut down by it
            if km.has_kernel:
                km.shutdown_kernel()
    return notebook


def glue(left: str, right: str) -> str:
    """What joins two lines: nothing between Chinese characters or beside full-width punctuation, else a space
    (Chinese next to Latin letters or code keeps one)."""
    def cjk(c: str) -> bool:
        return ord(c) >= 0x2E80

    def punctuation(c: str) -> bool:
        return 0x3000 <= ord(c) <= 0x303F or 0xFF00 <= ord(c) <= 0xFFEF

    return "" if (cjk(left) and cjk(right)) or punctuation(left) or punctuation(right) else " "


def join_lines(text: str) -> str:
    """Chinese markdown with its soft line breaks removed: a browser shows a break inside a paragraph as a
    space, which is right between English words and wrong between Chinese characters. Breaks before a
    block (list item, heading, table row, fence, blank line) and lines inside fences are kept."""
    lines, fenced = [], False
    for line in text.split("\n"):
        block = not line.strip() or line.lstrip().startswith(("- ", "* ", "#", "|", "```", "1. ", "> "))
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if lines and lines[-1].strip() and not block and not fenced and not lines[-1].lstrip().startswith(("```", "#", "|")):
            lines[-1] += glue(lines[-1][-1], line.lstrip()[0]) + line.lstrip()
        else:
            lines.append(line)
    return "\n".join(lines)


def fence(text: str) -> str:
    return f"```\n{text.rstrip()}\n```"


def write_figures(notebook: nbformat.NotebookNode, name: str) -> dict[tuple[int, int], str]:
    """Every PNG the run drew, written once to `<name>_files/` (both pages link to it): (cell, output) ->
    file name. Cells are counted over the whole source, so a figure's name is the same in both pages."""
    files = HERE / f"{name}_files"
    shutil.rmtree(files, ignore_errors=True)
    written = {}
    for i, cell in enumerate(notebook.cells):
        for k, output in enumerate(cell.get("outputs", [])):
            if "image/png" in output.get("data", {}):
                files.mkdir(exist_ok=True)
                png = files / f"cell{i:02d}_{k}.png"
                png.write_bytes(base64.b64decode(output["data"]["image/png"]))
                written[i, k] = png.name
    return written


def markdown(notebook: nbformat.NotebookNode, name: str, lang: str, figures: dict[tuple[int, int], str],
             cwd: Path | None = None) -> str:
    """The executed notebook as a GitHub page in one language: its markdown cells as they are, code in
    fences, then its output (streams merged in order, figures as links, markdown shown as markdown; an
    output tagged with another language left out). Paths in the repo and in `cwd`, the folder the kernel
    worked in, are written relative to them."""
    folder = os.path.relpath(HERE / f"{name}_files", PAGES[lang])
    parts = [BANNER[lang].format(name=name)]
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            if cell.metadata.get("lang", lang) == lang:
                parts.append(join_lines(cell.source) if lang == "zh" else cell.source)
            continue
        parts.append(f"```python\n{cell.source}\n```")
        text = ""
        for k, output in enumerate(cell.get("outputs", [])):
            if output.get("metadata", {}).get("lang", lang) != lang:
                continue
            if output.output_type == "stream":
                text += output.text
                continue
            if text:
                parts.append(fence(text))
                text = ""
            data = output.get("data", {})
            if (i, k) in figures:
                parts.append(f"![{FIGURE[lang]}]({folder}/{figures[i, k]})")
            elif "text/markdown" in data:  # e.g. a class's source, shown as code
                parts.append(data["text/markdown"])
            elif "text/plain" in data:
                parts.append(fence(data["text/plain"]))
        if text:
            parts.append(fence(text))
    text = "\n\n".join(parts).replace(f"{REPO}/", "")
    if cwd is not None:  # the kernel's folder resolved too (a temporary folder may be reached by a link)
        for folder in {str(cwd), str(cwd.resolve())}:
            text = text.replace(f"{folder}/", "").replace(folder, ".")
    return text + "\n"


def kernel_environment() -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    # OpenMP's worker threads spin while they wait. In a Jupyter kernel on a 2-core machine, one cnn epoch
    # took 38-164 s that way, 12-14 s with passive waiting, whose numbers are the same to the last digit
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def render(names: list[str]) -> None:
    os.environ.pop("MNIST_LIT_TUTORIAL_EPOCHS", None)
    kernel_environment()
    PAGES["zh"].mkdir(exist_ok=True)
    for name in names:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"tutorial-{name}-") as cwd:
            notebook = execute(read(name), Path(cwd))
            figures = write_figures(notebook, name)
            for lang in LANGS:
                (PAGES[lang] / f"{name}.md").write_text(markdown(notebook, name, lang, figures, Path(cwd)))
        print(f"wrote docs/tutorials/{name}.md and docs/tutorials/zh/{name}.md "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


def notebooks(names: list[str], folder: Path, lang: str, run: bool) -> None:
    kernel_environment()
    folder.mkdir(parents=True, exist_ok=True)
    link_data(folder)
    for name in names:
        notebook = read(name) if lang == "both" else in_language(read(name), lang)
        path = folder / f"{name}.ipynb"
        if not run and path.exists() and path.stat().st_mtime >= (HERE / f"{name}.py").stat().st_mtime:
            print(f"kept {path}: newer than its source (delete it to start again)")
            continue
        if run:
            start = time.perf_counter()
            execute(notebook, folder.resolve())
            print(f"ran {path} ({time.perf_counter() - start:.0f} s; outputs in "
                  f"{folder / 'checkpoints' / 'tutorials' / name})", flush=True)
        nbformat.write(notebook, path)
        if not run:
            print(f"wrote {path}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"tutorials (default: all of {', '.join(NAMES)})")
    parser.add_argument("--notebooks", type=Path, help="write .ipynb files into this folder instead of pages")
    parser.add_argument("--lang", choices=(*LANGS, "both"), default="both", help="with --notebooks: its text")
    parser.add_argument("--execute", action="store_true", help="with --notebooks: run them there too")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        print(f"render.py: no tutorial {', '.join(unknown)}; the tutorials are {', '.join(NAMES)}", file=sys.stderr)
        return 2
    names = args.names or list(NAMES)
    if args.notebooks:
        notebooks(names, args.notebooks, args.lang, args.execute)
    else:
        render(names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

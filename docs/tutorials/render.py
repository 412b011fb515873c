"""Execute each tutorial as a notebook and write its page: `<name>.md` with the real outputs, its figures
in `<name>_files/`. `make docs` runs this; the pages are never edited by hand.

    python docs/tutorials/render.py [name ...]      # all five when no name is given

Each tutorial runs in a Jupyter kernel (jupytext -> notebook, nbclient executes it) from an empty
temporary folder, so what it writes (checkpoints, figures) stays out of the repo. The kernel imports this
repo's mnist_lit, with OpenMP threads that wait passively (OMP_WAIT_POLICY, unless set). Paths inside the
repo are shown relative to it, so a page does not name the machine that rendered it.
MNIST_LIT_TUTORIAL_EPOCHS is removed: pages show the published recipe in full.
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NAMES = ("dense512", "cnn", "tiny_mlp", "fashion_mlp", "softmax_regression")  # the order a reader follows


def execute(name: str, cwd: Path, timeout: int = 3600) -> nbformat.NotebookNode:
    """The tutorial as a notebook, executed cell by cell in a fresh kernel working in `cwd`; a cell that
    fails raises nbclient's CellExecutionError with its traceback."""
    notebook = jupytext.read(HERE / f"{name}.py", fmt="py:percent")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(notebook, kernel_name="python3", timeout=timeout,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def fence(text: str) -> str:
    return f"```\n{text.rstrip()}\n```"


def markdown(notebook: nbformat.NotebookNode, name: str) -> str:
    """The executed notebook as a GitHub page: markdown cells as they are, code in fences, then its
    output (streams merged in order, figures as PNG files beside the page)."""
    files = HERE / f"{name}_files"
    shutil.rmtree(files, ignore_errors=True)
    parts = [f"<!-- Made by `make docs` from {name}.py (docs/tutorials/render.py): do not edit by hand. -->"]
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            parts.append(cell.source)
            continue
        parts.append(f"```python\n{cell.source}\n```")
        text = ""
        for k, output in enumerate(cell.get("outputs", [])):
            if output.output_type == "stream":
                text += output.text
                continue
            if text:
                parts.append(fence(text))
                text = ""
            data = output.get("data", {})
            if "image/png" in data:
                files.mkdir(exist_ok=True)
                png = files / f"cell{i:02d}_{k}.png"
                png.write_bytes(base64.b64decode(data["image/png"]))
                parts.append(f"![output of the cell above]({files.name}/{png.name})")
            elif "text/plain" in data:
                parts.append(fence(data["text/plain"]))
        if text:
            parts.append(fence(text))
    return "\n\n".join(parts).replace(f"{REPO}/", "") + "\n"


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        print(f"render.py: no tutorial {', '.join(unknown)}; the tutorials are {', '.join(NAMES)}", file=sys.stderr)
        return 2
    os.environ.pop("MNIST_LIT_TUTORIAL_EPOCHS", None)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    # OpenMP's worker threads spin while they wait. In a Jupyter kernel on a 2-core machine, one cnn epoch
    # took 38-164 s that way, 12-14 s with passive waiting, whose numbers are the same to the last digit
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for name in names or NAMES:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"tutorial-{name}-") as cwd:
            page = markdown(execute(name, Path(cwd)), name)
        (HERE / f"{name}.md").write_text(page)
        print(f"wrote docs/tutorials/{name}.md ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

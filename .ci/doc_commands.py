"""The shell commands of the READMEs and of docs/serving.md, deploying.md and tuning.md, as one bash script
that runs them in order from the repository root (`.ci/readme` runs it in a fresh clone; `python3
.ci/doc_commands.py` prints it). Standard library only: it runs before .venv exists.

A command is an indented line of a code block that starts with a program a reader would type (`make`,
`.venv/bin/...`, `python`, `pip`, `curl`, ...); a line ending in `\\` goes on on the next. It is not run:
- when its line says so where it stands: `# not run by .ci/readme: REASON` (a placeholder such as HOST or
  photo.jpg, a server or machine this one lacks);
- when an earlier document already ran the same command (the Chinese README repeats the English one's, whose
  marks count for both; the CPU-only recipe ends in `make train` again);
- `make test ...` (.ci/run runs it) and `make notebook ...` (it opens JupyterLab and waits).
Shortened, so that the script takes minutes, not hours: every `mnist_lit fit` and `mnist_lit tune` gets
`--trainer.max_epochs 1` added at its end, and `tune` `--trials 2` where it asks for more (the last
flag wins). `make train` runs in full: the cnn it trains is what the other commands use.
`mnist_lit serve` starts in the background, is waited for (`GET /health`) and is stopped when its code
block ends, so the block's `curl` reaches it. The docs' commands run as their first line says, in the
shell `make train` leaves after `source .venv/bin/activate`; the READMEs' as typed in a fresh shell.
A README's Python example (the block with `import lightning as L`) is written to `first.py` and run with
`.venv/bin/python first.py`, as the README says.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

DOCS = ("README.md", "README.zh-CN.md", "docs/serving.md", "docs/deploying.md", "docs/tuning.md")
ACTIVATED = ("docs/",)  # their opening line: commands run after `source .venv/bin/activate`
PROGRAMS = ("make ", ".venv/bin/", "python ", "python3 ", "pip ", "curl ", "export ", "createuser ", "createdb ",
            "torchrun ", "sbatch ", "tensorboard ", "bash ", "source ", "MASTER_ADDR=", "MNIST_LIT_")
MARK = "# not run by .ci/readme:"
NOT_HERE = {"make test": ".ci/run runs it", "make notebook": "it opens JupyterLab and waits"}
EXAMPLE = re.compile(r"\n((?: {4}.*\n|\n)*? {4}import lightning as L\n(?: {4}.*\n|\n)*)")


class Command:
    def __init__(self, doc: str, block: int, text: str) -> None:
        self.doc, self.block, self.text = doc, block, text
        self.bare = text.split(MARK)[0].strip()
        self.bare = re.sub(r"\s+#[^'\"]*$", "", self.bare)  # a trailing comment (none holds a quote)
        program = next((p for p in NOT_HERE if self.bare == p or self.bare.startswith(p + " ")), None)
        self.reason = text.split(MARK, 1)[1].strip() if MARK in text else NOT_HERE.get(program)


def commands(doc: str, text: str) -> list[Command]:
    """`doc`'s command lines in order, each with the number of its code block (lines in a row)."""
    found: list[Command] = []
    block, previous_indented, pending = 0, False, ""
    for line in text.splitlines():
        indented = line.startswith("    ") and line.strip() != ""
        if indented and not previous_indented:
            block += 1
        previous_indented = indented or (previous_indented and not line.strip())
        stripped = line.strip()
        if pending:
            pending += "\n" + line
            if not stripped.endswith("\\"):
                found.append(Command(doc, block, pending))
                pending = ""
            continue
        if indented and stripped.startswith(PROGRAMS):
            if stripped.endswith("\\"):
                pending = stripped
            else:
                found.append(Command(doc, block, stripped))
    return found


def shortened(command: str) -> str:
    """A fit or tune cut to one epoch, and a tune to two trials (added flags: the last one given wins)."""
    if not re.search(r"\bmnist_lit (fit|tune)\b", command) or re.search(r"--(help|print_config)\b", command):
        return command
    extra = "" if command.endswith("--trainer.max_epochs 1") else " --trainer.max_epochs 1"
    trials = re.search(r"--trials[ =](\d+)", command)
    if " tune " in command + " " and trials and int(trials[1]) > 2:
        extra += " --trials 2"
    return command + extra


def server_port(command: str) -> str:
    port = re.search(r"--port[ =](\d+)", command)
    return port[1] if port else "8000"


def script(root: Path) -> str:
    out = ["set -euo pipefail", "say() { printf '%s\\n' \"$*\"; }"]
    seen: set[str] = set()
    examples: set[str] = set()
    for doc in DOCS:
        path = root / doc
        if not path.is_file():
            out.append(f"say 'readme: no {doc}'")
            continue
        text = path.read_text()
        out += ["", f"# ---- {doc}", "("]
        if doc.startswith(ACTIVATED):
            out.append("source .venv/bin/activate")
        block, server = 0, False
        for command in commands(doc, text):
            if command.block != block and server:
                out += ['kill "$server"; wait "$server" || true']
                server = False
            block = command.block
            if command.reason or command.bare in seen:
                why = command.reason or "run above"
                out.append(f"say {shlex.quote(f'readme: not run ({why}): {command.bare}')}")
                continue
            seen.add(command.bare)
            run = shortened(command.bare)
            out.append(f"say {shlex.quote(f'readme$ {run}')}")
            if re.search(r"\bmnist_lit serve\b", run):
                port = server_port(run)
                out += [f"{run} &", "server=$!",
                        f"for _ in $(seq 180); do curl -sf -o /dev/null http://127.0.0.1:{port}/health && break; "
                        'kill -0 "$server"; sleep 1; done']
                server = True
            else:
                out.append(run)
        if server:
            out.append('kill "$server"; wait "$server" || true')
        example = EXAMPLE.search(text)
        if example:
            code = "\n".join(line[4:] for line in example[1].splitlines()) + "\n"
            bare = re.sub(r"\s+#.*", "", code)
            if bare not in examples:
                examples.add(bare)
                out += [f"say 'readme$ .venv/bin/python first.py   ({doc}: its Python example)'",
                        f"cat > first.py <<'PY'\n{code}PY", ".venv/bin/python first.py"]
        out.append(")")
    out.append("say 'readme: every command ran'")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(script(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()))

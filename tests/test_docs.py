"""What the READMEs and docs/ tell a learner holds: every current figure they quote (the tutorials' test
accuracies, `make train`'s output, what the two first commands cost) is the one docs/figures.json records,
with the run, date and machine behind it; and the commands .ci/readme runs from them make a script that
runs, on files that exist. Dated measurements (docs/benchmarks.md, the "Measured" sections) are records of
their day and are not compared."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

FIGURES = json.loads((REPO / "docs" / "figures.json").read_text())
ACCURACY = FIGURES["tutorials"]["test_acc"]
READMES = ["README.md", "README.zh-CN.md"]
# every page a learner reads, but the measurements' own record
DOCS = READMES + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md") if p.name != "benchmarks.md")
PAGES = sorted(str(p.relative_to(REPO)) for p in (REPO / "docs" / "tutorials").glob("**/*.md"))
FIRST_SCREEN = re.compile(r"\A(.*?)^## ", re.S | re.M)  # what comes before a README's first section
CNN_LINE = re.compile(r"^\s*(Epoch \d+/10 - 469/469 - .*|Test: loss: .*)$", re.M)


def text(doc: str) -> str:
    return (REPO / doc).read_text()


def test_the_record_is_one_run():
    """The cnn's printed test line, kept for the README's sample, is the same run as the accuracies."""
    cnn = FIGURES["make_train_output"]["lines"]
    assert cnn[-1] == f"Test: loss: {FIGURES['tutorials']['test_loss']['cnn']:.4f} - acc: {ACCURACY['cnn']:.4f}"
    assert FIGURES["make_train_output"]["classify"].startswith("docs/tutorials/digit.png: ")
    for record in (FIGURES["tutorials"], FIGURES["make_train_output"], FIGURES["first_screen"], FIGURES["speed"]):
        assert record["date"] and record["machine"] and record["command"]


@pytest.mark.parametrize("doc", READMES)
def test_the_speed_table_quotes_the_recorded_busy_run(doc: str):
    """The Speed section's rows (`| dense512 | 5 | 8.46 / 7.37 (1.15) | ... | ×1.06 / ×1.05 |`): every cell of
    seconds and ratios is the recorded run's, for all five tutorials."""
    rows = {m[0]: [c.strip() for c in m[1].split("|")]
            for m in re.findall(r"^\| (\w+) \| [^|]+ \| ([\d.]+ / [\d.]+ \(.*×.*) \|$", text(doc), re.M)}
    assert rows == FIGURES["speed"]["rows"]


@pytest.mark.parametrize("doc", READMES)
def test_the_tutorials_table_quotes_the_recorded_accuracies(doc: str):
    """A row per tutorial (`| dense512 | ... | 0.9798 |`): its last cell is the recorded test accuracy."""
    quoted = dict(re.findall(r"^\| (\w+) \|.*\| (0\.\d{4}) \|$", text(doc), re.M))
    assert quoted == {name: f"{acc:.4f}" for name, acc in ACCURACY.items()}


@pytest.mark.parametrize("doc", DOCS)
def test_the_cnn_output_quoted_is_the_recorded_runs(doc: str):
    """`make train`'s lines, wherever a page shows them, are the recorded run's (a block with the cnn's
    `469/469` epochs; other `Test:` lines, such as import-keras's, are other runs)."""
    for block in re.split(r"\n(?!    |\t|\n)", text(doc)):
        if "469/469 - " in block and re.search(r"469/469 - [\d.]+s - loss", block):
            for line in CNN_LINE.findall(block):
                assert line.strip() in FIGURES["make_train_output"]["lines"], f"{doc}: {line.strip()}"


@pytest.mark.parametrize("doc", READMES)
def test_the_digit_is_classified_as_the_recorded_cnn_classified_it(doc: str):
    """The first thing to try, `classify ... docs/tutorials/digit.png`, prints what the recorded cnn printed."""
    printed = re.findall(r"`(docs/tutorials/digit\.png: \d \([\d.]+\))`", text(doc))
    assert printed == [FIGURES["make_train_output"]["classify"]]


def spoken(seconds: int) -> tuple[str, ...]:
    """A time as the READMEs write it: "2 min 17 s" or "137 s" (Chinese: "2 分 17 秒", "2 分钟 17 秒", "137 秒")."""
    minutes, rest = divmod(seconds, 60)
    whole = (f"{seconds} s", f"{seconds} 秒")
    return (f"{minutes} min {rest} s", f"{minutes} 分 {rest} 秒", f"{minutes} 分钟 {rest} 秒", *whole) if minutes else whole


@pytest.mark.parametrize("doc", READMES)
def test_the_first_screen_states_the_recorded_costs(doc: str):
    screen = FIRST_SCREEN.match(text(doc))[1]
    record = FIGURES["first_screen"]
    for gb in (record["make_train_venv_gb"], record["make_test_venv_gb"]):
        assert f"{gb} GB" in screen, f"{doc}: {gb} GB"
    for key in ("make_train_seconds", "make_train_training_seconds", "make_test_seconds", "make_test_pytest_seconds"):
        assert any(t in screen for t in spoken(record[key])), f"{doc}: {key} {spoken(record[key])[0]}"


# ---------------------------------------------------------------- the commands .ci/readme runs


def doc_commands():
    spec = importlib.util.spec_from_file_location("doc_commands", REPO / ".ci" / "doc_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_commands_make_a_bash_script():
    script = doc_commands().script(REPO)
    done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "\nmake train\n" in script and "curl -F image=@docs/tutorials/digit.png" in script


@pytest.mark.parametrize("doc", doc_commands().DOCS)
def test_the_docs_commands_name_files_that_exist(doc: str):
    """A file a command reads from the repository (a config, the digit to post) is there; what the commands
    write (checkpoints/, /tmp) and the placeholders they are marked for are not looked for."""
    module = doc_commands()
    if not (REPO / doc).is_file():
        pytest.skip(f"no {doc}")
    for command in module.commands(doc, text(doc)):
        if command.reason:
            continue
        for word in shlex.split(command.bare.replace("\\\n", " ")):
            path = word.rpartition("=@")[2] if "=@" in word else word
            if re.search(r"\.(png|jpe?g|ya?ml|py|sbatch)$", path) and not path.startswith(("checkpoints/", "/")):
                assert (REPO / path).is_file(), f"{doc}: {command.bare}: no {path}"


def anchor(heading: str) -> str:
    """A Markdown heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", READMES + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")) + PAGES)
def test_every_link_within_the_repository_reaches_its_file_and_heading(doc: str):
    # a link to a renamed heading opens the top of the page on GitHub, silently: the reader lands elsewhere
    broken = []
    prose = re.sub(r"```.*?```|`[^`\n]*`|^ {4}[^\n]*$", "", text(doc), flags=re.S | re.M)  # code is not links
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s):, mailto:
        path, _, fragment = target.partition("#")
        file = (REPO / doc).parent / path if path else REPO / doc
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(REPO) if file.is_relative_to(REPO) else file}")
        elif fragment and file.suffix == ".md":
            headings = {anchor(h) for h in re.findall(r"^#{1,6} (.*)$", file.read_text(encoding="utf-8"), re.M)}
            if fragment not in headings:
                broken.append(f"{target}: no heading #{fragment} in {file.relative_to(REPO)}")
    assert not broken, broken

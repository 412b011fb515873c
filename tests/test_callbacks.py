"""What a run prints (mnist_lit/callbacks.py): the live bar on a terminal, then Keras' epoch line."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import fit


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_bar_and_then_the_epoch_line(data_root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "2") == 0
    frames = [frame for frame in terminal.getvalue().split("\r") if "ms/step" in frame]
    for epoch in (1, 2):  # each epoch's bar starts drawn, with Keras' fields: steps, elapsed, ETA, ms per step
        assert f"Epoch {epoch}/2 - 0/20 [....." in "".join(frames)
    assert all(re.fullmatch(r"Epoch [12]/2 - \d+/20 \[[=.]+\] \d\d:\d\d ETA (\?|\d\d:\d\d) - \d+ms/step", f.strip())
               for f in frames), frames
    lines = terminal.getvalue().replace("\r", "\n").splitlines()  # after the bar, the line a log also gets
    assert [line[:20] for line in lines if re.match(r"Epoch \d/2 - 20/20 - [\d.]+s - loss: ", line)] == [
        "Epoch 1/2 - 20/20 - ", "Epoch 2/2 - 20/20 - "]

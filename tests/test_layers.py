"""The package's layers: each module imports only modules below it (pyproject.toml's import-linter contracts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def test_no_module_imports_one_above_it():
    """lint-imports reads every import statement, those inside functions too: an upward import anywhere in
    mnist_lit fails here, naming the chain of imports."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout

"""Writing files so that a killed process leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable


def write_bytes_from(path: str | Path, write: Callable[[BinaryIO], Any], keep_previous: Path | None = None) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it over `path`; with `keep_previous`,
    the file it replaces is renamed there first (renames only: no copy, nothing half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    write_bytes_from(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")

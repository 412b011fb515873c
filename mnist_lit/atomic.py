"""Writing files so that a killed process leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable

from mnist_lit.errors import UserError


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


def hold_folder(folder: str | Path) -> IO[str] | None:
    """An exclusive lock on `folder/.lock` for as long as the returned file stays open, or one line
    naming the process that holds it. The kernel drops the lock when its process ends, however it ends."""
    try:
        import fcntl
    except ImportError:  # not on Linux or macOS: no lock
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise UserError(f"{folder}: another fit is writing here (process {holder}); wait for it to end, or "
                        "give this one another --output_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f

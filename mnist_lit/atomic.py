"""Writing files so that a killed process leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable

from mnist_lit.errors import UserError


def write_bytes_from(path: str | Path, write: Callable[[BinaryIO], Any], keep_previous: Path | None = None) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it over `path`; with `keep_previous`,
    the file it replaces is renamed there first (renames only: no copy, nothing half-written).

    A full disk or a file-size limit ends in one line naming the file, and the old file stays as it was.
    """
    path = Path(path)
    # the whole file in memory first (a few MB at most): a failed write is then our own OSError with its
    # reason, where torch.save into a file reports only "unexpected pos"
    buffer = io.BytesIO()
    write(buffer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old = keep_previous.with_name(f".{keep_previous.name}.{os.getpid()}.tmp") if keep_previous else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
        if old is not None and path.exists():
            # a second name for the old file, moved to keep_previous: `path` itself is never missing, so a
            # kill between the two renames still leaves the old file at `path`
            try:
                os.link(path, old)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, old)
            os.replace(old, keep_previous)
        os.replace(tmp, path)
    except OSError as e:
        kept = "the previous one is unchanged" if path.exists() else "nothing was written"
        raise UserError(f"{path}: could not be written ({e.strerror or e}); {kept}") from None
    finally:
        tmp.unlink(missing_ok=True)
        if old is not None:
            old.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    write_bytes_from(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def hold_folder(folder: str | Path) -> IO[str] | None:
    """An exclusive lock on `folder/.lock` for as long as the returned file stays open, or one line
    naming the process that holds it. The kernel drops the lock when its process ends, however it ends.
    Temporary files that a killed fit left behind are removed once the lock is held."""
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
    for stale in folder.glob(".*.tmp"):  # half-written by a fit that was killed: no one else writes here now
        stale.unlink(missing_ok=True)
    return f

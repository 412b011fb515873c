"""glibc keeps a training step's large freed buffers for the next step, unless the user opts out."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO

# In a fresh interpreter: tune() (or not), then ask where glibc puts an 8 MiB block. Left to its defaults,
# glibc maps a block that large with mmap of its own, above the heap; tuned, the heap serves it.
PROBE = textwrap.dedent("""
    import ctypes, os, sys
    from mnist_lit import memory
    tuned = memory.tune()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_long]
    block = libc.malloc(8 << 20)
    print(tuned, block < libc.sbrk(0))
""")


def probe(**env: str) -> str:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "MNIST_LIT_MALLOC"))}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**environment, **env},
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_freed_blocks_come_from_the_heap_unless_opted_out():
    assert probe() == "True True"
    assert probe(MNIST_LIT_MALLOC="system") == "False False"
    assert probe(MALLOC_MMAP_THRESHOLD_="131072") == "False False"  # the user's own setting wins


def test_python_m_mnist_lit_tunes_before_anything_else(monkeypatch: pytest.MonkeyPatch):
    from mnist_lit import __main__, memory

    calls = []
    monkeypatch.setattr(memory, "tune", lambda: calls.append(1) or True)
    assert __main__.main(["report", str(REPO / "no-such-folder")]) == 1
    assert calls == [1]

"""glibc's allocator, told to keep the large buffers a training step frees for the next step.

By default glibc serves every allocation over a threshold (128 KiB at first, raised as large blocks are
freed, up to 32 MiB) with its own mmap, and gives it back to the system when it is freed; it also trims
the heap's top whenever more than 128 KiB is free there. A cnn step allocates and frees activations and
gradients of several MiB each, so every step maps fresh pages and takes a page fault on each first touch,
a large share of a cnn step's time on the CPU (docs/benchmarks.md#speed). With the thresholds raised to 32 MiB
(mmap) and 256 MiB (trim) the freed blocks stay in the heap and the next step reuses them.

`python -m mnist_lit` calls `tune()` first thing. Opt out with `MNIST_LIT_MALLOC=system`; settings of
your own (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, or another allocator in `LD_PRELOAD`) are
left as they are. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

OPT_OUT = "MNIST_LIT_MALLOC"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its adaptive threshold
TRIM_THRESHOLD = 256 << 20
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def tune() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when they were set."""
    if os.environ.get(OPT_OUT, "").lower() == "system" or any(v in os.environ for v in USER_SETTINGS):
        return False
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        libc.gnu_get_libc_version  # glibc only: mallopt's numbers are glibc's
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

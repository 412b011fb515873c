"""`python -m mnist_lit fit` in a child process, timed and watched for memory: shared by the benchmarks
that run whole fits (suite, adam_seeds, allocator, train_speed).

It imports nothing heavy, so a script can import it before it sets up torch or Lightning its own way.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import REPO

CONFIGS = ["dense512", "cnn", "tiny_mlp", "fashion_mlp", "softmax_regression"]


def vm_hwm_mb(pid: int) -> float:
    """A process's peak RSS so far, from its own VmHWM (not ru_maxrss: on Linux a child's maxrss starts
    from the forking parent's high-water mark, so it would count this benchmark's own memory)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0  # a zombie has no memory lines


def run_fit(cmd: list[str], out: Path, env: dict[str, str] | None = None) -> tuple[dict, float, float]:
    """Run a command that fits into `out`: its metrics.json, wall seconds and peak RSS in MB (polled every
    50 ms), or exit with its error line."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:
            try:
                peak = max(peak, vm_hwm_mb(proc.pid))
            except (FileNotFoundError, ProcessLookupError):
                pass
            time.sleep(0.05)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:  # the CLI's error line (a bad flag's comes before its details), else the last
        lines = stderr.strip().splitlines()
        reason = next((line for line in lines if "error:" in line), lines[-1] if lines else "no message")
        raise SystemExit(f"{' '.join(cmd)} failed: {reason.strip()}")
    return json.loads((out / "metrics.json").read_text()), wall, peak

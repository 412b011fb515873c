"""The readers of user files under fuzzing (tests/fuzz.py): every input ends in a result or the one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzz
from tests.helpers import REPO

pytestmark = pytest.mark.filterwarnings("ignore")  # the readers' warnings (Pillow's, torch's) are not what is tested


@pytest.mark.parametrize("reader", fuzz.READERS)
def test_every_seed_is_read(reader: str):
    """The seeds are valid files, so the fuzzing starts from inputs that reach the end of each reader."""
    assert [fuzz.run_one(reader, seed) for seed in fuzz.seeds(reader)] == [None] * len(fuzz.seeds(reader))


# what each bomb (tests/fuzz.py `bombs`) is refused with, before the megabytes to terabytes it declares are read
BOMBS = {"gzip-inflates-past-its-header": "decompresses to more than the 3936 bytes its header declares",
         "labels-declare-100M": "5 images but t10k-labels-idx1-ubyte.gz has 100000000 labels",
         "png-declares-10-gigapixels": "image is too large",
         "hdf5-kernel-declares-3GB": "shape (784, 1000000) takes the file's weights over 64 MB",
         "hdf5-kernel-declares-7TB": "shape (1000000, 1000000) takes the file's weights over 64 MB",
         "zip-config-inflates-to-64MB": "config.json inflates to 67,110,978 bytes",
         "config-nested-100000-deep": "config.json is nested too deeply",
         "pickle-calls-os-system": "refused: a pickle that would run code when loaded (posix.system)",
         # found by atheris: HDF5 2.0.0 loops inside C code on these (the first: its model_config attribute)
         "atheris-hdf5-attribute-read-loops": "reading it took over 3 s",
         "atheris-hdf5-read-loops-2": "reading it took over 3 s",
         "atheris-hdf5-read-loops-3": "reading it took over 3 s"}


@pytest.mark.parametrize("reader", fuzz.READERS)
def test_kept_findings_and_bombs_end_in_one_line(reader: str):
    """Each input a fuzzer found (a traceback or a message of many lines before the fix) and each bomb:
    refused in one line naming the file."""
    kept = fuzz.regressions(reader)
    assert kept
    for path in kept:
        message = fuzz.run_one(reader, path.read_bytes())
        assert message, f"{path.name} was read as a valid file"
        assert BOMBS.get(path.stem, "") in message, (path.name, message)
    assert {p.stem for p in kept} >= {Path(f).stem for f, (r, _) in fuzz.bombs().items() if r == reader}


def fuzzed(reader: str, examples: int):
    """A test of `examples` mutated files for one reader, the same ones on every run (derandomize)."""
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.deferred(lambda: fuzz.inputs(reader)))
    def test(data: bytes):
        fuzz.run_one(reader, data)  # raises Finding on a traceback, a message of two lines, a hang

    return test


# about 5 seconds each on one core
test_idx_files_fuzzed = fuzzed("idx", 300)
test_images_fuzzed = fuzzed("image", 600)
test_keras_files_fuzzed = fuzzed("keras", 100)  # (each read forks a process of its own: ~0.15 s)
test_checkpoints_fuzzed = fuzzed("checkpoint", 200)


@pytest.mark.slow
def test_a_fuzzing_process_stays_under_its_memory_bound():
    """Every reader in a process of its own: seeds, kept findings and bombs, then fresh inputs for a few
    seconds each; nothing found, and the process's peak RSS under fuzz.RSS_BOUND_MB."""
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz", "all", "--seconds", "2", "--no-save"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and [r["reader"] for r in results] == list(fuzz.READERS), proc.stderr[-3000:]
    for r in results:
        assert r["findings"] == [] and r["inputs"] > 0, r
        assert r["replayed"] == len(fuzz.seeds(r["reader"])) + len(fuzz.regressions(r["reader"]))
        assert r["peak_rss_mb"] <= fuzz.RSS_BOUND_MB, r

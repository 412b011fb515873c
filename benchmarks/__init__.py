"""mnist_lit's benchmarks: run each one from the repository root as a module, e.g.
`python -m benchmarks.vs_keras --tutorials cnn` (benchmarks/README.md lists them all).

A package, so that the scripts share code by plain imports; it imports nothing itself, as some scripts
must set things up (glibc's allocator, an environment variable) before torch or Lightning is imported.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the children they start run here, as a user's commands do

"""`python -m mnist_lit`: fit/validate/test/predict go to the Lightning CLI, the rest to their modules;
bad input ends in one line."""

from __future__ import annotations

import importlib
import os
import sys

from mnist_lit import memory
from mnist_lit.errors import UserError

# commands of our own (everything else goes to the Lightning CLI) and the module that runs each
COMMANDS = {"report": "report", "export": "export", "classify": "classify", "import-keras": "keras_import",
            "serve": "serve"}


def main(argv: list[str] | None = None) -> int:
    memory.tune()  # before the first large tensor: see mnist_lit/memory.py (MNIST_LIT_MALLOC=system: off)
    verbose = os.environ.get("MNIST_LIT_VERBOSE") == "1"
    try:
        args = sys.argv[1:] if argv is None else argv
        if args and args[0] in COMMANDS:
            module = importlib.import_module(f"mnist_lit.{COMMANDS[args[0]]}")
            return module.main(args[1:])
        from mnist_lit import cli

        cli.main(argv)
    except UserError as e:
        if verbose:
            raise
        print(f"mnist_lit: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m mnist_lit`: fit/validate/test/predict go to the Lightning CLI, the rest to their modules;
bad input ends in one line. The top-level `--help` and `--version` answer here, before torch or Lightning
is imported (those imports take seconds)."""

from __future__ import annotations

import importlib
import os
import sys

# How long torch's idle OpenMP threads spin before they sleep. libgomp's default, about 300,000 turns, takes
# a core from whatever else runs (a browser, a notebook, a second fit); sleeping at once (PASSIVE) wakes them
# for every kernel, a fifth of a two-thread dense512 or cnn epoch on a quiet machine. 2,000 turns keep them
# awake between the kernels of a step and asleep between steps (docs/benchmarks.md#waiting-threads). Read
# once, when torch starts, so set here, before anything imports torch; a user's own setting wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "2000")

from mnist_lit import memory  # noqa: E402
from mnist_lit.errors import UserError

# commands of our own (everything else goes to the Lightning CLI) and the module that runs each
COMMANDS = {"report": "report", "export": "export", "classify": "classify", "import-keras": "keras_import",
            "serve": "serve", "tune": "tune"}
LIGHTNING_COMMANDS = {
    "fit": "train a tutorial, test it, and save model.ckpt, metrics.json, figures and model.pt",
    "validate": "the validation loss and accuracy of a checkpoint",
    "test": "the test loss and accuracy of a checkpoint",
    "predict": "class probabilities for the test images, written to predictions.csv",
}
OWN_COMMANDS = {
    "report": "test result, per-class accuracy, curves, confusion matrix and worst mistakes of a run",
    "export": "a checkpoint as TorchScript, .pt2, ONNX or ExecuTorch .pte (int8 on request), for use without mnist_lit",
    "classify": "classify photos of digits with a checkpoint or an exported model",
    "import-keras": "a model trained in Keras (.keras or .h5) becomes an mnist_lit checkpoint",
    "serve": "an HTTP API and a page to draw a digit on (LitServe)",
    "tune": "search a tutorial's hyperparameters (Optuna), on one machine or many",
}
TUTORIALS = ("dense512", "cnn", "tiny_mlp", "fashion_mlp", "softmax_regression")


def usage() -> str:
    lines = ["usage: python -m mnist_lit COMMAND [options]    (python -m mnist_lit COMMAND --help: its options)",
             "", "The classic Keras MNIST tutorials on PyTorch + Lightning.", "", "Training (the Lightning CLI):"]
    lines += [f"  {name:<13} {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "Models and files:"]
    lines += [f"  {name:<13} {text}" for name, text in OWN_COMMANDS.items()]
    lines += ["", f"Tutorials (--config NAME or configs/NAME.yaml): {', '.join(TUTORIALS)}",
              "  python -m mnist_lit fit --config configs/cnn.yaml", "",
              "options:", "  -h, --help    this text", "  --version     the version of mnist_lit"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    memory.tune()  # before the first large tensor: see mnist_lit/memory.py (MNIST_LIT_MALLOC=system: off)
    verbose = os.environ.get("MNIST_LIT_VERBOSE") == "1"
    try:
        args = sys.argv[1:] if argv is None else argv
        if not args or args[0] in ("-h", "--help"):
            print(usage())
            return 0 if args else 2
        if args[0] == "--version":
            from mnist_lit import __version__

            print(f"mnist_lit {__version__}")
            return 0
        if args[0] in COMMANDS:
            module = importlib.import_module(f"mnist_lit.{COMMANDS[args[0]]}")
            return module.main(args[1:])
        from mnist_lit import cli

        cli.main(argv)
    except UserError as e:
        if verbose:
            raise
        print(f"mnist_lit: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of our output went (`report RUN | head -2`): stop quietly, as cat does;
        # stdout goes to /dev/null first, or Python's flush of it at exit fails again, with a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

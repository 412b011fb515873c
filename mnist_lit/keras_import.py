"""`python -m mnist_lit import-keras model.keras [--output DIR]`: a trained Keras model becomes the tutorial
it is, as an mnist_lit run folder.

The file is read without TensorFlow or Keras (`mnist_lit.keras_file`: its table of layer converters says
how each weight layout changes). The run then finishes as a `fit` does (`outputs.test_and_save`): the test
line, `model.ckpt`, `metrics.json`, the figures and `model.pt`, so `test --ckpt_path`, `export`,
`classify` and `report` take the folder as they take a `fit`'s. Without the test images at hand it writes
`model.ckpt` and `model.pt` alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_lit.errors import UserError


def import_keras(source: str | Path, output: str | Path | None = None, dataset: str | None = None,
                 data_dir: str = "data") -> Path:
    """Write the run folder of the Keras model in `source`; returns the folder."""
    # Lightning and the data stack, imported here: `import-keras --help` answers without them
    import logging
    import warnings

    import lightning as L

    from mnist_lit import keras_file, outputs
    from mnist_lit.cli import build_tutorial
    from mnist_lit.callbacks import quiet_lightning
    from mnist_lit.data import MNISTDataModule
    from mnist_lit.models import count_params

    source = Path(source)
    # every check happens here, before anything is written; built as the CLI builds a model, so that
    # `test --ckpt_path` reads the checkpoint's class from it
    model = keras_file.tutorial_of(source, dataset, build=build_tutorial)
    out = Path(output) if output else Path("checkpoints") / f"{model.name}_keras"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    print(f"{source}: the {model.name} tutorial ({count_params(model.net):,} parameters, "
          f"{model.hparams.dataset} classes)", flush=True)
    datamodule = MNISTDataModule(dataset=model.hparams.dataset, data_dir=data_dir, download=False)
    try:  # the files at hand only, checked and read before anything is written: import-keras never downloads
        datamodule.prepare_data()
        datamodule.setup("test")
    except UserError as e:
        print(f"Test accuracy not measured: {e}", flush=True)
        outputs.save_untested(out, model, imported_from=source.name)
        return out
    quiet_lightning()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no "GPU available"
    warnings.filterwarnings("ignore", message=r"(?s).*GPU available but not used")  # testing on the CPU is the point
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    outputs.test_and_save(trainer, model, datamodule, out, imported_from=source.name)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lit import-keras",
                                     description="Bring a trained Keras model of one of the tutorials over to mnist_lit.")
    parser.add_argument("model", help="a Keras 3 .keras file or a legacy .h5 file (model.save)")
    parser.add_argument("--output", help="folder to write (default: checkpoints/<tutorial>_keras)")
    parser.add_argument("--dataset", choices=["mnist", "fashion_mnist"],
                        help="the data the model was trained on (default: the tutorial's)")
    parser.add_argument("--data_dir", default="data", help="where to look for the test images first")
    args = parser.parse_args(argv)
    import_keras(args.model, args.output, args.dataset, args.data_dir)
    return 0

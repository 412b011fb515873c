"""The training step as Lightning runs it (models/base.py: automatic optimization, torchmetrics), the
Trainer's and LightningCLI's own options on it, and the speed devices (mnist_lit/speed.py, threads.py):
each changes the time a fit takes, never its updates, and a user's own settings win."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mnist_lit import model_files, speed, threads
from mnist_lit.cli import MnistCLI, quiet_lightning, resolve_config_args
from mnist_lit.data import MNISTDataModule, load_split
from mnist_lit.models import CNN, TinyMLP
from tests.helpers import REPO, fit


def test_the_package_uses_no_private_lightning_members():
    """What a minor Lightning release may change or remove: hand-written CLI records, private step counters,
    modules hidden from the module tree."""
    private = re.compile(r"\._on_(before|after)_step|_instantiator|_class_path|object\.__setattr__")
    found = [f"{p.relative_to(REPO)}:{n}" for p in (REPO / "mnist_lit").rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert not found


# ---------------------------------------------------------------- whole fits through the CLI, watched by callbacks


class Observed(Callback):
    """What a fit really did: the dtype the network trained in, Lightning batches per epoch, and the
    gradient norm and learning rate each update used. Every instance starts empty."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()
        self.batches_per_epoch: list[int] = []
        self.norms_used: list[float] = []
        self.rates: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.batches_per_epoch.append(0)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.batches_per_epoch[-1] += 1

    def on_train_start(self, trainer, pl_module) -> None:
        first = next(m for m in pl_module.net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
        first.register_forward_hook(lambda module, args, out: self.dtypes.add(out.dtype) if module.training else None)
        # torch's own hook after optimizer.step(), whose closure ran forward and backward and Lightning's
        # clipping; the gradients stay until the next step's zero_grad
        trainer.optimizers[0].register_step_post_hook(lambda opt, *_: self.after_update(opt))

    def after_update(self, optimizer) -> None:
        grads = [p.grad.norm() for p in optimizer.param_groups[0]["params"] if p.grad is not None]
        self.norms_used.append(float(torch.linalg.vector_norm(torch.stack(grads))))
        self.rates.append(optimizer.param_groups[0]["lr"])


def observed_fit(config: str, data_root: Path, out: Path, *extra: str) -> Observed:
    spy = Observed()
    quiet_lightning()  # as `python -m mnist_lit` does
    MnistCLI(args=resolve_config_args(["fit", "--config", config, "--data.data_dir", str(data_root),
                                       "--output_dir", str(out), *extra]), trainer_defaults={"callbacks": [spy]})
    return spy


def test_trainer_flags_pass_through(data_root: Path, tmp_path: Path):
    plain = observed_fit("cnn", data_root, tmp_path / "fp32", "--trainer.max_epochs", "1")
    bf16 = observed_fit("cnn", data_root, tmp_path / "bf16", "--trainer.max_epochs", "1",
                        "--trainer.precision", "bf16-mixed", "--trainer.accelerator", "cpu", "--trainer.devices", "1")
    assert plain.dtypes == {torch.float32} and bf16.dtypes == {torch.bfloat16}  # the flag reached autocast


def test_metrics_csv_holds_one_row_per_epoch_with_the_steps_of_metrics_json(data_root: Path, tmp_path: Path):
    assert fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "3") == 0  # tiny_mlp validates on test
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rows = list(csv.DictReader(next(tmp_path.glob("logs/*/metrics.csv")).open()))
    epochs, test = rows[:-1], rows[-1]
    # Lightning's steps: an epoch's row has the index of its last step, counted from 0
    assert [int(r["epoch"]) for r in epochs] == [0, 1, 2] and [int(r["step"]) for r in epochs] == [19, 39, 59]
    assert all(1 <= e["threads"] <= threads.cores() for e in metrics["history"])  # what each epoch ran on
    for row, recorded in zip(epochs, metrics["history"]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(row[key]) == pytest.approx(recorded[key], rel=1e-6)
    assert int(test["step"]) == metrics["steps"] == 60 and float(test["test_acc"]) == pytest.approx(metrics["test_acc"])
    # tiny_mlp validates on the test set: the last epoch's validation is the test of the same weights, so
    # each epoch's metrics hold that epoch's batches alone (reset in between), over every batch
    assert float(epochs[-1]["val_acc"]) == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert float(epochs[-1]["val_loss"]) == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert metrics["test_acc"] * 200 == pytest.approx(round(metrics["test_acc"] * 200))  # of all 200 test images


class StepHook(Callback):
    """A user callback on every optimizer step: it must still run, once per step."""
    calls = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        type(self).calls += 1


def test_user_step_hooks_run_once_per_step(data_root: Path, tmp_path: Path):
    StepHook.calls = 0
    assert fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "2",
               "--trainer.callbacks+=tests.test_training.StepHook") == 0
    assert StepHook.calls == 40 == json.loads((tmp_path / "metrics.json").read_text())["steps"]


class FormatSpy(Callback):
    """Per fit: whether the network trains channels-last (the strides of a conv kernel with more than one
    input channel, where the two layouts differ), and whether the speed devices were there."""
    seen: list[tuple[bool, bool]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        kernels = [p for p in pl_module.net.parameters() if p.dim() == 4]
        w = kernels[-1] if kernels else None
        strided = w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)
        type(self).seen.append((strided, any(isinstance(c, speed.SpeedDevices) for c in trainer.callbacks)))


def test_channels_last_is_on_for_the_cnn_on_cpu_and_changes_no_result(data_root: Path, tmp_path: Path):
    FormatSpy.seen.clear()
    spy = "--trainer.callbacks+=tests.test_training.FormatSpy"
    runs = {"auto": [], "off": ["--model.init_args.channels_last", "false"]}
    for name, extra in runs.items():
        assert fit("cnn", data_root, tmp_path / name, "--trainer.max_epochs", "1", spy, *extra) == 0
    assert fit("dense512", data_root, tmp_path / "dense", "--trainer.max_epochs", "1", spy) == 0
    assert FormatSpy.seen == [(True, True), (False, True), (False, True)]
    auto, off = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in runs)
    assert abs(auto["test_loss"] - off["test_loss"]) < 1e-4  # other kernels, the same arithmetic
    # the checkpoint of a channels-last fit, loaded into a plain network, computes the test loss it recorded
    net, _ = model_files.checkpoint_model(tmp_path / "auto" / "model.ckpt")
    images, labels = load_split(data_root, "test")
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(net(images.float() / 255), labels)
    assert float(loss) == pytest.approx(auto["test_loss"], abs=1e-5)

# ---------------------------------------------------------------- the Trainer's own options


def test_gradient_clip_val_clips_each_update(data_root: Path, tmp_path: Path):
    """Keras' global_clipnorm is Lightning's gradient_clip_val (its default algorithm is the global norm)."""
    plain = observed_fit("tiny_mlp", data_root, tmp_path / "plain", "--trainer.max_epochs", "1")
    clipped = observed_fit("tiny_mlp", data_root, tmp_path / "clipped", "--trainer.max_epochs", "1",
                           "--trainer.gradient_clip_val", "0.05")
    assert max(plain.norms_used) > 0.1  # there was something to clip...
    assert len(clipped.norms_used) == 20 and max(clipped.norms_used) <= 0.05 * (1 + 1e-5)  # ...and it was


def test_accumulate_grad_batches_takes_one_update_per_k_batches(data_root: Path, tmp_path: Path):
    spy = observed_fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "2",
                       "--trainer.accumulate_grad_batches", "2")
    assert spy.batches_per_epoch == [20, 20] and len(spy.norms_used) == 20  # 640 samples of batch 32, 2 by 2
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 20


def test_lr_scheduler_changes_the_keras_optimizers_rate_each_epoch(data_root: Path, tmp_path: Path):
    spy = observed_fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "3", "--lr_scheduler", "StepLR",
                       "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5")
    assert spy.rates == [1e-3] * 20 + [5e-4] * 20 + [2.5e-4] * 20
    # the Keras optimizer is kept: from Python, the same schedule is a callable of the optimizer
    model = TinyMLP(lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 1))
    configured = model.configure_optimizers()
    assert type(configured["optimizer"]).__name__ == "KerasAdam"


def test_tensorboard_logger_writes_the_epochs_metrics(data_root: Path, tmp_path: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "2", "--trainer.logger", "TensorBoardLogger") == 0
    events = EventAccumulator(str(next(tmp_path.glob("tensorboard/version_0")))).Reload()
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "test_acc"} <= set(events.Tags()["scalars"])
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [e.value for e in events.Scalars("val_acc")] == pytest.approx([h["val_acc"] for h in history])


def test_python_arguments_are_checked_as_the_cli_checks_them():
    for make, named in ((lambda: CNN(optimizer="sgdd"), "optimizer='sgdd'"), (lambda: CNN(lr=0), "lr=0"),
                        (lambda: TinyMLP(dataset="fashion"), "dataset='fashion'"),
                        (lambda: MNISTDataModule(batch_size=0), "batch_size=0"),
                        (lambda: MNISTDataModule(dataset="fashion"), "dataset='fashion'"),
                        (lambda: MNISTDataModule(val="valid"), "val='valid'"),
                        (lambda: MNISTDataModule(num_workers=-1), "num_workers=-1")):
        with pytest.raises(ValueError) as error:
            make()
        assert named in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_the_readmes_python_example_runs(tmp_path: Path):
    """README.md's first.py, as a user saves and runs it, beside the repository's data/ (linked here)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"\n((?: {4}.*\n|\n)*? {4}import lightning as L\n(?: {4}.*\n|\n)*)", text)[1]
    script = tmp_path / "first.py"
    script.write_text("\n".join(line[4:] for line in block.splitlines()) + "\n")
    (tmp_path / "data").symlink_to(REPO / "data")
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Epoch 1/1" in run.stdout and (tmp_path / "dense512.pt2").is_file()


# ---------------------------------------------------------------- speed devices: threads, denormals


def timed_epoch(seconds_per_batch: dict[int, float], batches: int = 100) -> list[int]:
    """One epoch of `batches` batches through a ThreadChoice whose clock says each batch took
    seconds_per_batch[the thread count it ran on]; the thread count of every batch."""
    now = [0.0]

    def clock() -> float:  # half a batch at each call: batch_start's and batch_end's
        now[0] += seconds_per_batch.get(torch.get_num_threads(), 1.0) / 2
        return now[0]
    choice, seen = threads.ThreadChoice(clock=clock), []
    choice.epoch_start(on_cpu=True, batches=batches)
    for _ in range(batches):
        choice.batch_start()
        seen.append(torch.get_num_threads())
        choice.batch_end()
    choice.end()
    return seen


@pytest.fixture
def default_threads(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    # an earlier fit in this process with --trainer.deterministic true left deterministic algorithms on
    # (Lightning sets them and does not put them back), which would make the choice the user's
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    if threads.cores() < 2 or torch.get_num_threads() != threads.cores():
        pytest.skip("one core, or torch's thread count set before this test: nothing to choose")
    yield torch.get_num_threads()
    torch.use_deterministic_algorithms(deterministic)


def test_threads_run_the_epoch_on_the_count_that_was_faster(default_threads: int):
    most = default_threads
    # the trial: one batch to settle, 5 on every core, 5 on one (100 batches: 5 is the most, 1/20 of them)
    trial = [most] * 6 + [1] * 5
    slow_on_one = timed_epoch({most: 1.0, 1: 2.0})
    assert slow_on_one[:11] == trial and set(slow_on_one[11:]) == {most}
    assert timed_epoch({most: 2.0, 1: 1.0})[11:] == [1] * 89  # a small step, or a machine with another job on it
    assert timed_epoch({most: 1.0, 1: 1.04})[11:] == [1] * 89  # nearly a tie: the core is left to others
    assert torch.get_num_threads() == most  # put back when the fit ends


def test_a_users_own_thread_count_is_left_alone(default_threads: int, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OMP_NUM_THREADS", str(default_threads))
    assert set(timed_epoch({default_threads: 2.0, 1: 1.0})) == {default_threads}
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.use_deterministic_algorithms(True)  # --trainer.deterministic true: a run that must repeat exactly
    try:
        assert set(timed_epoch({default_threads: 2.0, 1: 1.0})) == {default_threads}
    finally:
        torch.use_deterministic_algorithms(False)


def test_denormals_are_flushed_during_a_fit_and_the_users_setting_put_back(data_root: Path, tmp_path: Path):
    seen = []

    class Mode(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            seen.append(speed.flushes_denormals())

    for before in (False, True):
        torch.set_flush_denormal(before)
        spy = Mode()
        quiet_lightning()
        MnistCLI(args=resolve_config_args(["fit", "--config", "softmax_regression", "--data.data_dir", str(data_root),
                                           "--output_dir", str(tmp_path / str(before)), "--trainer.max_steps", "3"]),
                 trainer_defaults={"callbacks": [spy]})
        assert speed.flushes_denormals() == before
    torch.set_flush_denormal(False)
    assert seen == [True, True]


class DenormalProbe(Callback):
    """Prints how many of 4M denormal numbers two threads left unflushed in an elementwise product."""

    def on_train_start(self, trainer, pl_module) -> None:
        tiny = torch.ones(1 << 22, dtype=torch.int32).view(torch.float32)  # 1.4e-45, made without arithmetic
        print(f"unflushed: {int(((tiny * 1.0) != 0).sum())}", flush=True)


@pytest.mark.slow
def test_python_m_mnist_lit_flushes_denormals_on_every_thread(data_root: Path, tmp_path: Path):
    run = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", "softmax_regression", "--data.data_dir",
                          str(data_root), "--output_dir", str(tmp_path), "--trainer.max_steps", "1",
                          "--trainer.callbacks+=tests.test_training.DenormalProbe"],
                         cwd=REPO, capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "2"})
    assert run.returncode == 0, run.stderr[-1000:]
    assert "unflushed: 0" in run.stdout

"""Seconds per epoch: mnist_lit (the CLI's own classes and callbacks) against a plain PyTorch loop.

Run by hand from the repository root, not in the tests:

    python -m benchmarks.studies.train_speed [--configs cnn tiny_mlp] [--rounds 2]
        [-- any mnist_lit fit flags, e.g. --model.init_args.channels_last false]

For each config, in one process, it alternates a `fit` built by the CLI (progress line, checkpointing
and CSV logger on, as a user gets them) with a plain loop over the same data tensors, network, optimizer
and batch size (and the model's memory format, so the ratio is the cost of the framework alone), and a
bare loop (torch's own optimizer, no metrics, no validation), `--rounds` times. An epoch is timed from
the start of one epoch to the start of the next (validation, checkpoint and logging included); the first
epoch of each run is warm-up and dropped.
Then it runs `python -m mnist_lit fit` for one epoch in a child process and reports its peak RSS
(VmHWM, polled every 50 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

# as the process had it before `import lightning` set it to "1": the plain loop runs as a PyTorch user's
# script would, without the NVML probe that this setting adds to every optimizer step of a CUDA build
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
PLAIN_NVML_CHECK = os.environ.get(NVML_CHECK)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from benchmarks.fits import CONFIGS, run_fit  # noqa: E402
from mnist_lit.callbacks import quiet_lightning  # noqa: E402
from mnist_lit.cli import MnistCLI, resolve_config  # noqa: E402


class EpochClock(Callback):
    """Wall time from each epoch start to the next one (or to the end of fit)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.starts.append(time.perf_counter())

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    @property
    def epochs(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


def lightning_epochs(config: str, epochs: int, extra: list[str], out: Path):
    args = ["--config", resolve_config(config), "--trainer.max_epochs", str(epochs), "--trainer.max_steps", "-1",
            "--output_dir", str(out), *extra]
    cli = MnistCLI(args=args, run=False)
    clock = EpochClock()
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, cli.datamodule)
    return clock.epochs, cli


def plain_epochs(cli, epochs: int, channels_last: bool) -> list[float]:
    """What a PyTorch user writes by hand, over the CLI's own data tensors and a fresh copy of the model."""
    dm = cli.datamodule
    model = type(cli.model)(**{k: v for k, v in cli.model.hparams.items() if not k.startswith("_")})
    device = dm._splits["train"][0].device
    net = model.net.to(device)  # the network as fit runs it
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = model.configure_optimizers()
    reduction = model.hparams.loss_reduction
    x_train, y_train = dm._splits["train"]
    val = dm._splits.get("val") if dm.hparams.val != "none" else None
    bs, ebs = dm.hparams.batch_size, dm.hparams.eval_batch_size
    with plain_environment():
        return [plain_epoch(net, opt, reduction, x_train, y_train, val, bs, ebs, epoch, channels_last)
                for epoch in range(epochs)]


@contextlib.contextmanager
def plain_environment():
    """NVML's setting as the process had it before `import lightning`, for the hand-written loops."""
    lightning_setting = os.environ.pop(NVML_CHECK, None)
    if PLAIN_NVML_CHECK is not None:
        os.environ[NVML_CHECK] = PLAIN_NVML_CHECK
    try:
        yield
    finally:
        os.environ.pop(NVML_CHECK, None)
        if lightning_setting is not None:
            os.environ[NVML_CHECK] = lightning_setting


def plain_epoch(net, opt, reduction, x_train, y_train, val, bs, ebs, epoch, channels_last) -> float:
    """One epoch: shuffle, slice, forward, loss, backward, step; metrics summed on the device."""
    device = y_train.device
    start = time.perf_counter()
    net.train()
    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(epoch)).to(device)
    sums = torch.zeros(3, device=device)
    for i in range(0, len(order), bs):
        idx = order[i:i + bs]
        x, y = x_train[idx].float().div_(255), y_train[idx]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = net(x)
        loss = F.cross_entropy(logits, y, reduction=reduction)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sums += torch.stack([loss.detach(), (logits.argmax(1) == y).sum().float(),
                             torch.tensor(float(len(y)), device=device)])
    if val is not None:
        net.eval()
        with torch.no_grad():
            for i in range(0, len(val[1]), ebs):
                x, y = val[0][i:i + ebs].float().div_(255), val[1][i:i + ebs]
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits = net(x)
                sums += torch.stack([F.cross_entropy(logits, y, reduction="sum"),
                                     (logits.argmax(1) == y).sum().float(), torch.tensor(0.0, device=device)])
    float(sums[0])  # the epoch's metrics reach the host, as a printed epoch line would need
    return time.perf_counter() - start


def bare_epochs(cli, epochs: int, channels_last: bool) -> list[float]:
    """The least a PyTorch user could write: torch's own optimizer (eps 1e-7), no metrics, no validation,
    one host sync at the end of the epoch; the same data tensors, network and batch size."""
    dm, hp = cli.datamodule, cli.model.hparams
    model = type(cli.model)(**{k: v for k, v in hp.items() if not k.startswith("_")})
    x_train, y_train = dm._splits["train"]
    net = model.net.to(y_train.device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=hp.lr, eps=1e-7),
           "rmsprop": lambda p: torch.optim.RMSprop(p, lr=hp.lr, alpha=0.9, eps=1e-7),
           "sgd": lambda p: torch.optim.SGD(p, lr=hp.lr)}[hp.optimizer](net.parameters())
    bs, times = dm.hparams.batch_size, []
    with plain_environment():
        for epoch in range(epochs):
            times.append(bare_epoch(net, opt, hp.loss_reduction, x_train, y_train, bs, epoch, channels_last))
    return times


def bare_epoch(net, opt, reduction, x_train, y_train, bs, epoch, channels_last) -> float:
    """One epoch: shuffle, slice, forward, loss, backward, step; nothing else."""
    start = time.perf_counter()
    net.train()
    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(epoch)).to(y_train.device)
    for i in range(0, len(order), bs):
        idx = order[i:i + bs]
        x = x_train[idx].float().div_(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), y_train[idx], reduction=reduction)
        opt.zero_grad()
        loss.backward()
        opt.step()
    float(loss)
    return time.perf_counter() - start


def peak_rss_mb(config: str, extra: list[str]) -> float:
    """Peak RSS of `python -m mnist_lit fit` (one epoch), read from the child's own VmHWM."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "mnist_lit", "fit", "--config", config, "--trainer.max_epochs", "1",
               "--trainer.max_steps", "-1", "--output_dir", out, *extra]
        return run_fit(cmd, Path(out))[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of mnist_lit and plain per config")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("fit_flags", nargs="*", help="after --: flags for both the timed fit and the RSS run")
    args = parser.parse_args()
    quiet_lightning()
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # this script's own argv
    extra = ["--trainer.accelerator", args.accelerator, "--trainer.devices", "1", *args.fit_flags]
    rows = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, accelerator {args.accelerator}"
            + (f", flags: {' '.join(args.fit_flags)}" if args.fit_flags else ""),
            "| config | channels-last | mnist_lit s/epoch | plain PyTorch s/epoch | ratio "
            "| bare PyTorch s/epoch | ratio to bare | plain PyTorch, default memory format | peak RSS of `fit` (MB) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for config in args.configs:
        ours, plain, bare, plain_default = [], [], [], []
        with tempfile.TemporaryDirectory() as out:
            for _ in range(args.rounds):
                epochs, cli = lightning_epochs(config, args.epochs, extra, Path(out))
                ours += epochs[1:]
                channels_last = cli.model._channels_last
                plain += plain_epochs(cli, args.epochs, channels_last)[1:]
                bare += bare_epochs(cli, args.epochs, channels_last)[1:]
                if channels_last:  # what a hand-written loop gets without it
                    plain_default += plain_epochs(cli, args.epochs, False)[1:]
        a, b, d = statistics.median(ours), statistics.median(plain), statistics.median(bare)
        c = f"{statistics.median(plain_default):.3f}" if plain_default else "same"
        rss = peak_rss_mb(config, extra)
        rows.append(f"| {config} | {'on' if channels_last else 'off'} | {a:.3f} | {b:.3f} | {a / b:.2f} "
                    f"| {d:.3f} | {a / d:.2f} | {c} | {rss:.0f} |")
    print("\n".join(rows))  # after the runs, so their epoch lines do not split the table


if __name__ == "__main__":
    main()

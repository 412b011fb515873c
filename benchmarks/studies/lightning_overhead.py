"""Where a small step's time goes under Lightning: the step itself, its metrics, and Lightning's loop.

Run by hand from the repository root, not in the tests:

    python -m benchmarks.studies.lightning_overhead [--tutorial fashion_mlp] [--steps 3000] [--threads 1]

In one process, on one fixed set of random batches (no data loading in any row), microseconds per step of:
- the bare eager step: the tutorial's network, cross-entropy, backward, Keras' optimizer, zero_grad;
- its forward and loss alone;
- the two torchmetrics updates `Tutorial.step` makes (MeanMetric, MulticlassAccuracy);
- `Trainer.fit` over a step that does almost nothing (one weight, SGD): Lightning's loop per batch, with the
  progress bar, logger, checkpointing and summary off, as the lower bound of any fit;
- `Trainer.fit` of the tutorial's own module (SpeedDevices included), with the same things off, and again
  with its metrics updates and divergence check taken out.
Each figure is the difference of a long and a short run, divided by the extra steps, the lower of two
tries. The rows add up: the module under Lightning is about the bare step plus the metrics plus the loop.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F

from mnist_lit.models import TUTORIALS

BATCH = {"cnn": 128, "dense512": 128, "tiny_mlp": 32, "fashion_mlp": 32, "softmax_regression": 64}
WARM = 300


class Batches:
    """A fixed number of batches cycled from 100 random ones, as a DataLoader would yield them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int, n: int) -> None:
        self.x, self.y, self.bs, self.n = x, y, bs, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i in range(self.n):
            j = (i % 100) * self.bs
            yield self.x[j:j + self.bs], self.y[j:j + self.bs]


class Nothing(L.LightningModule):
    """A step with one weight and no network: what remains is Lightning's own work per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return (self.w * 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def per_step(run: Callable[[int], float], steps: int) -> float:
    """Microseconds per step: a long run minus a short one, the lower of two tries."""
    return min((run(WARM + steps) - run(WARM)) / steps * 1e6 for _ in range(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tutorial", default="fashion_mlp", choices=sorted(TUTORIALS))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads (default: 1)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):  # the device and tip lines of every Trainer
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    # every row as a fit on the CPU runs (SpeedDevices): without it, the bare step's gradients on these fixed
    # batches soon hold denormal numbers, which an Intel CPU computes several times slower
    torch.set_flush_denormal(True)
    cls, bs = TUTORIALS[args.tutorial], BATCH[args.tutorial]
    x, y = torch.rand(bs * 100, 1, 28, 28), torch.randint(0, 10, (bs * 100,))

    def timed(body: Callable[[torch.Tensor, torch.Tensor], None]) -> Callable[[int], float]:
        def run(n: int) -> float:
            start = time.perf_counter()
            for xb, yb in Batches(x, y, bs, n):
                body(xb, yb)
            return time.perf_counter() - start
        return run

    model = cls()
    net, optimizer = model.net, model.configure_optimizers()
    reduction = model.hparams.loss_reduction

    def bare(xb, yb):
        F.cross_entropy(net(xb), yb, reduction=reduction).backward()
        optimizer.step()
        optimizer.zero_grad()

    def forward(xb, yb):
        with torch.no_grad():
            F.cross_entropy(net(xb), yb, reduction=reduction)

    logits = torch.randn(bs, 10)

    def metrics(xb, yb):
        model.metrics["train_loss"].update(logits.sum(), len(yb))
        model.metrics["train_acc"].update(logits, yb)

    class Plain(cls):
        """The tutorial's module without the per-step metrics updates and the divergence check."""

        def step(self, stage, batch):
            xb, yb = batch
            out = self(xb)
            return F.cross_entropy(out, yb, reduction=self.hparams.loss_reduction), out

        def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
            pass

    def fitted(make: Callable[[], L.LightningModule]) -> Callable[[int], float]:
        def run(n: int) -> float:
            trainer = L.Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                                enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
            module = make()
            start = time.perf_counter()
            trainer.fit(module, Batches(x, y, bs, n))
            return time.perf_counter() - start
        return run

    print(f"{args.tutorial}, batch {bs}, torch {torch.__version__}, Lightning {L.__version__}, "
          f"{torch.get_num_threads()} thread(s); microseconds per step")
    rows = [("bare eager step (forward, loss, backward, optimizer, zero_grad)", timed(bare)),
            ("  of which forward and loss", timed(forward)),
            ("torchmetrics updates of a step (MeanMetric, MulticlassAccuracy)", timed(metrics)),
            ("Trainer.fit of a step that does nothing (Lightning's loop)", fitted(Nothing)),
            ("Trainer.fit of the tutorial's module", fitted(cls)),
            ("  the same without metrics updates and divergence check", fitted(Plain))]
    for label, run in rows:
        print(f"{label:<68} {per_step(run, args.steps):8.1f}", flush=True)


if __name__ == "__main__":
    main()

"""Where a training step's time goes: torch.profiler over a tutorial's steps, per op and per phase.

Run by hand from the repository root, not in the tests:

    python -m benchmarks.studies.profile_step [--tutorial cnn] [--steps 40] [--bf16]

A bare loop over random batches with the tutorial's network, loss and Keras optimizer, on the CPU, with
the memory format `fit` uses there (channels-last for the cnn) and glibc's allocator tuned as
`python -m mnist_lit` tunes it. After 20 warm-up steps it profiles `--steps` steps and prints the ops
with the most self CPU time, then the share of forward, backward and optimizer step. With --bf16 the
forward runs under bf16 autocast, as `--trainer.precision bf16-mixed` runs it.
"""

from __future__ import annotations

import argparse
import contextlib

from mnist_lit import memory

memory.tune()  # before the first large tensor, as python -m mnist_lit does

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from mnist_lit.models import TUTORIALS  # noqa: E402

BATCH = {"cnn": 128, "dense512": 128, "tiny_mlp": 32, "fashion_mlp": 32, "softmax_regression": 64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tutorial", default="cnn", choices=sorted(TUTORIALS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = TUTORIALS[args.tutorial]()
    net = model.net
    channels_last = any(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = model.configure_optimizers()
    bs = BATCH[args.tutorial]

    def step() -> None:
        x = torch.rand(bs, 1, 28, 28)
        y = torch.randint(0, 10, (bs,))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
        with record_function("## forward"), autocast:
            loss = F.cross_entropy(net(x), y, reduction=model.hparams.loss_reduction)
        with record_function("## backward"):
            optimizer.zero_grad()
            loss.backward()
        with record_function("## optimizer step"):
            optimizer.step()

    for _ in range(20):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    print(f"{args.tutorial}, batch {bs}, {'bf16 autocast' if args.bf16 else 'float32'}, "
          f"{'channels-last' if channels_last else 'default memory format'}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.steps} steps")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))
    phases = {e.key: e.cpu_time_total / args.steps / 1000 for e in events if e.key.startswith("## ")}
    total = sum(phases.values())
    print(f"per step: {total:.2f} ms = " + ", ".join(f"{k[3:]} {v:.2f} ms ({v / total:.0%})" for k, v in phases.items()))


if __name__ == "__main__":
    main()

"""How close the cnn's convolutions already run to this CPU's ceiling: the floor under a cnn step.

Run by hand from the repository root, not in the tests:

    python -m benchmarks.conv_ceiling [--repeats 30]

For float32, and for bfloat16 where the CPU has it, it times:
- a large matrix product (2048 x 2048 x 2048), for the rate this machine's arithmetic reaches;
- each of the cnn's three convolutions at batch 128, channels-last as `fit` runs them: forward, backward
  to the input (none for the first, whose input needs no gradient) and backward to the weights, with the
  GFLOP/s each reaches and its share of the best rate seen (the product's or a convolution's);
- a whole training step in a bare loop (network, Keras' RMSprop, bf16 autocast for bfloat16).

Issue 12 asked for the cnn in 0.7 of Keras' float32 time (0.5 with bf16). The convolutions' sum against
the step says how much of the step any change outside oneDNN's kernels can still remove.
"""

from __future__ import annotations

import argparse
import time

from mnist_lit import memory

memory.tune()  # as python -m mnist_lit does

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.cnn_step import cnn_step  # noqa: E402
from mnist_lit.models import TUTORIALS  # noqa: E402

BATCH = 128
CL = torch.channels_last


def timed(fn, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` calls, after 5 warm-up calls."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


def conv_shapes(net: nn.Module) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Each convolution of the network with the input shape it sees at batch BATCH."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, args, out: shapes.append((m, tuple(args[0].shape))))
             for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(BATCH, 1, 28, 28))
    for h in hooks:
        h.remove()
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    dtypes = [torch.float32]
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        dtypes.append(torch.bfloat16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, channels-last, "
          f"median of {args.repeats}")
    torch.manual_seed(0)
    for dtype in dtypes:
        name = "float32" if dtype == torch.float32 else "bfloat16"
        n = 2048
        a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
        product = 2 * n**3 / timed(lambda: a @ b, args.repeats) / 1e6  # GFLOP/s
        rows, total = [], 0.0
        # the weights as `fit` converts them: for the first convolution (one input channel) channels-last
        # and contiguous are the same shape, and torch keeps the strides that pick oneDNN's fast layout
        for i, (conv, shape) in enumerate(conv_shapes(TUTORIALS["cnn"]().net.to(memory_format=CL)), 1):
            x = torch.rand(shape, dtype=dtype).contiguous(memory_format=CL)
            w = conv.weight.detach().to(dtype)
            bias = conv.bias.detach().to(dtype)
            y = F.conv2d(x, w, bias)
            grad = torch.rand_like(y).contiguous(memory_format=CL)
            flop = 2 * y.numel() * w[0].numel()  # one multiply-add per weight per output value
            passes = [("forward", lambda: F.conv2d(x, w, bias))]
            if i > 1:  # the first convolution's input is the image: no gradient flows to it
                passes.append(("backward to input", lambda: torch.ops.aten.convolution_backward(
                    grad, x, w, [w.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, False, False])))
            passes.append(("backward to weights", lambda: torch.ops.aten.convolution_backward(
                grad, x, w, [w.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, True])))
            label = f"{i}: {shape[1]}->{w.shape[0]} on {shape[2]}x{shape[3]}"
            for pass_name, fn in passes:
                ms = timed(fn, args.repeats)
                total += ms
                rows.append((label, pass_name, ms, flop / ms / 1e6))
                label = ""
        best = max([product] + [rate for *_, rate in rows])
        print(f"\n{name}: matrix product {n}^3 {product:.0f} GFLOP/s; best rate seen {best:.0f} GFLOP/s")
        print(f"  {'convolution':<24} {'pass':<19} {'ms':>6} {'GFLOP/s':>8} {'of best':>8}")
        for label, pass_name, ms, rate in rows:
            print(f"  {label:<24} {pass_name:<19} {ms:>6.2f} {rate:>8.0f} {rate / best:>8.0%}")
        step_ms = timed(cnn_step(bf16=dtype == torch.bfloat16), args.repeats)
        print(f"  convolutions {total:.2f} ms of a {step_ms:.2f} ms training step ({total / step_ms:.0%}); "
              f"everything else {step_ms - total:.2f} ms")


if __name__ == "__main__":
    main()

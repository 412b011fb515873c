"""The training engine: what makes the tutorials train fast, kept apart from their Keras recipe.

`models/base.py` says what a tutorial is (network, loss, optimizer, metrics). This module decides how its
steps run. Its contract, all of it:

- `Engine` is the LightningModule a recipe builds on. The recipe keeps its network in `self.net`, runs
  it through `self.run_net(x)`, and gives `loss_and_stats(logits, labels)` (the batch's loss and a tensor
  of sums for the epoch, without side effects) and `count(stage, stats, samples)`; `train_loss(batch)`,
  what a plain automatic-optimization `training_step` would return, is built from the two and may be
  overridden for eager steps (compiled whole steps call `loss_and_stats`). It may set the hyperparameters `compile`
  (bool), `channels_last` and `compiled_steps` (bool or None); absent means off and automatic.
- Optimization is manual, one `train_loss` per optimizer step, unless the run asks for gradient clipping
  or accumulation, which only Lightning's automatic loop provides (`needs_lightning_loop`); the choice is
  made whenever Lightning attaches a Trainer. `configure_optimizers` returns one optimizer and no
  learning-rate scheduler: Lightning steps no schedulers in manual optimization.
- Step groups (Keras' `steps_per_execution`): in manual mode a DataModule may hand over k batches per
  Lightning batch, wrapped by `StepGroups`; `steps_per_batch` says which k it may use. The updates are
  the same as with single batches; Lightning's per-batch loop is paid once per group.
- Direct steps: inside `training_step` each update goes straight through torch (`loss.backward()`,
  `optimizer.step()`) when Lightning's wrappers would add nothing (`direct_steps_possible`); otherwise
  through `manual_backward` and `LightningOptimizer.step`, so every hook runs. The one private Lightning
  call, the manual loop's step counter, is in `_direct_step`; tests/test_engine.py fails loudly if a
  Lightning upgrade moves it.
- Device settings: channels-last memory format on the CPU for networks with convolutions, the optional
  `torch.compile`, and no per-step NVML probe on machines with no CUDA device.
- The network runs as `pool_before_relu(net)`: the same modules (so the same parameters, state_dict and
  exports), with each ReLU that Keras puts before a MaxPool moved after it. `self.net` keeps Keras'
  order.
- A NaN or infinite training loss stops the fit on every rank with `TrainingDiverged`, checked once per
  Lightning batch so that no step waits on the host.
- Small steps, decided at a fit's first training batch:
  - Eager steps of a network whose forward pass over one training batch takes fewer than
    `ONE_THREAD_MACS` multiply-adds run on one intra-op thread for the whole fit, on the CPU, unless
    OMP_NUM_THREADS is set (`one_thread_wanted`: softmax_regression, and tiny_mlp or fashion_mlp with
    compiled_steps false; not dense512 or the cnn). Compiled steps keep torch's threads.
  - Whole compiled steps (`WholeStep`): the hyperparameter `compiled_steps` (bool or None). None is the
    rule `whole_steps_wanted` states: on the CPU, for networks made only of COMPILED_LAYERS, in fits of
    at least COMPILE_PAYS_STEPS steps (tiny_mlp and fashion_mlp), with direct steps, full precision and an
    optimizer `optim.functional_update` covers. True asks for them wherever they can run (one line of
    error where they cannot); False keeps eager steps. The compile (seconds) counts in the first epoch;
    torch's inductor cache makes a second fit's shorter.
- `steps_per_epoch(trainer)`: optimizer steps per epoch, as Keras counts them, for progress lines.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from typing import Iterable, Iterator

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.func import functional_call, grad_and_value

from mnist_lit.errors import UserError
from mnist_lit.optim import Update, functional_update

Batch = tuple[torch.Tensor, torch.Tensor]

# hooks Lightning runs around each backward and optimizer step; when nothing overrides them, a step
# straight through torch does the same work without Lightning's per-step dispatch
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
# the LightningOptimizer methods `_direct_step` calls: they count the step for global_step and max_steps
PRIVATE_STEP_COUNTER = ("_on_before_step", "_on_after_step")
# set to "1" by `import lightning`; every torch optimizer step then asks NVML whether CUDA is there
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
# with steps_per_execution 0, a group holds about this many samples
GROUP_SAMPLES = 1024
# An eager training step whose forward pass takes fewer multiply-adds than this runs on one intra-op thread:
# its few dozen small kernels each cost less than waking a second thread for them
# (docs/benchmarks.md#small-steps-one-thread-and-one-compiled-program)
ONE_THREAD_MACS = 10_000_000
# the automatic choice compiles whole steps only for fits at least this long, which earn the compile back
COMPILE_PAYS_STEPS = 10_000
# the layers a compiled whole step was measured faster for; the cnn's convolutions and pooling were
# slower compiled (docs/benchmarks.md#the-cnn-against-keras-what-was-tried)
COMPILED_LAYERS = (nn.Sequential, nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Identity)


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite."""


# ---------------------------------------------------------------- decisions about a run


def needs_lightning_loop(trainer: L.Trainer | None) -> bool:
    """Gradient clipping and accumulation exist only in Lightning's automatic optimization loop."""
    return trainer is None or bool(trainer.gradient_clip_val or trainer.accumulate_grad_batches != 1)


def counts_batches(trainer: L.Trainer) -> bool:
    """Whether a Trainer flag counts training batches (limit_train_batches, val_check_interval,
    fast_dev_run): then batches stay single, so the count means what the user meant."""
    def everything(value) -> bool:  # Lightning reads 1.0 as "all" and the int 1 as "one batch"
        return isinstance(value, float) and value == 1.0
    return not (everything(trainer.limit_train_batches) and everything(trainer.val_check_interval))


def steps_per_batch(trainer: L.Trainer | None, requested: int, batch_size: int) -> int:
    """How many batches a DataModule may group into one Lightning training batch.

    `requested` is the user's steps_per_execution (0: about GROUP_SAMPLES samples per group). Always 1
    outside a fit, with Lightning's automatic loop, or when a Trainer flag counts batches.
    """
    module = trainer.lightning_module if trainer is not None else None
    if module is None or module.automatic_optimization or counts_batches(trainer):
        return 1
    return requested or max(1, GROUP_SAMPLES // batch_size)


def direct_steps_possible(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """True when Lightning's backward and optimizer-step wrappers would add nothing but time.

    That is one device, full precision or bf16 autocast (no gradient scaler), no profiler, and no
    callback or module code hooked onto backward or the optimizer step.
    """
    plugin = trainer.precision_plugin
    plain_precision = type(plugin) is Precision or (type(plugin) is MixedPrecision and plugin.scaler is None)
    hooked = any(is_overridden(h, module, L.LightningModule) for h in (*STEP_HOOKS, "backward")) or any(
        is_overridden(h, cb, L.Callback) for cb in trainer.callbacks for h in STEP_HOOKS)
    return (type(trainer.strategy) is SingleDeviceStrategy and plain_precision
            and isinstance(trainer.profiler, PassThroughProfiler) and not hooked)


def forward_macs(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of the Linear and Conv2d layers in one forward pass of the batch `x`."""
    total = 0

    def add(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        else:
            kh, kw = module.kernel_size
            total += output.numel() * module.in_channels // module.groups * kh * kw
    hooks = [m.register_forward_hook(add) for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return total * len(x)


def fit_steps(trainer: L.Trainer) -> float:
    """Optimizer steps the fit will take at most (inf for a fit without an end)."""
    if trainer.max_steps > 0:
        return trainer.max_steps
    epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else math.inf
    return steps_per_epoch(trainer) * epochs


def one_thread_wanted(net: nn.Module, x: torch.Tensor, compiled: bool) -> bool:
    """The thread rule (module docstring): eager CPU steps of a batch `x` smaller than ONE_THREAD_MACS, when
    OMP_NUM_THREADS leaves the choice to mnist_lit."""
    return (not compiled and x.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ
            and forward_macs(net, x) < ONE_THREAD_MACS)


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU code needs (inductor's default, or $CXX), if there is one."""
    return shutil.which(os.environ.get("CXX", "g++"))


def whole_steps_wanted(choice: bool | None, net: nn.Module, steps: float, on_cpu: bool) -> bool:
    """The automatic choice (`choice` None): compile whole steps on the CPU, for networks made only of
    COMPILED_LAYERS, in fits of at least COMPILE_PAYS_STEPS steps, where a C++ compiler is installed.
    True or False is the user's."""
    if choice is not None:
        return choice
    return (on_cpu and steps >= COMPILE_PAYS_STEPS and all(isinstance(m, COMPILED_LAYERS) for m in net.modules())
            and cpp_compiler() is not None)


def steps_per_epoch(trainer: L.Trainer) -> int | float:
    """Optimizer steps in an epoch: Lightning's batch count times the loader's steps per batch."""
    loader = trainer.train_dataloader
    per_batch = getattr(loader, "steps_per_execution", 1)
    steps = trainer.num_training_batches * per_batch
    return min(steps, getattr(loader, "steps_per_epoch", steps))


# ---------------------------------------------------------------- step groups


def is_group(batch) -> bool:
    """A group of (images, labels) batches, not one collated [images, labels]."""
    return isinstance(batch, list) and bool(batch) and isinstance(batch[0], (tuple, list))


class StepGroups:
    """Batches of a sized iterable handed over k at a time, as lists (the last one may be shorter).

    `steps_per_epoch` is the number of batches, `steps_per_execution` is k.
    """

    def __init__(self, batches: Iterable[Batch], steps_per_execution: int) -> None:
        self.batches, self.steps_per_execution = batches, steps_per_execution

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    def __len__(self) -> int:
        return math.ceil(len(self.batches) / self.steps_per_execution)

    def __iter__(self) -> Iterator[list[Batch]]:
        group: list[Batch] = []
        for batch in self.batches:
            group.append(batch)
            if len(group) == self.steps_per_execution:
                yield group
                group = []
        if group:
            yield group


# ---------------------------------------------------------------- the network as it runs


def pool_before_relu(net: nn.Module) -> nn.Module:
    """`net` with every ReLU that comes right before a MaxPool2d moved after it, sharing the modules.

    ReLU is monotonic, so it commutes with max: max-pooling first gives the same values and the same
    gradients, and the ReLU then runs on a quarter of the values (for the cnn, a step takes less time:
    docs/benchmarks.md#the-cnn-against-keras-what-was-tried). Networks that are not an `nn.Sequential`, or
    have no such pair, are returned as they are.
    """
    if not isinstance(net, nn.Sequential):
        return net
    modules = list(net)
    swapped = False
    for i in range(len(modules) - 1):
        if type(modules[i]) is nn.ReLU and type(modules[i + 1]) is nn.MaxPool2d:
            modules[i], modules[i + 1] = modules[i + 1], modules[i]
            swapped = True
    return nn.Sequential(*modules) if swapped else net


# ---------------------------------------------------------------- one compiled program a step


class WholeStep:
    """Forward, loss, backward and the optimizer's update of one batch as a single `torch.compile` program.

    torch.func differentiates a functional call of the network, and the update is the optimizer's own
    arithmetic written as tensor ops (`optim.functional_update`), writing into the optimizer's state, so
    an eager step, a checkpoint or a resume sees the same optimizer. Batches of the first batch's shape
    run compiled; another shape (an epoch's short last batch) runs eagerly rather than compile again.
    """

    def __init__(self, module: Engine, net: nn.Module, optimizer: torch.optim.Optimizer, update: Update) -> None:
        names = {id(p): name for name, p in net.named_parameters()}
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.names = [names[id(p)] for p in self.params]
        self.module, self.net, self.update = module, net, update
        self.shape: torch.Size | None = None
        self.ran = False  # whether a step has run compiled (the first call compiles)
        # a CUDA build of torch on a machine without CUDA warns while it sets up its C++ compiler, about
        # CUDA, which a CPU program never uses
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self.program = torch.compile(self._step, fullgraph=True, dynamic=False)

    @classmethod
    def build(cls, module: Engine, optimizer: torch.optim.Optimizer) -> WholeStep | None:
        """None when the optimizer, or a parameter outside the network, is not covered."""
        net = pool_before_relu(module.net)
        update = functional_update(optimizer)
        in_net = {id(p) for p in net.parameters()}
        if update is None or any(id(p) not in in_net for g in optimizer.param_groups for p in g["params"]):
            return None
        return cls(module, net, optimizer, update)

    def takes(self, x: torch.Tensor) -> bool:
        if self.shape is None:
            self.shape = x.shape
        return x.shape == self.shape

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def loss_of(weights: list[torch.Tensor]):
            logits = functional_call(self.net, dict(zip(self.names, weights)), (x,))
            return self.module.loss_and_stats(logits, y)
        grads, (loss, stats) = grad_and_value(loss_of, has_aux=True)([p.detach() for p in self.params])
        with torch.no_grad():
            self.update(grads)
        return loss.detach(), stats

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.program(x, y)
        self.ran = True
        return result


# ---------------------------------------------------------------- the module


def _direct_step(optimizer: LightningOptimizer, loss: torch.Tensor) -> None:
    """One update straight through torch, counted by Lightning's manual loop as `optimizer.step()` is.

    Lightning has no public way to count a step it did not run, so this calls the two private callables
    `LightningOptimizer.step` wraps the step in (`PRIVATE_STEP_COUNTER`), which Lightning's manual loop
    points at its own step counter while it runs.
    """
    optimizer._on_before_step()
    optimizer.optimizer.zero_grad()
    loss.backward()
    optimizer.optimizer.step()
    optimizer._on_after_step()


class Engine(L.LightningModule):
    """A LightningModule whose training steps run as the module docstring says."""

    net: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._direct_steps = False  # per fit, set in on_train_start
        self._channels_last = False  # set in setup, once the device is known
        self._nvml_check: str | None = None  # Lightning's NVML setting before a fit, put back after it
        self._planned = False  # per fit: threads and whole steps are chosen at its first training batch
        self._threads: int | None = None  # the intra-op threads of this fit, when the engine chose them
        self._threads_before = 0
        self._whole: WholeStep | None = None

    def loss_and_stats(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss and a tensor of sums for the epoch, without side effects."""
        raise NotImplementedError

    def count(self, stage: str, stats: torch.Tensor, samples: int) -> None:
        """Add a batch's `loss_and_stats` sums to the epoch's."""
        raise NotImplementedError

    def train_loss(self, batch: Batch) -> torch.Tensor:
        x, y = batch
        loss, stats = self.loss_and_stats(self.run_net(x), y)
        self.count("train", stats, y.numel())
        return loss

    # ------------------------------------------------------------ device settings

    def setup(self, stage: str) -> None:
        on_cpu = self.trainer.strategy.root_device.type == "cpu"
        choice = self.hparams.get("channels_last")
        if choice is None:  # measured faster on the CPU for the cnn; not measured on GPUs
            choice = on_cpu and any(isinstance(m, nn.Conv2d) for m in self.net.modules())
        self._channels_last = bool(choice)
        if self._channels_last:  # strides only: same values, same state_dict, same exports
            self.net.to(memory_format=torch.channels_last)
        if stage == "fit":
            self._skip_nvml_probe(on_cpu)
        if not hasattr(self, "_running"):
            # kept outside the module tree: checkpoints and exports keep the plain network's names
            running = pool_before_relu(self.net)
            object.__setattr__(self, "_running", torch.compile(running) if self.hparams.get("compile") else running)

    def _skip_nvml_probe(self, on_cpu: bool) -> None:
        """With no CUDA device at all, each optimizer step of a CUDA build of torch re-probes NVML, a cost
        the size of a small model's step (docs/benchmarks.md#speed), because Lightning asked for NVML-based
        checks, which only matter once CUDA can start. Drop the request for this fit; `teardown` puts it back."""
        self._nvml_check = os.environ.get(NVML_CHECK)
        if on_cpu and self._nvml_check == "1" and torch.cuda.device_count() == 0:
            del os.environ[NVML_CHECK]

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self._nvml_check is not None:
            os.environ[NVML_CHECK] = self._nvml_check
        if stage == "fit" and self._threads is not None:
            torch.set_num_threads(self._threads_before)
            self._threads = None

    def on_exception(self, exception: BaseException) -> None:  # Lightning skips teardown after an exception
        self.teardown("fit")

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last and x.dim() == 4 else x

    def run_net(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, "_running", self.net)(self._memory_format(x))

    # ------------------------------------------------------------ steps

    def _attach(self, trainer: L.Trainer | None) -> None:
        L.LightningModule.trainer.fset(self, trainer)
        if trainer is not None:  # Lightning reads the choice from here on: set it before anything else does
            self.automatic_optimization = needs_lightning_loop(trainer)

    # LightningModule's public `trainer` property: Lightning assigns it as a run starts (fit, validate, test,
    # predict), before it checks the loop configuration or calls any hook
    trainer = property(L.LightningModule.trainer.fget, _attach)

    def on_train_start(self) -> None:
        self._direct_steps = not self.automatic_optimization and direct_steps_possible(self.trainer, self)
        self._planned, self._threads, self._whole = False, None, None
        if self.automatic_optimization and self.hparams.get("compiled_steps"):
            raise UserError(f"{type(self).__name__}: compiled_steps=True cannot run with gradient_clip_val or "
                            "accumulate_grad_batches, which need Lightning's own training loop; drop one of them")

    def _plan(self, x: torch.Tensor) -> None:
        """Threads and whole steps for this fit, from its first training batch (module docstring)."""
        self._planned = True
        on_cpu = x.device.type == "cpu"
        self._whole = self._plan_whole_steps(on_cpu)
        if one_thread_wanted(self.net, x, compiled=self._whole is not None):
            # for the rest of the fit, its validation and the data's conversions included: switching back and
            # forth would wake the second thread for each of them; `teardown` puts the count back
            self._threads, self._threads_before = 1, torch.get_num_threads()
            torch.set_num_threads(1)

    def _plan_whole_steps(self, on_cpu: bool) -> WholeStep | None:
        choice = self.hparams.get("compiled_steps")
        if not whole_steps_wanted(choice, self.net, fit_steps(self.trainer), on_cpu):
            return None
        if on_cpu and cpp_compiler() is None:
            raise UserError(f"{type(self).__name__}: compiled_steps=True needs a C++ compiler for torch.compile "
                            f"({os.environ.get('CXX', 'g++')} not found; set CXX, or install g++)")
        precision_plain = type(self.trainer.precision_plugin) is Precision
        optimizer = self.optimizers().optimizer
        whole = WholeStep.build(self, optimizer) if self._direct_steps and precision_plain else None
        if whole is None and choice:
            raise UserError(f"{type(self).__name__}: compiled_steps=True needs one device, full precision, no "
                            f"step hooks and a Keras optimizer (got {type(optimizer).__name__}); drop it to let "
                            "mnist_lit choose")
        if whole is not None and self.trainer.is_global_zero:  # the first step takes seconds: say why
            print("Compiling the training step into one program (once, seconds; "
                  "--model.init_args.compiled_steps false trains without)", flush=True)
        return whole

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self._trainer is None or self.automatic_optimization:  # Lightning's loop does backward and step
            loss = self.train_loss(batch)
            if self._trainer is not None:
                self.check_finite([loss.detach()], self.trainer.global_step)
            return loss
        micros = batch if is_group(batch) else [batch]
        if not self._planned:
            self._plan(micros[0][0])
        return self._manual_steps(micros)

    def _manual_steps(self, micros: list[Batch]) -> torch.Tensor:
        first_step = self.trainer.global_step
        optimizer = self.optimizers()
        max_steps = self.trainer.max_steps
        budget = max_steps - first_step if max_steps > 0 else None
        losses = []
        for micro in micros:
            if budget is not None and len(losses) >= budget:
                break
            loss = self._whole_step(optimizer, micro) if self._whole is not None else None
            if loss is None:
                loss = self.train_loss(micro)
                if self._direct_steps:
                    _direct_step(optimizer, loss)
                else:
                    optimizer.zero_grad()
                    self.manual_backward(loss)
                    optimizer.step()  # counts the step and applies precision plugins and hooks
            losses.append(loss.detach())
        self.check_finite(losses, first_step)
        return loss

    def _whole_step(self, optimizer: LightningOptimizer, micro: Batch) -> torch.Tensor | None:
        """One compiled step, or None for an eager one: a batch of another shape, or, when mnist_lit chose
        compiled steps, a first step that did not compile (said in one line; eager steps from then on)."""
        whole, (x, y) = self._whole, micro
        if not whole.takes(x):
            return None
        optimizer._on_before_step()  # counted as `_direct_step` counts its steps
        try:
            loss, stats = whole(self._memory_format(x), y)
        except Exception as error:  # the first call compiles; later ones run what it compiled
            if whole.ran:
                raise
            reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
            if self.hparams.get("compiled_steps"):
                raise UserError(f"{type(self).__name__}: compiled_steps=True: the training step did not compile "
                                f"({reason}); drop it to train with eager steps") from error
            self._whole = None
            if self.trainer.is_global_zero:
                print(f"The training step did not compile ({reason}); training with eager steps", flush=True)
            return None
        optimizer._on_after_step()
        self.count("train", stats, y.numel())
        return loss

    def check_finite(self, losses: list[torch.Tensor], first_step: int) -> None:
        """Stop at the first NaN/inf loss: one host sync per group of steps, all ranks stop together.

        It raises before ModelCheckpoint's epoch-end save, so last.ckpt keeps the last good epoch.
        """
        bad = ~torch.isfinite(torch.stack(losses))
        flags = torch.cat([bad.any().float().view(1), bad.float()])
        if self.trainer.world_size > 1:  # so no rank waits in a collective for one that stopped
            flags = self.trainer.strategy.reduce(flags, reduce_op="sum")
        if flags[0] > 0:
            index = int(flags[1:].nonzero()[0]) if flags[1:].any() else 0
            value = losses[index].item() if bad.any() else float("nan")
            raise TrainingDiverged(
                f"training loss became {value} at step {first_step + index + 1} (epoch {self.current_epoch + 1}); "
                "stopped, and last.ckpt still holds the last finished epoch"
            )

"""The training step and its speed devices (models/base.py, compiled_step.py, threads.py, data.StepGroups):
each changes the time a fit takes, never its updates, and a user's own settings win."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mnist_lit import compiled_step, model_files, threads
from mnist_lit.cli import MnistCLI, quiet_lightning, resolve_config_args
from mnist_lit.data import MNISTDataModule, StepGroups, TensorBatches, is_group, load_split
from mnist_lit.models import CNN, TinyMLP
from mnist_lit.optim import KerasAdam
from tests.helpers import REPO, TRAIN, fit


def test_the_package_uses_no_private_lightning_members():
    """What a minor Lightning release may change or remove: hand-written CLI records, private step counters,
    modules hidden from the module tree."""
    private = re.compile(r"\._on_(before|after)_step|_instantiator|_class_path|object\.__setattr__")
    found = [f"{p.relative_to(REPO)}:{n}" for p in (REPO / "mnist_lit").rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert not found


def test_step_groups_hand_over_the_same_batches_k_at_a_time():
    n = 103
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28)
    single = TensorBatches(images, torch.arange(n), 10, shuffle=True)
    grouped = StepGroups(single, 4)
    groups = list(grouped)
    assert len(grouped) == 3 and [len(g) for g in groups] == [4, 4, 3] and grouped.steps_per_epoch == 11
    assert all(is_group(g) for g in groups) and not is_group(next(iter(single)))
    flat = [y for group in groups for _, y in group]
    assert len(flat) == 11 and all(torch.equal(a, b) for a, b in zip(flat, [y for _, y in single]))


def _trainer(limit=1.0, interval=1.0):
    return SimpleNamespace(limit_train_batches=limit, val_check_interval=interval)


@pytest.mark.parametrize("trainer, requested, expected", [
    (_trainer(), 0, 8),                  # about 1024 samples per group at batch 128
    (_trainer(), 3, 3),                  # the user's steps_per_execution
    (_trainer(limit=5), 3, 1),           # the user counts batches: they stay single
    (_trainer(interval=0.5), 0, 1),
    (None, 3, 1),                        # outside a fit
])
def test_groups_only_where_a_batch_count_keeps_its_meaning(trainer, requested, expected):
    data = MNISTDataModule(steps_per_execution=requested)
    assert data._steps_per_execution(trainer, 128) == expected


def test_steps_are_counted_by_lightning_and_stop_at_max_steps(data_root: Path):
    """Groups of 4 steps of batch 32, 20 steps an epoch: max_steps 27 ends inside epoch 2's second group."""
    torch.manual_seed(0)
    updates = []

    class Count(Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.optimizers[0].register_step_post_hook(lambda *_: updates.append(1))

    trainer = L.Trainer(max_steps=27, max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Count()])
    data = MNISTDataModule(data_dir=str(data_root), batch_size=32, steps_per_execution=4, download=False)
    trainer.fit(TinyMLP(), datamodule=data)
    assert TRAIN // 32 == 20 and trainer.global_step == 27 == len(updates)
    assert isinstance(trainer.train_dataloader, StepGroups)


# ---------------------------------------------------------------- whole fits through the CLI, watched by callbacks


class Observed(Callback):
    """What a fit really did: the dtype the network trained in, Lightning batches per epoch, and the
    gradient norm each update used. Every instance starts empty."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()
        self.batches_per_epoch: list[int] = []
        self.norms_used: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        first = next(m for m in pl_module.net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
        first.register_forward_hook(lambda module, args, out: self.dtypes.add(out.dtype) if module.training else None)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.batches_per_epoch.append(0)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.batches_per_epoch[-1] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # after clipping, in manual steps
        grads = [p.grad.norm() for p in pl_module.net.parameters() if p.grad is not None]
        if grads:
            self.norms_used.append(float(torch.linalg.vector_norm(torch.stack(grads))))


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


def test_steps_per_execution_changes_speed_not_results(data_root: Path, tmp_path: Path):
    results, spies = [], []
    for k in ("1", "7"):
        spies.append(observed_fit("tiny_mlp", data_root, tmp_path / k, "--trainer.max_epochs", "2",
                                  "--data.steps_per_execution", k))
        results.append(json.loads((tmp_path / k / "metrics.json").read_text()))
    # 20 steps an epoch either way; Lightning sees one batch per step, or one group of up to 7 (7 + 7 + 6)
    assert spies[0].batches_per_epoch == [20, 20] and spies[1].batches_per_epoch == [3, 3]
    assert results[0]["steps"] == results[1]["steps"] == 40
    assert [e["train_loss"] for e in results[0]["history"]] == [e["train_loss"] for e in results[1]["history"]]
    assert results[0]["test_acc"] == results[1]["test_acc"]


def test_metrics_csv_holds_one_row_per_epoch_with_the_steps_of_metrics_json(data_root: Path, tmp_path: Path):
    assert fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "3") == 0  # tiny_mlp validates on test
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rows = list(csv.DictReader(next(tmp_path.glob("logs/*/metrics.csv")).open()))
    epochs, test = rows[:-1], rows[-1]
    assert [int(r["epoch"]) for r in epochs] == [0, 1, 2] and [int(r["step"]) for r in epochs] == [20, 40, 60]
    for row, recorded in zip(epochs, metrics["history"]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(row[key]) == pytest.approx(recorded[key], rel=1e-6)
    assert int(test["step"]) == metrics["steps"] == 60 and float(test["test_acc"]) == pytest.approx(metrics["test_acc"])


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
    """Per fit: whether the network trains channels-last (the flag, and the strides of a conv kernel with
    more than one input channel, where the two layouts differ)."""
    seen: list[tuple[bool, bool]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        kernels = [p for p in pl_module.net.parameters() if p.dim() == 4]
        w = kernels[-1] if kernels else None
        strided = w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)
        type(self).seen.append((pl_module.use_channels_last, strided))


def test_channels_last_is_on_for_the_cnn_on_cpu_and_changes_no_result(data_root: Path, tmp_path: Path):
    FormatSpy.seen.clear()
    spy = "--trainer.callbacks+=tests.test_training.FormatSpy"
    runs = {"auto": [], "off": ["--model.init_args.channels_last", "false"]}
    for name, extra in runs.items():
        assert fit("cnn", data_root, tmp_path / name, "--trainer.max_epochs", "1", spy, *extra) == 0
    assert fit("dense512", data_root, tmp_path / "dense", "--trainer.max_epochs", "1", spy) == 0
    assert FormatSpy.seen == [(True, True), (False, False), (False, False)]
    auto, off = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in runs)
    assert abs(auto["test_loss"] - off["test_loss"]) < 1e-4  # other kernels, the same arithmetic
    # the checkpoint of a channels-last fit, loaded into a plain network, computes the test loss it recorded
    net, _ = model_files.checkpoint_model(tmp_path / "auto" / "model.ckpt")
    images, labels = load_split(data_root / "MNIST" / "raw", "test")
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(net(images.float() / 255), labels)
    assert float(loss) == pytest.approx(auto["test_loss"], abs=1e-5)


def test_global_clipnorm_clips_each_update(data_root: Path, tmp_path: Path):
    plain = observed_fit("tiny_mlp", data_root, tmp_path / "plain", "--trainer.max_epochs", "1")
    clipped = observed_fit("tiny_mlp", data_root, tmp_path / "clipped", "--trainer.max_epochs", "1",
                           "--model.init_args.global_clipnorm", "0.05")
    assert max(plain.norms_used) > 0.1  # there was something to clip...
    assert len(clipped.norms_used) == 20 and max(clipped.norms_used) <= 0.05 * (1 + 1e-5)  # ...and it was


@pytest.mark.parametrize("flag, value, named", [("--trainer.gradient_clip_val", "0.5", "global_clipnorm"),
                                                ("--trainer.accumulate_grad_batches", "2", "batch_size")])
def test_trainer_flags_of_automatic_optimization_name_the_tutorials_own(data_root: Path, tmp_path: Path, capsys,
                                                                        flag: str, value: str, named: str):
    assert fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "1", flag, value) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and named in err[0]


# ---------------------------------------------------------------- small steps: threads, one compiled program


def test_the_compile_rule_chooses_what_was_measured_faster():
    tiny, cnn = TinyMLP().net, CNN().net
    if compiled_step.cpp_compiler() is not None:
        assert compiled_step.worth_compiling(tiny, 37_500, on_cpu=True)  # tiny_mlp's 20 epochs of batch 32
    assert not compiled_step.worth_compiling(tiny, 2_000, on_cpu=True)  # too short to earn its compile
    assert not compiled_step.worth_compiling(tiny, 37_500, on_cpu=False)  # not measured on GPUs
    assert not compiled_step.worth_compiling(cnn, 4_690, on_cpu=True)  # convolutions: slower compiled


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


def test_fits_in_one_process_each_get_their_own_compiled_program():
    """A tuning study or a notebook runs many fits in one process: torch.compile's limit on programs per
    function (8; 1 here) must not turn the later ones into a failure or a silent eager step."""
    if compiled_step.cpp_compiler() is None:
        pytest.skip("no C++ compiler: torch.compile cannot build CPU code here")
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    with torch._dynamo.config.patch(recompile_limit=1):  # put back when the block ends
        for _ in range(3):
            module = TinyMLP(dropout=0.0)
            step = compiled_step.CompiledStep(module.net, KerasAdam(module.net.parameters()), module.loss_and_totals)
            before = [p.detach().clone() for p in module.net.parameters()]
            step(x, y)  # with fullgraph=True, a program over the limit raises instead of running eagerly
            assert all(not torch.equal(a, p) for a, p in zip(before, module.net.parameters()))


class StepSpy(Callback):
    """Per fit: whether steps ran as one compiled program."""
    seen: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            type(self).seen.append(pl_module.compiled_step is not None)


def weights_after(data_root: Path, out: Path, *extra: str) -> list[torch.Tensor]:
    StepSpy.seen.clear()
    before = torch.get_num_threads()
    assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "2",
               "--trainer.callbacks+=tests.test_training.StepSpy", *extra) == 0
    assert torch.get_num_threads() == before  # the fit's thread count is not left behind
    return list(torch.load(out / "model.ckpt", weights_only=True)["state_dict"].values())


@pytest.mark.slow
def test_compiled_steps_make_the_eager_updates_and_keep_dropout_random(data_root: Path, tmp_path: Path):
    """20 steps an epoch of batch 32, 2 epochs: compiled and eager steps end at the same weights (no dropout);
    with dropout the compiled fit repeats itself under the same seed and differs under another."""
    eager = weights_after(data_root, tmp_path / "eager", "--model.init_args.dropout", "0")
    assert StepSpy.seen == [False, False]  # a short fit: not worth a compile
    compiled = weights_after(data_root, tmp_path / "compiled", "--model.init_args.dropout", "0",
                             "--model.init_args.compiled_steps", "true")
    assert StepSpy.seen == [True, True]
    assert max(float((a - b).abs().max()) for a, b in zip(eager, compiled)) < 1e-5
    runs = [weights_after(data_root, tmp_path / f"drop{i}", "--model.init_args.compiled_steps", "true",
                          "--seed_everything", str(seed)) for i, seed in enumerate((0, 0, 1))]
    # the same masks under the same seed (the sums may differ in their last bits: the thread count follows
    # the machine's load), other masks under another
    assert max(float((a - b).abs().max()) for a, b in zip(runs[0], runs[1])) < 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(runs[0], runs[2])) > 1e-3
    # the dropout mask was on: the same seed without dropout ends elsewhere
    assert max(float((a - b).abs().max()) for a, b in zip(runs[0], compiled)) > 1e-3
    # the optimizer state a compiled fit saves is the one eager steps keep: a resume may take either path
    states = [torch.load(tmp_path / n / "last.ckpt", weights_only=True)["optimizer_states"][0]["state"]
              for n in ("eager", "compiled")]
    assert [sorted(s) for s in states[0].values()] == [sorted(s) for s in states[1].values()]
    assert float(states[1][0]["step"]) == 40


def test_compiled_steps_where_they_cannot_run_is_one_line(data_root: Path, tmp_path: Path, capsys):
    code = fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "1", "--model.init_args.compiled_steps", "true",
               "--model.init_args.global_clipnorm", "0.5")
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiled_steps" in err[0] and "global_clipnorm" in err[0]


@pytest.mark.slow
def test_a_step_that_does_not_compile_trains_eagerly_when_mnist_lit_chose_it(data_root: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch, capsys):
    no_dropout = ("--model.init_args.dropout", "0")
    eager = weights_after(data_root, tmp_path / "eager", "--model.init_args.compiled_steps", "false", *no_dropout)

    def broken(self, x, y):
        raise RuntimeError("no compiler for this\nsecond line")
    monkeypatch.setattr(compiled_step.CompiledStep, "_step", broken)
    monkeypatch.setattr(compiled_step, "COMPILE_PAYS_STEPS", 1)  # this 40-step fit counts as long
    capsys.readouterr()
    fell_back = weights_after(data_root, tmp_path / "auto", *no_dropout)
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "compile" in line]
    assert len(said) == 2 and said[0].startswith("Compiling the training step")  # one line each, reason included
    assert said[1].startswith("The training step did not compile (") and said[1].endswith("training with eager steps")
    assert StepSpy.seen == [False, False]  # eager from the first step on
    assert max(float((a - b).abs().max()) for a, b in zip(eager, fell_back)) < 1e-5
    # asked for by name, it is an error instead, in one line
    assert fit("tiny_mlp", data_root, tmp_path / "asked", "--trainer.max_epochs", "1",
               "--model.init_args.compiled_steps", "true") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiled_steps=True: the training step did not compile" in err[0]

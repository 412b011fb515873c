"""The training engine (mnist_lit/engine.py): step groups, direct steps, device settings, clipping and accumulation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loops.optimization.manual import _ManualOptimization

from mnist_lit import engine, model_files
from mnist_lit.cli import MnistCLI, quiet_lightning, resolve_config_args
from mnist_lit.data import MNISTDataModule, TensorBatches, load_split
from mnist_lit.models import TinyMLP
from tests.helpers import TRAIN, fit


def test_step_groups_hand_over_the_same_batches_k_at_a_time():
    n = 103
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28)
    single = TensorBatches(images, torch.arange(n), 10, shuffle=True)
    grouped = engine.StepGroups(single, 4)
    groups = list(grouped)
    assert len(grouped) == 3 and [len(g) for g in groups] == [4, 4, 3] and grouped.steps_per_epoch == 11
    assert all(engine.is_group(g) for g in groups) and not engine.is_group(next(iter(single)))
    flat = [y for group in groups for _, y in group]
    assert len(flat) == 11 and all(torch.equal(a, b) for a, b in zip(flat, [y for _, y in single]))


def _trainer(automatic=False, limit=1.0, interval=1.0):
    module = SimpleNamespace(automatic_optimization=automatic)
    return SimpleNamespace(lightning_module=module, limit_train_batches=limit, val_check_interval=interval)


@pytest.mark.parametrize("trainer, requested, expected", [
    (_trainer(), 0, 8),                  # about 1024 samples per group at batch 128
    (_trainer(), 3, 3),                  # the user's steps_per_execution
    (_trainer(automatic=True), 3, 1),    # Lightning's loop (clipping, accumulation) takes one batch at a time
    (_trainer(limit=5), 3, 1),           # the user counts batches: they stay single
    (_trainer(interval=0.5), 0, 1),
    (None, 3, 1),                        # outside a fit
])
def test_groups_only_where_a_batch_count_keeps_its_meaning(trainer, requested, expected):
    assert engine.steps_per_batch(trainer, requested, 128) == expected


def test_lightning_still_has_the_private_step_counter_direct_steps_use():
    """`_direct_step` calls these two; if a Lightning upgrade renames them, this says so before a fit does."""
    # each LightningOptimizer holds them; Lightning's manual loop swaps in its own step counting while it runs
    optimizer = LightningOptimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    missing = [name for name in engine.PRIVATE_STEP_COUNTER if not callable(getattr(optimizer, name, None))]
    missing += [f"_ManualOptimization.{name}" for name in engine.PRIVATE_STEP_COUNTER
                if not callable(getattr(_ManualOptimization, name, None))]
    assert not missing, f"Lightning {L.__version__} no longer has {missing}: see mnist_lit.engine._direct_step"


class Seen(L.Callback):
    def __init__(self) -> None:
        self.direct: list[bool] = []
        self.automatic: list[bool] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.direct.append(pl_module._direct_steps)
        self.automatic.append(pl_module.automatic_optimization)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_direct_steps_are_counted_by_lightning_and_stop_at_max_steps(data_root: Path, clip):
    """Groups of 4 steps of batch 32, 20 steps an epoch: max_steps 27 ends inside epoch 2's second group.
    If Lightning stopped counting direct steps, the fit would run both epochs and global_step would differ."""
    torch.manual_seed(0)
    seen = Seen()
    trainer = L.Trainer(max_steps=27, max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[seen],
                        gradient_clip_val=clip)
    data = MNISTDataModule(data_dir=str(data_root), batch_size=32, steps_per_execution=4, download=False)
    trainer.fit(TinyMLP(), datamodule=data)
    assert TRAIN // 32 == 20 and trainer.global_step == 27 and len(seen.direct) == 2  # epoch 3 never starts
    if clip is None:
        assert seen.direct == [True, True] and seen.automatic == [False, False]
        assert isinstance(trainer.train_dataloader, engine.StepGroups)
    else:  # clipping needs Lightning's automatic loop: single batches, Lightning's own backward and step
        assert seen.direct == [False, False] and seen.automatic == [True, True]
        assert isinstance(trainer.train_dataloader, TensorBatches)


def test_a_second_fit_of_the_same_model_may_ask_for_clipping(data_root: Path):
    """The manual/automatic choice follows each Trainer, so one fit's choice never refuses the next fit."""
    model = TinyMLP()
    seen = []
    for clip in (None, 1.0, None):
        spy = Seen()
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[spy],
                            gradient_clip_val=clip)
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_root), batch_size=32, download=False))
        seen.append((spy.automatic, trainer.global_step))
    assert seen == [([False], 20), ([True], 20), ([False], 20)]


# ---------------------------------------------------------------- whole fits through the CLI, watched by callbacks


class Observed(Callback):
    """What a fit really did: the dtype the network trained in, Lightning steps per epoch, whether the
    network went through torch.compile, and the gradient norm each optimizer step was given. Every
    instance starts empty, so no test sees another's record."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()
        self.batches_per_epoch: list[int] = []
        self.compiled: list[bool] = []
        self.norms_before_clip: list[float] = []
        self.norms_used: list[float] = []
        self.updates: list[int] = []

    @staticmethod
    def grad_norm(module: torch.nn.Module) -> float:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()
                                                           if p.grad is not None])))

    def on_train_start(self, trainer, pl_module) -> None:
        first = next(m for m in pl_module.net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
        first.register_forward_hook(lambda module, args, out: self.dtypes.add(out.dtype) if module.training else None)
        for optimizer in trainer.optimizers:  # torch's own hook, after each update
            optimizer.register_step_post_hook(lambda *_: self.updates.append(trainer.global_step))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.batches_per_epoch.append(0)
        self.compiled.append(isinstance(getattr(pl_module, "_running", None), torch._dynamo.eval_frame.OptimizedModule))

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.batches_per_epoch[-1] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # before any clipping
        self.norms_before_clip.append(self.grad_norm(pl_module.net))

    def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:  # the last update's gradients
        if any(p.grad is not None for p in pl_module.net.parameters()):
            self.norms_used.append(self.grad_norm(pl_module.net))


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


class PathSpy(Callback):
    """Records, per fit, whether the model steps straight through torch, and Lightning's NVML setting."""
    direct: list[bool] = []
    nvml: list[str | None] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        type(self).direct.append(pl_module._direct_steps)
        type(self).nvml.append(os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"))


class StepHook(Callback):
    """A user callback on every optimizer step: it must still run, once per step."""
    calls = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        type(self).calls += 1


def test_user_step_hooks_still_run_and_the_direct_path_changes_no_update(data_root: Path, tmp_path: Path):
    results = {}
    spy = "--trainer.callbacks+=tests.test_engine.PathSpy"
    PathSpy.nvml.clear()  # the CLI builds these callbacks from their class paths: their records are class-wide
    StepHook.calls = 0
    for name, extra in (("direct", [spy]), ("hooked", [spy, "--trainer.callbacks+=tests.test_engine.StepHook"])):
        PathSpy.direct.clear()
        assert fit("tiny_mlp", data_root, tmp_path / name, "--trainer.max_epochs", "2", *extra) == 0
        results[name] = (PathSpy.direct[0], json.loads((tmp_path / name / "metrics.json").read_text()))
    assert results["direct"][0] is True and results["hooked"][0] is False
    # without a CUDA device the per-step NVML probe is skipped during fit, and the setting comes back
    assert PathSpy.nvml[0] == (None if torch.cuda.device_count() == 0 else "1")
    assert os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1"
    assert StepHook.calls == 40 == results["hooked"][1]["steps"]
    direct, hooked = results["direct"][1], results["hooked"][1]
    assert [e["train_loss"] for e in direct["history"]] == [e["train_loss"] for e in hooked["history"]]
    assert (direct["test_acc"], direct["test_loss"]) == (hooked["test_acc"], hooked["test_loss"])


class FormatSpy(Callback):
    """Records, per fit, whether the network trains channels-last (flag, and the strides of a conv kernel
    with more than one input channel, where the two layouts differ)."""
    seen: list[tuple[bool, bool]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        kernels = [p for p in pl_module.net.parameters() if p.dim() == 4]
        w = kernels[-1] if kernels else None
        strided = w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)
        type(self).seen.append((pl_module._channels_last, strided))


def test_channels_last_is_on_for_the_cnn_on_cpu_and_changes_no_result(data_root: Path, tmp_path: Path):
    FormatSpy.seen.clear()
    spy = "--trainer.callbacks+=tests.test_engine.FormatSpy"
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


def test_compiled_model_trains_like_eager_and_saves_plain_names(data_root: Path, tmp_path: Path):
    results, compiled = {}, {}
    for flag in ("false", "true"):
        compiled[flag] = observed_fit("dense512", data_root, tmp_path / flag, "--trainer.max_epochs", "1",
                                      "--model.init_args.compile", flag).compiled
        results[flag] = json.loads((tmp_path / flag / "metrics.json").read_text())
    assert compiled == {"false": [False], "true": [True]}
    assert abs(results["true"]["test_loss"] - results["false"]["test_loss"]) < 1e-3
    keys = torch.load(tmp_path / "true" / "model.ckpt", weights_only=True)["state_dict"].keys()
    assert sorted(keys) == ["net.1.bias", "net.1.weight", "net.3.bias", "net.3.weight"]


def test_gradient_clipping_and_accumulation_train(data_root: Path, tmp_path: Path):
    # both need Lightning's automatic optimization; the fast manual path is used otherwise
    spy = observed_fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "1", "--trainer.gradient_clip_val",
                       "0.05", "--trainer.accumulate_grad_batches", "2")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 10 == len(spy.updates)  # 20 batches, one update per two
    assert max(spy.norms_before_clip) > 0.1  # there was something to clip...
    assert len(spy.norms_used) >= 9 and max(spy.norms_used) <= 0.05 * (1 + 1e-5)  # ...and the updates used it clipped


# ---------------------------------------------------------------- small steps: one thread, one compiled program


def test_the_size_rules_choose_what_was_measured_faster():
    from mnist_lit.models import CNN, Dense512, TinyMLP

    x = torch.zeros(128, 1, 28, 28)
    assert engine.forward_macs(Dense512().net, x) == 128 * (784 * 512 + 512 * 10)
    assert engine.forward_macs(TinyMLP().net, x[:32]) < engine.ONE_THREAD_MACS < engine.forward_macs(Dense512().net, x)
    tiny, cnn = TinyMLP().net, CNN().net
    assert engine.whole_steps_wanted(None, tiny, 37_500, on_cpu=True)  # tiny_mlp's 20 epochs of batch 32
    assert not engine.whole_steps_wanted(None, tiny, 2_000, on_cpu=True)  # too short to earn its compile
    assert not engine.whole_steps_wanted(None, tiny, 37_500, on_cpu=False)  # not measured on GPUs
    assert not engine.whole_steps_wanted(None, cnn, 4_690, on_cpu=True)  # convolutions: slower compiled
    assert engine.whole_steps_wanted(True, cnn, 3, on_cpu=False) and not engine.whole_steps_wanted(False, tiny, 1e6, True)


class StepSpy(Callback):
    """Per fit: whether steps ran as one compiled program, and the intra-op threads a training step saw."""
    seen: list[tuple[bool, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            type(self).seen.append((pl_module._whole is not None, pl_module._threads))


def weights_after(data_root: Path, out: Path, *extra: str) -> list[torch.Tensor]:
    StepSpy.seen.clear()
    threads = torch.get_num_threads()
    assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "2", "--trainer.callbacks+=tests.test_engine.StepSpy",
               *extra) == 0
    assert torch.get_num_threads() == threads  # the fit's one thread is not left behind
    return list(torch.load(out / "model.ckpt", weights_only=True)["state_dict"].values())


def test_compiled_whole_steps_make_the_eager_updates_and_keep_dropout_random(data_root: Path, tmp_path: Path):
    """20 steps an epoch of batch 32, 2 epochs: compiled and eager steps end at the same weights (no dropout);
    with dropout the compiled fit repeats itself under the same seed and differs under another."""
    eager = weights_after(data_root, tmp_path / "eager", "--model.init_args.dropout", "0")
    assert StepSpy.seen == [(False, 1)] * 2  # a short fit: not worth a compile; a small step: one thread
    compiled = weights_after(data_root, tmp_path / "compiled", "--model.init_args.dropout", "0",
                             "--model.init_args.compiled_steps", "true")
    assert StepSpy.seen == [(True, None)] * 2  # compiled steps keep torch's threads
    assert max(float((a - b).abs().max()) for a, b in zip(eager, compiled)) < 1e-5
    runs = [weights_after(data_root, tmp_path / f"drop{i}", "--model.init_args.compiled_steps", "true",
                          "--seed_everything", str(seed)) for i, seed in enumerate((0, 0, 1))]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))
    # the dropout mask was on: the same seed without dropout ends elsewhere
    assert max(float((a - b).abs().max()) for a, b in zip(runs[0], compiled)) > 1e-3
    # the optimizer state a compiled fit saves is the one eager steps keep: a resume may take either path
    states = [torch.load(tmp_path / n / "last.ckpt", weights_only=True)["optimizer_states"][0]["state"]
              for n in ("eager", "compiled")]
    assert [sorted(s) for s in states[0].values()] == [sorted(s) for s in states[1].values()]
    assert float(states[1][0]["step"]) == 40


def test_compiled_steps_where_they_cannot_run_is_one_line(data_root: Path, tmp_path: Path, capsys):
    code = fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "1", "--model.init_args.compiled_steps", "true",
               "--trainer.gradient_clip_val", "0.5")
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiled_steps" in err[0] and "gradient_clip_val" in err[0]


def test_a_step_that_does_not_compile_trains_eagerly_when_mnist_lit_chose_it(data_root: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch, capsys):
    no_dropout = ("--model.init_args.dropout", "0")  # the masks of eager steps depend on the thread count
    eager = weights_after(data_root, tmp_path / "eager", "--model.init_args.compiled_steps", "false", *no_dropout)

    def broken(self, x, y):
        raise RuntimeError("no compiler for this\nsecond line")
    monkeypatch.setattr(engine.WholeStep, "_step", broken)
    monkeypatch.setattr(engine, "COMPILE_PAYS_STEPS", 1)  # this 40-step fit counts as long
    capsys.readouterr()
    fell_back = weights_after(data_root, tmp_path / "auto", *no_dropout)
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "compile" in line]
    assert len(said) == 2 and said[0].startswith("Compiling the training step")  # one line each, reason included
    assert said[1].startswith("The training step did not compile (") and said[1].endswith("training with eager steps")
    # eager from the first step on: the same updates, on the threads planned for compiled steps (other sums)
    assert StepSpy.seen == [(False, None)] * 2
    assert max(float((a - b).abs().max()) for a, b in zip(eager, fell_back)) < 1e-5
    # asked for by name, it is an error instead, in one line
    assert fit("tiny_mlp", data_root, tmp_path / "asked", "--trainer.max_epochs", "1",
               "--model.init_args.compiled_steps", "true") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiled_steps=True: the training step did not compile" in err[0]

"""The training engine's contract (mnist_lit/engine.py): step groups, the manual/automatic choice, and the
one private Lightning call it makes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loops.optimization.manual import _ManualOptimization

from mnist_lit import engine
from mnist_lit.data import MNISTDataModule, TensorBatches
from mnist_lit.models import TinyMLP
from tests.helpers import TRAIN


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

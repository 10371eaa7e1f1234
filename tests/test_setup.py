"""The trainer's pieces without a trainer: `training/setup.py`'s builders, and the checkpointer, train state,
optimizer, schedule and EMA a checkpoint holds, each built alone on the tiny model."""

import pytest
import torch
from accelerate import Accelerator

from cosmos_v2w_diffusers.models.components import build_transformer
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.parallel.parallel_dims import ParallelDims
from cosmos_v2w_diffusers.training.checkpointer import Checkpointer, RunRecord
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.optim import PowerEMA, build_lr_scheduler, build_optimizer
from cosmos_v2w_diffusers.training.run_config import resolve
from cosmos_v2w_diffusers.training.setup import resolve_for_clips
from cosmos_v2w_diffusers.training.state import train_state

ONE_PROCESS = ParallelDims(1, 0, 1, "single")


@pytest.fixture(autouse=True)
def accelerator() -> Accelerator:
    """The process's Accelerator (the builders' logging needs accelerate's state, which a trainer's builds)."""
    return Accelerator(cpu=True)


def test_the_run_is_resolved_for_its_clips_only_where_epochs_or_scaling_ask():
    launch = resolve(TrainConfig.from_flags(model="tiny", gradient_accumulation_steps=2))
    assert resolve_for_clips(launch, ONE_PROCESS, num_clips=5) is launch  # nothing depends on the clips
    epochs = resolve(TrainConfig.from_flags(model="tiny", num_train_epochs=3, gradient_accumulation_steps=2))
    assert resolve_for_clips(epochs, ONE_PROCESS, num_clips=5).max_iter == 3 * 3  # ceil(5 / 2) steps an epoch
    scaled = resolve(TrainConfig.from_flags(model="tiny", scale_lr=True, gradient_accumulation_steps=2))
    four = ParallelDims(4, 0, 1, "ddp")  # 4 ranks x 2 micro-batches: 8 clips a step
    assert resolve_for_clips(scaled, four, num_clips=5).learning_rate == pytest.approx(8 * scaled.learning_rate)


def _pieces(run, accelerator: Accelerator, seed: int):
    """A tiny transformer with its train state, optimizer, schedule and EMA, as `build_optimisation` makes them."""
    torch.manual_seed(seed)
    transformer = build_transformer(get_preset("tiny"))
    optimizer = build_optimizer(list(transformer.parameters()), run.optim)
    scheduler = build_lr_scheduler(optimizer, run.optim)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    trainable = dict(transformer.named_parameters())
    state = train_state(ONE_PROCESS, transformer, optimizer, trainable)
    ema = PowerEMA(state.ema_sources, run.optim.ema_gamma, torch.float32, None)
    return transformer, trainable, optimizer, scheduler, state, ema


def test_a_checkpoint_restores_the_weights_moments_schedule_and_ema_without_a_trainer(tmp_path, accelerator):
    run = resolve(TrainConfig.from_flags(model="tiny", output_dir=str(tmp_path / "run"), max_iter=4, save_iter=1))
    record = RunRecord(run.run_definition(), run.to_json(), None)
    transformer, trainable, optimizer, scheduler, state, ema = _pieces(run, accelerator, seed=0)
    for step in range(2):  # two updates with made-up gradients
        for p in trainable.values():
            p.grad = torch.randn_like(p)
        optimizer.step()
        scheduler.step()
        ema.update(step)
    saver = Checkpointer(run.checkpointing, run.optim, record, accelerator)
    assert saver.resume_point() is None and saver.save(2, state, transformer, scheduler, ema, force=True)

    loader = Checkpointer(run.checkpointing, run.optim, record, accelerator)
    assert loader.resume_point() == 2
    _, restored, optimizer_b, scheduler_b, state_b, ema_b = _pieces(run, accelerator, seed=1)  # other initial weights
    assert loader.load(state_b, scheduler_b, ema_b, restored) == 2
    for name, p in trainable.items():
        assert torch.equal(restored[name], p) and torch.equal(ema_b.shadow[name], ema.shadow[name]), name
    moments_a, moments_b = optimizer.state_dict()["state"], optimizer_b.state_dict()["state"]
    assert all(torch.equal(moments_a[i]["exp_avg_sq"], moments_b[i]["exp_avg_sq"]) for i in moments_a)
    assert scheduler_b.last_epoch == scheduler.last_epoch == 2

    # another run's definition: a resume is refused before any model would load
    other = resolve(TrainConfig.from_flags(model="tiny", output_dir=str(tmp_path / "run"), train_architecture="lora"))
    foreign = RunRecord(other.run_definition(), other.to_json(), None)
    with pytest.raises(ValueError, match="other run-defining flags .*--train_architecture full -> lora"):
        Checkpointer(other.checkpointing, other.optim, foreign, accelerator).resume_point()

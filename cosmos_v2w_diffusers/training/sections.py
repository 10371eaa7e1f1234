"""The sections of a run's configuration: a resolved `RunConfig`'s fields, one frozen section per concern, each
handed to the component that reads it (`run.optim` to the optimizer and its schedule, `run.checkpointing` to the
checkpointer, ...). Every flag belongs to exactly one section (`tests/test_training.py` checks); `--help` groups the
flags by them. No torch here: `--help` imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def hub_kwargs(config) -> dict:
    """What `from_pretrained` takes besides the name: `config`'s --revision, --variant and --cache_dir, where
    given."""
    return {k: getattr(config, k) for k in ("revision", "variant", "cache_dir") if getattr(config, k) is not None}


def edm2_ema_gamma(relative_std: float) -> float:
    """EDM2's power-EMA exponent for a relative std: the largest real root of
    `g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2)` (Karras et al. 2024, eq. 3); 6.9372 for s = 0.1."""
    roots = np.roots([1.0, 7.0, 16.0 - relative_std**-2, 12.0 - relative_std**-2])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


@dataclass(frozen=True)
class Section:
    """One concern's resolved fields, built once by `run_config.resolve` and handed to the component that reads
    them."""


@dataclass(frozen=True)
class DataConfig(Section):
    """The clips, the samples cut from them and how they are read (`data/`, the latent cache)."""

    dataset_path: str | None
    dataset_name: str | None
    dataset_config_name: str | None
    video_column: str
    caption_column: str
    max_sequence_length: int
    num_frames: int
    height: int
    width: int
    resolution: str | None
    batch_size: int
    dataloader_num_workers: int
    seed: int
    cache_latents: bool
    cache_windows_per_clip: int
    max_skipped_clips: int | None


@dataclass(frozen=True)
class WeightsConfig(Section):
    """Which network the run starts from and what of it trains (`training/model.py`)."""

    model: str
    pretrained_model_name_or_path: str | None
    revision: str | None
    variant: str | None
    cache_dir: str | None
    dit_path: str | None
    load_ema: bool
    train_architecture: str
    lora_rank: int
    lora_alpha: int
    lora_target_modules: str
    lora_dropout: float
    base_precision: str

    def hub_kwargs(self) -> dict:
        """What `from_pretrained` takes besides the name: --revision, --variant and --cache_dir, where given."""
        return hub_kwargs(self)


@dataclass(frozen=True)
class OptimConfig(Section):
    """The optimizer, its schedule, the EMA and when a run stops (`training/optim.py`)."""

    max_iter: int
    num_train_epochs: int | None
    gradient_accumulation_steps: int
    learning_rate: float
    scale_lr: bool
    weight_decay: float
    lr_f_max: float
    lr_decay_steps: int
    lr_scheduler: str
    lr_warmup_steps: int
    lr_num_cycles: int
    lr_power: float
    new_lr_cycle: bool
    use_8bit_adam: bool
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    max_grad_norm: float
    max_nonfinite_steps: int
    ema: bool
    ema_relative_std: float

    @property
    def ema_gamma(self) -> float:
        """The power EMA's exponent for `ema_relative_std` (EDM2's relation)."""
        return edm2_ema_gamma(self.ema_relative_std)


@dataclass(frozen=True)
class CheckpointConfig(Section):
    """Where the run writes, when it checkpoints, what it resumes from and what it exports
    (`training/checkpointer.py`, `export/exports.py`)."""

    output_dir: str
    resume: bool
    resume_from_checkpoint: str
    save_iter: int
    checkpoints_total_limit: int | None
    export_live_weights: bool
    export_dtype: str
    export_max_shard_size: str


@dataclass(frozen=True)
class HubConfig(Section):
    """Trackers and the Hub (`training/hub.py`)."""

    logging_dir: str | None
    report_to: str
    tracker_project_name: str
    push_to_hub: bool
    hub_model_id: str | None
    hub_token: str | None = field(repr=False)
    hub_private: bool = False


@dataclass(frozen=True)
class ParallelConfig(Section):
    """How a step runs on the devices: precision, kernels, compilation, memory levers, context parallelism
    (`training/parallel.py`, `training/memory.py`)."""

    context_parallel_size: int
    ddp_timeout: int
    mixed_precision: str | None
    allow_tf32: bool
    compile: bool | None
    attention_backend: str
    activation_checkpointing: str
    selective_checkpointing_blocks: int | None
    memory_budget_gib: float | None
    ema_device: str | None
    block_swap: bool
    low_vram: bool
    checkpoint_block_parts: bool


@dataclass(frozen=True)
class ValidationConfig(Section):
    """Validation videos during the run (`training/validation.py`)."""

    validation_prompt: str | None
    validation_image: str | None
    validation_video: str | None
    validation_steps: int
    validation_epochs: int | None
    num_validation_videos: int
    validation_num_frames: int | None
    validation_num_inference_steps: int
    validation_num_chunks: int
    validation_live: bool


@dataclass(frozen=True)
class DistillConfig(Section):
    """Step distillation of the loaded model (the teacher) into a few-step student (`training/distill.py`)."""

    distill_steps: int | None
    guidance: float
    lora_path: str | None
    student_update_freq: int


# A RunConfig's attribute name -> its section (in --help's order).
SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "weights": WeightsConfig,
    "optim": OptimConfig,
    "checkpointing": CheckpointConfig,
    "hub": HubConfig,
    "parallel": ParallelConfig,
    "validation": ValidationConfig,
    "distill": DistillConfig,
}

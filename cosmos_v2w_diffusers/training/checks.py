"""The checks of a run's flags as given, in one function: `check_flags(flags)`: bounds, and flags that go
together, before any default replaces them, and before torch is imported (`train_video2world.py` calls it first).

The other two kinds read what only a resolved run knows: the values the preset, the weights and the dataset's size
filled in, and the processes' layout (`ParallelDims`). They are `run_config.validate`'s, which `resolve` and the
trainer call (this module stays below `run_config.py`: no import cycle).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..choices import MAX_TEXT_TOKENS
from ..models.presets import get_preset
from ..models.sample_shape import check_sample_shape
from .config import SIDE_PIXELS, TRACKER_PACKAGES

if TYPE_CHECKING:
    from .config import TrainConfig

# Flags that must be at least 1 (or 0), checked before any default replaces them.
_AT_LEAST = {
    "max_iter": 1,
    "save_iter": 1,
    "batch_size": 1,
    "gradient_accumulation_steps": 1,
    "num_frames": 1,
    "height": SIDE_PIXELS[0],
    "width": SIDE_PIXELS[0],
    "lora_rank": 1,
    "lora_alpha": 1,
    "lr_decay_steps": 1,
    "cache_windows_per_clip": 1,
    "max_nonfinite_steps": 1,
    "checkpoints_total_limit": 1,
    "validation_steps": 1,
    "validation_num_frames": 1,
    "validation_num_inference_steps": 1,
    "validation_num_chunks": 1,
    "dataloader_num_workers": 0,
    "max_skipped_clips": 0,
    "selective_checkpointing_blocks": 0,
    "context_parallel_size": 1,
    "ddp_timeout": 10,
    "lr_warmup_steps": 0,
    "lr_num_cycles": 1,
    "num_train_epochs": 1,
    "validation_epochs": 1,
    "num_validation_videos": 1,
    "distill_steps": 1,
    "student_update_freq": 1,
}

# Upper bounds, so a typo or a received checkpoint's stored numbers cannot ask for hours of caching, a rank no
# layer has, or a sample no memory holds (the largest side NVIDIA's models take is 1280 pixels).
_AT_MOST = {
    "height": SIDE_PIXELS[1],
    "width": SIDE_PIXELS[1],
    "num_frames": 1001,
    "lora_rank": 1024,
    "lora_alpha": 2**16,
    "cache_windows_per_clip": 64,
    "batch_size": 256,
    "gradient_accumulation_steps": 2**14,
    "num_validation_videos": 64,
    "validation_num_frames": 1001,
    "validation_num_inference_steps": 1000,
    "validation_num_chunks": 100,  # long_video.MAX_CHUNKS
    "dataloader_num_workers": 256,
    "context_parallel_size": 4096,
    "ddp_timeout": 7 * 24 * 3600,
    "max_iter": 10**9,
    "save_iter": 10**9,
    "lr_decay_steps": 10**9,
    "lr_warmup_steps": 10**9,
    "lr_num_cycles": 10**6,
    "num_train_epochs": 10**6,
    "distill_steps": 8,  # MAX_DISTILL_STEPS: beyond it, the 35-step teacher itself is the better sampler
    "student_update_freq": 1000,
}
# Real-valued recipe numbers and the interval each must lie in: (low, high, whether low itself is allowed).
# ema_relative_std: EDM2's power EMA has gamma > 0 only below sqrt(1/12) = 0.2887 (Karras et al. 2024, eq. 2).
_INTERVALS = {
    "learning_rate": (0.0, 1e30, False),  # finite; a diverging run is stopped by `--max_nonfinite_steps`
    "lr_f_max": (0.0, 1e3, False),
    "weight_decay": (0.0, 1e3, True),
    "adam_beta1": (0.0, 1.0 - 1e-12, True),
    "adam_beta2": (0.0, 1.0 - 1e-12, True),
    "adam_epsilon": (0.0, 1.0, False),
    "max_grad_norm": (0.0, 1e12, False),
    "ema_relative_std": (0.0, 0.2886, False),
    "memory_budget_gib": (0.0, 2.0**20, False),
    "lora_dropout": (0.0, 1.0 - 1e-12, True),
    "guidance": (0.0, 100.0, True),
    "lr_power": (0.0, 100.0, False),
}


def check_flags(flags: TrainConfig) -> None:
    """Values no run can use, and flags that contradict each other (a 0 is refused, not replaced by the default).
    Imports nothing heavy: the CLI runs it before torch and diffusers load, so a bad flag answers at once."""
    for name, least in _AT_LEAST.items():
        value = getattr(flags, name)
        if value is not None and value < least:
            raise ValueError(f"--{name} must be at least {least}, got {value}.")
    for name, most in _AT_MOST.items():
        value = getattr(flags, name)
        if value is not None and value > most:
            raise ValueError(f"--{name} must be at most {most:,}, got {value:,}.")
    for name, (low, high, low_allowed) in _INTERVALS.items():
        value = getattr(flags, name)
        if value is not None and not (low <= value <= high and (low_allowed or value > low)):
            side = "at least" if low_allowed else "more than"
            raise ValueError(f"--{name} must be {side} {low:g} and at most {high:g}, got {value}.")
    if not re.fullmatch(r"[0-9]+ *[KMGT]?I?B", flags.export_max_shard_size.upper()):
        raise ValueError(
            f"--export_max_shard_size {flags.export_max_shard_size!r}: give a size such as 10GB or 500MB."
        )
    if flags.dataset_path and Path(flags.dataset_path).is_symlink() and not Path(flags.dataset_path).exists():
        raise ValueError(
            f"--dataset_path {flags.dataset_path} is a link that loops or leads nowhere: pass the folder holding "
            f"videos/ and metas/."
        )
    if flags.revision and flags.pretrained_model_name_or_path and Path(flags.pretrained_model_name_or_path).is_dir():
        raise ValueError(
            f"--revision {flags.revision}: --pretrained_model_name_or_path {flags.pretrained_model_name_or_path} is "
            f"a local folder, which has no revisions; drop --revision (or pass the Hub id)."
        )
    # The sizes given (the preset fills in the rest when the run is resolved, and checks the whole shape again).
    check_sample_shape(
        flags.num_frames or 1, flags.height or 16, flags.width or 16, "--num_frames", "--height and --width"
    )
    if flags.resolution and (flags.height or flags.width):
        raise ValueError("--resolution sets --height and --width: pass one or the other.")
    if flags.validation_epochs and flags.validation_steps:
        raise ValueError("--validation_epochs and --validation_steps both say when to validate: pass one.")
    if flags.dataset_config_name and not flags.dataset_name:
        raise ValueError("--dataset_config_name picks a folder of --dataset_name's repo: pass --dataset_name too.")
    if not 1 <= flags.max_sequence_length <= MAX_TEXT_TOKENS:
        raise ValueError(
            f"--max_sequence_length {flags.max_sequence_length}: T5 reads 1 to {MAX_TEXT_TOKENS} tokens (the "
            f"embeddings the transformer was trained on are {MAX_TEXT_TOKENS} long)."
        )
    if flags.dataset_name and flags.dataset_path:
        raise ValueError("--dataset_name downloads the dataset --dataset_path names locally: pass one of them.")
    if flags.lr_scheduler == "nvidia" and flags.lr_warmup_steps:
        raise ValueError(
            "--lr_warmup_steps: NVIDIA's schedule (--lr_scheduler nvidia, the default) has no warm-up; pick one "
            "of diffusers' schedules (e.g. --lr_scheduler constant_with_warmup) or drop --lr_warmup_steps."
        )
    if flags.distill_steps is None and flags.lora_path:
        raise ValueError(
            "--lora_path is the teacher of a distillation: pass --distill_steps N too (to post-train on from a "
            "LoRA, continue its run with the same --output_dir)."
        )
    if flags.distill_steps is not None:
        _check_teacher(flags)
        if flags.base_precision != "bf16":
            raise ValueError(
                f"--base_precision {flags.base_precision} with --distill_steps: the base is the teacher, and the "
                f"student is exported merged into it at full precision; drop --base_precision (2B fits 80 GB in bf16)."
            )
    if flags.block_swap and flags.train_architecture != "lora" and not flags.distill_steps:
        raise ValueError(
            "--block_swap streams a frozen base: it is for --train_architecture lora (full post-training updates "
            "every weight each step)."
        )
    if flags.base_precision != "bf16" and flags.train_architecture != "lora":
        raise ValueError(
            f"--base_precision {flags.base_precision} stores a frozen base: it is for --train_architecture lora "
            f"(full post-training trains every weight in fp32)."
        )
    if flags.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--use_8bit_adam needs the bitsandbytes package: `pip install bitsandbytes`, or drop it.")
    if flags.load_ema and not flags.dit_path:
        raise ValueError("--load_ema picks the EMA weights of --dit_path: pass --dit_path too, or drop --load_ema.")
    if flags.selective_checkpointing_blocks is not None and flags.activation_checkpointing not in (
        None,
        "selective",
    ):
        raise ValueError("--selective_checkpointing_blocks needs --activation_checkpointing selective.")
    if flags.hub_token and flags.report_to in ("wandb", "all"):  # as diffusers' examples: W&B would upload the token
        raise ValueError(
            "--hub_token with --report_to wandb would expose the token; log in with `hf auth login` (or set "
            "HF_TOKEN) and drop --hub_token."
        )
    tracker_package = TRACKER_PACKAGES.get(flags.report_to)
    if tracker_package and importlib.util.find_spec(tracker_package) is None:  # accelerate would only warn
        raise ValueError(
            f"--report_to {flags.report_to} needs the {tracker_package} package: "
            f"`pip install {tracker_package}`, or "
            f"pick another tracker."
        )
    if flags.output_dir and flags.pretrained_model_name_or_path:
        output, base = Path(flags.output_dir).absolute(), Path(flags.pretrained_model_name_or_path).absolute()
        if output == base or (base.exists() and output.exists() and output.samefile(base)):
            raise ValueError(
                f"--output_dir {flags.output_dir} is the base model's folder "
                f"(--pretrained_model_name_or_path): the "
                f"run's export would replace its transformer/. Pass another --output_dir."
            )


def _check_teacher(flags: TrainConfig) -> None:
    """A distillation's teacher, before any model loads: not a student already, its LoRA readable and of a size
    that fits (`inference.check_lora_adapter`, as generation checks it; without --model, against the size
    --pretrained_model_name_or_path has, checked again once resolved)."""
    from ..models.checkpoint_format import distilled_steps_of  # torch: kept out of `--help`

    if flags.dit_path and distilled_steps_of(flags.dit_path):
        raise ValueError(
            f"--dit_path {flags.dit_path} is already a {distilled_steps_of(flags.dit_path)}-step student: distil "
            f"from its teacher (the post-trained model it was distilled from) instead."
        )
    if flags.lora_path and flags.model:
        from ..generation.post_trained import check_lora_adapter

        check_lora_adapter(flags.lora_path, get_preset(flags.model))

"""The training flags as given: `TrainConfig`, the eight sections of flags (`sections/`, where each flag is declared
and checked) as the command line or a caller set them, and the rules that span sections.

`run_config.resolve(flags)` fills in every default that depends on the preset, the weights, the dataset's size or
the launch and builds the `RunConfig` the trainer runs. The command line is read by `cli/train.py` (a checkpoint
file's recipe merged in there); secrets are kept out of what is stored (`secrets.py`). Adding a flag is adding a
field to its section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.presets import get_preset
from .sections import SECTION_OF_FIELD, SECTIONS, Sections

# What a checkpoint's weights and optimizer state depend on: a resume must not change these.
RUN_DEFINING_FIELDS = (
    "model",
    "train_architecture",
    "num_frames",
    "height",
    "width",
    "lora_rank",
    "lora_alpha",
    "lora_target_modules",
    "base_precision",  # the frozen base's weights and the loss they give (fp8 or bf16)
    "distill_steps",  # a distillation's student and its sampler
)
# What a distillation's checkpoints depend on besides (its teacher: the frozen base the adapters sit on, which the
# checkpoint does not hold, and the guidance folded into the student). Not taken from a checkpoint file on
# `--resume_from_checkpoint <path>`: where weights come from is the user's flags' to say.
TEACHER_FIELDS = ("pretrained_model_name_or_path", "dit_path", "load_ema", "lora_path", "guidance")
# What a run rebuilt from a checkpoint file (`--resume_from_checkpoint <path>`) takes from the config stored
# there: what the run is and the numbers of its recipe. Where weights are read from, where the run uploads or
# logs to, and any secret always come from the user's own flags: a checkpoint received from someone else must
# not be able to redirect an upload or load other weights.
RESUMED_FIELDS = RUN_DEFINING_FIELDS + (
    "max_iter",
    "save_iter",
    "batch_size",
    "gradient_accumulation_steps",
    "seed",
    "learning_rate",
    "weight_decay",
    "lr_f_max",
    "lr_decay_steps",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "ema",
    "ema_relative_std",
    "cache_latents",
    "cache_windows_per_clip",
)


@dataclass(frozen=True)
class TrainConfig(Sections):
    """The flags of a run as given, by section; read flat too (`flags.max_iter`). Build one from flags by name
    with `TrainConfig.from_flags(max_iter=10, ...)`; `check()` refuses what no run can use, before torch loads."""

    @classmethod
    def from_flags(cls, **flags: Any) -> TrainConfig:
        """The config of flags given by name (`--max_iter 10` is `max_iter=10`); the rest keep their defaults."""
        unknown = sorted(set(flags) - SECTION_OF_FIELD.keys())
        if unknown:
            raise TypeError(f"no such training flag: {', '.join(unknown)}")
        return cls(
            **{
                name: section(**{f: v for f, v in flags.items() if SECTION_OF_FIELD[f] == name})  # type: ignore[arg-type]
                for name, section in SECTIONS.items()
            }
        )

    def replace(self, **flags: Any) -> TrainConfig:
        """These flags changed, by name."""
        return TrainConfig.from_flags(**{**self.values(), **flags})

    def check(self) -> None:
        """Refuse values no run can use and flags that contradict each other (a 0 is refused, not replaced by the
        default): each section's own checks, then those across sections. Imports nothing heavy (but to read a
        distillation's teacher): the CLI runs it before torch and diffusers load, so a bad flag answers at once."""
        for name in SECTIONS:
            getattr(self, name).check()
        check_across_sections(self)


def check_across_sections(flags: TrainConfig) -> None:
    """The rules between flags of different sections."""
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
    if flags.output_dir and flags.pretrained_model_name_or_path:
        output, base = Path(flags.output_dir).absolute(), Path(flags.pretrained_model_name_or_path).absolute()
        if output == base or (base.exists() and output.exists() and output.samefile(base)):
            raise ValueError(
                f"--output_dir {flags.output_dir} is the base model's folder "
                f"(--pretrained_model_name_or_path): the "
                f"run's export would replace its transformer/. Pass another --output_dir."
            )
    if flags.compile and flags.distill_steps and flags.activation_checkpointing != "none":
        raise ValueError(
            "--compile with --distill_steps and activation checkpointing: the student's and critic's adapters switch "
            "between a block's forward and its recompute, which compiled blocks do not replay alike; drop --compile "
            "(a distillation is left uncompiled by default), or pass --activation_checkpointing none."
        )


def _check_teacher(flags: TrainConfig) -> None:
    """A distillation's teacher, before any model loads: not a student already, its LoRA readable and of a size
    that fits (`check_lora_adapter`, as generation checks it; without --model, against the size
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

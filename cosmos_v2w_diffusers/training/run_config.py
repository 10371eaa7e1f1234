"""A run's resolved configuration, and the sections each component is handed.

`resolve(flags)` fills in every default of a `TrainConfig` that depends on the preset, the weights, the dataset's
size or the launch, checks the result and builds a `RunConfig`: the resolved values in their
sections (`run.data`, `run.weights`, `run.optim`, `run.checkpointing`, `run.hub`, `run.parallel`, `run.validation`,
`run.distill`), each built once and frozen, and the flags it came from. A component takes the section it reads (the
optimizer its `OptimConfig`), not the whole run. `validate(run, dims, device)` refuses what the launch rules out.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..export.exports import ExportSettings
from ..models.components import preset_of_pretrained
from ..models.presets import get_preset
from ..models.sample_shape import latent_tokens
from .config import RUN_DEFINING_FIELDS, TEACHER_FIELDS, TrainConfig
from .hub import HYPERPARAMETERS, CardFacts

if TYPE_CHECKING:
    import torch

    from ..parallel.parallel_dims import ParallelDims

from .secrets import SECRET_FIELDS
from .sections import SECTIONS, Sections
from .sections.data import parse_resolution


@dataclass(frozen=True)
class RunConfig(Sections):
    """A run's configuration, resolved once (`resolve`) and frozen: one section per concern, each built once, with
    every default that depends on the preset, the weights, the dataset's size or the launch filled in (those fields
    are never None), and the flags it came from (`flags`), so that resolving again starts from them.

    A component takes the section it reads (`build_optimizer(params, run.optim)`); the trainer, which sees the whole
    run, may read a field flat (`run.max_iter`): the section that owns it answers."""

    flags: TrainConfig = field(default_factory=TrainConfig, repr=False, compare=False)

    def public_dict(self) -> dict:
        """Every field but the secrets: what checkpoints store and trackers log."""
        return {k: v for k, v in self.values().items() if k not in SECRET_FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.public_dict(), sort_keys=True)

    def run_definition(self) -> dict:
        """The run-defining fields (`RUN_DEFINING_FIELDS`, and a distillation's teacher): what a resume must match."""
        names = RUN_DEFINING_FIELDS + (TEACHER_FIELDS if self.distill.distill_steps else ())
        return {name: getattr(self, name) for name in names}

    @property
    def ema_gamma(self) -> float:
        return self.optim.ema_gamma


def card_facts(run: RunConfig) -> CardFacts:
    """What the run's model card says of it (`hub.py` reads no training config)."""
    return CardFacts(
        model=run.weights.model,
        train_architecture=run.weights.train_architecture,
        distill_steps=run.distill.distill_steps,
        validation_prompt=run.validation.validation_prompt,
        recipe={name: getattr(run, name) for name in HYPERPARAMETERS},
        repo_name=run.hub.hub_model_id or Path(run.checkpointing.output_dir).name,
    )


def export_settings(run: RunConfig) -> ExportSettings:
    """What the run's exports need of its sections (`export/exports.py` reads no training config)."""
    c = run.checkpointing
    return ExportSettings(
        output_dir=c.output_dir,
        lora=run.weights.train_architecture == "lora" and not run.distill.distill_steps,
        ema=run.optim.ema,
        dtype=c.export_dtype,
        max_shard_size=c.export_max_shard_size,
        live_weights=c.export_live_weights,
        revision=run.weights.revision,
        cache_dir=run.weights.cache_dir,
        student_steps=run.distill.distill_steps,
    )


def resolve(flags: TrainConfig, steps_per_epoch: int | None = None, clips_per_step: int | None = None) -> RunConfig:
    """`flags` with every default that depends on the preset (and the weights) filled in, checked.

    `steps_per_epoch` (optimizer steps in one pass over the clips, which only the loaded dataset tells) turns
    `--num_train_epochs` and `--validation_epochs` into steps, and `clips_per_step` (which the launch tells)
    scales the learning rate under `--scale_lr`; without them neither is applied. The trainer's second resolution
    (once the clips are counted) starts again from the run's `flags`, so it sees what the user gave.
    """
    flags.check()
    asked = get_preset(flags.model) if flags.model else None
    found = (
        preset_of_pretrained(flags.pretrained_model_name_or_path, **flags.hub_kwargs())
        if flags.pretrained_model_name_or_path
        else None
    )
    if asked and found and asked.name != found.name:
        raise ValueError(
            f"--model {flags.model} contradicts --pretrained_model_name_or_path "
            f"{flags.pretrained_model_name_or_path}, "
            f"whose transformer is the {found.name} architecture: pass --model {found.name}, or drop --model."
        )
    preset = asked or found or get_preset("2B")
    # A distillation trains two LoRA adapters (student, critic) over the frozen teacher (`training/distill.py`).
    lora = flags.train_architecture == "lora" or bool(flags.distill_steps)

    def given_or(name: str, default):
        value = getattr(flags, name)
        return default if value is None else value

    rank = flags.lora_rank or preset.lora_rank
    lr_scale = (clips_per_step or 1) if flags.scale_lr else 1  # diffusers' --scale_lr
    height, width = parse_resolution(flags.resolution) if flags.resolution else (flags.height, flags.width)
    epochs = flags.num_train_epochs if steps_per_epoch else None
    max_iter = flags.max_iter or (epochs * steps_per_epoch if epochs and steps_per_epoch else preset.max_iter)
    every_epochs = flags.validation_epochs * steps_per_epoch if flags.validation_epochs and steps_per_epoch else None
    save_iter = flags.save_iter or (preset.save_iter_lora if lora else preset.save_iter)
    # Selective checkpointing is the default: the trainer keeps attention outputs in as many blocks as
    # the GPU has memory for and recomputes the rest in full (`training/memory.py`).
    recompute = flags.activation_checkpointing or ("full" if flags.low_vram else "selective")
    if flags.dataset_path:
        dataset = Path(flags.dataset_path).resolve().name
    else:
        dataset = flags.dataset_name.rsplit("/", 1)[-1] if flags.dataset_name else "demo"
    group = "video2world_distill" if flags.distill_steps else "video2world_lora" if lora else "video2world"
    given = flags.values()
    resolved: dict[str, Any] = dict(
        model=preset.name,
        train_architecture="lora" if lora else "full",
        lora_rank=rank,
        lora_alpha=flags.lora_alpha or rank,
        max_iter=max_iter,
        save_iter=save_iter,
        num_frames=flags.num_frames or preset.num_frames,
        height=preset.height if height is None else height,
        width=preset.width if width is None else width,
        resolution=None,  # now in --height and --width
        validation_epochs=None,  # now in --validation_steps (the trainer's second resolution, once the clips are
        # counted, starts again from the flags)
        learning_rate=given_or("learning_rate", preset.learning_rate) * lr_scale,
        weight_decay=given_or("weight_decay", preset.weight_decay),
        lr_f_max=given_or("lr_f_max", preset.lr_f_max),
        lr_decay_steps=flags.lr_decay_steps or max_iter,
        activation_checkpointing=recompute,
        validation_steps=flags.validation_steps or every_epochs or save_iter,
        output_dir=flags.output_dir
        or str(Path("checkpoints", "posttraining", group, f"{preset.short_name}_{dataset}")),
    )
    values = {**given, **resolved}
    sections: dict[str, Any] = {
        name: section(**{f.name: values[f.name] for f in dataclasses.fields(section)})
        for name, section in SECTIONS.items()
    }
    run = RunConfig(**sections, flags=flags)
    _check_resolved(run)
    return run


def validate(run: RunConfig, dims: ParallelDims | None = None, device: torch.device | None = None) -> None:
    """Refuse, in one line naming the flag and the fix, what the launch rules out for a resolved run: given `dims`,
    what the layout of the processes allows, and, given `device`, what its device can run. The run's own values
    were checked as it was resolved (`resolve`: its flags, then each section's values and what needs the model
    size). Every check that needs no weights is here or in the sections, run before anything loads;
    `tests/test_training.py` holds one table of them all."""
    if dims is not None:
        _check_layout(run, dims)
    if device is not None:
        _check_device(run, device)


def _check_device(run: RunConfig, device: torch.device) -> None:
    """What the process's device cannot run: an attention kernel it lacks, bitsandbytes' CUDA-only optimizer."""
    from ..models.attention import resolve_attention_backend

    resolve_attention_backend(run.attention_backend, device)
    if run.use_8bit_adam and device.type != "cuda":
        raise ValueError(
            f"--use_8bit_adam: bitsandbytes' 8-bit AdamW runs on CUDA GPUs only, not the {device.type}; drop it."
        )


def _check_lora_targets(run: RunConfig) -> None:
    """Each of `--lora_target_modules` names linear layers of the transformer, as PEFT matches names (the name, or
    its last parts); PEFT would otherwise fail with a page of its own."""
    import torch

    from ..models.components import build_transformer

    modules = dict(build_transformer(get_preset(run.model), device="meta").named_modules())
    linear = sorted({n.split(".", 2)[-1] for n, m in modules.items() if isinstance(m, torch.nn.Linear)})
    for target in run.lora_target_modules.split(","):
        matched = [m for n, m in modules.items() if n == target or n.endswith("." + target)]
        if not matched or not all(isinstance(m, torch.nn.Linear) for m in matched):
            examples = ", ".join(name for name in linear if name.startswith(("attn1.", "ff.")))
            raise ValueError(
                f"--lora_target_modules {target!r} names no linear layer of the {run.model} transformer (LoRA wraps "
                f"linear layers): give their names, e.g. {examples}."
            )


def _check_resolved_teacher(run: RunConfig) -> None:
    """A distillation's teacher against the resolved model size, on the meta device: its `--dit_path` weights and
    `--lora_path` adapter must fit it (the adapters sit on the teacher, so it is loaded before any of them)."""
    if not run.distill_steps:
        return
    from ..generation.post_trained import check_lora_adapter, load_post_trained_weights

    if run.dit_path:
        load_post_trained_weights(run.dit_path, run.load_ema, run.model)
    if run.lora_path:
        check_lora_adapter(run.lora_path, get_preset(run.model))


def _check_resolved(run: RunConfig) -> None:
    """What the filled-in defaults make impossible, section by section (a warm-up as long as the run the preset
    gives), and what needs the resolved model size: LoRA's target layers, a distillation's teacher."""
    for name in SECTIONS:
        getattr(run, name).check()
    if run.train_architecture == "lora":
        _check_lora_targets(run)
    _check_resolved_teacher(run)


def _check_layout(config: RunConfig, dims: ParallelDims) -> None:
    """What the launch's processes and engine rule out, before any weight loads or latent is cached (the context-
    parallel plan checks the same again as it is applied, for generation's callers too)."""
    if dims.engine == "deepspeed" and dims.cp > 1:  # its gradient scaling is tested under DDP and FSDP2 only
        raise ValueError(
            "--context_parallel_size is supported under DDP and FSDP2, not DeepSpeed: use "
            "accelerate_configs/fsdp_8gpu.yaml, or drop --context_parallel_size."
        )
    if dims.world_size % dims.cp:
        raise ValueError(f"--context_parallel_size {dims.cp} must divide the number of processes ({dims.world_size}).")
    if dims.cp > 1:
        tokens = latent_tokens(config.num_frames, config.height, config.width)
        heads = get_preset(config.model).transformer_config["num_attention_heads"]
        if tokens % dims.cp:
            raise ValueError(
                f"--context_parallel_size {dims.cp} must divide the {tokens} latent tokens of a sample: pick another, "
                f"or another --num_frames/--height/--width."
            )
        if heads % dims.cp:
            raise ValueError(f"--context_parallel_size {dims.cp} must divide the model's {heads} attention heads.")
    if config.base_precision != "bf16" and dims.world_size > 1:
        raise ValueError(f"--base_precision {config.base_precision} runs on one GPU for now; drop it for several.")
    if config.block_swap and dims.engine != "single":
        raise ValueError(f"--block_swap is for one GPU, one process: under {dims.engine} drop it.")
    if config.low_vram and dims.engine == "fsdp":
        raise ValueError("--low_vram is for one GPU: under FSDP the sharded states already leave room; drop it.")
    if (
        config.distill_steps and dims.engine == "deepspeed"
    ):  # ZeRO reduces every gradient; a step leaves one adapter's out
        raise ValueError(
            "--distill_steps trains one of its two adapters a step, which DeepSpeed's ZeRO does not take: use DDP or "
            "FSDP2 (accelerate_configs/)."
        )
    if config.use_8bit_adam and dims.engine in ("fsdp", "deepspeed"):
        raise ValueError(f"--use_8bit_adam: bitsandbytes' optimizer does not run under {dims.engine}; drop it.")

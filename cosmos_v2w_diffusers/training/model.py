"""The transformer a run trains: loaded from the base weights (and `--dit_path`), with a LoRA adapter for
LoRA runs, in the precision each kind of run keeps its weights in."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import CosmosTransformer3DModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig

from ..export.exports import read_weights
from ..models.checkpoint_format import load_into_transformer, load_native_checkpoint
from ..models.components import build_transformer, load_transformer
from ..models.fp8 import quantize_blocks_to_fp8
from .distill import add_distillation_adapters, fuse_teacher_lora
from .sections import DistillConfig, WeightsConfig


def apply_lora(
    transformer: CosmosTransformer3DModel,
    rank: int,
    alpha: int,
    target_modules: list[str],
    seed: int,
    dropout: float = 0.0,
) -> None:
    """Freeze the base weights and add a PEFT LoRA adapter (fp32, as diffusers' LoRA examples keep it;
    NVIDIA keeps bf16 live LoRA weights with fp32 masters: under bf16 autocast the compute is the same).
    PEFT draws the random half of each pair from the global RNG; it is seeded here (and forked, so the
    caller's state is untouched), so a run's initial adapter depends on `--seed` alone."""
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(
            LoraConfig(
                r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights=True, target_modules=target_modules
            )
        )


def load_trainable_transformer(
    preset, config: WeightsConfig, seed: int, compute_dtype: torch.dtype, distill: DistillConfig | None = None
) -> CosmosTransformer3DModel:
    """The transformer a run trains: the preset's (or `--pretrained_model_name_or_path`'s), initialised from
    `--dit_path` if given. Full post-training keeps fp32 master weights (compute under autocast); LoRA keeps
    its frozen base in the compute dtype (bf16, as NVIDIA does: half the memory), or its blocks' weights in fp8
    with `--base_precision fp8` (`models/fp8.py`), and its adapter in fp32. A distillation (`distill` with its
    `distill_steps`) fuses the teacher's `--lora_path` into the base and adds the student's and critic's adapters."""
    dtype = compute_dtype if config.train_architecture == "lora" else torch.float32
    transformer = load_transformer(preset, config.pretrained_model_name_or_path, dtype, **config.hub_kwargs())
    source = config.pretrained_model_name_or_path or preset.hub_id or f"the {preset.name} base model"
    if config.dit_path:
        load_into_transformer(transformer, post_trained_weights(config.dit_path, config.load_ema), config.dit_path)
        source = config.dit_path
    if distill is not None and distill.lora_path:
        fuse_teacher_lora(transformer, distill.lora_path)
        source = f"{source} with --lora_path {distill.lora_path}"
    check_finite_weights(transformer, source)
    return _as_trained(transformer, config, seed, distill)


def post_trained_weights(dit_path: str, load_ema: bool) -> dict[str, torch.Tensor]:
    """`--dit_path`'s weights, diffusers-named: a native `iter_N.pt` (NVIDIA's or ours; `net_ema.*` with
    `load_ema`), or a diffusers transformer folder (`<output_dir>/transformer`, `transformer_ema`, or a pipeline
    folder's `transformer/`)."""
    path = Path(dit_path)
    if not path.is_dir():
        return load_native_checkpoint(path, load_ema)
    folder = path / "transformer" if (path / "transformer" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"--dit_path {path} is a folder without config.json: pass a diffusers transformer folder "
            f"(<output_dir>/transformer) or a native model/iter_N.pt file."
        )
    if load_ema:
        raise ValueError(
            f"--load_ema picks the net_ema.* weights of a native file; {path} is a diffusers folder: pass "
            f"<output_dir>/transformer_ema instead, without --load_ema."
        )
    return read_weights(folder)


def check_finite_weights(transformer: torch.nn.Module, source: str) -> None:
    """Refuse weights holding NaN/Inf as they load: a damaged file, not a learning rate, is then to blame (the
    first step's loss would be NaN and the run would stop with advice to lower --learning_rate)."""
    for name, tensor in transformer.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(
                f"The weights of {source} hold NaN/Inf (e.g. {name}): the file is damaged; download or copy it "
                f"again, or pass other weights."
            )


def meta_trainable_transformer(
    preset, config: WeightsConfig, seed: int, compute_dtype: torch.dtype, distill: DistillConfig | None = None
) -> CosmosTransformer3DModel:
    """The transformer as `load_trainable_transformer` makes it, on the meta device (no memory, no weights): what
    the memory check counts before anything loads."""
    dtype = compute_dtype if config.train_architecture == "lora" else torch.float32
    return _as_trained(build_transformer(preset, device="meta").to(dtype), config, seed, distill)


def _as_trained(
    transformer: CosmosTransformer3DModel, config: WeightsConfig, seed: int, distill: DistillConfig | None = None
) -> CosmosTransformer3DModel:
    """A LoRA run's base frozen (in fp8 with --base_precision fp8) under an fp32 adapter (a distillation's: two);
    a full run unchanged."""
    if config.train_architecture == "lora":
        if config.base_precision == "fp8":
            quantize_blocks_to_fp8(transformer)
        targets = config.lora_target_modules.split(",")
        if distill is not None and distill.distill_steps:
            add_distillation_adapters(transformer, config.lora_rank, config.lora_alpha, targets, seed)
        else:
            apply_lora(transformer, config.lora_rank, config.lora_alpha, targets, seed, config.lora_dropout)
        cast_training_params(transformer, torch.float32)
    return transformer

"""Final exports of a run: a diffusers transformer folder (full) or a diffusers LoRA file (LoRA),
and the optional Hub upload with a model card."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers.loaders.lora_pipeline import CosmosLoraLoaderMixin
from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from ..io_utils import publish_folder
from ..presets import get_preset

logger = logging.getLogger(__name__)

# diffusers' own file name, so `CosmosTransformer3DModel.from_pretrained(folder)` reads it.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def write_diffusers_transformer(folder: Path, transformer, state_dict: dict[str, torch.Tensor]) -> Path:
    """A `from_pretrained`-able transformer folder from a (gathered) state dict.

    Written by hand rather than with `save_pretrained` so the EMA weights, which live outside the module,
    and FSDP-gathered weights go through the same path.
    """

    def build(staging: Path) -> None:
        transformer.save_config(staging)
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, staging / WEIGHTS_NAME)

    return publish_folder(folder, build)


LORA_EMA_WEIGHTS_NAME = "pytorch_lora_weights_ema.safetensors"


def export_final(transformer, state_dict: dict[str, torch.Tensor], ema_state: dict | None, config) -> Path:
    """Write `<output_dir>/transformer` (+ `transformer_ema`) for a full run, `<output_dir>/lora` for LoRA
    (`pytorch_lora_weights.safetensors`, + `pytorch_lora_weights_ema.safetensors` from the EMA)."""
    out = Path(config.output_dir)
    if config.train_architecture == "lora":
        lora_layers = get_peft_model_state_dict(transformer, state_dict=state_dict)
        ema_layers = get_peft_model_state_dict(transformer, state_dict=ema_state) if ema_state is not None else None

        def build(staging: Path) -> None:
            CosmosLoraLoaderMixin.save_lora_weights(staging, transformer_lora_layers=lora_layers)
            if ema_layers is not None:
                CosmosLoraLoaderMixin.save_lora_weights(
                    staging, transformer_lora_layers=ema_layers, weight_name=LORA_EMA_WEIGHTS_NAME
                )

        publish_folder(out / "lora", build)
        logger.info(
            "Exported the LoRA adapter to %s (pipeline.load_lora_weights%s)",
            out / "lora", f"; the EMA: weight_name={LORA_EMA_WEIGHTS_NAME!r}" if ema_layers is not None else "",
        )
        return out / "lora"
    write_diffusers_transformer(out / "transformer", transformer, state_dict)
    if ema_state is not None:
        write_diffusers_transformer(out / "transformer_ema", transformer, ema_state)
    logger.info("Exported the diffusers transformer to %s", out / "transformer")
    return out / "transformer"


def push_to_hub(folder: Path, config) -> str:
    """Upload an export folder with a model card; returns the repo id."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(config.hub_model_id or Path(config.output_dir).name, exist_ok=True).repo_id
    base = config.pretrained_model_name_or_path or get_preset(config.model).hub_id
    card = load_or_create_model_card(
        repo_id,
        from_training=True,
        base_model=base,
        model_description=(
            f"Cosmos-Predict2 {config.model} Video2World, {config.train_architecture} post-trained with "
            f"cosmos_v2w_diffusers for {config.max_iter} steps on `{config.dataset_path or 'the built-in sample'}`."
        ),
        license="other",
    )
    populate_model_card(card, tags=["cosmos", "video2world", "diffusers", config.train_architecture]).save(
        Path(folder) / "README.md"
    )
    upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload post-trained Video2World weights")
    logger.info("Pushed %s to https://huggingface.co/%s", folder, repo_id)
    return repo_id

"""Exports of a run: a diffusers transformer folder (full) or a diffusers LoRA file (LoRA)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers.loaders.lora_pipeline import CosmosLoraLoaderMixin
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from ..io_utils import publish_folder

logger = logging.getLogger(__name__)

# diffusers' own file name, so `CosmosTransformer3DModel.from_pretrained(folder)` reads it.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
LORA_EMA_WEIGHTS_NAME = "pytorch_lora_weights_ema.safetensors"
# What an export folder may hold for a new export to replace it (README.md: the Hub upload's model card);
# a folder holding anything else is refused, never deleted.
TRANSFORMER_FILES = frozenset({"config.json", WEIGHTS_NAME, "README.md"})
LORA_FILES = frozenset({LORA_WEIGHTS_NAME, LORA_EMA_WEIGHTS_NAME, "README.md"})


def write_diffusers_transformer(folder: Path, transformer, state_dict: dict[str, torch.Tensor]) -> Path:
    """A `from_pretrained`-able transformer folder from a (gathered) state dict.

    Written by hand rather than with `save_pretrained` so the EMA weights, which live outside the module,
    and FSDP-gathered weights go through the same path.
    """

    def build(staging: Path) -> None:
        transformer.save_config(staging)
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, staging / WEIGHTS_NAME)

    return publish_folder(folder, build, TRANSFORMER_FILES)


def export_final(transformer, state_dict: dict[str, torch.Tensor], ema_state: dict | None, config) -> Path:
    """Write `<output_dir>/transformer` (+ `transformer_ema`) for a full run, `<output_dir>/lora` for LoRA
    (`pytorch_lora_weights.safetensors`, + `pytorch_lora_weights_ema.safetensors` from the EMA)."""
    out = Path(config.output_dir)
    if config.train_architecture == "lora":
        lora_layers = get_peft_model_state_dict(transformer, state_dict=state_dict)
        ema_layers = get_peft_model_state_dict(transformer, state_dict=ema_state) if ema_state is not None else None
        # The adapter's config (rank, alpha, targets) goes into the file's metadata, as diffusers' LoRA examples
        # save it: without it every loader assumes alpha = rank and applies the adapter at the wrong scale.
        metadata = transformer.peft_config["default"].to_dict()

        def build(staging: Path) -> None:
            for layers, name in ((lora_layers, LORA_WEIGHTS_NAME), (ema_layers, LORA_EMA_WEIGHTS_NAME)):
                if layers is not None:
                    CosmosLoraLoaderMixin.save_lora_weights(
                        staging, transformer_lora_layers=layers, weight_name=name,
                        transformer_lora_adapter_metadata=metadata,
                    )

        publish_folder(out / "lora", build, LORA_FILES)
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

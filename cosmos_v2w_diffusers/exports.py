"""Exports of a run: a whole diffusers pipeline folder and the transformer (full), or a diffusers LoRA file (LoRA).

The pipeline folder is what diffusers' stock `Cosmos2VideoToWorldPipeline` saves (its `model_index.json`,
an Euler `FlowMatchEulerDiscreteScheduler`), with the run's transformer and the base model's text encoder,
tokenizer and VAE. So each loader gets what it knows: `DiffusionPipeline.from_pretrained` and the stock
class build diffusers' pipeline and sampler; `CosmosVideo2WorldPipeline.from_pretrained` builds ours, which
replaces the Euler scheduler with NVIDIA's sampler on load.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.loaders.lora_pipeline import CosmosLoraLoaderMixin
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from .components import write_stock_model_index
from .io_utils import publish_folder

logger = logging.getLogger(__name__)

# diffusers' own file name, so `CosmosTransformer3DModel.from_pretrained(folder)` reads it.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
LORA_EMA_WEIGHTS_NAME = "pytorch_lora_weights_ema.safetensors"
# What an export folder may hold for a new export to replace it (README.md and validation.mp4: what the Hub
# upload adds); a folder holding anything else is refused, never deleted.
TRANSFORMER_FILES = frozenset({"config.json", WEIGHTS_NAME, "README.md", "validation.mp4"})
LORA_FILES = frozenset({LORA_WEIGHTS_NAME, LORA_EMA_WEIGHTS_NAME, "README.md", "validation.mp4"})
# The base model's components a pipeline export takes as they are.
BASE_COMPONENTS = ("text_encoder", "tokenizer", "vae")
PIPELINE_ENTRIES = frozenset(
    {"model_index.json", "transformer", "scheduler", *BASE_COMPONENTS, "README.md", "validation.mp4"}
)


def write_diffusers_transformer(folder: Path, transformer, state_dict: dict[str, torch.Tensor]) -> Path:
    """A `from_pretrained`-able transformer folder from a (gathered) state dict.

    Written by hand rather than with `save_pretrained` so the EMA weights, which live outside the module,
    and FSDP-gathered weights go through the same path.
    """

    def build(staging: Path) -> None:
        transformer.save_config(staging)
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, staging / WEIGHTS_NAME)

    return publish_folder(folder, build, TRANSFORMER_FILES)


def base_pipeline_folder(base: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local folder holding the base pipeline's components: `base` itself, or its Hub snapshot at `revision`
    (from the cache; downloaded once if missing)."""
    if Path(base).is_dir():
        return Path(base)
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", *(f"{name}/*" for name in BASE_COMPONENTS)]
    return Path(snapshot_download(base, allow_patterns=patterns, revision=revision, cache_dir=cache_dir))


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where the file system allows it (a 2B pipeline's T5 is 22 GB), else a copy."""
    try:
        os.link(os.path.realpath(source), target)
    except OSError:
        shutil.copy2(source, target)


def write_diffusers_pipeline(
    folder: Path,
    base: str,
    transformer,
    state_dict: dict[str, torch.Tensor],
    revision: str | None = None,
    cache_dir: str | None = None,
) -> Path:
    """A pipeline folder that diffusers' `DiffusionPipeline`, its stock `Cosmos2VideoToWorldPipeline` and our
    `CosmosVideo2WorldPipeline` load: the base model's text encoder, tokenizer and VAE, the scheduler the stock
    pipeline samples with, and `transformer/` from `state_dict` (see the module docstring). `revision` and
    `cache_dir` say where a Hub base is read from."""
    source = base_pipeline_folder(base, revision, cache_dir)
    missing = [name for name in BASE_COMPONENTS if not (source / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{base} has no {', '.join(missing)}/ folder: pass a diffusers pipeline as "
            f"--pretrained_model_name_or_path."
        )

    def build(staging: Path) -> None:
        for name in BASE_COMPONENTS:
            shutil.copytree(source / name, staging / name, copy_function=_link_or_copy)
        # diffusers' Cosmos-Predict2 scheduler settings, whatever the base saved (a folder of ours holds NVIDIA's
        # sampler, which the stock pipeline cannot drive).
        FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True).save_config(staging / "scheduler")
        transformer.save_config(staging / "transformer")
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, staging / "transformer" / WEIGHTS_NAME
        )
        write_stock_model_index(staging)

    return publish_folder(folder, build, PIPELINE_ENTRIES)


def export_final(transformer, state_dict: dict[str, torch.Tensor], ema_state: dict | None, config, base: str) -> Path:
    """Write, for a full run, `<output_dir>/pipeline` (the transformer from the EMA weights, or the live ones
    without an EMA or with `--export_live_weights`) and `<output_dir>/transformer` (+ `transformer_ema`);
    for LoRA, `<output_dir>/lora` (`pytorch_lora_weights.safetensors`, + `pytorch_lora_weights_ema.safetensors`
    from the EMA). Returns the folder a Hub upload pushes: the pipeline, or the LoRA folder."""
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
                        staging,
                        transformer_lora_layers=layers,
                        weight_name=name,
                        transformer_lora_adapter_metadata=metadata,
                    )

        publish_folder(out / "lora", build, LORA_FILES)
        logger.info(
            "Exported the LoRA adapter to %s (pipeline.load_lora_weights%s)",
            out / "lora",
            f"; the EMA: weight_name={LORA_EMA_WEIGHTS_NAME!r}" if ema_layers is not None else "",
        )
        return out / "lora"
    write_diffusers_transformer(out / "transformer", transformer, state_dict)
    if ema_state is not None:
        write_diffusers_transformer(out / "transformer_ema", transformer, ema_state)
    live = ema_state is None or config.export_live_weights
    weights = state_dict if live else ema_state
    write_diffusers_pipeline(out / "pipeline", base, transformer, weights, config.revision, config.cache_dir)
    logger.info(
        "Exported the diffusers pipeline (%s weights) to %s, and the transformer to %s",
        "live" if live else "EMA",
        out / "pipeline",
        out / "transformer",
    )
    return out / "pipeline"

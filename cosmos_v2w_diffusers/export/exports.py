"""Exports of a run: a whole diffusers pipeline folder and the transformer (full), or a diffusers LoRA file (LoRA).

The pipeline folder is what diffusers' stock `Cosmos2VideoToWorldPipeline` saves (its `model_index.json`,
an Euler `FlowMatchEulerDiscreteScheduler`), with the run's transformer and the base model's text encoder,
tokenizer and VAE. So each loader gets what it knows: `DiffusionPipeline.from_pretrained` and the stock
class build diffusers' pipeline and sampler; `CosmosVideo2WorldPipeline.from_pretrained` builds ours, which
replaces the Euler scheduler with NVIDIA's sampler on load.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.loaders.lora_pipeline import CosmosLoraLoaderMixin
from huggingface_hub import split_torch_state_dict_into_shards
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..generation.pipeline_folder import NVIDIA_SAMPLER_FOLDER, SAVED_BY_KEY, SAVED_SAMPLER_KEY
from ..generation.scheduler_few_step import CosmosFewStepScheduler
from ..generation.step_cache import STEP_CACHE_FILE
from ..models.checkpoint_format import LORA_EMA_WEIGHTS_NAME, LORA_WEIGHTS_NAME
from ..models.components import write_stock_model_index
from ..utils.io_utils import check_replaceable, copy_regular_file, publish_folder

logger = logging.getLogger(__name__)

# diffusers' own file name, so `CosmosTransformer3DModel.from_pretrained(folder)` reads it.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# What is added to an export folder after it is written (the Hub card and validation video): a new export
# replaces a folder holding these and what the last export wrote (its manifest), and refuses any other.
ADDED_LATER = frozenset({"README.md", "validation.mp4", STEP_CACHE_FILE})
# The base model's components a pipeline export takes as they are, and the files of theirs a loader reads (configs,
# weights, tokenizer files): nothing else in a received folder (a NOTICE.txt linked to /proc/self/environ, say)
# is copied or uploaded.
BASE_COMPONENTS = ("text_encoder", "tokenizer", "vae")
BASE_FILE_PATTERNS = ("*.json", "*.safetensors", "*.model", "vocab.txt", "merges.txt")


WEIGHTS_INDEX_NAME = WEIGHTS_NAME + ".index.json"
EXPORT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# diffusers' `save_pretrained` default: well under the Hub's 50 GB a file (a 14B transformer is ~28 GB in bf16).
DEFAULT_MAX_SHARD_SIZE = "10GB"


def _stored_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype `tensor` is written in: `dtype` for floating tensors (None: as it is), its own otherwise."""
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def plan_shards(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None, max_shard_size: str | int):
    """huggingface_hub's split of `state_dict`, stored in `dtype` (`_stored_dtype`; meta tensors count too), into
    diffusers' file names: `diffusion_pytorch_model.safetensors`, or `-0000i-of-0000n` shards with an index."""
    sizes = {k: torch.empty(v.shape, dtype=_stored_dtype(v, dtype), device="meta") for k, v in state_dict.items()}
    return split_torch_state_dict_into_shards(
        sizes, filename_pattern="diffusion_pytorch_model{suffix}.safetensors", max_shard_size=max_shard_size
    )


def write_weights(
    folder: Path,
    state_dict: dict[str, torch.Tensor],
    dtype: torch.dtype | None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> None:
    """The weight files `save_pretrained(max_shard_size=..., safe_serialization=True)` writes, from a state dict
    that is not the module's own (the EMA, or FSDP-gathered weights), one shard in memory at a time."""
    split = plan_shards(state_dict, dtype, max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        shard = {n: state_dict[n].detach().to("cpu", _stored_dtype(state_dict[n], dtype)) for n in names}
        save_file({n: t.contiguous() for n, t in shard.items()}, folder / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of a diffusers weights folder, sharded or not."""
    index = folder / WEIGHTS_INDEX_NAME
    if not index.is_file():
        return load_file(folder / WEIGHTS_NAME)
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return {k: v for name in files for k, v in load_file(folder / name).items()}


def save_public_config(transformer, folder: Path) -> None:
    """`transformer.save_config(folder)` without the local folder it was loaded from: diffusers records it as
    `_name_or_path`, and an export goes to the Hub, where a path names a user, a machine or a data folder."""
    transformer.save_config(folder)
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    source = str(config.get("_name_or_path") or "")
    if source and (Path(source).exists() or source.startswith(("/", ".", "~")) or "\\" in source):
        del config["_name_or_path"]
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_diffusers_transformer(
    folder: Path,
    transformer,
    state_dict: dict[str, torch.Tensor],
    dtype: torch.dtype | None = torch.bfloat16,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """A `from_pretrained`-able transformer folder from a (gathered) state dict, in `dtype` (None: as the tensors
    are), sharded above `max_shard_size` (`write_weights`)."""

    def build(staging: Path) -> None:
        save_public_config(transformer, staging)
        write_weights(staging, state_dict, dtype, max_shard_size)

    return publish_folder(folder, build, ADDED_LATER)


def base_pipeline_folder(base: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local folder holding the base pipeline's components: `base` itself, or its Hub snapshot at `revision`
    (from the cache; downloaded once if missing)."""
    if Path(base).is_dir():
        return Path(base)
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", *(f"{name}/*" for name in BASE_COMPONENTS)]
    return Path(snapshot_download(base, allow_patterns=patterns, revision=revision, cache_dir=cache_dir))


def _link_root(source: Path) -> Path:
    """The folder links in a base folder may point into: the folder itself, or for a Hub snapshot
    (`.../models--org--name/snapshots/<commit>`, whose files link into `../../blobs`) its repository's cache."""
    source = source.resolve()
    return source.parents[1] if source.parent.name == "snapshots" else source


def base_component_files(source: Path) -> list[tuple[str, Path]]:
    """(path in the export, real file) for each file of the base's `BASE_COMPONENTS` a loader reads.

    Links to folders are not followed; a needed file that links out of the base folder (or its Hub cache) is
    refused with its name, so a received folder cannot make us copy or upload a file from elsewhere."""
    root = _link_root(source)
    files = []
    for name in BASE_COMPONENTS:
        for folder, _, names in os.walk(source / name):
            for file_name in sorted(names):
                if not any(fnmatch.fnmatch(file_name, pattern) for pattern in BASE_FILE_PATTERNS):
                    continue
                path = Path(folder, file_name)
                real = path.resolve()
                if not real.is_relative_to(root) or not real.is_file():
                    raise ValueError(
                        f"{path} links to {real}, outside the base model folder {source} (or not a file): exports "
                        f"copy only the base's own files; replace the link with the file it should be."
                    )
                files.append((path.relative_to(source).as_posix(), real))
    return files


def write_diffusers_pipeline(
    folder: Path,
    base: str,
    transformer,
    state_dict: dict[str, torch.Tensor],
    revision: str | None = None,
    cache_dir: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    sampler: CosmosFewStepScheduler | None = None,
) -> Path:
    """A pipeline folder that diffusers' `DiffusionPipeline`, its stock `Cosmos2VideoToWorldPipeline` and our
    `CosmosVideo2WorldPipeline` load: the base model's text encoder, tokenizer and VAE, the scheduler the stock
    pipeline samples with, and `transformer/` from `state_dict` (see the module docstring). `revision` and
    `cache_dir` say where a Hub base is read from. A distilled student's `sampler` is saved where our pipeline
    reads NVIDIA's sampler from (`pipeline.NVIDIA_SAMPLER_FOLDER`), so it samples with it by default."""
    source = base_pipeline_folder(base, revision, cache_dir)
    missing = [name for name in BASE_COMPONENTS if not (source / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{base} has no {', '.join(missing)}/ folder: pass a diffusers pipeline as "
            f"--pretrained_model_name_or_path."
        )
    files = base_component_files(source)

    def build(staging: Path) -> None:
        for relative, real in files:
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            copy_regular_file(real, staging / relative)
        # diffusers' Cosmos-Predict2 scheduler settings, whatever the base saved (a folder of ours holds NVIDIA's
        # sampler, which the stock pipeline cannot drive).
        FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True).save_config(staging / "scheduler")
        save_public_config(transformer, staging / "transformer")
        write_weights(staging / "transformer", state_dict, dtype, max_shard_size)
        write_stock_model_index(staging)
        if sampler is not None:
            sampler.save_config(staging / NVIDIA_SAMPLER_FOLDER)
            index = json.loads((staging / "model_index.json").read_text())
            index.update({SAVED_SAMPLER_KEY: NVIDIA_SAMPLER_FOLDER, SAVED_BY_KEY: "CosmosVideo2WorldPipeline"})
            (staging / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    return publish_folder(folder, build, ADDED_LATER)


@dataclass(frozen=True)
class ExportSettings:
    """What a run's exports need to know of it (the trainer builds it from the run's sections): where they go
    (`--output_dir`), whether the run trained a LoRA adapter (a distillation's student is exported as a full net)
    and kept an EMA, the transformer's dtype and shard size, whether the pipeline takes the live weights, where the
    base comes from (`--revision`, `--cache_dir`), and a distilled student's step count (None otherwise)."""

    output_dir: str
    lora: bool
    ema: bool
    dtype: str
    max_shard_size: str
    live_weights: bool
    revision: str | None
    cache_dir: str | None
    student_steps: int | None


def export_folders(config: ExportSettings) -> list[Path]:
    """The folders `export_final` writes for a run of `config`."""
    out = Path(config.output_dir)
    if config.lora:
        return [out / "lora"]
    return [out / "transformer", *([out / "transformer_ema"] if config.ema else []), out / "pipeline"]


def check_export_targets(config: ExportSettings, base: str) -> None:
    """Before any training: refuse a run whose exports would replace files we did not write (`check_replaceable`),
    or take a file from outside a local base folder (`base_component_files`), naming them."""
    for folder in export_folders(config):
        check_replaceable(folder, ADDED_LATER, "--output_dir")
    if not config.lora and Path(base).is_dir():
        base_component_files(Path(base))


def export_final(
    transformer, state_dict: dict[str, torch.Tensor], ema_state: dict | None, config: ExportSettings, base: str
) -> Path:
    """Write, for a full run, `<output_dir>/pipeline` (the transformer from the EMA weights, or the live ones
    without an EMA or with `--export_live_weights`) and `<output_dir>/transformer` (+ `transformer_ema`);
    for LoRA, `<output_dir>/lora` (`pytorch_lora_weights.safetensors`, + `pytorch_lora_weights_ema.safetensors`
    from the EMA). A distillation exports its student (`state_dict` and `ema_state`: plain nets) as a full run's,
    its pipeline sampling with the student's few-step sampler. Returns the folder a Hub upload pushes: the
    pipeline, or the LoRA folder."""
    out = Path(config.output_dir)
    if config.lora:
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

        publish_folder(out / "lora", build, ADDED_LATER)
        logger.info(
            "Exported the LoRA adapter to %s (pipeline.load_lora_weights%s)",
            out / "lora",
            f"; the EMA: weight_name={LORA_EMA_WEIGHTS_NAME!r}" if ema_layers is not None else "",
        )
        return out / "lora"
    dtype, shard = EXPORT_DTYPES[config.dtype], config.max_shard_size
    write_diffusers_transformer(out / "transformer", transformer, state_dict, dtype, shard)
    if ema_state is not None:
        write_diffusers_transformer(out / "transformer_ema", transformer, ema_state, dtype, shard)
    live = ema_state is None or config.live_weights
    weights = state_dict if live or ema_state is None else ema_state
    sampler = CosmosFewStepScheduler(config.student_steps) if config.student_steps else None
    write_diffusers_pipeline(
        out / "pipeline", base, transformer, weights, config.revision, config.cache_dir, dtype, shard, sampler
    )
    logger.info(
        "Exported the diffusers pipeline (%s weights) to %s, and the transformer to %s",
        "live" if live else "EMA",
        out / "pipeline",
        out / "transformer",
    )
    return out / "pipeline"

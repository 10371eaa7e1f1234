"""Transformer weights between NVIDIA's native files and diffusers, both directions, full and LoRA (the
functions behind `python -m cosmos_v2w_diffusers.convert`).

The model size is read from the tensors' shapes. Round trips of our files are bit-exact: names are mapped
(`checkpoint_format`, diffusers' own single-file converter one way) and no tensor is cast. Every input is
read with `weights_only=True` or as safetensors: no file can run code. No output replaces a user's file or
folder (`io_utils.check_replaceable`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import CosmosTransformer3DModel
from safetensors.torch import load_file

from ..models.checkpoint_format import (
    from_native_state_dict,
    load_native_checkpoint,
    to_native_key,
    to_native_state_dict,
)
from ..models.presets import PRESETS
from ..utils.io_utils import atomic_write, current_umask
from .exports import (
    LORA_EMA_WEIGHTS_NAME,
    LORA_WEIGHTS_NAME,
    read_weights,
    write_diffusers_transformer,
)

logger = logging.getLogger(__name__)

_PEFT_ADAPTER = ".default"  # PEFT's adapter name inside module names, absent from diffusers LoRA files


def _preset_config(state_dict: dict[str, torch.Tensor], source: str) -> dict:
    """The transformer config of the preset whose shapes these diffusers-named weights have."""
    hidden = state_dict["patch_embed.proj.weight"].shape[0]
    blocks = len({k.split(".")[1] for k in state_dict if k.startswith("transformer_blocks.")})
    for preset in PRESETS.values():
        config = preset.transformer_config
        if config["num_attention_heads"] * config["attention_head_dim"] == hidden and config["num_layers"] == blocks:
            return config
    raise ValueError(f"{source}: {blocks} blocks of width {hidden} match no model size ({', '.join(PRESETS)}).")


def _save_pt(tensors: dict[str, torch.Tensor], path: Path) -> None:
    if path.exists() or path.is_symlink():  # it may be the user's only copy of a checkpoint
        raise ValueError(f"--output {path} already exists; pass a new file name, or move it away first.")
    with atomic_write(path) as f:
        torch.save(tensors, f)


def native_to_diffusers(path: Path, output: Path, use_ema: bool = False, dtype: torch.dtype | None = None) -> Path:
    """A diffusers transformer folder from a native file, in `dtype` (None: as stored, so round trips are exact)."""
    weights = load_native_checkpoint(path, use_ema)
    config = _preset_config(weights, str(path))
    with torch.device("meta"):
        transformer = CosmosTransformer3DModel(**config)
    return write_diffusers_transformer(output, transformer, weights, dtype)


def transformer_from_single_file(
    path: str | Path, use_ema: bool = False, dtype: torch.dtype = torch.bfloat16
) -> CosmosTransformer3DModel:
    """diffusers' `CosmosTransformer3DModel.from_single_file` on a native `.pt` of ours (or NVIDIA's), without a
    `config=`: the model size is read from the tensors' shapes. diffusers alone maps every Cosmos-Predict2 file to
    the 2B or 14B Hub config (a download, and wrong for the tiny preset), and its converter reads `net.*` only,
    so with `use_ema` the `net_ema.*` weights are handed to it under those names."""
    config = _preset_config(load_native_checkpoint(path, use_ema), str(path))
    native = torch.load(path, map_location="cpu", weights_only=True)  # read and checked above
    native = native.get("model", native) if isinstance(native.get("model"), dict) else native
    prefix = "net_ema." if use_ema else "net."
    weights = {"net." + k[len(prefix) :]: v for k, v in native.items() if k.startswith(prefix)}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "config.json").write_text(json.dumps({"_class_name": "CosmosTransformer3DModel", **config}))
        return CosmosTransformer3DModel.from_single_file(weights, config=folder, torch_dtype=dtype)


def diffusers_to_native(folder: Path, output: Path) -> Path:
    config = CosmosTransformer3DModel.load_config(folder)
    weights = read_weights(folder)
    _save_pt(to_native_state_dict(weights, SimpleNamespace(**config)), output)
    return output


def _lora_metadata_of(path: Path, layers: dict[str, torch.Tensor]) -> dict:
    """The adapter config (rank, alpha, targets) of a native LoRA checkpoint, for the exported file's metadata.

    A native file holds tensors only; our training checkpoints keep the run's flags in the sibling
    `trainer/iter_N.pt`. Without one (NVIDIA's files), alpha is taken equal to the rank, NVIDIA's default,
    and the log says so."""
    rank = next(v.shape[0] for k, v in layers.items() if ".lora_A" in k)
    targets = sorted({k.split(".lora_")[0] for k in layers})  # the wrapped modules' full names
    trainer_part = path.parents[1] / "trainer" / path.name  # <output_dir>/checkpoints/{model,trainer}/iter_N.pt
    stored = None
    if path.parent.name == "model" and trainer_part.is_file():
        try:
            stored = json.loads(torch.load(trainer_part, map_location="cpu", weights_only=True).get("config", "null"))
        except Exception as exc:  # unreadable: the same as no stored config, said in the log
            logger.warning("%s cannot be read (%s)", trainer_part, str(exc).splitlines()[0][:200])
    if stored and stored.get("lora_alpha"):
        return {
            "r": stored["lora_rank"],
            "lora_alpha": stored["lora_alpha"],
            "target_modules": stored["lora_target_modules"].split(","),
        }
    logger.warning(
        "%s: no stored run config beside it, so the LoRA alpha is taken equal to the rank (%d).", path, rank
    )
    return {"r": rank, "lora_alpha": rank, "target_modules": targets}


def lora_native_to_diffusers(path: Path, output: Path, use_ema: bool = False) -> Path:
    from diffusers.loaders.lora_pipeline import CosmosLoraLoaderMixin

    native = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "net_ema." if use_ema else "net."
    lora = {k: v for k, v in native.items() if k.startswith(prefix) and ".lora_" in k}
    if not lora:
        raise ValueError(f"{path} holds no `{prefix}*lora_*` tensors: not a LoRA training checkpoint.")
    # diffusers' converter maps the module names; PEFT's adapter name is dropped as diffusers' files do.
    renamed = from_native_state_dict({"net." + k[len(prefix) :]: v for k, v in lora.items()})
    layers = {k.replace(_PEFT_ADAPTER, ""): v for k, v in renamed.items()}
    name = LORA_EMA_WEIGHTS_NAME if use_ema else LORA_WEIGHTS_NAME
    if (output / name).exists() or (output / name).is_symlink():  # perhaps the only copy of someone's adapter
        raise ValueError(f"--output {output / name} already exists; pass a new folder, or move the file away first.")
    output.mkdir(parents=True, exist_ok=True)
    CosmosLoraLoaderMixin.save_lora_weights(
        output,
        transformer_lora_layers=layers,
        weight_name=name,
        transformer_lora_adapter_metadata=_lora_metadata_of(path, layers),
    )
    (output / name).chmod(0o666 & ~current_umask())  # safetensors writes 0600 whatever the umask
    return output / name


def lora_diffusers_to_native(path: Path, output: Path) -> Path:
    layers = load_file(path)
    native = {}
    for key, value in layers.items():
        name = key.removeprefix("transformer.")
        for part in (".lora_A", ".lora_B"):
            name = name.replace(part + ".", part + _PEFT_ADAPTER + ".")
        native["net." + to_native_key(name)] = value
    _save_pt(native, output)
    return output

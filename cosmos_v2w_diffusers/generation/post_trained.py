"""What a post-training run left, read and checked before any model loads: its `--dit_path` weights (a native
checkpoint or a transformer folder) and its `--lora_path` adapter. Generation and a distillation's teacher
(`training/run_config.py`) both use them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import CosmosTransformer3DModel
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from safetensors import SafetensorError, safe_open

from ..models.checkpoint_format import LORA_WEIGHTS_NAME, check_checkpoint_matches, load_native_checkpoint
from ..models.components import build_transformer, check_transformer_matches
from ..models.presets import get_preset


def load_post_trained_weights(
    dit_path: str, load_ema: bool, model_size: str
) -> dict[str, torch.Tensor] | CosmosTransformer3DModel:
    """Read `--dit_path` and check it against the model size on the meta device, before loading any model."""
    preset = get_preset(model_size)
    path = Path(dit_path)
    if path.is_dir() and not ((path / "config.json").is_file() or (path / "transformer" / "config.json").is_file()):
        raise ValueError(
            f"--dit_path {path} is a folder without config.json: pass a diffusers transformer folder "
            f"(<output_dir>/transformer) or a native model/iter_N.pt file."
        )
    if path.is_dir():
        subfolder = "transformer" if (path / "transformer").is_dir() else None
        transformer = CosmosTransformer3DModel.from_pretrained(path, subfolder=subfolder, use_safetensors=True)
        check_transformer_matches(transformer, preset, str(path))
        return transformer
    state = load_native_checkpoint(path, use_ema=load_ema)
    if any("lora_A" in k for k in state):
        raise ValueError(
            f"{path} is a LoRA training checkpoint: pass the adapter export instead (--lora_path <output_dir>/lora)."
        )
    check_checkpoint_matches(build_transformer(preset, device="meta"), state, str(path))
    return state


def check_lora_adapter(lora_path: str, preset) -> None:
    """Refuse, before any model loads, a `--lora_path` adapter that does not fit the preset's transformer, or whose
    metadata cannot be true of it: a rank its tensors do not have, an alpha that is not a positive number, DoRA
    (its magnitude vectors are missing) or an initialisation that changes the base weights (PiSSA, OLoRA, ...),
    which a plain base then gets wrong. diffusers would fail deep in PEFT, or apply the adapter at a wrong scale."""
    path = Path(lora_path)
    file = path / LORA_WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"--lora_path {file} does not exist: pass <output_dir>/lora or its .safetensors file.")
    try:
        with safe_open(file, "pt") as f:
            metadata = f.metadata() or {}
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        adapter = json.loads(metadata.get(LORA_ADAPTER_METADATA_KEY) or "{}")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"--lora_path {file} is not a readable LoRA safetensors file ({exc}).") from None
    modules = dict(build_transformer(preset, device="meta").named_modules())
    ranks = set()
    for key, shape in shapes.items():
        name, _, part = key.removeprefix("transformer.").rpartition(".lora_")
        module = modules.get(name)
        if part not in ("A.weight", "B.weight") or not isinstance(module, torch.nn.Linear) or len(shape) != 2:
            raise ValueError(f"--lora_path {file}: {key} is not a LoRA weight of the {preset.name} transformer.")
        expected = (shape[0], module.in_features) if part == "A.weight" else (module.out_features, shape[1])
        if shape != expected:
            raise ValueError(
                f"--lora_path {file}: {key} has shape {list(shape)}, but {name} of the {preset.name} transformer "
                f"needs {list(expected)}: the adapter is for another model (pass its --model_size)."
            )
        ranks.add(shape[0] if part == "A.weight" else shape[1])
    problem = _adapter_metadata_problem(adapter, ranks)
    if problem:
        raise ValueError(f"--lora_path {file}: its metadata {problem}; only plain LoRA adapters are loaded.")


def _adapter_metadata_problem(adapter: dict, ranks: set[int]) -> str | None:
    """What in a LoRA file's adapter metadata (diffusers' `transformer.*` keys) cannot be true of an adapter whose
    tensors have `ranks`, or None."""
    rank, alpha = adapter.get("transformer.r"), adapter.get("transformer.lora_alpha")
    init = adapter.get("transformer.init_lora_weights", True)
    if rank is not None and (type(rank) is not int or {rank} != ranks):
        return f"says rank {rank!r}, its tensors have rank {sorted(ranks)}"
    if alpha is not None and not (type(alpha) in (int, float) and 0 < alpha < math.inf):
        return f"says alpha {alpha!r}, not a positive number"
    if adapter.get("transformer.use_dora"):
        return "is a DoRA adapter"
    if init not in (True, False, "gaussian"):
        return f"was initialised with {init!r}, which changes the base weights"
    return None

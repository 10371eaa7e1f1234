"""NVIDIA's native transformer checkpoint format (`net.*` / `net_ema.*` keys) <-> diffusers.

diffusers reads native files with `convert_cosmos_transformer_checkpoint_to_diffusers` (its single-file
loader); we reuse that for reading. diffusers has no writer, so `to_native_state_dict` is the reverse of
its Cosmos-Predict2 rename table, checked key-for-key against it by the tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import CosmosTransformer3DModel
from diffusers.loaders.single_file_utils import (
    convert_cosmos_transformer_checkpoint_to_diffusers,
)

from ..utils.io_utils import read_regular_file

# diffusers' LoRA file names (`load_lora_weights(folder)` reads the first): our exports write them, generation reads.
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
LORA_EMA_WEIGHTS_NAME = "pytorch_lora_weights_ema.safetensors"

# diffusers name fragment -> NVIDIA name fragment, applied in order (the reverse of diffusers'
# TRANSFORMER_KEYS_RENAME_DICT_COSMOS_2_0).
_DIFFUSERS_TO_NATIVE = [
    ("transformer_blocks.", "blocks."),
    ("norm1.linear_1", "adaln_modulation_self_attn.1"),
    ("norm1.linear_2", "adaln_modulation_self_attn.2"),
    ("norm2.linear_1", "adaln_modulation_cross_attn.1"),
    ("norm2.linear_2", "adaln_modulation_cross_attn.2"),
    ("norm3.linear_1", "adaln_modulation_mlp.1"),
    ("norm3.linear_2", "adaln_modulation_mlp.2"),
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
    ("to_q.", "q_proj."),
    ("to_k.", "k_proj."),
    ("to_v.", "v_proj."),
    ("to_out.0.", "output_proj."),
    ("norm_q.", "q_norm."),
    ("norm_k.", "k_norm."),
    ("ff.net.0.proj.", "mlp.layer1."),
    ("ff.net.2.", "mlp.layer2."),
    ("patch_embed.proj.", "x_embedder.proj.1."),
    ("norm_out.linear_1.", "final_layer.adaln_modulation.1."),
    ("norm_out.linear_2.", "final_layer.adaln_modulation.2."),
    ("proj_out.", "final_layer.linear."),
    ("time_embed.t_embedder.", "t_embedder.1."),
    ("time_embed.norm.", "t_embedding_norm."),
]


def to_native_key(key: str) -> str:
    """`transformer_blocks.0.attn1.to_q.weight` -> `blocks.0.self_attn.q_proj.weight` (no `net.` prefix)."""
    for ours, theirs in _DIFFUSERS_TO_NATIVE:
        key = key.replace(ours, theirs)
    return key


def rope_buffers(transformer_config) -> dict[str, torch.Tensor]:
    """The three RoPE buffers NVIDIA's network registers and saves.

    diffusers recomputes them, so its state dict lacks them; but its single-file loader recognises a
    Cosmos-Predict2 file only by `net.pos_embedder.dim_spatial_range`, and NVIDIA's strict loading wants all
    three. Values follow NVIDIA's `VideoRopePosition3DEmb` (head dim split into t, h, w parts).
    """
    head_dim = transformer_config.attention_head_dim
    dim_h = head_dim // 6 * 2
    dim_t = head_dim - 2 * dim_h
    max_t, max_h, max_w = (m // p for m, p in zip(transformer_config.max_size, transformer_config.patch_size))
    return {
        "pos_embedder.seq": torch.arange(max(max_t, max_h, max_w), dtype=torch.float32),
        "pos_embedder.dim_spatial_range": torch.arange(0, dim_h, 2)[: dim_h // 2].float() / dim_h,
        "pos_embedder.dim_temporal_range": torch.arange(0, dim_t, 2)[: dim_t // 2].float() / dim_t,
    }


def training_counters() -> dict[str, torch.Tensor]:
    """The four training counters NVIDIA's network registers as buffers, as zeros: its strict
    `load_state_dict` (its resume path) refuses a file without them; every other loader drops them."""
    return {
        "accum_video_sample_counter": torch.tensor(0, dtype=torch.int64),
        "accum_image_sample_counter": torch.tensor(0, dtype=torch.int64),
        "accum_iteration": torch.tensor(0, dtype=torch.int64),
        "accum_train_in_hours": torch.tensor(0.0, dtype=torch.float32),
    }


def to_native_state_dict(
    state_dict: dict[str, torch.Tensor], transformer_config, prefix: str = "net.", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """diffusers-named tensors -> NVIDIA-named `prefix*` tensors (plus the RoPE buffers and the training
    counters NVIDIA's network expects), optionally cast."""
    native = {prefix + to_native_key(k): (v.to(dtype) if dtype is not None else v) for k, v in state_dict.items()}
    native.update({prefix + k: v for k, v in rope_buffers(transformer_config).items()})
    native.update({prefix + k: v for k, v in training_counters().items()})
    return native


def from_native_state_dict(native: dict[str, torch.Tensor], prefix: str = "net.") -> dict[str, torch.Tensor]:
    """`prefix*` tensors of a native file -> diffusers names (buffers and other prefixes dropped)."""
    selected = {"net." + k[len(prefix) :]: v for k, v in native.items() if k.startswith(prefix)}
    if not selected:
        raise KeyError(f"no `{prefix}*` tensors")
    return convert_cosmos_transformer_checkpoint_to_diffusers(selected)


def load_native_checkpoint(path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a native `iter_N.pt` (ours or NVIDIA's released `.pt`) as a diffusers-named state dict.

    `use_ema` picks the `net_ema.*` weights. Only tensors are unpickled (`weights_only=True`).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder{'' if (path / 'config.json').is_file() else ' without config.json'}: pass a native "
            f"model/iter_N.pt file here (`python -m cosmos_v2w_diffusers.convert to_native` makes one of a diffusers "
            f"transformer folder)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; pass the path of a model/iter_*.pt file.")
    try:
        native = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or hostile (weights_only refuses code): name the file
        raise ValueError(
            f"{path} cannot be read as a native checkpoint ({str(exc).splitlines()[0][:200]}); it may be truncated, "
            f"corrupt, or hold more than tensors. Pass a complete model/iter_*.pt."
        ) from None
    if isinstance(native, dict) and "model" in native and isinstance(native["model"], dict):
        native = native["model"]  # some of NVIDIA's releases nest the weights
    prefix = "net_ema." if use_ema else "net."
    try:
        return from_native_state_dict(native, prefix)
    except KeyError:
        hint = " (this file has no EMA weights: drop --load_ema)" if use_ema else ""
        raise ValueError(
            f"{path} holds no `{prefix}*` tensors: not a Cosmos-Predict2 native checkpoint{hint}."
        ) from None


def distilled_steps_of(path: str | os.PathLike) -> int | None:
    """The steps a distilled student (`train_video2world.py --distill_steps N`) was made for, where `path` is the
    model file of such a run's checkpoint (`<output_dir>/checkpoints/model/iter_N.pt`, its run's flags beside it in
    `trainer/`) or its exported `pipeline/` or `transformer/` folder; None for any other weights.

    NVIDIA's model file holds only the network's tensors, which a student shares with any Video2World net, so
    what makes it a student is read from the run that wrote it."""
    path = Path(path)
    if path.is_dir():
        for sampler in (path / "scheduler_nvidia", path.parent / "pipeline" / "scheduler_nvidia"):
            config = sampler / "scheduler_config.json"
            if config.is_file():
                saved = json.loads(read_regular_file(config, max_bytes=2**16))
                if saved.get("_class_name") == "CosmosFewStepScheduler":
                    return _stored_steps(saved.get("num_train_steps"), config)
        return None
    trainer = path.parent.parent / "trainer" / path.name
    if path.parent.name != "model" or not trainer.is_file():
        return None
    try:
        part = torch.load(trainer, map_location="cpu", weights_only=True)
        steps = json.loads(part.get("config") or "{}").get("distill_steps")
    except Exception:  # not ours, or unreadable: such a file is no student of ours
        return None
    return _stored_steps(steps, trainer) if steps is not None else None


def _stored_steps(value, source: Path) -> int:
    """A student's step count as a received file stores it, bounded like `--distill_steps` (1 to 8)."""
    if type(value) is not int or not 1 <= value <= 8:
        raise ValueError(
            f"{source} says the student takes {str(value)[:40]!r} steps, not a whole number from 1 to 8: the file is "
            f"damaged or not ours; pass the student's own checkpoint or pipeline folder."
        )
    return value


def check_checkpoint_matches(
    transformer: CosmosTransformer3DModel, state_dict: dict[str, torch.Tensor], source: str
) -> None:
    """Refuse weights of another model size or layout with a clear message (works on a meta-device model)."""
    own = transformer.state_dict()
    for key, value in state_dict.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)} but this transformer expects "
                f"{tuple(own[key].shape)}: the checkpoint is for a different model size. "
                f"Pick the matching --model / --model_size."
            )
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not match the transformer (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            f"is it a checkpoint of this model and training mode (full vs LoRA)?"
        )


def load_into_transformer(
    transformer: CosmosTransformer3DModel, state_dict: dict[str, torch.Tensor], source: str
) -> None:
    """Load diffusers-named weights after `check_checkpoint_matches`."""
    check_checkpoint_matches(transformer, state_dict, source)
    transformer.load_state_dict(state_dict, strict=True)

"""Transformations applied to the single-device transformer before accelerate wraps it:
activation checkpointing and LoRA. Data/model parallelism itself (DDP, FSDP, DeepSpeed) is accelerate's,
chosen by the accelerate config (`accelerate_configs/`)."""

from __future__ import annotations

from functools import partial

import torch
from diffusers import CosmosTransformer3DModel
from peft import LoraConfig
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

# Attention is ~85% of a block's FLOPs but its output is small: keeping it and recomputing the cheap
# rest (norms, RoPE, MLP, projections) saves a re-run of attention per block (../shared/PERFORMANCE.md:
# 2B step 17.7 s -> ~14.9 s for ~13 GiB more). NVIDIA also uses a selective policy.
_ATTENTION_OPS = {
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _keep_attention_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_checkpoint(module: torch.nn.Module, *args):
    return checkpoint(
        module.__call__,
        *args,
        use_reentrant=False,
        context_fn=partial(create_selective_checkpoint_contexts, _keep_attention_outputs),
    )


def apply_activation_checkpointing(transformer: CosmosTransformer3DModel, mode: str) -> None:
    """`full`: recompute every block in the backward (diffusers' default); `selective`: keep attention
    outputs; `none`: keep everything (only viable for small inputs)."""
    if mode == "full":
        transformer.enable_gradient_checkpointing()
    elif mode == "selective":
        transformer.enable_gradient_checkpointing(_selective_checkpoint)
    elif mode != "none":
        raise ValueError(f"Unknown activation checkpointing mode {mode!r}: use full, selective or none.")


def apply_lora(transformer: CosmosTransformer3DModel, rank: int, alpha: int, target_modules: list[str]) -> None:
    """Freeze the base weights and add a PEFT LoRA adapter (fp32, as diffusers' LoRA examples keep it;
    NVIDIA keeps bf16 live LoRA weights with fp32 masters: under bf16 autocast the compute is the same)."""
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True, target_modules=target_modules)
    )


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered from its shards under FSDP (a collective: call it on every rank)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(reference: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` placed (and, under FSDP, sharded) like `reference`, to copy into it."""
    full = full.to(reference.device, reference.dtype)
    if isinstance(reference, DTensor):
        return distribute_tensor(full, reference.device_mesh, reference.placements)
    return full

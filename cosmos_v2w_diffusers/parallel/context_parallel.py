"""Context parallelism for the Cosmos transformer: the latent sequence sharded over the ranks of a group.

diffusers' Ulysses attention does the work (`ContextParallelConfig`, its split/gather hooks and its
templated all-to-all attention); this module supplies what diffusers 0.42 lacks for Cosmos:

- a `_cp_plan`: diffusers ships none for `CosmosTransformer3DModel`. The RoPE tables are split where the
  rope module makes them; the token stream at the first block's input; the per-token timestep embeddings
  (`[B, THW, C]` when each latent frame has its own timestep, as in Video2World) at every block and at
  `norm_out`, because the model's forward hands the same full tensors to each of them; the output is
  gathered after `proj_out`.
- a self-attention processor that passes the parallel config to `dispatch_attention_fn`
  (`attention.CosmosAttnProcessor`): diffusers' `CosmosAttnProcessor2_0` does not, so its attention
  would stay local. Cross-attention stays local: each rank's queries attend to the whole (unsharded) text.
- the set-up itself: `ModelMixin.enable_parallelism` computes `rank % torch.accelerator.device_count()`,
  which divides by zero on a machine without an accelerator (our CPU tests), and builds a mesh over all
  ranks, where data parallelism needs one context-parallel group per data-parallel rank: the groups are
  `ParallelDims`' (`parallel/parallel_dims.py`), the one layout training and generation share.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from diffusers import CosmosTransformer3DModel
from diffusers.hooks.context_parallel import apply_context_parallel

from .. import compat
from ..models.attention import attention_processors
from .parallel_dims import ParallelDims


def cosmos_cp_plan(num_blocks: int) -> dict:
    """The split/gather plan of `CosmosTransformer3DModel` (token dimension 1 of `[B, THW, C]`)."""
    tokens = compat.context_parallel_input(split_dim=1, expected_dims=3)
    per_token_time = {"embedded_timestep": tokens, "temb": tokens}
    rope_rows = compat.context_parallel_input(split_dim=0, expected_dims=2, split_output=True)
    plan = {
        "rope": {0: rope_rows, 1: rope_rows},
        "norm_out": per_token_time,
        "proj_out": compat.context_parallel_output(1, 3),
    }
    for i in range(num_blocks):
        plan[f"transformer_blocks.{i}"] = {"hidden_states": tokens, **per_token_time} if i == 0 else per_token_time
    return plan


def enable_context_parallel(
    transformer: CosmosTransformer3DModel, dims: ParallelDims, device: torch.device, tokens: int
) -> object:
    """Shard `transformer`'s sequence of `tokens` latent tokens over the groups of `dims.cp` consecutive ranks
    that `dims` lays out (Ulysses).

    The ranks of a group must see the same sample and the same noise. Call before wrapping the model (DDP/FSDP)
    and before `torch.compile`.
    """
    cp_size = dims.cp
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"--context_parallel_size {cp_size} needs {cp_size} or more processes started together: "
            f"`accelerate launch --multi_gpu --num_processes N ...`; on CPUs `ACCELERATE_USE_CPU=1 accelerate launch "
            f"--multi_gpu --num_processes N ...` (`accelerate launch --cpu` starts several processes only "
            f"through MPI)."
        )
    if (dims.world_size, dims.rank) != (dist.get_world_size(), dist.get_rank()):
        raise ValueError(
            f"The layout says rank {dims.rank} of {dims.world_size}, torch.distributed says rank "
            f"{dist.get_rank()} of {dist.get_world_size()}: build it from the processes started."
        )
    if tokens % cp_size:
        raise ValueError(f"--context_parallel_size {cp_size} must divide the {tokens} latent tokens of a sample.")
    heads = transformer.config.num_attention_heads
    if heads % cp_size:
        raise ValueError(f"--context_parallel_size {cp_size} must divide the model's {heads} attention heads.")
    config = compat.ulysses_parallel_config(cp_size)
    config.context_parallel_config.setup(dims.rank, dims.world_size, device, dims.context_parallel_mesh(device.type))
    for processor in attention_processors(transformer, "self"):
        compat.set_processor_parallel_config(processor, config)
    apply_context_parallel(
        transformer, config.context_parallel_config, cosmos_cp_plan(len(transformer.transformer_blocks))
    )
    compat.set_model_parallel_config(transformer, config)
    return config

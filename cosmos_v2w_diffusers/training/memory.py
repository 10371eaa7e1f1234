"""How many transformer blocks can keep their attention outputs: a GPU-memory estimate of one training step.

Selective checkpointing (keep each block's attention output, recompute the cheap rest) saves a re-run of
attention per block, but each kept output costs memory. The trainer asks `selective_blocks_that_fit` how
many blocks can afford it and recomputes the rest in full. torch offers no such planner (its memory
budget for `torch.compile`'s activation checkpointing works inside one compiled graph, not across 28
separately compiled, separately checkpointed blocks), so the estimate is written out here.

The per-token constants were measured on an H100 for the 2B model at 93x704x1280 (84,480 tokens,
hidden 2048; BENCHMARKS.md): a full-recompute compiled step peaked at 56.0 GiB and the selective one at
73.4 GiB, the difference being 28 kept attention outputs.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

GIB = 2**30
# Bytes per (token x hidden channel) that a block keeps when it saves its attention output (0.62 GiB at 84,480 x 2048).
SELECTIVE_BYTES = 4.0
# Bytes per (token x hidden channel) of one block's recompute and backward, beyond what the blocks keep:
# compiled blocks fuse the elementwise work around attention, uncompiled ones hold every intermediate.
BLOCK_PEAK_BYTES = {True: 42.0, False: 95.0}
# Leave this much of the card free: the allocator's slack and what other libraries hold.
HEADROOM_BYTES = 3 * GIB


def step_bytes_without_selective(
    transformer: torch.nn.Module, tokens: int, resident_bytes: int, compiled: bool, compute_dtype: torch.dtype
) -> int:
    """Estimated peak of one step with full recompute in every block.

    `resident_bytes` is what is on the GPU before the first step (weights, EMA, VAE). To it come the
    optimizer's two moments and the gradients of the trainable tensors, bf16 copies of fp32 weights made by
    autocast, every block's saved input and one block's recompute at a time.
    """
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    n_blocks = len(transformer.transformer_blocks)
    trainable = sum(p.numel() * p.element_size() for p in transformer.parameters() if p.requires_grad)
    optimizer_and_grads = 3 * trainable
    autocast_copies = sum(
        p.numel() * 2 for p in transformer.parameters() if p.dtype == torch.float32 and compute_dtype != torch.float32
    )
    block_inputs = n_blocks * tokens * hidden * (2 if compute_dtype != torch.float32 else 4)
    one_block = tokens * hidden * BLOCK_PEAK_BYTES[compiled]
    return int(resident_bytes + optimizer_and_grads + autocast_copies + block_inputs + one_block)


def selective_blocks_that_fit(
    transformer: torch.nn.Module,
    tokens: int,
    capacity_bytes: int,
    resident_bytes: int,
    compiled: bool,
    compute_dtype: torch.dtype,
    log: bool = True,
) -> int:
    """How many blocks can keep their attention outputs within `capacity_bytes` (0 to all of them)."""
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    n_blocks = len(transformer.transformer_blocks)
    base = step_bytes_without_selective(transformer, tokens, resident_bytes, compiled, compute_dtype)
    per_block = tokens * hidden * SELECTIVE_BYTES
    spare = capacity_bytes - HEADROOM_BYTES - base
    n_selective = max(0, min(n_blocks, int(spare // per_block)))
    if log:
        logger.info(
            "Activation checkpointing: %d of %d blocks keep their attention outputs (estimated peak %.1f GiB of %.1f GiB)",
            n_selective, n_blocks, (base + n_selective * per_block) / GIB, capacity_bytes / GIB,
        )
    return n_selective

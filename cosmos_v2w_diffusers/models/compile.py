"""Regional compilation of the transformer, for training and sampling alike."""

from __future__ import annotations

import torch
from diffusers import CosmosTransformer3DModel

from .. import compat


def compile_blocks(transformer: CosmosTransformer3DModel, **compile_kwargs) -> None:
    """`torch.compile` each transformer block on its own: one compilation serves all 28/36 identical blocks.

    diffusers' `compile_repeated_blocks` would do this, but `CosmosTransformer3DModel` declares no
    `_repeated_blocks`. Measured on an H100 (BENCHMARKS.md): 2B training step 22.3 s -> 19.2 s.

    Under FSDP2 each block sits in an activation-checkpoint wrapper (`training/activation_checkpointing.py`)
    and FSDP hooks the block inside it. Compiling the wrapper would trace the checkpoint with those hooks in
    its body; they break the graph, and the whole checkpointed block then runs uncompiled (profiled on an
    H200: no fused kernel in the step, 15.5 s against 13.4 s). So the block itself is compiled, and the
    checkpoint stays outside the compiled region, as diffusers' gradient checkpointing has it.
    Where the block's parts are checkpointed inside it (`--low_vram`: `checkpoint_block_parts`), the same holds one
    level down: the parts between the checkpoints are compiled on their own, each graph serving every block: the
    MLP (one sequence slice at a time), the three modulated norms, and the attention projections (each slice's
    linear layers, per-head norms and RoPE; `CosmosAttnProcessor.compile_projections`). Left as they were, the
    fp32 norms and rotations ran as separate kernels over the whole sequence, and kept their fp32 intermediates
    for the backward (2B at 720p on an H200: 18.98 s and 14.91 GiB a step, against 16.53 s and 12.81 GiB now).
    `compile_kwargs` go to `torch.compile` (tests pass `backend="eager"`).
    """
    for block in transformer.transformer_blocks:
        block = compat.checkpoint_wrapped(block) or block
        mlp_alone = compat.checkpoint_wrapped(block.ff)  # the block's parts checkpointed
        if mlp_alone is None:
            block.compile(**compile_kwargs)
            continue
        for part in (mlp_alone, block.norm1, block.norm2, block.norm3):
            part.compile(**compile_kwargs)
        for attn in (block.attn1, block.attn2):
            attn.processor.compile_projections(**compile_kwargs)


def compile_block_forwards(transformer: CosmosTransformer3DModel, **compile_kwargs) -> None:
    """`torch.compile` each block's `forward` alone, for generation with hooks put around it afterwards (the step
    cache, `generation/step_cache.py`): diffusers' hooks replace `forward`, and `block.compile()` would trace them
    too, with their per-call cache state and the one number they read from the GPU, into every block's graph."""
    for block in transformer.transformer_blocks:
        block.forward = torch.compile(block.forward, **compile_kwargs)

"""Activation checkpointing of the transformer's blocks: selective (keep attention outputs, recompute the cheap
rest), full, or full with each block's saved input offloaded to CPU memory (`--low_vram`) and, where a step needs
it, the block's parts checkpointed again inside it; plain (diffusers' gradient checkpointing hook) or as FSDP2
wants it (each block wrapped before it is sharded).

How many blocks can afford to keep their attention outputs is the memory planner's answer (`memory.py`).
"""

from __future__ import annotations

from functools import partial

import torch
from diffusers import CosmosTransformer3DModel
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from .. import compat
from ..models.attention import attention_processors
from .block_swap import BlockSwap

# Attention is ~85% of a block's FLOPs but its output is small: keeping it and recomputing the cheap
# rest (norms, RoPE, MLP, projections) saves a re-run of attention per block (measured on an H100:
# 2B step 17.7 s -> ~14.9 s for ~13 GiB more). NVIDIA also uses a selective policy.
_ATTENTION_OPS = compat.attention_kernel_ops()


def _keep_attention_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_KEEP_ATTENTION_OUTPUTS = partial(create_selective_checkpoint_contexts, _keep_attention_outputs)


def _selective_checkpoint(module: torch.nn.Module, *args):
    return checkpoint(
        module.__call__,
        *args,
        use_reentrant=False,
        context_fn=_KEEP_ATTENTION_OUTPUTS,
    )


def _full_checkpoint(module: torch.nn.Module, *args):
    return checkpoint(module.__call__, *args, use_reentrant=False)


class _OffloadedCheckpoint:
    """Full recompute, with the one tensor it keeps (the block input) held in pinned CPU memory.

    torch's `save_on_cpu` cannot do this: a non-reentrant checkpoint holds its inputs by reference, not through
    saved-tensor hooks. So the checkpoint is given a host copy of the input, and the checkpointed function computes
    the forward on the device input itself (from a closure, which the checkpoint does not keep) and the recompute
    on the host copy brought back. The gradient flows on the device, through the forward's own graph.

    On a GPU the copy to the host runs on a side stream, so the next block does not wait for it; the recompute
    waits for it before reading the copy back. (Before, both copies were on the compute stream, the forward read
    the host copy back at once, and the input's gradient crossed to the CPU and back: four transfers of a block
    input a step where two are needed, none hidden.)
    """

    def __init__(self):
        self.streams: dict[torch.device, torch.cuda.Stream] = {}

    def __call__(self, module: torch.nn.Module, hidden_states: torch.Tensor, *args):
        device, copied = hidden_states.device, None
        if device.type == "cuda":
            side = self.streams.setdefault(device, torch.cuda.Stream(device))
            side.wait_stream(torch.cuda.current_stream(device))  # the input is computed
            with torch.cuda.stream(side):
                host_states = hidden_states.to("cpu", non_blocking=True)  # lands in pinned memory
                copied = torch.cuda.Event()
                copied.record(side)
            hidden_states.record_stream(side)  # not reused before the copy has read it
        else:
            host_states = hidden_states.to("cpu")
        forward_input = [hidden_states]

        def run(saved_input: torch.Tensor, *rest):
            if forward_input:  # the forward
                return module(forward_input.pop(), *rest)
            if copied is not None:  # the recompute
                torch.cuda.current_stream(device).wait_event(copied)
            return module(saved_input.to(device, non_blocking=True), *rest)

        return checkpoint(run, host_states, *args, use_reentrant=False)


class _EnterInBackward(torch.autograd.Function):
    """Identity on a block's output whose backward tells the block swap that the block is next: the gradient
    reaches it before the block's own backward nodes, whose first saved tensor sets off the block's recompute.

    The swap is told here, outside the checkpointed region, because selective checkpointing counts every op the
    region runs and the swap's copies differ between the forward and the recompute."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, block: torch.nn.Module, block_swap: BlockSwap) -> torch.Tensor:
        ctx.block, ctx.block_swap = block, block_swap
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.block_swap.enter(ctx.block)
        return grad, None, None


class _PerBlockCheckpoint:
    """diffusers' `_gradient_checkpointing_func`: selective for the first `n_selective` blocks, full for the rest.

    Keeping attention outputs costs memory per block (`training/memory.py`); where not every block fits,
    the earliest blocks keep them and the rest fall back to full recompute, so a step takes what fits.
    """

    def __init__(
        self, transformer: CosmosTransformer3DModel, n_selective: int, offload: bool, block_swap: BlockSwap | None
    ):
        blocks = list(transformer.transformer_blocks)
        self.selective = {id(b) for b in blocks[:n_selective]}
        self.full = _OffloadedCheckpoint() if offload else _full_checkpoint
        self.block_swap = block_swap

    def __call__(self, module: torch.nn.Module, *args):
        checkpointed = _selective_checkpoint if id(module) in self.selective else self.full
        if self.block_swap is None:
            return checkpointed(module, *args)
        self.block_swap.enter(module)
        return _EnterInBackward.apply(checkpointed(module, *args), module, self.block_swap)


# Slices of the sequence that the checkpointed parts of a block (`checkpoint_block_parts`) are recomputed in: the
# MLP's hidden layer is 4x the block's width, and the self-attention's projections keep 12 tensors of the block's
# width in bf16 and 4 in fp32 (the per-head norms and RoPE compute in fp32): 40 of the 88 bytes a token and
# channel that a 2B block keeps for its backward (counted on the CPU with a saved-tensor hook). With 4 slices the
# 2B step capped at 15 GiB ran out of memory asking for one slice's MLP hidden layer (330 MiB).
SLICES = 8


class _ChunkedCheckpoint(compat.checkpoint_wrapper_class()):  # type: ignore[misc]
    """Full recompute of a token-wise module (the MLP) over `chunks` slices of the sequence `[B, S, D]`, one at a
    time: its backward holds one slice's hidden layer instead of the whole sequence's."""

    def __init__(self, module: torch.nn.Module, chunks: int):
        super().__init__(module, preserve_rng_state=False)
        self.chunks = chunks

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        slices = hidden_states.chunk(self.chunks, dim=1)
        return torch.cat([super(_ChunkedCheckpoint, self).forward(part) for part in slices], dim=1)


def checkpoint_block_parts(transformer: CosmosTransformer3DModel, slices: int = SLICES) -> None:
    """Checkpoint the parts of each block again inside its full recompute (--low_vram's last lever, chosen by
    `memory.choose_lean_levers` where the step fits only with it).

    A fully recomputed block's backward holds everything its recompute saved for the whole block at once: on a
    LoRA step that measured 105 bytes per token and channel (14B at 720p: 42.6 GiB over the resident weights),
    most of the step. Here the recompute keeps what passes between the parts and what the attention kernels
    keep (their inputs and outputs: 41 bytes on the CPU probe); the projections before each attention kernel
    (`attention.CosmosAttnProcessor.projection_slices`) and the MLP, `slices` slices of the sequence at a time,
    and the projection after it, are recomputed again when the backward reaches them. Attention still runs twice
    a step, not three times, and the gradients are those of plain recompute (tests/test_fast_paths.py). The
    price is a second run of the projections and the MLP, and the parts compiled apart rather than the block whole
    (`compile.compile_blocks`).

    Measured on an H200 (fp8 base, block swap): a 2B step at 720p in 12.81 GiB and 16.53 s, a 14B one in 32.64
    GiB and 59.95 s, against 106 bytes a token and channel and 15.55 s and 55.6 s without the parts
    (`memory.LOW_VRAM_BLOCK_PEAK_BYTES`). With the glue between the parts uncompiled and 4 slices they took 14.91
    GiB and 18.98 s, and 37.88 GiB and 68.45 s.

    The nested checkpoints are plain: torch keeps a nested checkpoint's inputs through the outer one, so the
    block's forward leaves nothing behind, where a selective policy's cache would live to the end of the step.
    The MLP's wrapper is torch's checkpoint wrapper, whose state-dict hooks drop `._checkpoint_wrapped_module`
    from the names (`canonical_name` drops it elsewhere), as under FSDP2.
    """
    for processor in attention_processors(transformer):
        processor.projection_slices = slices
    for block in transformer.transformer_blocks:
        block.ff = _ChunkedCheckpoint(block.ff, slices)


def apply_activation_checkpointing(
    transformer: CosmosTransformer3DModel,
    mode: str,
    n_selective: int | None = None,
    offload: bool = False,
    block_swap: BlockSwap | None = None,
    checkpoint_parts: bool = False,
) -> None:
    """`full`: recompute every block in the backward; `selective`: keep attention outputs in the first
    `n_selective` blocks (default: all) and recompute the rest in full; `none`: keep everything (only viable
    for small inputs). `offload` (--low_vram, full recompute) keeps what full recompute saves (each block's
    input) in CPU memory; `checkpoint_parts` checkpoints each block's parts again inside it (`checkpoint_block_parts`);
    `block_swap` is told before each block computes, in the forward and in the backward (`block_swap.py`)."""
    n_blocks = len(transformer.transformer_blocks)
    if mode == "none":
        return
    if mode == "full":
        n_selective = 0
    elif mode == "selective":
        n_selective = n_blocks if n_selective is None else max(0, min(n_selective, n_blocks))
    else:
        raise ValueError(f"Unknown activation checkpointing mode {mode!r}: use full, selective or none.")
    if checkpoint_parts:
        checkpoint_block_parts(transformer)
    transformer.enable_gradient_checkpointing(_PerBlockCheckpoint(transformer, n_selective, offload, block_swap))


def wrap_blocks_for_fsdp(transformer: CosmosTransformer3DModel, mode: str, n_selective: int | None) -> int:
    """Activation checkpointing under FSDP2, as torchtitan applies it: each block is replaced by a
    `checkpoint_wrapper` of itself before it is sharded, selective in the first `n_selective` blocks (all
    by default) and full in the rest. Returns how many blocks are selective.

    accelerate's own FSDP2 checkpointing (`fsdp_activation_checkpointing`) wraps the blocks the same way but
    passes no `context_fn`, so it can only recompute in full. The wrapper adds `._checkpoint_wrapped_module`
    to parameter names; state dicts drop it (torch's hook), and `canonical_name` drops it elsewhere.
    """
    n_blocks = len(transformer.transformer_blocks)
    if mode == "none":
        return 0
    n_selective = 0 if mode == "full" else n_blocks if n_selective is None else n_selective
    for i, block in enumerate(transformer.transformer_blocks):
        # Full recompute passes no context_fn: torch's default keeps only the block's inputs.
        kwargs = {"context_fn": _KEEP_ATTENTION_OUTPUTS} if i < n_selective else {}
        transformer.transformer_blocks[i] = compat.checkpoint_wrapper(block, preserve_rng_state=False, **kwargs)
    return n_selective


def canonical_name(name: str) -> str:
    """A parameter's name without the activation-checkpoint wrapper's part (the name of the plain model)."""
    return name.replace(compat.CHECKPOINT_WRAPPED_PREFIX, "")

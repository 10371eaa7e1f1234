"""Where a training step's memory goes: allocator settings, and how many transformer blocks
can keep their attention outputs (with where the EMA lives), from a GPU-memory estimate of one step.

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

import dataclasses
from dataclasses import dataclass

import torch

from .sections import ParallelConfig

GIB = 2**30
# Bytes per (token x hidden channel) that a block keeps when it saves its attention output (0.62 GiB at 84,480 x 2048).
SELECTIVE_BYTES = 4.0
# Bytes per (token x hidden channel) of one block's recompute and backward, beyond what the blocks keep:
# compiled blocks fuse the elementwise work around attention, uncompiled ones hold every intermediate.
BLOCK_PEAK_BYTES = {True: 42.0, False: 95.0}
# One block's recompute and backward in a LoRA step under --low_vram, in the same unit, by whether the block's
# parts are checkpointed again inside it (`activation_checkpointing.checkpoint_block_parts`). Measured on an H200
# over the resident weights: block recompute 104.6 (2B at 720p, bf16 base: 20.6 GiB) and 105.8 (14B at 720p, fp8
# base: 56.3 GiB). The parts (projections and MLP in 8 sequence slices, compiled apart), with the fp8 base and
# block swap, fitted against this estimate's own resident part: 76.1 (2B at 720p: 12.81 GiB) and 75.6 (14B at
# 720p: 32.64 GiB); 89.1 and 88.6 before the parts were compiled.
LOW_VRAM_BLOCK_PEAK_BYTES = {False: 106.0, True: 76.0}
# Leave this much of the card free: the allocator's slack and what other libraries hold.
HEADROOM_BYTES = 3 * GIB
# The same for a step at its leanest (`leanest_step_bytes`), whose estimate is fitted to its measured peaks (within
# 0.1 GiB at 2B and 14B): what the allocator reserves beyond the peak under expandable segments (0.29 GiB when
# the 2B step ran out of memory capped at 15 GiB) and an error of the fit as large again.
LEAN_HEADROOM_BYTES = 1 * GIB
# Bytes per (token x hidden channel) that FSDP2 adds to a step beyond the formula (what its checkpoint
# wrappers keep, its copies around the gathered blocks): 2B at 84,480 tokens over one process on one H100,
# 16 selective blocks, peaked at 72.9 GiB, 10.2 GiB above the rest of the estimate.
FSDP_EXTRA_BYTES = 63.0
# Bytes per trainable parameter that DDP over several processes holds beyond one GPU's step: one gradient-sized
# buffer. Measured on 4x H200 (2B, 93x704x1280, 28 selective blocks, EMA on the GPU): 80.7 GiB per rank under
# DDP against 73.4 GiB for the one-GPU step, 7.3 GiB for 1.96e9 parameters, with gradient_as_bucket_view on.
DDP_EXTRA_BYTES_PER_PARAMETER = 4


def state_bytes(
    transformer: torch.nn.Module, compute_dtype: torch.dtype, ema: bool, fsdp_shards: int | None = None
) -> dict[str, int]:
    """What a rank holds for the whole run besides activations, by part: the weights as stored, the trainable
    tensors' gradients and AdamW's two moments (3x their bytes), autocast's compute-dtype copies of fp32
    weights, and the fp32 EMA of the trainable tensors. Under FSDP each is split over `fsdp_shards` ranks,
    and there are no autocast copies: FSDP gathers the weights in the compute dtype itself."""
    params = list(transformer.parameters())
    trainable_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    low_precision = compute_dtype != torch.float32 and fsdp_shards is None
    parts = {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients_and_moments": 3 * trainable_bytes,
        "autocast_copies": sum(p.numel() * 2 for p in params if p.dtype == torch.float32 and low_precision),
        "ema": 4 * sum(p.numel() for p in params if p.requires_grad) if ema else 0,
    }
    return {name: n // (fsdp_shards or 1) for name, n in parts.items()}


def swapped_weight_bytes(transformer: torch.nn.Module) -> int:
    """What `--block_swap` keeps off the GPU: the frozen tensors of all blocks but the two on it (`block_swap.py`)."""
    blocks = list(transformer.transformer_blocks)
    frozen = sum(p.numel() * p.element_size() for p in blocks[0].parameters() if not p.requires_grad)
    frozen += sum(b.numel() * b.element_size() for b in blocks[0].buffers())
    return frozen * max(0, len(blocks) - 2)


def fsdp_buffer_bytes(transformer: torch.nn.Module) -> int:
    """What FSDP2 holds beyond a rank's shards: two whole bf16 blocks (the one computing and the one
    prefetched) and, for trainable blocks, one block's fp32 gradient before its reduce-scatter."""
    block = list(transformer.transformer_blocks[0].parameters())
    gathered = 2 * 2 * sum(p.numel() for p in block)
    return gathered + 4 * sum(p.numel() for p in block if p.requires_grad)


def _token_channels(transformer: torch.nn.Module, tokens: int) -> int:
    """`tokens` x the blocks' hidden width: what the per-token constants above are counted in."""
    return tokens * transformer.config.num_attention_heads * transformer.config.attention_head_dim


def _block_input_bytes(transformer: torch.nn.Module, tokens: int, compute_dtype: torch.dtype) -> int:
    """What full recompute keeps of one block: its input, `[tokens, hidden]` in the compute dtype."""
    return _token_channels(transformer, tokens) * (2 if compute_dtype != torch.float32 else 4)


def step_bytes_without_selective(
    transformer: torch.nn.Module,
    tokens: int,
    resident_bytes: int,
    compiled: bool,
    compute_dtype: torch.dtype,
    fsdp_shards: int | None = None,
) -> int:
    """Estimated peak of one step with full recompute in every block.

    `resident_bytes` is what is on the GPU before the first step (weights, EMA, VAE). To it come the
    gradients and optimizer moments of the trainable tensors and autocast's bf16 copies of fp32 weights
    (`state_bytes`), every block's saved input and one block's recompute at a time. Under FSDP (`fsdp_shards`
    ranks share the states) a rank holds its share of the states, plus `fsdp_buffer_bytes` and FSDP's
    per-token overhead.
    """
    fsdp = fsdp_shards is not None
    states = state_bytes(transformer, compute_dtype, ema=False, fsdp_shards=fsdp_shards)
    n_blocks = len(transformer.transformer_blocks)
    block_inputs = n_blocks * _block_input_bytes(transformer, tokens, compute_dtype)
    one_block = _token_channels(transformer, tokens) * (BLOCK_PEAK_BYTES[compiled] + (FSDP_EXTRA_BYTES if fsdp else 0))
    step_states = (
        states["gradients_and_moments"] + states["autocast_copies"] + (fsdp_buffer_bytes(transformer) if fsdp else 0)
    )
    return int(resident_bytes + step_states + block_inputs + one_block)


def selective_blocks_that_fit(
    transformer: torch.nn.Module,
    tokens: int,
    capacity_bytes: int,
    resident_bytes: int,
    compiled: bool,
    compute_dtype: torch.dtype,
    fsdp_shards: int | None = None,
) -> int:
    """How many blocks can keep their attention outputs within `capacity_bytes` (0 to all of them)."""
    base = step_bytes_without_selective(transformer, tokens, resident_bytes, compiled, compute_dtype, fsdp_shards)
    spare = capacity_bytes - HEADROOM_BYTES - base
    return max(
        0, min(len(transformer.transformer_blocks), int(spare // _selective_bytes_per_block(transformer, tokens)))
    )


def _selective_bytes_per_block(transformer: torch.nn.Module, tokens: int) -> float:
    return _token_channels(transformer, tokens) * SELECTIVE_BYTES


@dataclass(frozen=True)
class MemoryPlan:
    """What `plan_gpu_memory` decided: blocks keeping attention outputs (None: all), the EMA's device, and,
    when it was estimated, the step's estimated peak and the memory it had to fit in."""

    selective_blocks: int | None
    ema_device: str
    estimated_peak_bytes: int = 0
    capacity_bytes: int = 0

    def describe(self, n_blocks: int) -> str:
        return (
            f"Activation checkpointing: {self.selective_blocks} of {n_blocks} blocks keep their attention outputs; "
            f"EMA on the {self.ema_device.upper()} (estimated peak {self.estimated_peak_bytes / GIB:.1f} GiB of "
            f"{self.capacity_bytes / GIB:.1f} GiB)"
        )


def _capacity_bytes(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    capacity = torch.cuda.get_device_properties(index).total_memory
    if hasattr(torch.cuda, "get_per_process_memory_fraction"):  # a cap set by the user, or a benchmark
        capacity = int(capacity * torch.cuda.get_per_process_memory_fraction(index))
    return capacity


def memory_budget_bytes(config: ParallelConfig, device: torch.device) -> int | None:
    """The memory a run plans for: `--memory_budget_gib` (capped by the card's), or the card's; None off the GPU
    without a budget."""
    budget = int(config.memory_budget_gib * GIB) if config.memory_budget_gib else None
    if device.type != "cuda":
        return budget
    return min(_capacity_bytes(device), budget) if budget else _capacity_bytes(device)


@dataclass(frozen=True)
class LeanLevers:
    """The levers that change no result, which a run that asked to fit may be given: the frozen block weights
    streamed from the CPU (`block_swap.py`) and, under --low_vram, each block's parts checkpointed again inside
    its recompute (`checkpoint_block_parts`)."""

    block_swap: bool = False
    checkpoint_parts: bool = False

    @classmethod
    def asked_by(cls, config: ParallelConfig) -> LeanLevers:
        """The levers the run's flags ask for (`--block_swap`, `--checkpoint_block_parts`)."""
        return cls(block_swap=config.block_swap, checkpoint_parts=config.checkpoint_block_parts)

    def beyond(self, asked: LeanLevers) -> list[str]:
        """The levers on here and not in `asked`: what the planner chose for the run."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) and not getattr(asked, f.name)]


def leanest_step_bytes(
    transformer: torch.nn.Module, config: ParallelConfig, tokens: int, compute_dtype: torch.dtype, levers: LeanLevers
) -> int:
    """The run's leanest step with `levers`: full recompute, the EMA on the CPU, the block inputs on the CPU with
    --low_vram, compiled blocks. `transformer` is the run's model built on the meta device (its dtypes and
    trainable tensors as the run will have them). The VAE is left out (its weights, 0.25 GiB, and without
    --cache_latents its encode's own peak), so this is a lower bound: a run it lets through may still need the
    planner's fallbacks."""
    states = state_bytes(transformer, compute_dtype, ema=False)
    least = step_bytes_without_selective(transformer, tokens, states["weights"], True, compute_dtype)
    least -= swapped_weight_bytes(transformer) if levers.block_swap else 0
    if config.low_vram:
        least -= len(transformer.transformer_blocks) * _block_input_bytes(transformer, tokens, compute_dtype)
        one_block = LOW_VRAM_BLOCK_PEAK_BYTES[levers.checkpoint_parts]
        least += int(_token_channels(transformer, tokens) * (one_block - BLOCK_PEAK_BYTES[True]))
    return least + LEAN_HEADROOM_BYTES


def choose_lean_levers(
    transformer: torch.nn.Module,
    config: ParallelConfig,
    tokens: int,
    compute_dtype: torch.dtype,
    budget: int,
    one_gpu: bool,
    lora: bool,
) -> LeanLevers:
    """`--block_swap` and `--checkpoint_block_parts` as asked; for a run that asked to fit (`--low_vram` or
    `--memory_budget_gib`), the levers its leanest step needs to fit `budget` bytes, cheapest first: block swap
    (a LoRA run on one GPU; its copies run beside the compute), then the parts checkpointed (--low_vram; a step
    8% slower, 2B at 720p on an H200 with the fp8 base and block swap: 15.2 -> 16.5 s). Both change no result, so
    they may be chosen for the user; an fp8 base changes the numerics, so it is only ever asked for. `lora`: the
    run trains an adapter over a frozen base (which block swap streams)."""
    levers = LeanLevers.asked_by(config)
    if not (config.low_vram or config.memory_budget_gib is not None):
        return levers
    may_swap = one_gpu and lora and config.activation_checkpointing != "none"
    for lever, allowed in (("block_swap", may_swap), ("checkpoint_parts", config.low_vram)):
        if leanest_step_bytes(transformer, config, tokens, compute_dtype, levers) <= budget:
            break
        if allowed:
            levers = dataclasses.replace(levers, **{lever: True})
    return levers


def check_fits(
    transformer: torch.nn.Module,
    config: ParallelConfig,
    tokens: int,
    compute_dtype: torch.dtype,
    budget: int,
    levers: LeanLevers,
) -> int:
    """Refuse, before any weight is loaded, a run whose leanest step (`leanest_step_bytes`) cannot fit `budget`
    bytes; returns that step's estimate."""
    least = leanest_step_bytes(transformer, config, tokens, compute_dtype, levers)
    if least > budget:
        raise ValueError(
            f"This run needs at least {least / GIB:.1f} GiB of GPU memory at its leanest (full recompute, EMA on the "
            f"CPU), and has {budget / GIB:.1f} GiB: use --train_architecture lora, --base_precision fp8, "
            f"--block_swap, --low_vram, fewer --num_frames or a smaller --height/--width, or shard it with an FSDP "
            f"config (accelerate_configs/)."
        )
    return least


def plan_gpu_memory(
    transformer: torch.nn.Module,
    vae: torch.nn.Module,
    config: ParallelConfig,
    device: torch.device,
    tokens: int,
    compute_dtype: torch.dtype,
    *,
    ema: bool,
    vae_resident: bool,
    compiled: bool,
    selective_blocks: int | None,
    ema_device: str | None,
    fsdp_shards: int | None = None,
    ddp: bool = False,
    budget_bytes: int | None = None,
    block_swap: bool = False,
) -> MemoryPlan:
    """Blocks that keep their attention outputs and the EMA's device ("gpu" or "cpu").

    `selective_blocks` and `ema_device` are what the flags (or the engine) already fixed; None leaves them to
    the plan. Off the GPU, or without selective checkpointing (`config.activation_checkpointing`), nothing is
    planned. Otherwise the EMA stays on the GPU unless it costs selective blocks there: its CPU update is
    hidden behind a long step (2B at 720p) but not behind a short one, which would wait for it. Under FSDP,
    `fsdp_shards` ranks share the weights, EMA and optimizer state; under DDP of several processes (`ddp`) its
    gradient-sized buffer (`DDP_EXTRA_BYTES_PER_PARAMETER`) is counted too. `budget_bytes` (`memory_budget_bytes`)
    replaces the card's memory; with `block_swap` the GPU holds two blocks' frozen weights. `ema`: the run keeps
    one; `vae_resident`: the VAE stays on the GPU (it encodes every step, without --cache_latents).
    """
    c = config
    planned = device.type == "cuda" and c.activation_checkpointing == "selective" and selective_blocks is None
    if not planned:
        return MemoryPlan(selective_blocks, ema_device or "gpu")
    states = state_bytes(transformer, compute_dtype, ema, fsdp_shards)
    resident = states["weights"] - (swapped_weight_bytes(transformer) if block_swap else 0)
    resident += sum(p.numel() * p.element_size() for p in vae.parameters()) if vae_resident else 0
    trainable_params = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    resident += DDP_EXTRA_BYTES_PER_PARAMETER * trainable_params if ddp else 0
    ema_bytes = states["ema"]

    capacity = _capacity_bytes(device) if budget_bytes is None else budget_bytes

    def fit(resident_bytes: int) -> int:
        return selective_blocks_that_fit(
            transformer, tokens, capacity, resident_bytes, compiled, compute_dtype, fsdp_shards
        )

    ema_device = ema_device or ("gpu" if fsdp_shards else None)  # under FSDP it is sharded like the weights
    if ema_device is None:
        all_blocks = len(transformer.transformer_blocks)
        ema_device = "gpu" if not ema_bytes or fit(resident + ema_bytes) == all_blocks else "cpu"
    resident += ema_bytes if ema_device == "gpu" else 0
    n_selective = fit(resident)
    peak = step_bytes_without_selective(transformer, tokens, resident, compiled, compute_dtype, fsdp_shards)
    peak += int(n_selective * _selective_bytes_per_block(transformer, tokens))
    return MemoryPlan(n_selective, ema_device, peak, capacity)


def context_parallel_advice(
    transformer: torch.nn.Module,
    vae: torch.nn.Module,
    config: ParallelConfig,
    device: torch.device,
    tokens: int,
    compute_dtype: torch.dtype,
    cp: int,
    **planner,
) -> str | None:
    """A warning when `cp` ranks share each sample of `tokens` though a rank could train whole samples with every
    block keeping its attention outputs (`planner`: `plan_gpu_memory`'s keyword arguments); None otherwise.

    The layout is the launch's (processes, `--context_parallel_size`), so the planner cannot change it; it says
    when the faster one would fit.
    """
    whole = plan_gpu_memory(transformer, vae, config, device, tokens, compute_dtype, **planner)
    if whole.estimated_peak_bytes is None or whole.selective_blocks != len(transformer.transformer_blocks):
        return None
    return (
        f"--context_parallel_size {cp} is not needed on this GPU: with whole samples a rank would keep every "
        f"block's attention outputs within an estimated {whole.estimated_peak_bytes / GIB:.1f} GiB of "
        f"{whole.capacity_bytes / GIB:.1f}. Context parallelism trades speed for memory (2B at 720p on 4x H200: "
        f"FSDP2 kept 0.99 of one GPU's throughput per GPU, FSDP2 x CP 2 0.92); without it each rank trains its "
        f"own clip, {cp} times the clips a step."
    )

"""How a run uses its devices, decided once: the compute precision, the attention kernel, compilation, the
EMA's device and the blocks that keep their attention outputs (a frozen `DevicePlan`), and the
transformations that carry the plan out before accelerate wraps the transformer (context parallelism,
activation checkpointing, compilation). Data/model parallelism itself (DDP, FSDP, DeepSpeed) is accelerate's,
chosen by the accelerate config (`accelerate_configs/`).

The plan is not stored in checkpoints: they keep the flags the user gave, and a resume on other hardware
plans again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.logging import get_logger
from diffusers import CosmosTransformer3DModel
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor, distribute_tensor

from .. import compat
from ..models.attention import set_attention_backend
from ..models.compile import compile_blocks
from ..parallel.context_parallel import enable_context_parallel
from .activation_checkpointing import apply_activation_checkpointing, wrap_blocks_for_fsdp
from .block_swap import BlockSwap
from .memory import LeanLevers, context_parallel_advice, memory_budget_bytes, plan_gpu_memory, swapped_weight_bytes
from .sections import ParallelConfig

logger = get_logger(__name__)


@dataclass(frozen=True)
class DevicePlan:
    """The device decisions of a run, made once from its flags (`ParallelConfig`), its layout (`ParallelDims`)
    and the machine; what the flags leave open (None) is decided here, and nothing changes it afterwards."""

    mixed_precision: str  # bf16, fp16 or no
    compile: bool
    attention_backend: str  # the kernel that runs, never "auto"
    ema_device: str  # gpu or cpu
    selective_blocks: int | None  # blocks keeping their attention outputs (None: all)
    levers: LeanLevers  # block swap and the blocks' parts checkpointed (`memory.choose_lean_levers`)
    estimated_peak_bytes: int | None = None  # the memory planner's estimate, when it made one
    capacity_bytes: int | None = None


def default_mixed_precision(config: ParallelConfig, on_gpu: bool) -> str:
    """`--mixed_precision`, or bf16 on a GPU (NVIDIA trains in bf16) and fp32 on the CPU. Decided before the
    Accelerator exists, which is built with it."""
    return config.mixed_precision or ("bf16" if on_gpu else "no")


def _forced_ema_device(config: ParallelConfig, on_gpu: bool) -> str | None:
    """`--ema_device`, or where the EMA must live: beside the weights off the GPU, on the CPU with --low_vram;
    None leaves it to the memory planner."""
    if config.ema_device is not None:
        return config.ema_device
    if not on_gpu:
        return "gpu"
    return "cpu" if config.low_vram else None


def fsdp_mixed_precision(compute_dtype: torch.dtype) -> MixedPrecisionPolicy:
    """NVIDIA's regime under FSDP2: the gathered weights in the compute dtype (bf16), gradients reduced in
    fp32, fp32 shards as master weights. Inputs are not cast (autocast does that per op, as without FSDP):
    FSDP's default cast would turn the timestep embedding's input into bf16. accelerate's own policy for
    `mixed_precision=bf16` reduces in bf16."""
    param_dtype = None if compute_dtype == torch.float32 else compute_dtype
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)


def prepare_for_wrapping(
    transformer: CosmosTransformer3DModel,
    vae: torch.nn.Module,
    config: ParallelConfig,
    accelerator,
    dims,
    tokens: int,
    compute_dtype: torch.dtype,
    levers: LeanLevers,
    *,
    batch_size: int,
    max_grad_norm: float,
    ema: bool,
    vae_resident: bool,
    distillation: bool,
) -> DevicePlan:
    """Plan the run's device use and carry the plan out on `transformer` before accelerate wraps it (DDP;
    FSDP2 with the mixed-precision policy set here; DeepSpeed with the config `configure_deepspeed` settles).

    On a GPU, `plan_gpu_memory` decides the selective blocks and the EMA's device from a rank's share of the
    `tokens` and of the sharded states. Off FSDP, diffusers' gradient checkpointing runs the plan; under FSDP2
    the checkpoint wraps each block before it is sharded (`wrap_blocks_for_fsdp`). `dims` (`ParallelDims`)
    says which engine wraps it and how the ranks share the sequence and the states. `levers`: `--block_swap`,
    or the trainer's choice (`memory.choose_lean_levers`). Of the rest of the run: the clips of a micro-step and
    the gradient clip (DeepSpeed's config), whether it keeps an EMA and the VAE stays on the GPU (the memory
    plan), and whether it is a distillation (whose adapters switch inside a block's recompute).
    """
    c, cp, device = config, dims.cp, accelerator.device
    on_gpu = device.type == "cuda"
    # A distillation switches adapters between a block's forward and its recompute, and compiled blocks then
    # replay a different graph (measured on an H100: CheckpointError at the first critic step); with no
    # recompute it compiles (2B, 29 frames at 448x256: 0.69 s a step against 1.33 uncompiled with checkpointing).
    distill_recomputes = distillation and c.activation_checkpointing != "none"
    compiled = c.compile if c.compile is not None else on_gpu and not distill_recomputes
    selective_blocks = c.selective_checkpointing_blocks
    if dims.engine == "deepspeed":
        compiled, selective_blocks = configure_deepspeed(
            accelerator.state.deepspeed_plugin, c, batch_size, max_grad_norm, compiled
        )
    attention_backend = set_attention_backend(transformer, c.attention_backend, device)
    logger.info("Attention kernel: %s", attention_backend)
    if cp > 1:
        enable_context_parallel(transformer, dims, device, tokens)
        logger.info("Context parallel: %d ranks per sample, %d of its %d tokens each", cp, tokens // cp, tokens)
    planner = dict(
        compiled=compiled,
        selective_blocks=selective_blocks,
        ema=ema,
        vae_resident=vae_resident,
        ema_device=_forced_ema_device(c, on_gpu),
        fsdp_shards=dims.state_shards,
        ddp=dims.engine == "ddp",
        budget_bytes=memory_budget_bytes(c, device),
        block_swap=levers.block_swap,
    )
    memory = plan_gpu_memory(transformer, vae, c, device, tokens // cp, compute_dtype, **planner)
    if cp > 1 and memory.estimated_peak_bytes is not None:
        advice = context_parallel_advice(transformer, vae, c, device, tokens, compute_dtype, cp, **planner)
        if advice:
            logger.warning(advice)
    plan = DevicePlan(
        accelerator.mixed_precision,
        compiled,
        attention_backend,
        memory.ema_device,
        memory.selective_blocks,
        levers,
        memory.estimated_peak_bytes,
        memory.capacity_bytes,
    )
    if plan.estimated_peak_bytes is not None:
        logger.info(memory.describe(len(transformer.transformer_blocks)))
    if dims.engine == "fsdp":
        plugin = accelerator.state.fsdp_plugin
        plugin.activation_checkpointing = False  # ours, per block (accelerate's would recompute in full)
        plugin.mixed_precision_policy = fsdp_mixed_precision(compute_dtype)
        n_selective = wrap_blocks_for_fsdp(transformer, c.activation_checkpointing, plan.selective_blocks)
        logger.info(
            "FSDP2 over %d processes: blocks checkpointed (%s) before sharding, %d of %d keep their attention "
            "outputs; weights gathered in %s, gradients reduced in fp32",
            dims.state_shards,
            c.activation_checkpointing,
            n_selective,
            len(transformer.transformer_blocks),
            str(compute_dtype).removeprefix("torch."),
        )
    else:
        swap = None
        if plan.levers.block_swap:
            swap = BlockSwap(transformer.transformer_blocks, device)
            logger.info(
                "Block swap: %.1f GiB of frozen block weights in pinned CPU memory, a block copied ahead on a side "
                "stream",
                swapped_weight_bytes(transformer) / 2**30,
            )
        if plan.levers.checkpoint_parts:
            logger.info("Each block's attention projections and MLP checkpointed again inside its recompute")
        apply_activation_checkpointing(
            transformer,
            c.activation_checkpointing,
            plan.selective_blocks,
            c.low_vram,
            swap,
            plan.levers.checkpoint_parts,
        )
    if plan.compile:
        if dims.engine == "ddp":
            # Dynamo's DDPOptimizer splits a compiled graph at DDP's bucket boundaries, and cannot split one that
            # holds an activation checkpoint (pytorch#104674): with selectively checkpointed blocks the first
            # step fails with "self is on meta". Each block is its own graph here, so there is nothing to split:
            # DDP's hooks bucket the gradients as each block's backward produces them.
            compat.keep_ddp_graphs_whole()
        compile_blocks(transformer)
    return plan


def configure_deepspeed(
    plugin, config: ParallelConfig, batch_size: int, max_grad_norm: float, compiled: bool
) -> tuple[bool, int | None]:
    """Settle accelerate's DeepSpeed config from the run's flags, before `accelerator.prepare`; returns whether
    blocks are compiled and how many keep their attention outputs under DeepSpeed.

    The trainer feeds its own micro-batches (no DataLoader goes through `prepare`), so the micro-batch size
    is set here; gradient clipping follows `--max_grad_norm` (DeepSpeed clips inside its step); ZeRO-3 must
    gather its 16-bit weights for checkpoints and exports (context parallelism is refused by `ParallelDims`).
    torch.compile is left off under ZeRO-3, whose per-module hooks gather each block's weights in the middle
    of what would be the compiled graph. The memory planner does not model DeepSpeed's buffers, so without
    `--selective_checkpointing_blocks` every block recomputes in full.
    """
    c, ds = config, plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = batch_size
    ds["gradient_clipping"] = max_grad_norm
    if plugin.zero_stage == 3:
        ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
        if compiled:
            logger.info("DeepSpeed ZeRO-3: blocks are not compiled (its hooks gather weights inside each block)")
        compiled = False
    logger.info(
        "DeepSpeed ZeRO-%d: %d clip(s) per micro-step, gradients clipped to %s",
        plugin.zero_stage,
        batch_size,
        max_grad_norm,
    )
    selective = c.selective_checkpointing_blocks
    if c.activation_checkpointing == "selective" and selective is None:
        selective = 0
        logger.info(
            "DeepSpeed: every block recomputes in full; --selective_checkpointing_blocks N keeps the attention "
            "outputs of N blocks (22 fit a 2B ZeRO-2 step at 93x704x1280 on one 80 GB GPU)"
        )
    return compiled, selective


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered from its shards under FSDP (a collective: call it on every rank)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(reference: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` placed (and, under FSDP, sharded) like `reference`, to copy into it."""
    full = full.to(reference.device, reference.dtype)
    if isinstance(reference, DTensor):
        return distribute_tensor(full, reference.device_mesh, reference.placements)
    return full

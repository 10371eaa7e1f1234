"""The single-device transformer a run trains, and the transformations applied to it before accelerate
wraps it: LoRA, the attention kernel, context parallelism, activation checkpointing and compilation. Data/model parallelism itself
(DDP, FSDP, DeepSpeed) is accelerate's, chosen by the accelerate config (`accelerate_configs/`)."""

from __future__ import annotations

from functools import partial

import torch
from accelerate.logging import get_logger
from diffusers import CosmosTransformer3DModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    checkpoint_wrapper,
)
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from ..attention import set_attention_backend
from ..checkpoint_format import load_into_transformer, load_native_checkpoint
from ..compile import compile_blocks
from ..context_parallel import enable_context_parallel
from ..presets import load_transformer
from .memory import plan_gpu_memory

logger = get_logger(__name__)

# Attention is ~85% of a block's FLOPs but its output is small: keeping it and recomputing the cheap
# rest (norms, RoPE, MLP, projections) saves a re-run of attention per block (measured on an H100:
# 2B step 17.7 s -> ~14.9 s for ~13 GiB more). NVIDIA also uses a selective policy.
_ATTENTION_OPS = {
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


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


def _offloaded_checkpoint(module: torch.nn.Module, hidden_states: torch.Tensor, *args):
    """Full recompute, with the one tensor it keeps (the block input) held in CPU memory.

    torch's `save_on_cpu` cannot do this: a non-reentrant checkpoint holds its inputs by reference, not
    through saved-tensor hooks. So the input crosses to the CPU (a non-blocking copy lands in pinned
    memory) and the checkpointed function brings it back; autograd routes the gradient through both
    copies. The copies are queued on the compute stream, so they are ordered with the kernels around them.
    """
    device = hidden_states.device

    def run(host_states: torch.Tensor, *rest):
        return module(host_states.to(device, non_blocking=True), *rest)

    return checkpoint(run, hidden_states.to("cpu", non_blocking=True), *args, use_reentrant=False)


class _PerBlockCheckpoint:
    """diffusers' `_gradient_checkpointing_func`: selective for the first `n_selective` blocks, full for the rest.

    Keeping attention outputs costs memory per block (`training/memory.py`); where not every block fits,
    the earliest blocks keep them and the rest fall back to full recompute, so a step takes what fits.
    """

    def __init__(self, transformer: CosmosTransformer3DModel, n_selective: int, offload: bool):
        blocks = list(transformer.transformer_blocks)
        self.selective = {id(b) for b in blocks[:n_selective]}
        self.full = _offloaded_checkpoint if offload else _full_checkpoint

    def __call__(self, module: torch.nn.Module, *args):
        if id(module) in self.selective:
            return _selective_checkpoint(module, *args)
        return self.full(module, *args)


def apply_activation_checkpointing(
    transformer: CosmosTransformer3DModel, mode: str, n_selective: int | None = None, offload: bool = False
) -> None:
    """`full`: recompute every block in the backward; `selective`: keep attention outputs in the first
    `n_selective` blocks (default: all) and recompute the rest in full; `none`: keep everything (only viable
    for small inputs). `offload` keeps what full recompute saves (each block's input) in CPU memory."""
    n_blocks = len(transformer.transformer_blocks)
    if mode == "none":
        return
    if mode == "full":
        n_selective = 0
    elif mode == "selective":
        n_selective = n_blocks if n_selective is None else max(0, min(n_selective, n_blocks))
    else:
        raise ValueError(f"Unknown activation checkpointing mode {mode!r}: use full, selective or none.")
    transformer.enable_gradient_checkpointing(_PerBlockCheckpoint(transformer, n_selective, offload))


def apply_lora(
    transformer: CosmosTransformer3DModel, rank: int, alpha: int, target_modules: list[str], seed: int
) -> None:
    """Freeze the base weights and add a PEFT LoRA adapter (fp32, as diffusers' LoRA examples keep it;
    NVIDIA keeps bf16 live LoRA weights with fp32 masters: under bf16 autocast the compute is the same).
    PEFT draws the random half of each pair from the global RNG; it is seeded here (and forked, so the
    caller's state is untouched), so a run's initial adapter depends on `--seed` alone."""
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(
            LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True, target_modules=target_modules)
        )


def load_trainable_transformer(preset, config, compute_dtype: torch.dtype) -> CosmosTransformer3DModel:
    """The transformer a run trains: the preset's (or `--pretrained_model_name_or_path`'s), initialised from
    `--dit_path` if given. Full post-training keeps fp32 master weights (compute under autocast); LoRA keeps
    its frozen base in the compute dtype (bf16, as NVIDIA does: half the memory) and its adapter in fp32."""
    lora = config.train_architecture == "lora"
    transformer = load_transformer(preset, config.pretrained_model_name_or_path, compute_dtype if lora else torch.float32)
    if config.dit_path:
        load_into_transformer(transformer, load_native_checkpoint(config.dit_path, config.load_ema), config.dit_path)
    if lora:
        apply_lora(transformer, config.lora_rank, config.lora_alpha, config.lora_target_modules.split(","), config.seed)
        cast_training_params(transformer, torch.float32)
    return transformer


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
        # Full recompute passes no context_fn: torch.compile cannot trace torch's default one.
        kwargs = {"context_fn": _KEEP_ATTENTION_OUTPUTS} if i < n_selective else {}
        transformer.transformer_blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False, **kwargs)
    return n_selective


def canonical_name(name: str) -> str:
    """A parameter's name without the activation-checkpoint wrapper's part (the name of the plain model)."""
    return name.replace("._checkpoint_wrapped_module", "")


def fsdp_mixed_precision(compute_dtype: torch.dtype) -> MixedPrecisionPolicy:
    """NVIDIA's regime under FSDP2: the gathered weights in the compute dtype (bf16), gradients reduced in
    fp32, fp32 shards as master weights. Inputs are not cast (autocast does that per op, as without FSDP):
    FSDP's default cast would turn the timestep embedding's input into bf16. accelerate's own policy for
    `mixed_precision=bf16` reduces in bf16."""
    param_dtype = None if compute_dtype == torch.float32 else compute_dtype
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)


def prepare_for_wrapping(
    transformer: CosmosTransformer3DModel, vae, config, accelerator, dims, tokens: int, compute_dtype: torch.dtype
) -> int | None:
    """The attention kernel, context parallelism, activation checkpointing and compilation, before accelerate
    wraps `transformer` (DDP; FSDP2 with the mixed-precision policy set here; DeepSpeed with the config
    `configure_deepspeed` settles).

    Returns how many blocks keep their attention outputs (None: all of them). On a GPU, `plan_gpu_memory`
    decides it from a rank's share of the `tokens` and of the sharded states, and also fixes
    `config.ema_device`. Off FSDP, diffusers' gradient checkpointing runs the plan; under FSDP2 the
    checkpoint wraps each block before it is sharded (`wrap_blocks_for_fsdp`). `dims` (`ParallelDims`) says
    which engine wraps it and how the ranks share the sequence and the states.
    """
    c, cp = config, dims.cp
    fsdp = dims.engine == "fsdp"
    if dims.engine == "deepspeed":
        configure_deepspeed(accelerator.state.deepspeed_plugin, c)
    c.attention_backend = set_attention_backend(transformer, c.attention_backend, accelerator.device)
    logger.info("Attention kernel: %s", c.attention_backend)
    if cp > 1:
        enable_context_parallel(transformer, cp, accelerator.device, tokens)
        logger.info("Context parallel: %d ranks per sample, %d of its %d tokens each", cp, tokens // cp, tokens)
    shards = dims.state_shards
    plan = plan_gpu_memory(transformer, vae, c, accelerator.device, tokens // cp, compute_dtype, shards, dims.engine == "ddp")
    selective_blocks, c.ema_device = plan.selective_blocks, plan.ema_device
    if plan.estimated_peak_bytes is not None:
        logger.info(plan.describe(len(transformer.transformer_blocks)))
    if fsdp:
        if c.low_vram:
            raise ValueError("--low_vram is for one GPU: under FSDP the sharded states already leave room; drop it.")
        plugin = accelerator.state.fsdp_plugin
        plugin.activation_checkpointing = False  # ours, per block (accelerate's would recompute in full)
        plugin.mixed_precision_policy = fsdp_mixed_precision(compute_dtype)
        n_selective = wrap_blocks_for_fsdp(transformer, c.activation_checkpointing, selective_blocks)
        logger.info(
            "FSDP2 over %d processes: blocks checkpointed (%s) before sharding, %d of %d keep their attention "
            "outputs; weights gathered in %s, gradients reduced in fp32", shards, c.activation_checkpointing,
            n_selective, len(transformer.transformer_blocks), str(compute_dtype).removeprefix("torch."),
        )
    else:
        apply_activation_checkpointing(transformer, c.activation_checkpointing, selective_blocks, c.low_vram)
    if c.compile:
        if dims.engine == "ddp":
            # Dynamo's DDPOptimizer splits a compiled graph at DDP's bucket boundaries, and cannot split one that
            # holds an activation checkpoint (pytorch#104674): with selectively checkpointed blocks the first
            # step fails with "self is on meta". Each block is its own graph here, so there is nothing to split:
            # DDP's hooks bucket the gradients as each block's backward produces them.
            torch._dynamo.config.optimize_ddp = False
        compile_blocks(transformer)
    return selective_blocks


def configure_deepspeed(plugin, config) -> None:
    """Settle accelerate's DeepSpeed config from the run's flags, before `accelerator.prepare`.

    The trainer feeds its own micro-batches (no DataLoader goes through `prepare`), so the micro-batch size
    is set here; gradient clipping follows `--max_grad_norm` (DeepSpeed clips inside its step); ZeRO-3 must
    gather its 16-bit weights for checkpoints and exports (context parallelism is refused by `ParallelDims`).
    torch.compile is left off under ZeRO-3, whose per-module
    hooks gather each block's weights in the middle of what would be the compiled graph. The memory planner
    does not model DeepSpeed's buffers, so without `--selective_checkpointing_blocks` every block
    recomputes in full.
    """
    c, ds = config, plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = c.batch_size
    ds["gradient_clipping"] = c.max_grad_norm
    if plugin.zero_stage == 3:
        ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
        if c.compile:
            logger.info("DeepSpeed ZeRO-3: blocks are not compiled (its hooks gather weights inside each block)")
        c.compile = False
    logger.info(
        "DeepSpeed ZeRO-%d: %d clip(s) per micro-step, gradients clipped to %s", plugin.zero_stage, c.batch_size,
        c.max_grad_norm,
    )
    if c.activation_checkpointing == "selective" and c.selective_checkpointing_blocks is None:
        c.selective_checkpointing_blocks = 0
        logger.info(
            "DeepSpeed: every block recomputes in full; --selective_checkpointing_blocks N keeps the attention "
            "outputs of N blocks (22 fit a 2B ZeRO-2 step at 93x704x1280 on one 80 GB GPU)"
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

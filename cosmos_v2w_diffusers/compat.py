"""The private APIs of torch, diffusers, DeepSpeed and FlashAttention-4 that this package touches, each behind one
function with the versions it was tested on: when an upgrade moves one, the error names the API and the versions
that work, and `tests/test_compat.py` fails on this module alone instead of deep inside a run (it resolves every
path in `PRIVATE_APIS` and calls each function's version guard). No other module of the package names a private
API of another library (`tests/test_layout.py` checks).

accelerate is used through its public API alone (`Accelerator`, `DistributedType`, its plugins' documented
fields), and DeepSpeed's `safe_get_full_*`/`safe_set_full_*` are its documented public utilities.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import diffusers
import torch
from packaging.version import Version

logger = logging.getLogger(__name__)

# The versions each private API below was tested with (the lowest and highest installed in our CI and on the GPU
# machines); an older one is refused by name.
DIFFUSERS_TESTED = (Version("0.42.0"), Version("0.42.1"))
TORCH_TESTED = (Version("2.11.0"), Version("2.14.1"))
DEEPSPEED_TESTED = (Version("0.19.8"), Version("0.19.8"))
FLASH_ATTN_TESTED = (Version("4.0.0"), Version("4.0.0"))  # flash-attn-4 4.0.0b36 (its base version)

# The attributes DeepSpeed's ZeRO-3 sets on each parameter it partitions (`partition_parameters.py`): this rank's
# part, the group it is split over, and the whole tensor's size and shape.
ZERO3_PARAM_ATTRIBUTES = ("ds_tensor", "ds_process_group", "ds_numel", "ds_shape")

# Every private API reached below, by the package that owns it and its dotted path (`tests/test_compat.py`
# resolves each one on the installed versions).
PRIVATE_APIS = {
    "diffusers": (
        "diffusers.hooks._helpers.TransformerBlockRegistry",
        "diffusers.hooks.hooks._set_cache_context",
        "diffusers.models._modeling_parallel.ContextParallelConfig",
        "diffusers.models._modeling_parallel.ContextParallelInput",
        "diffusers.models._modeling_parallel.ContextParallelOutput",
        "diffusers.models._modeling_parallel.ParallelConfig",
        "diffusers.models.attention_dispatch.AttentionBackendName._NATIVE_CUDNN",
        "diffusers.models.attention_dispatch.AttentionBackendName._NATIVE_FLASH",
        "diffusers.models.modeling_utils.ModelMixin._parallel_config",
    ),
    "torch": (
        "torch._scaled_mm",
        "torch.cuda.memory._set_allocator_settings",
        "torch._dynamo.config.optimize_ddp",
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper.CheckpointWrapper",
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper._CHECKPOINT_WRAPPED_MODULE",
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper.checkpoint_wrapper",
        "torch.nn.attention._fa4.register_flash_attention_fa4",
        "torch.nn.attention._registry.register_flash_attention_impl",
        "torch.ops.aten._scaled_dot_product_cudnn_attention",
        "torch.ops.aten._scaled_dot_product_flash_attention",
        "torch.ops.aten._scaled_dot_product_efficient_attention",
        "torch.ops.aten._scaled_dot_product_flash_attention_for_cpu",
    ),
    "flash_attn": (  # the `flash4` extra, GPU machines only
        "flash_attn.cute.interface._flash_attn_fwd",
        "flash_attn.cute.interface._flash_attn_bwd",
    ),
    "deepspeed": (
        "deepspeed.runtime.zero.stage_1_and_2.DeepSpeedZeroOptimizer._lazy_init_hp_params_optimizer_state",
        "deepspeed.runtime.zero.stage_1_and_2.DeepSpeedZeroOptimizer.single_partition_of_fp32_groups",
        "deepspeed.runtime.zero.stage3.DeepSpeedZeroOptimizer_Stage3.fp32_partitioned_groups_flat",
        # set on each parameter by ZeRO-3 (`ZERO3_PARAM_ATTRIBUTES`; the test finds their assignments)
        *(f"deepspeed.runtime.zero.partition_parameters.param.{name}" for name in ZERO3_PARAM_ATTRIBUTES),
    ),
}


_WARNED_NEWER: set[str] = set()  # the packages whose newer-than-tested version was already named


def _require(package: str, installed: str, tested: tuple[Version, Version], api: str) -> None:
    """Refuse a version older than the oldest tested; name, once a process, a version newer than the newest tested
    (it may have moved what we reach: the warning says what to check)."""
    version = Version(Version(installed).base_version)
    if version < tested[0]:
        raise ImportError(
            f"{api} needs {package} >= {tested[0]} (tested {tested[0]} to {tested[1]}), found {installed}: "
            f'`pip install -U "{package}>={tested[0]}"`.'
        )
    if version > tested[1] and package not in _WARNED_NEWER:
        _WARNED_NEWER.add(package)
        logger.warning(
            "%s %s is newer than the newest tested (%s): this package reaches its private %s (and the rest of "
            "compat.PRIVATE_APIS[%r]); if one fails, run tests/test_compat.py, or install %s<=%s.",
            package,
            installed,
            tested[1],
            api,
            package,
            package,
            tested[1],
        )


def _require_diffusers(api: str) -> None:
    _require("diffusers", diffusers.__version__, DIFFUSERS_TESTED, api)


def _require_torch(api: str) -> None:
    _require("torch", torch.__version__, TORCH_TESTED, api)


def _require_flash_attn(api: str) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("flash-attn-4")
    except PackageNotFoundError:  # the kernels come from elsewhere (a source build): nothing to compare
        return
    _require("flash-attn-4", installed, FLASH_ATTN_TESTED, api)


def _require_deepspeed(api: str) -> None:
    import deepspeed

    _require("deepspeed", deepspeed.__version__, DEEPSPEED_TESTED, api)


# ---------------------------------------------------------------------------------------------------- diffusers


def register_cacheable_block(block_class: type) -> None:
    """Describe a transformer block that returns its hidden states alone to diffusers' cache hooks (First Block
    Cache and the others look blocks up in `TransformerBlockRegistry`, which lists no Cosmos block)."""
    _require_diffusers("diffusers.hooks._helpers.TransformerBlockRegistry")
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    TransformerBlockRegistry.register(block_class, TransformerBlockMetadata(return_hidden_states_index=0))


@contextlib.contextmanager
def cache_context(module: torch.nn.Module, name: str):
    """diffusers' `CacheMixin.cache_context` for a model without the mixin: the cache hooks under `module` keep
    one state per `name` ("cond", "uncond") while the block runs."""
    _require_diffusers("diffusers.hooks.hooks._set_cache_context")
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    _set_cache_context(module, CacheContext(name))
    try:
        yield
    finally:
        _set_cache_context(module, None)


def reset_cache_hooks(module: torch.nn.Module) -> None:
    """Forget every cached state under `module` (a new generation starts from nothing)."""
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(module).reset_stateful_hooks(recurse=True)


def remove_hooks(module: torch.nn.Module, name: str) -> None:
    """Remove the diffusers hooks called `name` from `module` and every module under it."""
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(module).remove_hook(name, recurse=True)


def hook(module: torch.nn.Module, name: str):
    """The diffusers hook called `name` on `module` (None where there is none)."""
    registry = getattr(module, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(name)


def context_parallel_input(split_dim: int, expected_dims: int, split_output: bool = False):
    """diffusers' description of a tensor that context parallelism splits along `split_dim` (a `_cp_plan` entry);
    diffusers keeps the plan's types in its private `_modeling_parallel`."""
    _require_diffusers("diffusers.models._modeling_parallel.ContextParallelInput")
    from diffusers.models._modeling_parallel import ContextParallelInput

    return ContextParallelInput(split_dim=split_dim, expected_dims=expected_dims, split_output=split_output)


def context_parallel_output(gather_dim: int, expected_dims: int):
    """diffusers' description of an output that context parallelism gathers along `gather_dim`."""
    _require_diffusers("diffusers.models._modeling_parallel.ContextParallelOutput")
    from diffusers.models._modeling_parallel import ContextParallelOutput

    return ContextParallelOutput(gather_dim, expected_dims)


def ulysses_parallel_config(degree: int):
    """diffusers' `ParallelConfig` of Ulysses attention over `degree` ranks (not yet set up on a mesh)."""
    _require_diffusers("diffusers.models._modeling_parallel.ParallelConfig")
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    return ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=degree))


# Our attention backends' names in diffusers' dispatcher (`AttentionBackendName`; the cuDNN and flash SDPA kernels
# are its private members).
_DISPATCH_BACKENDS = {"cudnn": "_NATIVE_CUDNN", "flash4": "_NATIVE_FLASH", "native": "NATIVE"}


def set_processor_attention_backend(processor, backend: str) -> None:
    """Route `processor`'s attention to our `backend` (cudnn, flash4, native) through diffusers' dispatcher, in
    the attribute diffusers' `ModelMixin.set_attention_backend` sets on processors (so that a user's call to it
    still works on ours)."""
    _require_diffusers("diffusers.models.attention_dispatch.AttentionBackendName._NATIVE_CUDNN/_NATIVE_FLASH")
    from diffusers.models.attention_dispatch import AttentionBackendName

    processor._attention_backend = AttentionBackendName[_DISPATCH_BACKENDS[backend]]


def set_processor_parallel_config(processor, parallel_config) -> None:
    """Give `processor` the model's parallel config, where diffusers' `ModelMixin.enable_parallelism` puts it on
    each processor (its `_parallel_config`)."""
    _require_diffusers("diffusers.models.modeling_utils.ModelMixin._parallel_config")
    processor._parallel_config = parallel_config


def set_model_parallel_config(model: torch.nn.Module, parallel_config) -> None:
    """Record `config` where diffusers' `ModelMixin.enable_parallelism` keeps it (`model._parallel_config`)."""
    _require_diffusers("diffusers.models.modeling_utils.ModelMixin._parallel_config")
    model._parallel_config = parallel_config


def model_parallel_config(model: torch.nn.Module):
    """The parallel config diffusers keeps on `model`, or None where it runs on one process."""
    return getattr(model, "_parallel_config", None)


# -------------------------------------------------------------------------------------------------------- torch


def set_cuda_allocator_settings(settings: str) -> None:
    """Change the CUDA caching allocator's settings after CUDA started (the environment variable is read once,
    at start-up; torch's setter is private)."""
    _require_torch("torch.cuda.memory._set_allocator_settings")
    torch.cuda.memory._set_allocator_settings(settings)


def keep_ddp_graphs_whole() -> None:
    """Stop Dynamo's DDPOptimizer from splitting compiled graphs at DDP's bucket boundaries (a private config)."""
    _require_torch("torch._dynamo.config.optimize_ddp")
    torch._dynamo.config.optimize_ddp = False


def attention_kernel_ops() -> set:
    """The aten operators that SDPA's kernels run as (private op names): selective checkpointing keeps their
    outputs."""
    _require_torch("torch.ops.aten._scaled_dot_product_*_attention")
    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_cudnn_attention.default,
        aten._scaled_dot_product_flash_attention.default,
        aten._scaled_dot_product_efficient_attention.default,
        aten._scaled_dot_product_flash_attention_for_cpu.default,
    }


def checkpoint_wrapper_class() -> type:
    """torch's `CheckpointWrapper`, the module FSDP2 wraps a checkpointed block in (private module path)."""
    _require_torch("torch.distributed.algorithms._checkpoint.checkpoint_wrapper")
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    return CheckpointWrapper


def checkpoint_wrapper(module: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """`module` inside torch's `checkpoint_wrapper` (its parameters then sit under `_checkpoint_wrapped_module`)."""
    _require_torch("torch.distributed.algorithms._checkpoint.checkpoint_wrapper")
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper as wrap

    return wrap(module, **kwargs)


# The name torch's checkpoint wrapper puts its module under, in every parameter name below it (its private
# `_CHECKPOINT_WRAPPED_MODULE`; `tests/test_compat.py` compares them).
CHECKPOINT_WRAPPED_PREFIX = "._checkpoint_wrapped_module"


def checkpoint_wrapped(module: torch.nn.Module) -> torch.nn.Module | None:
    """The module torch's checkpoint wrapper holds, where `module` is one (None where it is not)."""
    _require_torch("torch.distributed.algorithms._checkpoint.checkpoint_wrapper._CHECKPOINT_WRAPPED_MODULE")
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_WRAPPED_MODULE

    return getattr(module, _CHECKPOINT_WRAPPED_MODULE, None)


def activate_flash_attention_4() -> None:
    """Route torch's flash SDPA kernels to FlashAttention-4, through `_flash_attn_fwd`/`_flash_attn_bwd` below.
    torch's public `activate_flash_attention_impl("FA4")` would load flash-attn-4's own, whose forward it unpacks
    wrongly before torch 2.14, so the implementation is registered (privately) from this module."""
    _require_torch("torch.nn.attention._registry.register_flash_attention_impl")
    _require_flash_attn("flash_attn.cute.interface._flash_attn_fwd/_flash_attn_bwd")
    import functools

    from torch.nn.attention import _fa4, _registry

    register = functools.partial(_fa4.register_flash_attention_fa4, module_path=__name__)
    _registry.register_flash_attention_impl("FA4", register_fn=register)
    torch.nn.attention.activate_flash_attention_impl("FA4")


def _flash_attn_fwd(*args, **kwargs):
    """FlashAttention-4's (private) forward as torch's SDPA hook unpacks it: `(out, lse)`. flash-attn-4 4.0.0b36
    returns more values, which torch 2.11 (our benchmark machine's) cannot unpack; torch 2.14 ignores the rest."""
    from flash_attn.cute.interface import _flash_attn_fwd as forward

    out, lse, *_ = forward(*args, **kwargs)
    return out, lse


def _flash_attn_bwd(*args, **kwargs):
    from flash_attn.cute.interface import _flash_attn_bwd as backward

    return backward(*args, **kwargs)


def require_scaled_fp8_matmul() -> None:
    """Refuse a torch whose `_scaled_mm` was not tested with row-wise scales."""
    _require_torch("torch._scaled_mm")


def scaled_fp8_matmul(
    a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """`(a * scale_a) @ (b * scale_b)` in `out_dtype`, on the GPU's fp8 matrix units: `a` `[M, K]` row-major and
    `b` `[K, N]` column-major float8 e4m3, `scale_a` `[M, 1]` and `scale_b` `[1, N]` float32 (row-wise
    scaling, Hopper and newer). torch's only fp8 matmul is the private `torch._scaled_mm`. Called inside compiled
    blocks, so its version is checked once, by `require_scaled_fp8_matmul`, not here."""
    return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)


# ---------------------------------------------------------------------------------------------------- DeepSpeed


def zero_flat_fp32_partitions(zero, stage3: bool) -> list[torch.Tensor]:
    """This rank's flat fp32 master partitions inside DeepSpeed's ZeRO optimizer `zero` (one per parameter group):
    the tensors its inner optimizer steps on. DeepSpeed has no public accessor for them."""
    name = "fp32_partitioned_groups_flat" if stage3 else "single_partition_of_fp32_groups"
    _require_deepspeed(f"DeepSpeedZeroOptimizer.{name}")
    return getattr(zero, name)


@dataclasses.dataclass(frozen=True)
class Zero3Partition:
    """Where ZeRO-3 keeps a parameter: `local` (this rank's flat part, `[numel / ranks]` padded), split over
    `group`, of a whole tensor of `numel` elements and shape `shape`."""

    local: torch.Tensor
    group: object
    numel: int
    shape: torch.Size


def zero3_partition(param: torch.nn.Parameter) -> Zero3Partition:
    """`param`'s ZeRO-3 partition, from the attributes DeepSpeed sets on it (it has no accessor for them)."""
    _require_deepspeed("ZeRO-3's parameter attributes " + ", ".join(ZERO3_PARAM_ATTRIBUTES))
    return Zero3Partition(*(getattr(param, name) for name in ZERO3_PARAM_ATTRIBUTES))


def zero_link_optimizer_state(zero) -> None:
    """Under ZeRO-1/2, link each parameter to its slice of the optimizer state created on the flat partitions, as
    DeepSpeed's own first step does (its private `_lazy_init_hp_params_optimizer_state`)."""
    _require_deepspeed("DeepSpeedZeroOptimizer._lazy_init_hp_params_optimizer_state")
    zero._lazy_init_hp_params_optimizer_state()

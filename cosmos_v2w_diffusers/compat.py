"""The private APIs of torch and diffusers that this package touches, each behind one function with the versions
it was tested on: when an upgrade moves one, the error names the API and the versions that work, and
`tests/test_compat.py` fails on this module alone instead of deep inside a run.
"""

from __future__ import annotations

import contextlib

import diffusers
import torch
from packaging.version import Version

# The versions each private API below was tested with (the lowest and highest installed in our CI and on the GPU
# machines); an older one is refused by name.
DIFFUSERS_TESTED = (Version("0.42.0"), Version("0.42.1"))
TORCH_TESTED = (Version("2.11.0"), Version("2.14.1"))


def _require(package: str, installed: str, tested: tuple[Version, Version], api: str) -> None:
    if Version(Version(installed).base_version) < tested[0]:
        raise ImportError(
            f"{api} needs {package} >= {tested[0]} (tested {tested[0]} to {tested[1]}), found {installed}: "
            f'`pip install -U "{package}>={tested[0]}"`.'
        )


def register_cacheable_block(block_class: type) -> None:
    """Describe a transformer block that returns its hidden states alone to diffusers' cache hooks (First Block
    Cache and the others look blocks up in `TransformerBlockRegistry`, which lists no Cosmos block)."""
    _require("diffusers", diffusers.__version__, DIFFUSERS_TESTED, "diffusers.hooks._helpers.TransformerBlockRegistry")
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    TransformerBlockRegistry.register(block_class, TransformerBlockMetadata(return_hidden_states_index=0))


@contextlib.contextmanager
def cache_context(module: torch.nn.Module, name: str):
    """diffusers' `CacheMixin.cache_context` for a model without the mixin: the cache hooks under `module` keep
    one state per `name` ("cond", "uncond") while the block runs."""
    _require("diffusers", diffusers.__version__, DIFFUSERS_TESTED, "diffusers.hooks.hooks._set_cache_context")
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


def require_scaled_fp8_matmul() -> None:
    """Refuse a torch whose `_scaled_mm` was not tested with row-wise scales."""
    _require("torch", torch.__version__, TORCH_TESTED, "torch._scaled_mm")


def scaled_fp8_matmul(
    a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """`(a * scale_a) @ (b * scale_b)` in `out_dtype`, on the GPU's fp8 matrix units: `a` `[M, K]` row-major and
    `b` `[K, N]` column-major float8 e4m3, `scale_a` `[M, 1]` and `scale_b` `[1, N]` float32 (row-wise
    scaling, Hopper and newer). torch's only fp8 matmul is the private `torch._scaled_mm`. Called inside compiled
    blocks, so its version is checked once, by `require_scaled_fp8_matmul`, not here."""
    return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)

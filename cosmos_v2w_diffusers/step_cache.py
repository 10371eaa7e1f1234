"""Training-free step caching for generation (`--cache THRESHOLD`): diffusers' First Block Cache on the Cosmos
transformer.

At each denoising step the first block runs; where its residual (output minus input) changed by less than
`threshold` (mean absolute change over the mean absolute residual) since the last step of the same guidance side,
the other blocks are skipped and the residual they added last time is added again. Between neighbouring steps of
a 35-step sampler the blocks' work changes little, most of all late in sampling, so a threshold trades skipped
blocks for distance from the dense output (BENCHMARKS.md, "Fast generation").

diffusers' `apply_first_block_cache` does the caching; what it lacks for Cosmos is the block's description (no
Cosmos block is in its registry) and the `cache_context` of `CacheMixin`, which `CosmosTransformer3DModel` does
not inherit: both come from `compat.py`. The count of skipped blocks is ours.

The decision reads one number from the GPU per forward. Under context parallelism each rank would decide on its
own shard of the tokens and the ranks could disagree, so caching is refused there.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

from . import compat

# diffusers' names of the first block's hook and the others' (hooks/first_block_cache.py)
_HEAD_HOOK, _BLOCK_HOOK = "fbc_leader_block_hook", "fbc_block_hook"


class StepCache:
    """First Block Cache on `transformer` with `threshold`, one cached state per guidance side, and a count of
    the block evaluations it saved."""

    def __init__(self, transformer: torch.nn.Module, threshold: float):
        if not 0 < threshold < 1:
            raise ValueError(
                f"--cache {threshold}: the threshold is a relative change between steps, between 0 and 1 "
                "(0.05 to 0.3 in practice); leave --cache out for dense generation."
            )
        if compat.model_parallel_config(transformer) is not None:
            raise ValueError(
                "--cache with context parallelism (--num_gpus N without --guidance_parallel, or N > 2 with it): each "
                "rank would decide on its own tokens; drop --cache, or use --num_gpus 2 --guidance_parallel."
            )
        blocks = transformer.transformer_blocks
        compat.register_cacheable_block(type(blocks[0]))
        apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=threshold))
        self.transformer, self.threshold, self.num_blocks = transformer, threshold, len(blocks)
        self._head = compat.hook(blocks[0], _HEAD_HOOK)
        self.forwards = self.skipped_forwards = 0

    def remove(self) -> None:
        """Take the cache off the transformer: every block runs again."""
        for name in (_HEAD_HOOK, _BLOCK_HOOK):
            compat.remove_hooks(self.transformer, name)

    def reset(self) -> None:
        """Start a new generation: nothing cached, nothing counted."""
        compat.reset_cache_hooks(self.transformer)
        self.forwards = self.skipped_forwards = 0

    @contextlib.contextmanager
    def side(self, name: str):
        """Run one transformer forward for guidance side `name` ("cond" or "uncond"), and count it."""
        with compat.cache_context(self.transformer, name):
            yield
            self.forwards += 1
            self.skipped_forwards += not self._head.state_manager.get_state().should_compute

    def summary(self) -> str:
        """How many block evaluations were skipped, for the log."""
        total = self.forwards * self.num_blocks
        skipped = self.skipped_forwards * (self.num_blocks - 1)
        share = skipped / total if total else 0.0
        return (
            f"step cache (threshold {self.threshold}): skipped {skipped} of {total} block evaluations ({share:.0%}); "
            f"{self.skipped_forwards} of {self.forwards} transformer forwards ran the first block alone"
        )

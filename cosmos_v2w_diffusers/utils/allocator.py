"""The CUDA caching allocator's settings, for training and sampling alike."""

from __future__ import annotations

import os

import torch

from .. import compat


def set_allocator_defaults() -> None:
    """Expandable segments unless the user configured the CUDA allocator. Without them, fragmentation of the
    variable-size activations made a selective-recompute 2B training step run out of memory with 6.5 GiB free,
    and a 2B generation at 720p capped at 15 GiB ran out of memory in the VAE decode with 3.1 GiB reserved but
    free (it peaks at 13.0 GiB with them; BENCHMARKS.md)."""
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ or "PYTORCH_ALLOC_CONF" in os.environ:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        compat.set_cuda_allocator_settings("expandable_segments:True")
    else:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"

"""Sparse self-attention as NVIDIA ships it for Cosmos-Predict2 (`--sparse_attention natten`): neighbourhood
attention from the `natten` package in the layers, and with the windows, of NVIDIA's NATTEN configuration.

Each latent token of a `(T, H, W)` token grid attends to all frames (the window spans the whole time axis) but
only to a window of the spatial grid around it, possibly strided (queries in a tile share one window) or dilated
(every d-th token: sparse, but reaching across the frame). At 720p (`T x 44 x 80` tokens) the 2B's layers keep
2% to 45% of the attention (NVIDIA's table below), and self-attention is about 85% of the transformer's FLOPs.
Cross-attention to the text stays dense.

NVIDIA's Predict2 + NATTEN checkpoints were post-trained with these windows; on the dense checkpoints the sparse
layers change the output, by how much is measured in BENCHMARKS.md ("Fast generation"). Dense stays the default.

Which kernel runs is natten's choice: its Hopper/Blackwell FNA kernels where libnatten was built for the GPU,
else its Flex Attention backend (torch's `flex_attention` with a block-sparse mask; the only one our pure-Python
wheel has, and the one on the CPU). torch has no neighbourhood attention of its own, and natten already builds
the block-sparse masks and picks the kernel, so we only map the layers and scale the windows.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from .. import compat
from ..models.attention import attention_processors

# NVIDIA's per-layer parameters (cosmos_predict2/configs/base/config_natten.py), given for a 44 x 80 token grid
# (720p 16:9) and scaled to other grids: window (time, height, width) in tokens, -1 = the whole axis; stride: a
# tile of queries sharing one window; dilation: every d-th token. None: dense self-attention.
_LOCAL_12x24: dict | None = {"window": (-1, 12, 24), "stride": (1, 4, 8)}
_LOCAL_20x40 = {"window": (-1, 20, 40), "stride": (1, 4, 8)}
_LOCAL_28x56 = {"window": (-1, 28, 56), "stride": (1, 4, 8)}
_GLOBAL_HW = {"window": (-1, 4, 16), "dilation": (1, 11, 5)}
_GLOBAL_W = {"window": (-1, 12, 16), "stride": (1, 4, 1), "dilation": (1, 1, 5)}
NVIDIA_LAYERS: dict[int, list[dict | None]] = {
    28: [_GLOBAL_HW] * 2
    + [_GLOBAL_W, _LOCAL_12x24, _LOCAL_12x24, _GLOBAL_W]
    + [_LOCAL_12x24] * 4
    + [_GLOBAL_W]
    + [_LOCAL_20x40] * 12
    + [_LOCAL_28x56]
    + [_LOCAL_20x40] * 3
    + [_LOCAL_12x24],
    36: [_GLOBAL_HW] * 11
    + [_GLOBAL_W] * 2
    + [_LOCAL_12x24] * 10
    + [_LOCAL_20x40, _LOCAL_28x56, _LOCAL_20x40, _LOCAL_28x56, None, _LOCAL_28x56]
    + [_LOCAL_20x40] * 2
    + [_LOCAL_28x56] * 2
    + [_LOCAL_20x40, _LOCAL_28x56, _LOCAL_20x40],
}
BASE_GRID = (44, 80)  # the (height, width) token grid the windows above are given for


def require_natten() -> None:
    """A one-line error where natten cannot be imported."""
    if importlib.util.find_spec("natten") is None:
        raise ValueError(
            "--sparse_attention natten needs the natten package: `pip install natten` (natten.org/install; "
            "without a CUDA build it runs torch's Flex Attention), or leave --sparse_attention at none."
        )


def layer_parameters(num_blocks: int) -> list[dict | None]:
    """NVIDIA's parameters for each of a transformer's `num_blocks` blocks. Other depths (the tiny model) reuse
    the 2B's table, spread over their blocks, so that tests exercise every kind of layer."""
    if num_blocks in NVIDIA_LAYERS:
        return NVIDIA_LAYERS[num_blocks]
    table = NVIDIA_LAYERS[28]
    return [table[i * len(table) // num_blocks] for i in range(num_blocks)]


def scaled_window(layer: dict, grid: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(kernel size, stride, dilation) of `layer` on a `(T, H, W)` token grid: the whole time axis, and the
    spatial window, stride and dilation scaled by the grid's size over the 44 x 80 they were chosen for, kept
    within what natten accepts (window * dilation <= grid side, stride <= window, window >= 2)."""
    kernel, stride, dilation = [grid[0]], [1], [1]
    for axis, side in enumerate(grid[1:], start=1):
        scale = side / BASE_GRID[axis - 1]
        window = min(max(2, round(layer["window"][axis] * scale)), side)
        kernel.append(window)
        stride.append(min(max(1, round(layer.get("stride", (1, 1, 1))[axis] * scale)), window))
        dilation.append(min(max(1, round(layer.get("dilation", (1, 1, 1))[axis] * scale)), side // window))
    return tuple(kernel), tuple(stride), tuple(dilation)


class NeighborhoodAttention:
    """One block's sparse self-attention: `[B, S, heads, D]` query, key and value of a `(T, H, W)` token grid
    (`S = T * H * W`, time slowest, as the Cosmos transformer orders its tokens) -> `[B, S, heads, D]`."""

    def __init__(self, layer: dict):
        self.layer = layer

    @torch.compiler.disable  # natten compiles its Flex kernel itself (torch_compile below); its checks stay eager
    def __call__(self, query, key, value, grid: tuple[int, int, int]) -> torch.Tensor:
        import natten

        kernel, stride, dilation = scaled_window(self.layer, grid)
        shape = (query.shape[0], *grid, *query.shape[2:])
        with warnings.catch_warnings():
            # On the CPU Flex Attention runs uncompiled (and says so, every call); natten still asks it for the
            # log-sum-exp by a keyword torch deprecates.
            warnings.filterwarnings("ignore", "flex_attention called without torch.compile", UserWarning)
            warnings.filterwarnings("ignore", "return_lse is deprecated", FutureWarning)
            out = natten.na3d(
                query.reshape(shape),
                key.reshape(shape),
                value.reshape(shape),
                kernel_size=kernel,
                stride=stride,
                dilation=dilation,
                torch_compile=query.is_cuda,
            )
        return out.reshape(query.shape)


def enable_sparse_attention(transformer) -> int:
    """Give each block's self-attention processor its neighbourhood attention (NVIDIA's layer table) and keep
    the token grid up to date from each forward's input; returns how many layers are sparse. Not with context
    parallelism (a rank's shard is not the neighbourhood's grid).

    The processors need the grid to lay the tokens out: a forward pre-hook reads it from the latents
    `[B, C, T, H, W]` and the patch size."""
    if compat.model_parallel_config(transformer) is not None:
        raise ValueError(
            "--sparse_attention with context parallelism is not supported: drop one, or use --num_gpus 2 "
            "--guidance_parallel (no token sharding)."
        )
    require_natten()
    processors = attention_processors(transformer, "self")
    import natten

    if torch.cuda.is_available():
        natten.allow_flex_compile()  # natten compiles Flex Attention only where allowed (inference: forward only)
    layers = layer_parameters(len(processors))
    for processor, layer in zip(processors, layers):
        processor.sparse_attention = None if layer is None else NeighborhoodAttention(layer)
    patch = transformer.config.patch_size

    def record_grid(module, args, kwargs):
        latents = kwargs.get("hidden_states", args[0] if args else None)
        grid = tuple(side // p for side, p in zip(latents.shape[2:], patch))
        for processor in processors:
            processor.token_grid = grid

    previous = getattr(transformer, "_token_grid_hook", None)
    if previous is not None:  # enabled again: one hook keeps the grid, not two
        previous.remove()
    transformer._token_grid_hook = transformer.register_forward_pre_hook(record_grid, with_kwargs=True)
    return sum(layer is not None for layer in layers)

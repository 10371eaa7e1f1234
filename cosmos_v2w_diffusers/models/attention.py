"""Which kernel runs the transformer's attention, chosen through diffusers' attention dispatcher.

Self-attention over the latent tokens is about 85% of the transformer's FLOPs at 720p, so its kernel sets
the speed of training and sampling alike; cross-attention to the 512 text tokens uses the same kernel.
The choices (`--attention_backend`):

- `cudnn`: torch's cuDNN SDPA kernel (diffusers' `_native_cudnn`), the fastest that ships with torch on an
  H100 (BENCHMARKS.md, "Attention kernels");
- `flash4`: FlashAttention-4 (`pip install -e ".[flash4]"`), routed by torch's SDPA (its FA4 hook,
  `torch.nn.attention.activate_flash_attention_impl`) and diffusers' `_native_flash`; Hopper and Blackwell
  only;
- `native`: whatever `scaled_dot_product_attention` picks (the only choice on the CPU);
- `auto` (the default): FlashAttention-4 where it is installed and the GPU supports it, else `cudnn` on a
  Hopper or newer GPU, else `native`.

Without context parallelism `native` and `cudnn` run the same kernel on a Hopper GPU (SDPA picks cuDNN there).
Under context parallelism they differ: diffusers' Ulysses backward for `native` runs the attention forward
again (it saves only the inputs and differentiates a fresh SDPA call), while `cudnn` and `flash4` save the
output and log-sum-exp and call the backward kernel alone. On 2x H200 the re-run cost 28 extra attention
forwards of 47 ms each in a 2B 720p CP 2 step of 8.2 s (BENCHMARKS.md, "Several GPUs").

diffusers' `ModelMixin.set_attention_backend` records the backend on each processor, but its
`CosmosAttnProcessor2_0` never passes it to `dispatch_attention_fn`, so the choice would not reach the
kernel; `CosmosAttnProcessor` below does pass it (and, for self-attention, the context-parallel config).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch
from diffusers import CosmosTransformer3DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from torch.utils.checkpoint import checkpoint

from .. import compat
from ..choices import ATTENTION_BACKENDS as BACKENDS

# Fastest first, as measured at 84,480 tokens on an H100 (benchmarks/attention.py): FlashAttention-4 701
# TFLOP/s forward and 661 forward+backward, cuDNN 642 and 568. `native` lets SDPA choose, which is cuDNN on
# Hopper (torch 2.11 and later) and FlashAttention-2 on older GPUs.
_AUTO_ORDER = ("flash4", "cudnn", "native")


class CosmosAttnProcessor:
    """diffusers' `CosmosAttnProcessor2_0` (no GQA, no mask: Cosmos uses neither), with the attention routed
    through this processor's backend and, for self-attention, the model's parallel config: under context
    parallelism each rank holds `S / N` tokens of all heads, and Ulysses exchanges them for all tokens of
    `heads / N` heads around the attention."""

    _attention_backend: str | None = None
    _parallel_config = None
    # Training's --checkpoint_block_parts: the projections before and after the attention kernel are checkpointed
    # apart from it, over this many slices of the sequence (training/activation_checkpointing.py); 0: they are not.
    projection_slices = 0
    # The token-wise parts around the kernel as `compile_projections` compiled them; empty: they run as they are.
    _compiled_parts: dict = {}
    # `--sparse_attention natten` (`generation/sparse_attention.py`): this block's neighbourhood attention, and the
    # `(T, H, W)` token grid of the current forward that it lays the tokens out on; None: dense self-attention.
    sparse_attention: Callable[..., torch.Tensor] | None = None
    token_grid: tuple[int, int, int] | None = None

    def __call__(
        self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None
    ) -> torch.Tensor:
        if encoder_hidden_states is None:  # self-attention: query, key and value from each token
            project = functools.partial(self._part(_self_projections), attn)
        else:  # cross-attention: the query from each token, the key and value once from the text
            key, value = _key(attn, encoder_hidden_states, None), _value(attn, encoder_hidden_states)
            project = functools.partial(self._part(_query_alone), attn)
        project_out = functools.partial(self._part(_project_out), attn)
        if self.projection_slices:
            project = functools.partial(_checkpointed_slices, project, self.projection_slices)
            project_out = functools.partial(checkpoint, project_out, use_reentrant=False, preserve_rng_state=False)
        projected = project(hidden_states, image_rotary_emb)
        query, key, value = projected if encoder_hidden_states is None else (*projected, key, value)
        if encoder_hidden_states is None and self.sparse_attention is not None:
            out = self.sparse_attention(query, key, value, self.token_grid)
        else:
            attend = dispatch_attention_fn if self._parallel_config is None else _ulysses_attention
            out = attend(query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config)
        return project_out(out.flatten(2, 3).type_as(query))

    def _part(self, function):
        """`function`, compiled where `compile_projections` compiled it."""
        return self._compiled_parts.get(function, function)

    def compile_projections(self, **compile_kwargs) -> None:
        """`torch.compile` the projections before and after the kernel apart from it, for blocks that are not
        compiled whole (`compile.compile_blocks` under `--checkpoint_block_parts`): the kernel stays outside,
        between the checkpointed slices. One graph serves every block's processor."""
        self._compiled_parts = {
            part: torch.compile(part, **compile_kwargs) for part in (_self_projections, _query_alone, _project_out)
        }


# The projections, `[B, S, heads * D]` -> `[B, S, heads, D]`, as `CosmosAttnProcessor2_0` makes them: normalised per
# head, the query and key rotated where RoPE tables are given (under context parallelism: this rank's rows).
def _query(attn, hidden_states: torch.Tensor, rotary) -> torch.Tensor:
    return _normalised(attn.to_q(hidden_states), attn.norm_q, attn.heads, rotary)


def _key(attn, context: torch.Tensor, rotary) -> torch.Tensor:
    return _normalised(attn.to_k(context), attn.norm_k, attn.heads, rotary)


def _value(attn, context: torch.Tensor) -> torch.Tensor:
    return attn.to_v(context).unflatten(2, (attn.heads, -1))


def _normalised(projected: torch.Tensor, norm, heads: int, rotary) -> torch.Tensor:
    x = norm(projected.unflatten(2, (heads, -1)).transpose(1, 2))  # [B, heads, S, D]
    if rotary is not None:
        x = apply_rotary_emb(x, rotary, use_real=True, use_real_unbind_dim=-2)
    return x.transpose(1, 2)


def _self_projections(attn, hidden_states: torch.Tensor, rotary) -> tuple[torch.Tensor, ...]:
    return _query(attn, hidden_states, rotary), _key(attn, hidden_states, rotary), _value(attn, hidden_states)


def _query_alone(attn, hidden_states: torch.Tensor, rotary) -> tuple[torch.Tensor]:
    return (_query(attn, hidden_states, rotary),)


def _project_out(attn, out: torch.Tensor) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](out))


def _checkpointed_slices(project, slices: int, hidden_states: torch.Tensor, rotary) -> tuple[torch.Tensor, ...]:
    """`project` (token-wise: `[B, S, C]` and the RoPE tables' rows -> a tuple of `[B, S, heads, D]`) over `slices`
    slices of the sequence, each checkpointed, so that the backward recomputes one slice's projections, norms and
    rotations at a time; the outputs concatenated along the sequence."""
    sizes = [part.shape[1] for part in hidden_states.chunk(slices, dim=1)]
    tables = zip(*(table.split(sizes) for table in rotary)) if rotary is not None else [None] * len(sizes)
    parts = [
        checkpoint(project, part, table, use_reentrant=False, preserve_rng_state=False)
        for part, table in zip(hidden_states.split(sizes, dim=1), tables)
    ]
    return tuple(torch.cat(pieces, dim=1) for pieces in zip(*parts))


@torch.compiler.disable
def _ulysses_attention(*args, **kwargs) -> torch.Tensor:
    """`dispatch_attention_fn` under context parallelism, run eagerly between a compiled block's two graphs.

    Traced by Dynamo inside a compiled block, diffusers' Ulysses `autograd.Function` (all-to-alls around the
    cuDNN kernel) made selective checkpointing fail in the backward: the recomputed block saved tensors of other
    shapes than the forward (`CheckpointError`, `[42240, 2048]` against `[1, 42240, 2048]`, 2B CP 2 on 4x
    H200). Eager, selective checkpointing keeps the kernel's output as on one GPU.
    """
    return dispatch_attention_fn(*args, **kwargs)


def attention_processors(transformer: CosmosTransformer3DModel, which: str = "all") -> list[CosmosAttnProcessor]:
    """The blocks' attention processors (`which`: "self", "cross" or "all"), replaced by
    `CosmosAttnProcessor`s where they are diffusers'."""
    names = {"self": ("attn1",), "cross": ("attn2",), "all": ("attn1", "attn2")}[which]
    processors = []
    for block in transformer.transformer_blocks:
        for attn in (getattr(block, name) for name in names):
            if not isinstance(attn.processor, CosmosAttnProcessor):
                attn.set_processor(CosmosAttnProcessor())
            processors.append(attn.processor)
    return processors


def flash4_available(device: torch.device) -> bool:
    """FlashAttention-4 is installed, torch can route SDPA to it, and `device` is a Hopper or Blackwell GPU."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] not in (9, 10):
        return False
    if not hasattr(torch.nn.attention, "activate_flash_attention_impl"):
        return False
    return (
        importlib.util.find_spec("flash_attn") is not None and importlib.util.find_spec("flash_attn.cute") is not None
    )


def resolve_attention_backend(backend: str, device: torch.device) -> str:
    """`backend` with `auto` replaced by the fastest available on `device`; an actionable error when the
    one asked for cannot run there."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown attention backend {backend!r}: use one of {', '.join(BACKENDS)}.")
    if device.type != "cuda":
        if backend not in ("auto", "native"):
            raise ValueError(
                f"--attention_backend {backend} needs a CUDA GPU: use native (or auto) on the {device.type}."
            )
        return "native"
    if backend == "auto":
        # cuDNN attention is SDPA's own first choice from Hopper on; before it, `native` lets SDPA choose.
        hopper_or_newer = torch.cuda.get_device_capability(device)[0] >= 9
        available = {"flash4": flash4_available(device), "cudnn": hopper_or_newer, "native": True}
        return next(name for name in _AUTO_ORDER if available[name])
    if backend == "flash4" and not flash4_available(device):
        raise ValueError(
            "--attention_backend flash4 needs FlashAttention-4 on a Hopper or Blackwell GPU: "
            '`pip install -e ".[flash4]"`, or use --attention_backend cudnn.'
        )
    return backend


def set_attention_backend(transformer: CosmosTransformer3DModel, backend: str, device: torch.device) -> str:
    """Route `transformer`'s attention to `backend` (see the module docstring); returns the backend in
    use. Call before `torch.compile`."""
    backend = resolve_attention_backend(backend, device)
    if backend == "flash4":
        compat.activate_flash_attention_4()
    for processor in attention_processors(transformer):
        compat.set_processor_attention_backend(processor, backend)
    return backend

"""A frozen base stored in fp8 for LoRA runs (`--base_precision fp8`): every linear layer of the transformer's
blocks keeps its weight as float8 e4m3 with one fp32 scale per output channel, and dequantises it to the input's
dtype in its forward. The LoRA adapter, its gradients, the optimizer and the EMA stay as they are.

A block's weights then take a byte a parameter instead of bf16's two (2B: 3.9 GB -> 2.0 GB; 14B: 28 GB -> 14 GB).
The dequantised copy of one layer lives only during its matmul; under activation checkpointing the backward
makes it again.

torchao's float8 weight-only tensor subclass does the storage, but torchao is not among our dependencies (nor on
the GPU image), and a plain `nn.Linear` subclass keeps PEFT's LoRA wrapping, `torch.compile` and our checkpoint
state dicts as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


class Float8FrozenLinear(torch.nn.Linear):
    """`nn.Linear` whose frozen weight is stored in fp8 e4m3 with a per-output-channel scale `[out]`.

    Its state dict shows the dequantised weight in `state_dict_dtype` (the base model's dtype), so checkpoints and
    exports see an ordinary linear layer.
    """

    def __init__(self, linear: torch.nn.Linear):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        self.weight = torch.nn.Parameter((weight / scale[:, None]).to(FP8), requires_grad=False)
        self.register_buffer("weight_scale", scale, persistent=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.state_dict_dtype = linear.weight.dtype
        self._register_state_dict_hook(_dequantised_state_dict)

    def dequantised_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight `[out, in]` in `dtype`."""
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantised_weight(x.dtype), bias)


def _dequantised_state_dict(module: Float8FrozenLinear, state_dict: dict, prefix: str, local_metadata) -> None:
    state_dict[prefix + "weight"] = module.dequantised_weight(module.state_dict_dtype)


def quantize_base_to_fp8(transformer: torch.nn.Module) -> int:
    """Replace every `nn.Linear` inside the transformer's blocks by a `Float8FrozenLinear` (call before LoRA is
    added, on a frozen base); returns how many were replaced."""
    replaced = 0
    for block in transformer.transformer_blocks:
        for name, module in list(block.named_modules()):
            if type(module) is torch.nn.Linear:
                parent, _, child = name.rpartition(".")
                setattr(block.get_submodule(parent) if parent else block, child, Float8FrozenLinear(module))
                replaced += 1
    return replaced

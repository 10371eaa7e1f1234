"""The transformer blocks' linear layers in fp8: every `nn.Linear` of the blocks keeps its weight as float8 e4m3
with one fp32 scale per output channel.

Two uses:
- training's frozen LoRA base (`--base_precision fp8`): the weight is dequantised to the input's dtype in the
  forward, so a block's weights take a byte a parameter instead of bf16's two (2B: 3.9 GB -> 2.0 GB; 14B: 28 GB
  -> 14 GB); the adapter, its gradients, the optimizer and the EMA stay as they are. The dequantised copy of one
  layer lives only during its matmul; under activation checkpointing the backward makes it again.
- generation (`--fp8`, `fp8_matmul=True`): on a Hopper or newer GPU the matmul itself runs on the fp8 units,
  each token's activations scaled to e4m3 by their own maximum (row-wise scaling), at twice bf16's rate.
  Elsewhere (the CPU, older GPUs, sizes the fp8 kernel does not take) it falls back to the dequantised weight.

torchao's float8 tensor subclasses do both, but torchao is not among our dependencies (nor on the GPU image),
and a plain `nn.Linear` subclass keeps PEFT's LoRA wrapping, `torch.compile` and our checkpoint state dicts as
they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import compat

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


class Float8FrozenLinear(torch.nn.Linear):
    """`nn.Linear` whose frozen weight is stored in fp8 e4m3 with a per-output-channel scale `[out]`.

    Its state dict shows the dequantised weight in `state_dict_dtype` (the base model's dtype), so checkpoints and
    exports see an ordinary linear layer. With `fp8_matmul`, a forward on a GPU with fp8 matrix units multiplies
    in fp8 (inference only: `torch._scaled_mm` has no backward).
    """

    def __init__(self, linear: torch.nn.Linear, fp8_matmul: bool = False):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        self.weight = torch.nn.Parameter((weight / scale[:, None]).to(FP8), requires_grad=False)
        self.register_buffer("weight_scale", scale, persistent=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.state_dict_dtype = linear.weight.dtype
        # The fp8 kernel takes both matrix sides in multiples of 16.
        self.fp8_matmul = fp8_matmul and self.in_features % 16 == 0 and self.out_features % 16 == 0
        self._register_state_dict_hook(_dequantised_state_dict)

    def dequantised_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight `[out, in]` in `dtype`."""
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.fp8_matmul and x.is_cuda:
            return self._fp8_forward(x, bias)
        return F.linear(x, self.dequantised_weight(x.dtype), bias)

    def _fp8_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`x` `[..., in]` -> `[..., out]`: each row of `x` scaled into e4m3 by its own maximum, multiplied by the
        stored weight on the fp8 units, both scales applied to the fp32 accumulator."""
        rows = x.reshape(-1, self.in_features)
        row_scale = (rows.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        rows_fp8 = (rows / row_scale).to(FP8)
        out = compat.scaled_fp8_matmul(rows_fp8, self.weight.t(), row_scale, self.weight_scale[None, :], x.dtype)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], self.out_features)


def _dequantised_state_dict(module: Float8FrozenLinear, state_dict: dict, prefix: str, local_metadata) -> None:
    state_dict[prefix + "weight"] = module.dequantised_weight(module.state_dict_dtype)


def fp8_matmul_available() -> bool:
    """This machine's GPU multiplies fp8 matrices (Ada, Hopper and newer)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def quantize_blocks_to_fp8(transformer: torch.nn.Module, fp8_matmul: bool = False) -> int:
    """Replace every `nn.Linear` inside the transformer's blocks by a `Float8FrozenLinear` (for training, before
    LoRA is added, on a frozen base); returns how many were replaced. `fp8_matmul`: multiply in fp8 where
    `fp8_matmul_available()` (generation)."""
    fp8_matmul = fp8_matmul and fp8_matmul_available()
    if fp8_matmul:
        compat.require_scaled_fp8_matmul()
    replaced = 0
    for block in transformer.transformer_blocks:
        for name, module in list(block.named_modules()):
            if type(module) is torch.nn.Linear:
                parent, _, child = name.rpartition(".")
                owner = block.get_submodule(parent) if parent else block
                setattr(owner, child, Float8FrozenLinear(module, fp8_matmul))
                replaced += 1
    return replaced

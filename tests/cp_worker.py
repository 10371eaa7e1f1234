"""Run by test_context_parallel under torchrun: one denoiser call and its backward, sharded over the ranks,
against the same call unsharded in each process. Writes `<argv[1]>/rank<R>.json`."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cosmos_v2w_diffusers.models.components import load_transformer
from cosmos_v2w_diffusers.models.preconditioning import conditioning_mask, denoise
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.parallel.context_parallel import enable_context_parallel
from cosmos_v2w_diffusers.parallel.parallel_dims import ParallelDims

dist.init_process_group("gloo")
sharded, reference = load_transformer(get_preset("tiny")), load_transformer(get_preset("tiny"))
dims = ParallelDims(dist.get_world_size(), dist.get_rank(), cp=dist.get_world_size(), engine="ddp")
enable_context_parallel(sharded, dims, torch.device("cpu"), tokens=140)
tokens_seen = []
sharded.transformer_blocks[0].attn1.register_forward_pre_hook(lambda m, args: tokens_seen.append(args[0].shape[1]))
generator = torch.Generator().manual_seed(1)
latents = torch.randn(1, 16, 5, 16, 28, generator=generator)  # 5 x 4 x 7 = 140 tokens
text = torch.randn(1, 512, 32, generator=generator)
noisy = latents + 2.0 * torch.randn(latents.shape, generator=generator)
cond = conditioning_mask(torch.tensor([1]), 5)
outputs = [denoise(model, noisy, torch.tensor([2.0]), latents, cond, text) for model in (sharded, reference)]
for out in outputs:
    (out**2).mean().backward()
grads = [torch.cat([p.grad.flatten() for p in model.parameters()]) for model in (sharded, reference)]
summed = grads[0].clone()
dist.all_reduce(summed)
Path(sys.argv[1], f"rank{dist.get_rank()}.json").write_text(
    json.dumps(
        {
            "tokens_seen": tokens_seen[0],
            "output_max_diff": (outputs[0] - outputs[1]).abs().max().item(),
            "summed_grad_rel_diff": ((summed - grads[1]).norm() / grads[1].norm()).item(),
            "own_grad_rel_diff": ((grads[0] - grads[1]).norm() / grads[1].norm()).item(),
        }
    )
)
dist.destroy_process_group()

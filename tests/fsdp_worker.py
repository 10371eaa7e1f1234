"""Run by test_context_parallel under torchrun (2 CPU processes, gloo): 3 AdamW steps of the tiny transformer
sharded as the trainer shards it under FSDP2, against the unsharded transformer in each process.

accelerate builds FSDP only on accelerators, so this applies FSDP2 as accelerate's `fsdp2_prepare_model` does
(`fully_shard` on each `CosmosTransformerBlock`, then on the root) after the trainer's own steps
(`wrap_blocks_for_fsdp`, `fsdp_mixed_precision`; `enable_context_parallel` with `argv[2]` = CP degree).
With CP 1 the ranks see different samples and the reference averages their gradients (data parallel 2);
with CP 2 they share one sample, as one process sees it. Writes `<argv[1]>/rank<R>.json`."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from cosmos_v2w_diffusers.models.components import load_transformer
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.parallel.context_parallel import enable_context_parallel
from cosmos_v2w_diffusers.parallel.parallel_dims import ParallelDims
from cosmos_v2w_diffusers.training.activation_checkpointing import canonical_name, wrap_blocks_for_fsdp
from cosmos_v2w_diffusers.training.objective import draw_training_randomness, video2world_loss
from cosmos_v2w_diffusers.training.parallel import fsdp_mixed_precision, full_tensor

dist.init_process_group("gloo")
rank, cp = dist.get_rank(), int(sys.argv[2])
TINY = get_preset("tiny")
reference, sharded = load_transformer(TINY), load_transformer(TINY)
initial = {n: p.detach().clone() for n, p in reference.named_parameters()}
if cp > 1:
    dims = ParallelDims(dist.get_world_size(), rank, cp, engine="fsdp")
    enable_context_parallel(sharded, dims, torch.device("cpu"), tokens=140)
wrap_blocks_for_fsdp(sharded, "selective", None)
policy = fsdp_mixed_precision(torch.float32)
for block in sharded.transformer_blocks:
    fully_shard(block._checkpoint_wrapped_module, mp_policy=policy)
fully_shard(sharded, mp_policy=policy)
# eps 1e-4, not 1e-8: AdamW's g / (|g| + eps) would turn fp32 rounding in a near-zero gradient into a whole step
# of either sign, so the weights would differ where the gradients agree (seen after the tiny base was retrained).
optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-4) for model in (sharded, reference)]


def sample(step: int, index: int):
    generator = torch.Generator().manual_seed(100 * step + index)
    latents = torch.randn(1, 16, 5, 16, 28, generator=generator)  # 5 x 4 x 7 = 140 tokens
    text = torch.randn(1, 512, TINY.text_embed_dim, generator=generator)
    draws = draw_training_randomness(tuple(latents.shape), generator)
    return latents, draws.noise, draws.sigma, draws.num_cond_frames, text, draws.drop_text


for step in range(3):
    mine = sample(step, 0 if cp > 1 else rank)  # a CP group shares its sample
    (video2world_loss(sharded, *mine) * cp).backward()  # FSDP averages over all ranks; CP ranks hold parts
    samples = [sample(step, 0)] if cp > 1 else [sample(step, r) for r in range(2)]
    torch.stack([video2world_loss(reference, *s) for s in samples]).mean().backward()
    if step == 0:  # before AdamW, whose normalisation magnifies float rounding in near-zero gradients
        grads = [torch.cat([full_tensor(p.grad).flatten() for p in m.parameters()]) for m in (sharded, reference)]
        grad_rel_diff = ((grads[0] - grads[1]).norm() / grads[1].norm()).item()
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad()

weights = {canonical_name(n): full_tensor(p.detach()) for n, p in sharded.named_parameters()}
worst = max(
    ((weights[n] - p).abs().max() / p.abs().max().clamp_min(1e-12)).item() for n, p in reference.named_parameters()
)
Path(sys.argv[1], f"rank{rank}.json").write_text(
    json.dumps(
        {
            "same_names": sorted(weights) == sorted(n for n, _ in reference.named_parameters()),
            "sharded": all(type(p).__name__ == "DTensor" for p in sharded.parameters()),
            "grad_rel_diff": grad_rel_diff,
            "max_rel_weight_diff": worst,
            "moved": max((p - initial[n]).abs().max().item() for n, p in reference.named_parameters()),
        }
    )
)
dist.destroy_process_group()

"""Activation memory of 14B post-training per context-parallel rank, measured on a slice of real blocks.

Under context parallel N a rank holds 1/N of a sample's 84,480 tokens (93x704x1280) in every block but
the attention, where Ulysses gives it all tokens of 1/N of the heads: its activations are those of a
sequence N times shorter. So a 14B transformer cut to `--blocks` real blocks (hidden 5120, 40 heads, bf16)
runs forward and backward on 24/N latent frames, and the memory it keeps after the forward and its peak
in the backward give, per block, what a rank keeps for the backward and what one block's recompute and
backward add on top. README's 14B table multiplies these by the 36 blocks and adds the sharded states.

    python benchmarks/slice_14b.py            # writes benchmarks/results/slice_14b.json (or $OUT)
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from benchmarks.common import write_result
from cosmos_v2w_diffusers.models.components import build_transformer
from cosmos_v2w_diffusers.models.preconditioning import conditioning_mask, denoise
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.training.activation_checkpointing import apply_activation_checkpointing

GIB = 2**30
LATENT_FRAMES, LATENT_HEIGHT, LATENT_WIDTH = 24, 88, 160  # 93x704x1280


def measure(transformer, cp: int, mode: str) -> dict:
    """Bytes kept after the forward and peak bytes in the backward, above the weights, for one sample."""
    apply_activation_checkpointing(transformer, mode)
    frames = LATENT_FRAMES // cp
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, frames, LATENT_HEIGHT, LATENT_WIDTH, generator=generator).cuda()
    text = torch.randn(1, 512, 1024, generator=generator).cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", torch.bfloat16):
        x0 = denoise(
            transformer,
            latents + 3.0 * torch.randn_like(latents),
            torch.tensor([3.0]).cuda(),
            latents,
            conditioning_mask(torch.tensor([1]).cuda(), frames),
            text,
        )
        loss = x0.square().mean()
    kept = torch.cuda.memory_allocated() - base
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    transformer.zero_grad(set_to_none=True)
    return {
        "cp": cp,
        "mode": mode,
        "tokens_per_rank": frames * LATENT_HEIGHT * LATENT_WIDTH // 4,
        "kept_gib": kept / GIB,
        "backward_peak_gib": peak / GIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--name", default="slice_14b")
    args = parser.parse_args()
    preset = get_preset("14B")
    sliced = dataclasses.replace(preset, transformer_config={**preset.transformer_config, "num_layers": args.blocks})
    transformer = build_transformer(sliced, device="cuda").to(torch.bfloat16)
    transformer.train()
    rows = [measure(transformer, cp, mode) for cp in (1, 2, 4, 8) for mode in ("full", "selective")]
    for row in rows:
        # Two measurements of `blocks` blocks: kept memory grows with the block count, the working peak does not.
        row["kept_per_block_gib"] = row["kept_gib"] / args.blocks
        row["working_peak_gib"] = row["backward_peak_gib"] - row["kept_gib"]
    full_model = build_transformer(preset, device="meta")
    write_result(
        args.name,
        {
            "blocks": args.blocks,
            "sample": [93, 704, 1280],
            "weights": "bf16",
            "autocast": "bf16",
            "parameters_14b": sum(p.numel() for p in full_model.parameters()),
            "num_blocks_14b": preset.transformer_config["num_layers"],
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()

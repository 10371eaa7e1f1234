"""Seconds per guided sampling step (two transformer forwards) of the 2B model at 720p, 93 frames,
through `CosmosVideo2WorldPipeline`, and the whole 35-step generation extrapolated from it.

Random weights and random text embeddings (nothing can be downloaded here); bf16 throughout.

    python benchmarks/inference.py --model 2B --steps 3
"""

from __future__ import annotations

import argparse
import time

import PIL.Image
import torch
from diffusers import AutoencoderKLWan

from benchmarks.common import write_result
from cosmos_v2w_diffusers import CosmosMultistepScheduler, CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.compile import compile_blocks
from cosmos_v2w_diffusers.presets import build_transformer, get_preset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="2B")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    preset = get_preset(args.model)
    pipe = CosmosVideo2WorldPipeline(
        text_encoder=None, tokenizer=None, transformer=build_transformer(preset, "cuda").to(torch.bfloat16),
        vae=AutoencoderKLWan().to("cuda", torch.bfloat16), scheduler=CosmosMultistepScheduler(), disable_guardrail=True,
    )
    if args.compile:
        compile_blocks(pipe.transformer)
    text = torch.randn(1, 512, preset.text_embed_dim, device="cuda", dtype=torch.bfloat16)
    image = PIL.Image.new("RGB", (preset.width, preset.height), (0, 128, 128))
    kwargs = dict(image=image, prompt_embeds=text, negative_prompt_embeds=text.flip(1), height=preset.height,
                  width=preset.width, num_frames=preset.num_frames, generator=torch.Generator("cuda").manual_seed(0))

    # Time the transformer inside the pipeline: the guided steps, separated from VAE encode/decode.
    forward_times = []
    original = pipe.transformer.forward

    def timed_forward(*a, **k):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = original(*a, **k)
        torch.cuda.synchronize()
        forward_times.append(time.perf_counter() - start)
        return out

    pipe.transformer.forward = timed_forward
    pipe(num_inference_steps=1, output_type="latent", **kwargs)  # warm-up
    forward_times.clear()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    pipe(num_inference_steps=args.steps, output_type="np", **kwargs)
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    forwards = sorted(forward_times)
    per_forward = forwards[len(forwards) // 2]
    overhead = total - sum(forward_times)  # VAE encode + decode, text handling, scheduler
    write_result(
        f"inference_{preset.short_name}" + ("_compiled" if args.compile else ""),
        {
            "model": preset.name,
            "sample": [preset.num_frames, preset.height, preset.width],
            "steps_run": args.steps,
            "compiled_blocks": args.compile,
            "transformer_forwards": len(forward_times),
            "seconds_per_forward_median": round(per_forward, 3),
            "seconds_total_run": round(total, 2),
            "seconds_outside_transformer": round(overhead, 2),
            "extrapolated_35_steps_seconds": round(72 * per_forward + overhead, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        },
    )


if __name__ == "__main__":
    main()

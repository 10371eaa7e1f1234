"""Peak GPU memory and seconds of a 2B generation at 720p (93 frames, guidance) with the whole pipeline on the GPU,
with `enable_model_cpu_offload()` and with `enable_sequential_cpu_offload()`: what diffusers' two offloads cost
and save on our pipeline, text encoder included.

Random weights (nothing can be downloaded here): the 2B transformer, the Wan VAE and a T5 encoder of
t5-11b's shape (the one Cosmos uses, 4.8 B parameters in its encoder), all bf16; the tiny preset's tokenizer
stands in for T5's (the token ids differ, the shapes do not). Few sampling steps: the peak does not depend
on them, and the seconds are reported per run, not per step.

    python benchmarks/offload.py --steps 3     # writes results/generation_2b_720p_offload.json
"""

from __future__ import annotations

import argparse
import sys
import time

import PIL.Image
import torch
from diffusers import AutoencoderKLWan
from transformers import T5Config, T5EncoderModel

from benchmarks.common import write_result
from cosmos_v2w_diffusers import CosmosMultistepScheduler, CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.models.components import build_transformer, load_text_encoder
from cosmos_v2w_diffusers.models.presets import get_preset

# t5-11b's encoder (google-t5/t5-11b config.json), the text encoder Cosmos-Predict2 uses.
T5_11B = dict(
    d_model=1024,
    d_ff=65536,
    d_kv=128,
    num_heads=128,
    num_layers=24,
    vocab_size=32128,
    feed_forward_proj="relu",
    relative_attention_num_buckets=32,
)


def build_pipeline(preset) -> CosmosVideo2WorldPipeline:
    """Every component initialised on the GPU (fast), then moved to the CPU, where offloading starts from."""
    with torch.device("cuda"):
        text_encoder = T5EncoderModel(T5Config(**T5_11B)).to(torch.bfloat16)
    tokenizer, _ = load_text_encoder("tiny")
    return CosmosVideo2WorldPipeline(
        text_encoder=text_encoder.cpu(),
        tokenizer=tokenizer,
        transformer=build_transformer(preset, "cuda").to(torch.bfloat16).cpu(),
        vae=AutoencoderKLWan().to("cuda", torch.bfloat16).cpu(),
        scheduler=CosmosMultistepScheduler(),
        disable_guardrail=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--name", default="generation_2b_720p_offload")
    args = parser.parse_args()
    preset = get_preset("2B")
    image = PIL.Image.new("RGB", (preset.width, preset.height), (0, 128, 128))
    rows = {}
    for mode in ("none", "model", "sequential"):
        pipe = build_pipeline(preset)
        pipe.set_progress_bar_config(disable=True)
        if mode == "none":
            pipe.to("cuda")
        elif mode == "model":
            pipe.enable_model_cpu_offload()
        else:
            pipe.enable_sequential_cpu_offload()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        frames = pipe(
            image=image,
            prompt="A robot arm picks up a cup.",
            height=preset.height,
            width=preset.width,
            num_frames=preset.num_frames,
            num_inference_steps=args.steps,
            output_type="np",
            generator=torch.Generator("cuda").manual_seed(0),
        ).frames[0]
        torch.cuda.synchronize()
        rows[mode] = {
            "seconds": round(time.perf_counter() - start, 1),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "frames": list(frames.shape),
        }
        print(mode, rows[mode], flush=True)
        del pipe
        torch.cuda.empty_cache()
    write_result(
        args.name,
        {
            "command": "python benchmarks/offload.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"),
            "model": preset.name,
            "sample": [preset.num_frames, preset.height, preset.width],
            "num_inference_steps": args.steps,
            "guidance": True,
            "text_encoder": "t5-11b encoder shape, bf16",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()

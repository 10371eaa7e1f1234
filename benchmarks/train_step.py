"""Seconds per training step and peak GPU memory of the 2B (or 14B) model at 93x704x1280.

The whole faithful step as `Trainer.train_step` runs it: VAE encode of the sampled window (bf16),
the NVIDIA objective under bf16 autocast over fp32 master weights, fused AdamW, grad-norm clip and the
fp32 EDM2 EMA, with each activation-checkpointing policy. Weights are random (nothing can be downloaded
on the benchmark machine); timing does not depend on their values.

    accelerate launch --config_file accelerate_configs/single_gpu.yaml benchmarks/train_step.py \
        --model 2B --mode full --steps 3
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from benchmarks.common import make_dataset, write_result
from cosmos_v2w_diffusers.presets import build_transformer, get_preset
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.trainer import Trainer


# PERFORMANCE.md's model-FLOPs convention: a step is 3 forwards; one 2B forward at 93x704x1280 is 1.925e15.
def forward_flops(preset, tokens: int, text_tokens: int = 512) -> float:
    d = preset.transformer_config["num_attention_heads"] * preset.transformer_config["attention_head_dim"]
    layers = preset.transformer_config["num_layers"]
    return layers * (28 * d**2 * tokens + 4 * tokens**2 * d + 4 * tokens * text_tokens * d + 4 * text_tokens * 1024 * d)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="2B")
    parser.add_argument("--mode", default="full", choices=["full", "selective", "none"], help="one per process")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--train_architecture", default="full", choices=["full", "lora"])
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    preset = get_preset(args.model)
    work = Path(args.workdir or tempfile.mkdtemp())
    weights = work / "weights"
    if not (weights / "transformer").exists():
        build_transformer(preset).to(torch.bfloat16).save_pretrained(weights / "transformer")
        AutoencoderKLWan().save_pretrained(weights / "vae")
    data = make_dataset(work / "data", 2, preset.num_frames + 8, preset.height, preset.width, preset.text_embed_dim)

    tokens = (1 + (preset.num_frames - 1) // 4) * (preset.height // 16) * (preset.width // 16)
    mode = args.mode
    config = TrainConfig(
        model=preset.name, pretrained_model_name_or_path=str(weights), dataset_path=str(data),
        output_dir=str(work / f"run_{args.train_architecture}_{mode}"), activation_checkpointing=mode, max_iter=args.steps + 1,
        dataloader_num_workers=4, resume=False, compile=args.compile, train_architecture=args.train_architecture,
    )
    trainer = Trainer(config)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**30
    times = []
    for step, batches in zip(range(args.steps + 1), trainer._micro_batches()):
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(step, batches)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    timed = sorted(times[1:])  # the first step warms up kernels and the allocator
    median = timed[len(timed) // 2]
    write_result(
        f"train_step_{preset.short_name}_{args.train_architecture}_ac-{mode}" + ("_compiled" if args.compile else ""),
        {
            "model": preset.name,
            "sample": [preset.num_frames, preset.height, preset.width],
            "tokens": tokens,
            "train_architecture": args.train_architecture,
            "activation_checkpointing": mode,
            "compiled_blocks": args.compile,
            "seconds_per_step_median": round(median, 3),
            "seconds_per_step_all": [round(t, 3) for t in times],
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "resident_before_step_gib": round(before, 2),
            "model_tflops_per_s": round(3 * forward_flops(preset, tokens) / median / 1e12, 1),
        },
    )


if __name__ == "__main__":
    main()

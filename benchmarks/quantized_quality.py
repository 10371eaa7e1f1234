"""What an fp8 frozen base costs in quality (issue 22): the same LoRA run on the bf16 base and on the fp8 base,
then each LoRA applied to the **bf16** base (users train on the small card and generate on the full model).

The run is the demo's (the tiny model the package ships, whose VAE and base transformer are trained, on the
built-in sample), as a LoRA: the same seed, so the same clips, windows, sigmas and noise at every step. Each
LoRA's EMA then continues the first frame of the held-out clip on the bf16 base, as `make demo` does, and the
PSNR/SSIM against the real continuation are reported beside the base model's own.

A 2B comparison has no trained base on the benchmark machines (nothing downloads there): its random-weight
base generates noise, so only its loss curves say anything (`gpu_session.sh workstation`'s `quality_2b_*` rows).

    PYTHONPATH=. python benchmarks/quantized_quality.py --steps 2000     # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import write_result
from cosmos_v2w_diffusers.cli.demo import continue_first_frame, held_out_clip
from cosmos_v2w_diffusers.data.builtin_sample import demo_dataset_path
from cosmos_v2w_diffusers.generation.pipeline import CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.generation.video_metrics import psnr, ssim
from cosmos_v2w_diffusers.models.components import tiny_pretrained_path
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.trainer import Trainer

PRECISIONS = ("bf16", "fp8")


def train_lora(base_precision: str, steps: int, rank: int, output_dir: Path) -> tuple[list[float], float]:
    """A tiny LoRA run on the built-in sample; its losses and seconds. The adapter lands in `output_dir/lora`."""
    config = TrainConfig.from_flags(
        model="tiny",
        dataset_path=str(demo_dataset_path(get_preset("tiny"))),
        output_dir=str(output_dir),
        train_architecture="lora",
        lora_rank=rank,
        base_precision=base_precision,
        cache_latents=True,
        cache_windows_per_clip=4,
        max_iter=steps,
        save_iter=steps,
        dataloader_num_workers=0,
    )
    start = time.perf_counter()
    trainer = Trainer(config)
    losses = trainer.train()
    trainer.close()
    return losses, time.perf_counter() - start


def generate(lora_dir: Path | None) -> torch.Tensor:
    """The held-out clip's continuation on the bf16 base, with the LoRA's EMA in `lora_dir` (None: the base)."""
    pipe = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir), weight_name="pytorch_lora_weights_ema.safetensors")
    return continue_first_frame(pipe, held_out_clip(get_preset("tiny")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--name", default="quality_tiny_lora_fp8_vs_bf16")
    args = parser.parse_args()
    torch.manual_seed(0)
    real = held_out_clip(get_preset("tiny"))
    base = generate(None)
    result = {
        "command": "python " + shlex.join(sys.argv),
        "steps": args.steps,
        "lora_rank": args.lora_rank,
        "generated_on": "the bf16 base, each LoRA's EMA",
        "base_model": {"psnr": psnr(base[1:], real[1:]), "ssim": ssim(base[1:], real[1:])},
    }
    with tempfile.TemporaryDirectory() as work:
        for precision in PRECISIONS:
            losses, seconds = train_lora(precision, args.steps, args.lora_rank, Path(work) / precision)
            after = generate(Path(work) / precision / "lora")
            result[precision] = {
                "train_seconds": round(seconds, 1),
                "mean_loss_last_100": statistics.mean(losses[-100:]),
                "psnr": psnr(after[1:], real[1:]),
                "ssim": ssim(after[1:], real[1:]),
                "losses": [round(loss, 5) for loss in losses],
            }
    pairs = list(zip(result["bf16"]["losses"], result["fp8"]["losses"]))
    result["max_abs_loss_diff"] = max(abs(a - b) for a, b in pairs)
    result["mean_abs_loss_diff"] = statistics.mean(abs(a - b) for a, b in pairs)
    write_result(args.name, result)


if __name__ == "__main__":
    main()

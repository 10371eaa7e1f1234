"""`--cache auto` on trained weights (issue 42): the demo's post-trained tiny model, 35 steps, calibrated on one input
and checked on four held-out ones (CPU).

`step_cache.calibrate` generates the first input dense and at falling thresholds until one keeps every frame within
`--cache_min_psnr` (30 dB) of dense, as `infer_video2world.py --cache auto` does. The chosen threshold is then applied
to four inputs (frames 0, 4, 8 and 12 of the built-in sample's held-out clip, the robot at four places, with seeds
0..3) and each is compared with its own dense generation: worst-frame PSNR and the share of block evaluations
skipped. Guidance 1 (the demo's) and 7 (NVIDIA's default, with its negative prompt).

    make demo   # the post-trained tiny model: outputs/demo/run
    python -m benchmarks.cache_auto_tiny --run outputs/demo/run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import CosmosTransformer3DModel
from PIL import Image

from benchmarks.common import write_result
from cosmos_v2w_diffusers.cli.demo import held_out_clip
from cosmos_v2w_diffusers.data.demo_clips import DEMO_PROMPT
from cosmos_v2w_diffusers.generation.inputs import nvidia_initial_noise
from cosmos_v2w_diffusers.generation.pipeline import CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.generation.step_cache import calibrate, worst_frame_psnr
from cosmos_v2w_diffusers.models.components import tiny_pretrained_path
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.models.sample_shape import latent_shape

INPUT_FRAMES = (0, 4, 8, 12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/demo/run"), help="make demo's run folder")
    parser.add_argument("--min_psnr", type=float, default=30.0)
    args = parser.parse_args()
    preset = get_preset("tiny")
    real = held_out_clip(preset)
    pipe = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    pipe.transformer = CosmosTransformer3DModel.from_pretrained(args.run / "transformer_ema")
    pipe.set_progress_bar_config(disable=True)
    shape = (1, *latent_shape(pipe.vae.config, preset.num_frames, preset.height, preset.width))
    images = [Image.fromarray((real[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for i in INPUT_FRAMES]

    def generator_of(index: int, guidance: float):
        def generate() -> np.ndarray:
            return pipe(
                image=images[index],
                prompt=DEMO_PROMPT,
                height=preset.height,
                width=preset.width,
                num_frames=preset.num_frames,
                guidance_scale=guidance,
                latents=nvidia_initial_noise(index, shape),
                output_type="np",
            ).frames[0]

        return generate

    rows = {}
    for guidance in (1.0, 7.0):
        choice, _ = calibrate(pipe, generator_of(0, guidance), args.min_psnr, {"guidance": guidance})
        held_out = []
        for index in range(1, len(INPUT_FRAMES)):
            pipe.disable_step_cache()
            dense = generator_of(index, guidance)()
            cache = pipe.enable_step_cache(choice.threshold) if choice.threshold is not None else None
            cached = generator_of(index, guidance)()
            held_out.append(
                {
                    "input_frame": INPUT_FRAMES[index],
                    "worst_frame_psnr_db": round(worst_frame_psnr(cached, dense), 2),
                    "skipped_share": round(cache.skipped_share, 3) if cache else 0.0,
                }
            )
        rows[f"guidance_{guidance:g}"] = {
            "threshold": choice.threshold,
            "calibration_input_psnr_db": round(choice.psnr_db, 2),
            "calibration_input_skipped_share": round(choice.skipped_share, 3),
            "held_out": held_out,
            "held_out_worst_psnr_db": min(r["worst_frame_psnr_db"] for r in held_out),
            "held_out_mean_skipped_share": round(float(np.mean([r["skipped_share"] for r in held_out])), 3),
        }
    write_result(
        "cache_auto_tiny",
        {
            "device": "cpu",
            "weights": str(args.run / "transformer_ema"),
            "num_inference_steps": 35,
            "min_psnr_db": args.min_psnr,
            **rows,
            "command": f"python -m benchmarks.cache_auto_tiny --run {args.run}",
        },
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()

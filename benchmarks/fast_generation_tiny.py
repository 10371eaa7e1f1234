"""The quality of every faster-generation setting on trained weights (issue 42): the tiny model, CPU.

`benchmarks/fast_generation.py` times the settings on the 2B at 720p, whose weights are random there (nothing
downloads on the benchmark machine): its seconds carry over to NVIDIA's checkpoint, its distances to the dense
output do not (a random network's output barely depends on its input, and its first block barely changes from
step to step). The distances are measured here instead, on the two trained networks this project has: the
shipped tiny model ("pretrained") and the demo's post-trained one ("post-trained", `make demo`), with the 2B rows'
sampling (35 steps, guidance 7 with NVIDIA's negative prompt), from 4 inputs (frames 0, 4, 8 and 12 of the
built-in sample's held-out clip, seeds 0..3): the worst frame's PSNR and the mean SSIM against the dense video of
the same input and seed, and the share of block evaluations the step cache skipped.

    make demo
    python -m benchmarks.fast_generation_tiny --run outputs/demo/run
"""

from __future__ import annotations

import argparse
import importlib.util
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
from cosmos_v2w_diffusers.generation.step_cache import worst_frame_psnr
from cosmos_v2w_diffusers.generation.video_metrics import ssim
from cosmos_v2w_diffusers.models.components import tiny_pretrained_path
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.models.sample_shape import latent_shape

INPUT_FRAMES = (0, 4, 8, 12)
# (name, cache threshold, fp8, natten), the settings of `fast_generation.py`; fp8 last: it replaces the layers.
SETTINGS = [
    ("cache_0.1", 0.1, False, False),
    ("cache_0.2", 0.2, False, False),
    ("natten", None, False, True),
    ("fp8", None, True, False),
    ("fp8_natten_cache_0.1", 0.1, True, True),
]


def pipeline(weights: Path | None) -> CosmosVideo2WorldPipeline:
    pipe = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    if weights is not None:
        pipe.transformer = CosmosTransformer3DModel.from_pretrained(weights)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def videos(pipe: CosmosVideo2WorldPipeline, images: list[Image.Image]) -> tuple[list[np.ndarray], list[float]]:
    """Each input's video (`[T, H, W, C]` in [0, 1], input i from seed i) and, under the step cache, the share of
    block evaluations it skipped."""
    preset = get_preset("tiny")
    shape = (1, *latent_shape(pipe.vae.config, preset.num_frames, preset.height, preset.width))
    made, skipped = [], []
    for seed, image in enumerate(images):
        made.append(
            pipe(
                image=image,
                prompt=DEMO_PROMPT,
                height=preset.height,
                width=preset.width,
                num_frames=preset.num_frames,
                num_inference_steps=35,
                guidance_scale=7.0,
                latents=nvidia_initial_noise(seed, shape),
                output_type="np",
            ).frames[0]
        )
        if pipe._step_cache is not None:
            skipped.append(pipe._step_cache.skipped_share)
    return made, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/demo/run"), help="make demo's run folder")
    args = parser.parse_args()
    real = held_out_clip(get_preset("tiny"))
    images = [Image.fromarray((real[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for i in INPUT_FRAMES]
    has_natten = importlib.util.find_spec("natten") is not None
    models = {"pretrained": None, "post_trained": args.run / "transformer_ema"}
    result = {}
    for model, weights in models.items():
        dense, _ = videos(pipeline(weights), images)
        rows = {}
        for name, threshold, fp8, natten in SETTINGS:
            if natten and not has_natten:
                continue
            pipe = pipeline(weights)
            if natten:
                pipe.enable_sparse_attention()
            if fp8:
                pipe.enable_fp8()
            if threshold is not None:
                pipe.enable_step_cache(threshold)
            made, skipped = videos(pipe, images)
            pairs = [
                (torch.from_numpy(m).permute(0, 3, 1, 2), torch.from_numpy(d).permute(0, 3, 1, 2))
                for m, d in zip(made, dense)
            ]
            rows[name] = {
                "worst_frame_psnr_db": round(min(worst_frame_psnr(m, d) for m, d in zip(made, dense)), 2),
                "mean_ssim": round(float(np.mean([ssim(a, b) for a, b in pairs])), 4),
                "skipped_share": round(float(np.mean(skipped)), 3) if skipped else None,
            }
        result[model] = {"weights": str(weights or tiny_pretrained_path()), "settings": rows}
    write_result(
        "fast_generation_tiny_quality",
        {
            "device": "cpu",
            "num_inference_steps": 35,
            "guidance": 7.0,
            "inputs": "frames 0, 4, 8, 12 of the built-in sample's held-out clip, seeds 0..3",
            **result,
            "command": f"python -m benchmarks.fast_generation_tiny --run {args.run}",
        },
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()

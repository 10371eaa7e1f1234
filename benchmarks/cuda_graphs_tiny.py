"""`--use_cuda_graphs` on the shipped tiny model, one GPU: seconds per generation (35 steps, guidance 7, bf16) with
and without the recorded forward, and how far the two videos are apart (they should agree to the bit: the same
kernels run, only launched from a recording). The tiny model's forward is a few hundred short kernels, where
launching is most of the time: the case CUDA graphs exist for. The 2B at 720p is timed by `inference.py
--cuda_graphs`.

    python -m benchmarks.cuda_graphs_tiny
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from PIL import Image

from benchmarks.common import write_result
from benchmarks.fast_generation_tiny import videos
from cosmos_v2w_diffusers.data.demo_clips import render_clip
from cosmos_v2w_diffusers.generation.cuda_graphs import enable_cuda_graphs
from cosmos_v2w_diffusers.generation.pipeline import CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.models.components import tiny_pretrained_path
from cosmos_v2w_diffusers.models.presets import get_preset

TIMED_RUNS = 3


def timed_generations(graphs: bool) -> tuple[list[float], np.ndarray]:
    """Seconds of each timed generation (after one untimed warm-up) and the last video, `[T, H, W, 3]`."""
    pipe = CosmosVideo2WorldPipeline.from_pretrained(
        str(tiny_pretrained_path()), disable_guardrail=True, dtype=torch.bfloat16
    ).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    if graphs:
        enable_cuda_graphs(pipe.transformer)
    preset = get_preset("tiny")
    # A rendered frame of the demo's kind, not the held-out clip's: that clip is an mp4 written on first use, and
    # GPU machines have no ffmpeg for imageio.
    image = Image.fromarray(render_clip(1, preset.height, preset.width, seed=3)[0])
    seconds = []
    for run in range(TIMED_RUNS + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        video = videos(pipe, [image])[0][0]  # 35 steps, guidance 7, as fast_generation_tiny's
        torch.cuda.synchronize()
        if run:
            seconds.append(time.perf_counter() - start)
    return seconds, video


def main() -> None:
    eager, eager_video = timed_generations(graphs=False)
    graphed, graphed_video = timed_generations(graphs=True)
    write_result(
        "cuda_graphs_tiny",
        {
            "command": "python -m benchmarks.cuda_graphs_tiny",
            "model": "the shipped tiny model",
            "sampling": "35 steps, guidance 7, bf16, uncompiled",
            "eager_seconds": [round(s, 3) for s in eager],
            "cuda_graphs_seconds": [round(s, 3) for s in graphed],
            "speedup": round(statistics.median(eager) / statistics.median(graphed), 2),
            "max_abs_difference_of_255": round(float(np.abs(eager_video - graphed_video).max()) * 255, 3),
        },
    )


if __name__ == "__main__":
    main()

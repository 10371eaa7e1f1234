"""Seconds to encode one 93x704x1280 training window with the Wan VAE (bf16), under cuDNN settings.

    python benchmarks/vae_encode.py

Variants: as is; `torch.backends.cudnn.benchmark` (cuDNN times its convolution algorithms once per
shape and keeps the fastest); channels-last-3d memory format; both.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from benchmarks.common import median_seconds, write_result
from cosmos_v2w_diffusers.models.latents import encode_video


def timed(vae, video) -> float:
    """Median seconds of an encode, after a warm-up (and cuDNN's autotuning, when on)."""
    return median_seconds(lambda: encode_video(vae, video))


def main() -> None:
    vae = AutoencoderKLWan().to("cuda", torch.bfloat16).eval()
    video = torch.randint(0, 256, (1, 3, 93, 704, 1280), dtype=torch.uint8).pin_memory()
    results = {"as_is": timed(vae, video)}
    torch.backends.cudnn.benchmark = True
    results["cudnn_benchmark"] = timed(vae, video)
    for module in vae.modules():  # the 3-D convolutions' weights; the 2-D ones have no 3-D layout
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
    results["cudnn_benchmark_channels_last_3d"] = timed(vae, video)
    torch.backends.cudnn.benchmark = False
    results["channels_last_3d"] = timed(vae, video)
    write_result(
        "vae_encode_2b_720p",
        {"command": "python benchmarks/vae_encode.py", "seconds": {k: round(v, 3) for k, v in results.items()}},
    )


if __name__ == "__main__":
    main()

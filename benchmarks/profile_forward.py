"""Where one 2B forward at 720p spends its time, kernel by kernel, and the parts of a generation outside the
transformer (VAE encode of the conditioning clip, VAE decode of the result).

    python benchmarks/profile_forward.py --attention_backend flash4

Kernels are grouped as attention, matmul, fused elementwise (Triton) and other; the JSON lists the top 15.
"""

from __future__ import annotations

import argparse
import collections

import torch
from diffusers import AutoencoderKLWan
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import median_seconds, write_result
from cosmos_v2w_diffusers.models.attention import BACKENDS, set_attention_backend
from cosmos_v2w_diffusers.models.compile import compile_blocks
from cosmos_v2w_diffusers.models.components import build_transformer
from cosmos_v2w_diffusers.models.latents import (
    decode_latents,
    encode_video,
    use_channels_last_3d,
)
from cosmos_v2w_diffusers.models.preconditioning import conditioning_mask, denoise
from cosmos_v2w_diffusers.models.presets import get_preset


def category(name: str) -> str:
    lowered = name.lower()
    if any(k in lowered for k in ("flash", "fmha", "attention", "cudnn", "sdpa")):
        return "attention"
    if any(k in lowered for k in ("gemm", "nvjet", "xmma", "cutlass", "matmul")):
        return "matmul"
    if "triton" in lowered:
        return "fused elementwise (triton)"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attention_backend", default="auto", choices=BACKENDS)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    preset = get_preset("2B")
    device = torch.device("cuda")
    transformer = build_transformer(preset, "cuda").to(torch.bfloat16).eval()
    backend = set_attention_backend(transformer, args.attention_backend, device)
    compile_blocks(transformer)
    shape = (1, 16, 24, preset.height // 8, preset.width // 8)
    x, clean = torch.randn(shape, device=device) * 80, torch.randn(shape, device=device)
    sigma, mask = torch.full((1,), 80.0, device=device), conditioning_mask(torch.ones(1, device=device), shape[2])
    text = torch.randn(1, 512, preset.text_embed_dim, device=device, dtype=torch.bfloat16)

    @torch.no_grad()
    def forward():
        return denoise(transformer, x, sigma, clean, mask, text)

    forward()  # compilation
    forward_seconds = median_seconds(forward, warmup=False)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    per_kernel = collections.Counter()
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.key] += event.device_time_total / 1e6
    per_category = collections.Counter()
    for name, t in per_kernel.items():
        per_category[category(name)] += t

    vae = AutoencoderKLWan().to(device, torch.bfloat16)
    torch.backends.cudnn.benchmark = True
    use_channels_last_3d(vae)
    pixels = torch.zeros(1, 3, preset.num_frames, preset.height, preset.width, device=device)
    with torch.no_grad():
        encode_seconds = median_seconds(lambda: encode_video(vae, pixels), 2, warmup=False)
        decode_seconds = median_seconds(lambda: decode_latents(vae, clean), 2, warmup=False)
    write_result(
        args.name or f"profile_forward_2b_720p_{backend}",
        {
            "command": "python benchmarks/profile_forward.py --attention_backend " + args.attention_backend,
            "attention_backend": backend,
            "forward_seconds": round(forward_seconds, 4),
            "kernel_seconds_by_category": {k: round(v, 4) for k, v in per_category.most_common()},
            "top_kernels": {k[:120]: round(v, 4) for k, v in per_kernel.most_common(15)},
            "vae_encode_93_frames_seconds": round(encode_seconds, 3),
            "vae_decode_24_latent_frames_seconds": round(decode_seconds, 3),
        },
    )


if __name__ == "__main__":
    main()

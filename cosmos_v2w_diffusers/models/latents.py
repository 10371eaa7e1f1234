"""Pixels <-> normalised Wan-VAE latents, shared by training and sampling.

The transformer works on per-channel normalised latents `(mu - latents_mean) / latents_std` (the VAE
config's 16 values). Training encodes with the posterior mean, never a sample (docs/recipe.md, "Network").
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan


def _statistics(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=torch.float32).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=torch.float32).view(shape)
    return mean, std


def to_model_range(video: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1] (`x / 127.5 - 1`, NVIDIA's scaling), on their device.

    Training samples cross to the GPU as uint8 (a quarter of the bytes of float32) and are scaled there.
    """
    return video.float() / 127.5 - 1.0


def use_channels_last_3d(vae: AutoencoderKLWan) -> AutoencoderKLWan:
    """Store the VAE's 3-D convolution weights channels-last, so cuDNN picks its NDHWC kernels.

    Measured on an H100 (BENCHMARKS.md): a 93x704x1280 encode 3.32 s -> 2.58 s. `Module.to(memory_format=)`
    cannot do this: it also reaches the VAE's 2-D weights, which have no 3-D layout.
    """
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return vae


@torch.no_grad()
def encode_video(
    vae: AutoencoderKLWan,
    video: torch.Tensor,
    sample: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """`[B, 3, F, H, W]` in [-1, 1] (or uint8 in [0, 255]) -> normalised float32 latents
    `[B, 16, 1 + (F-1)//4, H/8, W/8]`, computed on `device` (default: the VAE's; an offloaded VAE's weights sit
    on the CPU or the meta device until its forward moves them, so a pipeline passes its execution device).

    The posterior mean, as NVIDIA encodes; `sample=True` draws from the posterior with `generator`
    instead, as diffusers' pipeline does.
    """
    device = device or vae.device
    if video.dtype == torch.uint8:
        video = to_model_range(video.to(device, non_blocking=True))
    posterior = vae.encode(video.to(device=device, dtype=vae.dtype)).latent_dist
    latents = (posterior.sample(generator) if sample else posterior.mode()).float()
    mean, std = _statistics(vae, latents)
    return (latents - mean) / std


@torch.no_grad()
def decode_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> pixels `[B, 3, F, H, W]` in [-1, 1] (float32)."""
    mean, std = _statistics(vae, latents)
    pixels = vae.decode((latents.float() * std + mean).to(vae.dtype), return_dict=False)[0]
    return pixels.float().clamp(-1, 1)

"""The sample shapes the model takes, and what they come to in latents and tokens: one place for the rules
the training flags, the generation flags and the pipeline all check (no torch: `--help` stays fast).

The Wan VAE keeps the first frame and compresses the rest 4x in time, and 8x in space (the tiny preset's
VAE: 4x); the transformer's 2x2 patches (tiny: 4x4) make a token of every 16x16 pixels of a latent frame.
"""

from __future__ import annotations

from collections.abc import Mapping

TIME_STRIDE = 4
TOKEN_STRIDE = 16  # VAE (8) x patch (2); tiny: VAE (4) x patch (4)


def num_latent_frames(num_frames: int) -> int:
    """Latent frames of a `num_frames` clip (93 -> 24)."""
    return 1 + (num_frames - 1) // TIME_STRIDE


def vae_space_stride(vae_config: Mapping) -> int:
    """Pixels per latent pixel along height and width: 8 for the Wan 2.1 VAE, 4 for the tiny one. The VAE
    halves them once per entry of its `temperal_downsample`, as diffusers' Cosmos and Wan pipelines count
    their `vae_scale_factor_spatial`."""
    return 2 ** len(vae_config["temperal_downsample"])


def latent_shape(vae_config: Mapping, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """`(channels, frames, height, width)` of the latents the VAE of `vae_config` makes of a clip
    (93x704x1280 -> (16, 24, 88, 160) for the Wan 2.1 VAE)."""
    stride = vae_space_stride(vae_config)
    return vae_config["z_dim"], num_latent_frames(num_frames), height // stride, width // stride


def latent_tokens(num_frames: int, height: int, width: int) -> int:
    """The transformer's sequence length for one sample (93x704x1280 -> 84,480)."""
    return num_latent_frames(num_frames) * (height // TOKEN_STRIDE) * (width // TOKEN_STRIDE)


def check_sample_shape(
    num_frames: int, height: int, width: int, frames_name: str = "num_frames", size_name: str = "height and width"
) -> None:
    """Refuse a size the model cannot take, naming the flag or argument (`frames_name`, `size_name`) to change."""
    if height % TOKEN_STRIDE or width % TOKEN_STRIDE:
        raise ValueError(f"{size_name} must be multiples of {TOKEN_STRIDE}, got {height}x{width}.")
    if num_frames < 1 or (num_frames - 1) % TIME_STRIDE:
        raise ValueError(f"{frames_name} must be of the form 4k+1 (93, 61, ...), got {num_frames}.")

"""What a generation is conditioned on, read as NVIDIA's `examples/video2world.py` reads it: images opened as a viewer
shows them, a video's last frames, the frames resized and encoded into clean latents (or, for parity, as diffusers'
`Cosmos2VideoToWorldPipeline` does), and NVIDIA's initial noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from diffusers import AutoencoderKLWan
from diffusers.video_processor import VideoProcessor

from ..models.latents import encode_video
from ..models.sample_shape import check_sample_shape, num_latent_frames


def nvidia_initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """NVIDIA's initial noise for `seed`: `numpy.random.RandomState(seed).standard_normal` in float32 (`latents`
    for `__call__`, which scales it by sigma_max)."""
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def check_conditioning_frames(
    available: int,
    num_conditional_frames: int,
    source: str = "the conditioning video",
    argument: str = "num_conditional_frames",
) -> None:
    """Refuse a conditioning video shorter than the frames it must give, naming `source` and the `argument` to
    change."""
    if available < num_conditional_frames:
        raise ValueError(
            f"{source} has {available} frames, fewer than {argument}={num_conditional_frames}: pass a longer video, "
            f"or condition on its last frame ({argument}=1)."
        )


def check_conditioning_inputs(
    height: int, width: int, num_frames: int, image, video, num_conditional_frames: int
) -> None:
    """Refuse a sample shape the model cannot take, and conditioning that is not one image or one video with
    enough frames."""
    check_sample_shape(num_frames, height, width)
    if (image is None) == (video is None):
        raise ValueError("Pass exactly one of `image` or `video` as the conditioning input.")
    if video is not None and num_conditional_frames not in (1, 5):
        raise ValueError(f"num_conditional_frames must be 1 or 5, got {num_conditional_frames}.")
    if video is not None:
        check_conditioning_frames(len(video), num_conditional_frames)


def open_image(path: str | Path, flag: str) -> PIL.Image.Image:
    """The image at `path` as 8-bit RGB, turned as its EXIF orientation says (as a viewer shows it); a one-line
    `ValueError` naming `flag` for a file PIL cannot read or a decompression bomb (PIL's pixel limit)."""
    try:
        with PIL.Image.open(path) as image:
            return to_rgb(PIL.ImageOps.exif_transpose(image))
    except (OSError, PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError) as exc:
        raise ValueError(f"{flag} {path} cannot be read as an image ({exc}).") from None


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """An image of any mode PIL opens -> 8-bit RGB with the values it shows.

    PIL's `convert("RGB")` clips 16- and 32-bit integer images at 255 (a 16-bit PNG turns white), reads
    float images as 0-255, and refuses some modes ("La"); those are rescaled to 8 bits here first.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.max() > 255):
            scale = 65535.0  # 16-bit data (PIL opens 16-bit PNGs as "I;16" or "I")
        elif image.mode == "F" and values.max() <= 1.0:
            scale = 1.0  # floats in [0, 1]
        else:
            scale = 255.0
        gray = np.clip(np.round(values / scale * 255.0), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "La":  # premultiplied alpha: PIL converts it to LA first
        image = image.convert("LA")
    return image.convert("RGB")


def frames_to_pixels(processor: VideoProcessor, frames: list, height: int, width: int, crop: bool) -> torch.Tensor:
    """A list of frames (PIL, arrays or tensors) -> `[1, 3, F, H, W]` in [-1, 1].

    `crop`: resize to cover the target and centre-crop (NVIDIA); otherwise a plain resize (diffusers).
    """
    frames = [to_rgb(f) if isinstance(f, PIL.Image.Image) else f for f in frames]
    if crop and all(isinstance(f, PIL.Image.Image) for f in frames):
        pixels = processor.preprocess(frames, height, width, resize_mode="crop")
    else:
        pixels = processor.preprocess(frames, height, width)
    return pixels.permute(1, 0, 2, 3).unsqueeze(0)  # [F, 3, H, W] -> [1, 3, F, H, W]


def nvidia_conditioning(
    vae: AutoencoderKLWan,
    processor: VideoProcessor,
    image,
    video,
    num_conditional_frames: int,
    height: int,
    width: int,
    num_frames: int,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """NVIDIA's: clean latents `[1, C, T, h, w]` of [the image or the video's last frames, black frames...] (the
    posterior mean), and the number of conditioning latent frames."""
    frames = [image] if image is not None else list(video)[-num_conditional_frames:]
    cond = frames_to_pixels(processor, frames, height, width, crop=True)
    pixels = cond.new_full((1, 3, num_frames, height, width), -1.0)  # black
    pixels[:, :, : cond.shape[2]] = cond
    return encode_video(vae, pixels, device=device), num_latent_frames(cond.shape[2])


def diffusers_conditioning(
    vae: AutoencoderKLWan,
    processor: VideoProcessor,
    image,
    video,
    height: int,
    width: int,
    num_frames: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """diffusers' `Cosmos2VideoToWorldPipeline.prepare_latents`: the whole input as conditioning, padded with its
    last frame, encoded with a posterior *sample* drawn from `generator`; and its conditioning latent frames."""
    cond = frames_to_pixels(processor, [image] if image is not None else list(video), height, width, crop=False)
    if cond.shape[2] >= num_frames:
        cond_latent_frames, pixels = num_latent_frames(num_frames), cond[:, :, -num_frames:]
    else:
        cond_latent_frames = num_latent_frames(cond.shape[2])
        pad = cond[:, :, -1:].repeat(1, 1, num_frames - cond.shape[2], 1, 1)
        pixels = torch.cat([cond, pad], dim=2)
    return encode_video(vae, pixels, sample=True, generator=generator, device=device), cond_latent_frames

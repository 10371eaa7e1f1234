"""Cached VAE latents of seeded frame windows (`--cache_latents`), as a `datasets.Dataset`.

NVIDIA encodes a fresh random 93-frame window of a clip at every step. Encoding costs about 3.5 s of a
2B step on an H100, so a cache pays; but one fixed window per clip would lose that randomness. We cache
`windows_per_clip` windows per clip, each starting at a frame drawn from (seed, clip, window), and a
training draw picks one of them at random. Over a run a clip is then seen through `windows_per_clip`
windows instead of every possible one: raise the count for long clips and long runs.

The encoding is a batched `Dataset.map` run on the VAE's device, keyed (`new_fingerprint`) on the clips'
file signatures, the window starts, the sample size and the VAE's identity: a second run with the same
inputs reads the Arrow cache and encodes nothing; changing any of them encodes again. The latents are
stored exactly as `encode_video` returns them (normalised float32), so training on a cached window is
bit-for-bit training on that window encoded on the fly.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets
import numpy as np
import torch
from diffusers import AutoencoderKLWan

from ..models.latents import encode_video
from ..models.sample_shape import latent_shape
from .hf_dataset import file_signature, reported_cache_space, weights_hash
from .samples import read_frames, resize_frames


def window_start(seed: int, row: int, window: int, clip_frames: int, num_frames: int) -> int:
    """Start frame of cached window `window` of clip `row`: uniform over `{0 .. clip_frames - num_frames}`."""
    return int(np.random.default_rng([seed, row, window, 3]).integers(0, clip_frames - num_frames + 1))


def _vae_identity(vae: AutoencoderKLWan) -> str:
    """What cached latents depend on: the VAE's config, dtype and weights."""
    return f"{vae.config}|{vae.dtype}|{weights_hash(vae)}"


def _encode_windows(batch: dict, vae: AutoencoderKLWan, num_frames: int, height: int, width: int) -> dict:
    """Batched `.map` function: decode, resize and encode each window; float32 latents `[16, T, h, w]`."""
    video = torch.stack(
        [
            resize_frames(read_frames(path, start, num_frames), height, width)
            for path, start in zip(batch["video_path"], batch["frame_start"])
        ]
    )
    return {"latents": encode_video(vae, video).cpu().numpy()}


def build_latent_cache(
    table: datasets.Dataset,
    vae: AutoencoderKLWan,
    num_frames: int,
    height: int,
    width: int,
    windows_per_clip: int,
    seed: int,
    batch_size: int = 1,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """One row per (clip, window), in order `row * windows_per_clip + window`, with its `latents`.

    Columns: `row`, `window`, `video_path`, `frame_start`, `latents` (float32 `[16, 1 + (F-1)//4, H/8, W/8]`).
    Runs on `vae.device`; the result is an Arrow file under `cache_dir` (default: datasets' `HF_DATASETS_CACHE`),
    so a read-only dataset folder is fine.
    """
    windows: dict[str, list] = {"row": [], "window": [], "video_path": [], "frame_start": []}
    for row, (path, clip_frames) in enumerate(zip(table["video_path"], table["num_frames"])):
        for window in range(windows_per_clip):
            windows["row"].append(row)
            windows["window"].append(window)
            windows["video_path"].append(path)
            windows["frame_start"].append(window_start(seed, row, window, clip_frames, num_frames))
    identity = json.dumps(
        [
            [file_signature(p) for p in table["video_path"]],
            windows["frame_start"],
            [num_frames, height, width],
            _vae_identity(vae),
        ]
    )
    shape = latent_shape(vae.config, num_frames, height, width)
    fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16]
    # An in-memory table (`from_dict`) has no cache folder of its own, so the Arrow file is named here.
    cache_file = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "cosmos_v2w_latents" / f"{fingerprint}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    source = datasets.Dataset.from_dict(windows)
    before = set(cache_file.parent.iterdir())
    with reported_cache_space(cache_dir):
        try:
            return source.map(
                _encode_windows,
                batched=True,
                batch_size=batch_size,
                # Each row is tens of MB: write them out a few at a time instead of datasets' 1,000.
                writer_batch_size=8,
                fn_kwargs=dict(vae=vae, num_frames=num_frames, height=height, width=width),
                features=datasets.Features(
                    {**source.features, "latents": datasets.Array4D(shape=shape, dtype="float32")}
                ),
                new_fingerprint=fingerprint,
                cache_file_name=str(cache_file),
                desc="Encoding latent windows",
            )
        except Exception:  # a full disk, say: datasets leaves its partial files behind, and they are ours to remove
            for path in set(cache_file.parent.iterdir()) - before:
                path.unlink(missing_ok=True)
            raise

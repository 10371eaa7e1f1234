"""Long videos by continuation (`infer_video2world.py --num_chunks N`), NVIDIA's `examples/video2world_lvg.py` loop
without its file hand-off.

Chunk 0 continues the input; chunk k > 0 is conditioned on the last `num_conditional_frames` (c) frames of chunk
k - 1, from NVIDIA's noise for `seed + k`. The video is chunk 0 whole, then each later chunk without its first c
frames (they are the conditioning frames again): `F + (N - 1)(F - c)` frames for F frames a chunk.

NVIDIA writes the hand-off frames to a file and reads them back: a PNG for one frame, an mp4 for five, which
re-encodes every seam lossily. Here they stay in memory as the float frames the pipeline made (`[0, 1]`, not
rounded to 8 bits), and each finished chunk goes to `on_chunk` (the video writer) as soon as it is made, so memory
does not grow with N. diffusers has no long-video helper; this is a loop over the pipeline's own call.

Seams (`seam_correction`, off by default: NVIDIA's loop does not do it). The next chunk's conditioning frames
come back from its decoder a little off the frames handed over (the VAE's round trip), and its first new frames
carry that offset, so the video jumps at each seam. With `seam_correction` the offset (the last hand-off frame
minus its decoded copy, `[H, W, 3]`) is added to the new chunk's frames, fading with a time constant of
`SEAM_FADE_LATENT_FRAMES` latent frames, so the seam meets the frame before it and later frames are the model's
own. On the trained tiny model this brings the seams' change from 2.1-2.9x the median change inside chunks to
1.6x, the model's own first step from a real image (benchmarks/results/long_video_tiny.json).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..models.sample_shape import TIME_STRIDE, latent_shape
from .inputs import nvidia_initial_noise
from .jobs import check_chunks
from .pipeline import CosmosVideo2WorldPipeline

logger = logging.getLogger(__name__)

# How fast the seam correction fades: two latent frames (8 frames), past the first new latent frame, where the
# decoder's offset shows (a shorter fade left the seams at 1.7x, longer ones gained nothing: the benchmark).
SEAM_FADE_LATENT_FRAMES = 2


def fade_in_handoff(frames: np.ndarray, handoff: np.ndarray, num_conditional_frames: int) -> np.ndarray:
    """`frames` (`[T, H, W, 3]`, a chunk as decoded, in [0, 1]) shifted so that its last conditioning frame equals
    `handoff` (`[H, W, 3]`, the frame it was conditioned on), the shift fading from there with a time constant
    of `SEAM_FADE_LATENT_FRAMES` latent frames; clipped to [0, 1] (below 0, diffusers' image processor would
    take the next hand-off for a [-1, 1] image)."""
    last = num_conditional_frames - 1
    offset = handoff - frames[last]
    since = np.arange(len(frames)) - last
    fade = np.where(since >= 0, np.exp(-since / (SEAM_FADE_LATENT_FRAMES * TIME_STRIDE)), 0.0)
    return np.clip(frames + fade[:, None, None, None].astype(frames.dtype) * offset, 0.0, 1.0)


def generate_long_video(
    pipe: CosmosVideo2WorldPipeline,
    num_chunks: int,
    *,
    image: PIL.Image.Image | None = None,
    video: list | None = None,
    num_conditional_frames: int = 1,
    seed: int = 0,
    height: int = 704,
    width: int = 1280,
    num_frames: int = 93,
    on_chunk: Callable[[np.ndarray], None] | None = None,
    seam_correction: bool = False,
    **call_kwargs,
) -> np.ndarray | None:
    """A `num_chunks`-chunk continuation of `image` or `video` (see the module docstring).

    `call_kwargs` go to every chunk's `pipe(...)` call (prompt, guidance_scale, num_inference_steps, ...). Each
    chunk starts from NVIDIA's initial noise for `seed + chunk` (`nvidia_initial_noise`). `on_chunk(frames)` gets
    each chunk's new frames (`[T, H, W, 3]` float in [0, 1]) as it is made; without it they are collected and the
    whole video is returned (`[F + (N - 1)(F - c), H, W, 3]`). A video input's last `num_conditional_frames` frames
    condition the first chunk, as in the pipeline. `seam_correction`: see the module docstring."""
    check_chunks(num_chunks, num_conditional_frames, image is not None and video is None, "image")
    collected: list[np.ndarray] = []
    shape = (1, *latent_shape(pipe.vae.config, num_frames, height, width))
    condition: dict = {"image": image, "video": video}
    progress = tqdm(range(num_chunks), desc="Chunks", disable=num_chunks == 1)
    with logging_redirect_tqdm():  # the chunks' log lines above the bar, not through it
        for chunk in progress:
            start = time.perf_counter()
            frames = pipe(
                **condition,
                num_conditional_frames=num_conditional_frames if condition["video"] is not None else 1,
                height=height,
                width=width,
                num_frames=num_frames,
                latents=nvidia_initial_noise(seed + chunk, shape),
                output_type="np",
                **call_kwargs,
            ).frames[0]
            if chunk > 0 and seam_correction:
                frames = fade_in_handoff(frames, condition["video"][-1], num_conditional_frames)
            # The next chunk's conditioning: this one's last frames, as made (float, full precision).
            condition = {"image": None, "video": list(frames[-num_conditional_frames:])}
            new = frames if chunk == 0 else frames[num_conditional_frames:]
            if num_chunks > 1:
                logger.info("Chunk %d of %d: %.1f s", chunk + 1, num_chunks, time.perf_counter() - start)
            (on_chunk or collected.append)(new)
    return np.concatenate(collected) if on_chunk is None else None


class ChunkWriter:
    """An mp4 written chunk by chunk, with `export_to_video`'s settings (diffusers' writer takes the whole video
    at once): frames go to a hidden file beside `path`, which replaces `path` only when the video is complete, so
    a failed or killed generation leaves an existing video whole. `enabled=False` (ranks other than 0) writes
    nothing."""

    def __init__(self, path: str | Path, fps: int, enabled: bool = True):
        self.path, self.fps, self.enabled = Path(path), fps, enabled
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.frames = 0

    def __enter__(self) -> ChunkWriter:
        if self.enabled:
            import imageio

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = imageio.get_writer(self.partial, fps=self.fps, quality=5.0, macro_block_size=16)
        return self

    def append(self, frames: np.ndarray) -> None:
        """Write `frames` (`[T, H, W, 3]` float in [0, 1]) as export_to_video rounds them."""
        if self.enabled:
            for frame in frames:
                self._writer.append_data((frame * 255).astype(np.uint8))
        self.frames += len(frames)

    def __exit__(self, kind, error, traceback) -> None:
        if not self.enabled:
            return
        self._writer.close()
        if kind is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)

"""The built-in sample: synthetic clips the package renders, prepared like a user's folder.

`train_video2world.py` without `--dataset_path` trains on these, so a first run needs nothing but the
package. Each clip is a teal square ("sks teal robot") driving over a shaded floor from its own starting point,
always the same way: real mp4 files, decoded by decord and captioned and embedded by `prepare_data` like any dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from diffusers.utils import export_to_video
from PIL import Image

logger = logging.getLogger(__name__)

DEMO_PROMPT = "A video of sks teal robot."
NUM_CLIPS = 16
DEMO_VERSION = "v5"


# Every clip shows the same scene, as a user's clips of one robot do: this floor's colour, a teal square.
FLOOR_TINT = (0.9, 0.75, 0.95)


def robot_side(height: int, width: int) -> int:
    """The teal square's side in pixels: a quarter of the frame's shorter side, at least 4."""
    return max(4, min(height, width) // 4)


# How the robot drives, the same in every clip, as one robot on its track does: down and to the right, this
# fraction of the frame's height and width a frame. From one frame, then, where it goes is known, as Video2World
# asks of it; with a random velocity per clip, one frame could not tell where the square was heading.
DRIVE = (1 / 64, 1 / 56)


def render_clip(num_frames: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """Frames (uint8 HxWx3) of a teal square driving `DRIVE` over a vertical gradient; where it starts depends on
    `seed` only, placed so that it stays in the frame for `num_frames` frames."""
    rng = np.random.default_rng(seed)
    floor = np.linspace(40, 200, height, dtype=np.float32)[:, None, None] * np.array(FLOOR_TINT, dtype=np.float32)
    floor = np.broadcast_to(floor, (height, width, 3))
    side = robot_side(height, width)
    velocity = np.array(DRIVE) * np.array([height, width])
    room = np.array([height - side, width - side], dtype=np.float64)
    start = rng.uniform([0, 0], np.maximum(room - velocity * (num_frames - 1), 0))
    frames = []
    for i in range(num_frames):
        y, x = np.clip(start + velocity * i, 0, room).round().astype(int)
        frame = floor.copy()
        frame[y : y + side, x : x + side] = (0, 128, 128)
        frames.append(frame.astype(np.uint8))
    return frames


def export_clip(frames: list[np.ndarray], path: Path | str, fps: int = 16) -> None:
    """Write uint8 HxWx3 frames as an mp4. diffusers' `export_to_video` multiplies numpy frames by 255
    (it expects floats in [0, 1]), which wraps uint8 values around; PIL images go through unscaled."""
    export_to_video([Image.fromarray(frame) for frame in frames], str(path), fps=fps)

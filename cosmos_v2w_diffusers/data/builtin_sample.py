"""The built-in sample (no `--dataset_path`): the demo's clips rendered (`data/demo_clips.py`) and prepared in
NVIDIA's layout on first use, cached. It sits above `data/` and `prepare_data`, which it uses."""

from __future__ import annotations

import logging
from pathlib import Path

from ..models.components import cache_root, resolve_pretrained
from ..models.presets import ModelPreset
from ..utils.io_utils import build_folder_once
from .demo_clips import DEMO_PROMPT, DEMO_VERSION, NUM_CLIPS, export_clip, render_clip
from .prepare_data import prepare_dataset

logger = logging.getLogger(__name__)


def demo_dataset_path(preset: ModelPreset) -> Path:
    """The built-in sample for `preset`, rendered and prepared on first use. Beside its `videos/`, one more
    clip in `held_out/` (`held_out_clip_path`) is never trained on: the demo continues it."""

    def build(folder: Path) -> None:
        (folder / "videos").mkdir()
        (folder / "held_out").mkdir()
        for i in range(NUM_CLIPS + 1):
            frames = render_clip(preset.num_frames + 16, preset.height, preset.width, seed=i)
            export_clip(frames, folder / ("videos" if i < NUM_CLIPS else "held_out") / f"robot_{i}.mp4")
        prepare_dataset(
            folder,
            prompt=DEMO_PROMPT,
            text_encoder=resolve_pretrained(preset),
            num_frames=preset.num_frames,
            text_encoder_flag=f"the built-in sample's captions need --model {preset.name}'s text encoder:",
        )
        logger.info("Rendered the built-in sample clips")

    return build_folder_once(cache_root() / f"demo-{preset.short_name}-{DEMO_VERSION}", build, "t5_xxl")


def held_out_clip_path(preset: ModelPreset) -> Path:
    """The built-in sample's clip that training never sees."""
    return demo_dataset_path(preset) / "held_out" / f"robot_{NUM_CLIPS}.mp4"

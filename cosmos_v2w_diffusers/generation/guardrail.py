"""NVIDIA's guardrail (cosmos_guardrail's `CosmosSafetyChecker`), as the pipeline runs it: prompts checked before
sampling, videos after decoding, the checker on the execution device only while it checks (as diffusers' Cosmos
pipelines move it; under model CPU offload it waits on the CPU)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from diffusers.utils import is_cosmos_guardrail_available
from diffusers.video_processor import VideoProcessor

GUARDRAIL_NOTICE = (
    "Cosmos guardrail disabled: generated videos are not checked for safety (NVIDIA's --disable_guardrail). "
    "You remain bound by the NVIDIA Open Model License."
)


def default_safety_checker() -> Any:
    """cosmos_guardrail's checker, as NVIDIA's tooling uses by default."""
    if not is_cosmos_guardrail_available():
        raise ImportError(
            "cosmos_guardrail is not installed, and NVIDIA's tooling runs its guardrail by default. Install it "
            "(`pip install cosmos_guardrail`), or run without it: `--disable_guardrail` on the command line, "
            "`disable_guardrail=True` in Python."
        )
    from cosmos_guardrail import CosmosSafetyChecker

    return CosmosSafetyChecker()


@contextlib.contextmanager
def _checker_on(checker: Any, device: torch.device):
    checker.to(device)
    try:
        yield
    finally:
        checker.to("cpu")


def check_prompts(checker: Any, prompt: str | list[str], device: torch.device) -> None:
    """Refuse a prompt the guardrail rejects, naming it."""
    with _checker_on(checker, device):
        for text in [prompt] if isinstance(prompt, str) else prompt:
            if not checker.check_text_safety(text):
                raise ValueError(f"Cosmos guardrail rejected the prompt: {text!r}.")


def checked_videos(
    checker: Any, processor: VideoProcessor, pixels: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Decoded videos `[B, 3, T, H, W]` in [-1, 1] as the guardrail returns them (blurred faces, or blank where it
    rejects one), in the same form."""
    videos = (processor.postprocess_video(pixels, output_type="np") * 255).astype(np.uint8)
    with _checker_on(checker, device):
        videos = np.stack([checker.check_video_safety(v) for v in videos])
    return torch.from_numpy(videos.astype(np.float32) / 255.0 * 2 - 1).permute(0, 4, 1, 2, 3)

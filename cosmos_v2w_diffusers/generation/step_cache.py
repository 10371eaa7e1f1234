"""Training-free step caching for generation (`--cache THRESHOLD`): diffusers' First Block Cache on the Cosmos
transformer.

At each denoising step the first block runs; where its residual (output minus input) changed by less than
`threshold` (mean absolute change over the mean absolute residual) since the last step of the same guidance side,
the other blocks are skipped and the residual they added last time is added again. Between neighbouring steps of
a 35-step sampler the blocks' work changes little, most of all late in sampling, so a threshold trades skipped
blocks for distance from the dense output (BENCHMARKS.md, "Fast generation").

diffusers' `apply_first_block_cache` does the caching; what it lacks for Cosmos is the block's description (no
Cosmos block is in its registry) and the `cache_context` of `CacheMixin`, which `CosmosTransformer3DModel` does
not inherit: both come from `compat.py`. The count of skipped blocks is ours.

The decision reads one number from the GPU per forward. Under context parallelism each rank would decide on its
own shard of the tokens and the ranks could disagree, so caching is refused there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

from .. import compat
from ..models.components import cache_root
from ..utils.io_utils import atomic_write, read_regular_file
from .config import GenerationConfig
from .video_metrics import psnr

logger = logging.getLogger(__name__)

# diffusers' names of the first block's hook and the others' (hooks/first_block_cache.py)
_HEAD_HOOK, _BLOCK_HOOK = "fbc_leader_block_hook", "fbc_block_hook"


class StepCache:
    """First Block Cache on `transformer` with `threshold`, one cached state per guidance side, and a count of
    the block evaluations it saved."""

    def __init__(self, transformer: torch.nn.Module, threshold: float):
        if not 0 < threshold < 1:
            raise ValueError(
                f"--cache {threshold}: the threshold is a relative change between steps, between 0 and 1 "
                "(0.05 to 0.3 in practice); leave --cache out for dense generation."
            )
        if compat.model_parallel_config(transformer) is not None:
            raise ValueError(
                "--cache with context parallelism (--num_gpus N without --guidance_parallel, or N > 2 with it): each "
                "rank would decide on its own tokens; drop --cache, or use --num_gpus 2 --guidance_parallel."
            )
        blocks = transformer.transformer_blocks
        compat.register_cacheable_block(type(blocks[0]))
        apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=threshold))
        self.transformer, self.threshold, self.num_blocks = transformer, threshold, len(blocks)
        self._head = compat.hook(blocks[0], _HEAD_HOOK)
        self.forwards = self.skipped_forwards = 0

    def remove(self) -> None:
        """Take the cache off the transformer: every block runs again."""
        for name in (_HEAD_HOOK, _BLOCK_HOOK):
            compat.remove_hooks(self.transformer, name)

    def reset(self) -> None:
        """Start a new generation: nothing cached, nothing counted."""
        compat.reset_cache_hooks(self.transformer)
        self.forwards = self.skipped_forwards = 0

    @contextlib.contextmanager
    def side(self, name: str):
        """Run one transformer forward for guidance side `name` ("cond" or "uncond"), and count it."""
        with compat.cache_context(self.transformer, name):
            yield
            self.forwards += 1
            self.skipped_forwards += not self._head.state_manager.get_state().should_compute

    def summary(self) -> str:
        """How many block evaluations were skipped, for the log."""
        total = self.forwards * self.num_blocks
        skipped = self.skipped_forwards * (self.num_blocks - 1)
        share = self.skipped_share
        return (
            f"step cache (threshold {self.threshold}): skipped {skipped} of {total} block evaluations ({share:.0%}); "
            f"{self.skipped_forwards} of {self.forwards} transformer forwards ran the first block alone"
        )

    @property
    def skipped_share(self) -> float:
        """The share of block evaluations the last generation skipped."""
        total = self.forwards * self.num_blocks
        return self.skipped_forwards * (self.num_blocks - 1) / total if total else 0.0


# `--cache auto`'s record of its choice, beside the weights it was made for (`step_cache_file`).
STEP_CACHE_FILE = "step_cache.json"
# `--cache auto` tries these thresholds, most skipping first, and keeps the first that is close enough to dense.
CALIBRATION_THRESHOLDS = (0.5, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03)
# ... with this much to spare on the input it calibrates on: one input's distance is a sample of the distances. On
# the demo's post-trained tiny model at guidance 7, a threshold at 30.2 dB on that input gave 27.4 to 30.7 dB on
# three others (benchmarks/results/cache_auto_tiny_no_margin.json; with it: 34.1 dB, cache_auto_tiny.json).
CALIBRATION_MARGIN_DB = 3.0


@dataclass(frozen=True)
class Calibration:
    """What `--cache auto` chose for some weights and sampling settings: the threshold (None: no threshold tried
    kept the quality, so generation stays dense), its worst-frame PSNR against dense and its skipped share."""

    threshold: float | None
    psnr_db: float
    skipped_share: float
    settings: dict

    def describe(self) -> str:
        if self.threshold is None:
            return (
                f"no threshold keeps every frame {self.settings['min_psnr_db']:g} dB (and a margin) from dense: dense"
            )
        return (
            f"threshold {self.threshold:g}: worst frame {self.psnr_db:.1f} dB from dense, "
            f"{self.skipped_share:.0%} of the block evaluations skipped"
        )


def worst_frame_psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """The lowest PSNR (dB) of any frame of `frames` against `reference` (`[T, H, W, C]` in [0, 1])."""
    return min(psnr(torch.from_numpy(a), torch.from_numpy(b)) for a, b in zip(frames, reference))


def calibrate(
    pipe, generate: Callable[[], np.ndarray], min_psnr: float, settings: dict
) -> tuple[Calibration, np.ndarray]:
    """`--cache auto`: generate once dense (`generate()` gives `[T, H, W, C]` frames in [0, 1]), then with each of
    `CALIBRATION_THRESHOLDS` in turn until one keeps every frame at least `min_psnr` dB (plus
    `CALIBRATION_MARGIN_DB`) from the dense one. Returns the choice (the pipeline's cache left at it, or off) and
    the dense frames, which are the input's video."""
    pipe.disable_step_cache()
    dense = generate()
    for threshold in CALIBRATION_THRESHOLDS:
        cache = pipe.enable_step_cache(threshold)
        quality = worst_frame_psnr(generate(), dense)
        if quality >= min_psnr + CALIBRATION_MARGIN_DB:
            return Calibration(threshold, quality, cache.skipped_share, settings), dense
    pipe.disable_step_cache()
    return Calibration(None, math.inf, 0.0, settings), dense


def read_calibration(path: Path, settings: dict) -> Calibration | None:
    """The calibration stored at `path` for exactly these `settings`, or None (none stored, other settings, or a
    file that is not one of ours: calibrate again)."""
    try:
        stored = json.loads(read_regular_file(path, max_bytes=2**16))
        if stored.get("settings") != settings:
            return None
        threshold = stored["threshold"]
        if threshold is not None and not 0 < float(threshold) < 1:
            return None
        quality = math.inf if stored["psnr_db"] is None else float(stored["psnr_db"])
        return Calibration(threshold, quality, float(stored["skipped_share"]), settings)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_calibration(path: Path, calibration: Calibration) -> None:
    """Store `calibration` at `path`, atomically (a kill mid-write leaves the previous file whole)."""
    record = dataclasses.asdict(calibration)
    record["psnr_db"] = None if math.isinf(calibration.psnr_db) else calibration.psnr_db
    with atomic_write(path, "w") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")


def store_calibration(path: Path, calibration: Calibration) -> None:
    """Write `--cache auto`'s choice for the next run; a folder we may not write to costs only the reuse."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_calibration(path, calibration)
        logger.info("Stored the choice in %s: later runs with these weights and settings reuse it", path)
    except OSError as exc:
        logger.warning("Could not store the --cache auto choice in %s (%s); the next run calibrates again.", path, exc)


def step_cache_file(config: GenerationConfig) -> Path:
    """Where `--cache auto` stores its choice: beside the weights it was made for (the LoRA adapter, else
    `--dit_path`, else a local base folder), else in this package's cache folder."""
    for given in (config.lora_path, config.dit_path, config.pretrained_model_name_or_path):
        if given and Path(given).is_dir():
            return Path(given) / STEP_CACHE_FILE
        if given and Path(given).is_file():
            return Path(given).with_name(f"{Path(given).stem}.{STEP_CACHE_FILE}")
    return cache_root() / "step_cache" / f"{config.model_size}.json"


def step_cache_settings(config: GenerationConfig, height: int, width: int, num_frames: int) -> dict:
    """What a `--cache auto` choice holds for: the weights and every sampling setting that changes the steps."""
    weights = {
        name: str(Path(value).resolve()) if value and Path(value).exists() else value
        for name, value in (
            ("pretrained", config.pretrained_model_name_or_path),
            ("dit_path", config.dit_path),
            ("lora_path", config.lora_path),
        )
    }
    return {
        **weights,
        "model_size": config.model_size,
        "load_ema": config.load_ema,
        "size": [num_frames, height, width],
        "num_inference_steps": config.num_inference_steps or 35,
        "guidance": 7.0 if config.guidance is None else config.guidance,
        "scheduler": config.scheduler,
        "num_conditional_frames": config.num_conditional_frames,
        "fp8": config.fp8,
        "sparse_attention": config.sparse_attention,
        "min_psnr_db": config.cache_min_psnr,
    }

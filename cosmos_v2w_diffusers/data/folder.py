"""NVIDIA's dataset folder: `videos/*.mp4`, `metas/<name>.txt` (caption), `t5_xxl/<name>.pickle`.

Scanning checks every video once, up front, and sorts the folder into usable rows and skipped files,
each skip with its file name and reason. Nothing bad is trained on and nothing is dropped silently
(NVIDIA's loader drops videos without a pickle silently and crashes on short clips).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import decord

from ..text_encoding import InvalidEmbeddingError, read_t5_pickle

logger = logging.getLogger(__name__)

# docs/recipe.md: fps from the container, 16 if unknown.
DEFAULT_FPS = 16.0


class BadVideoError(ValueError):
    """A video that cannot be used; the message names the reason and the fix."""


class NoUsableVideosError(RuntimeError):
    """Every video in a dataset folder was skipped."""


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


def probe_video(path: Path, min_frames: int) -> VideoInfo:
    """Open a video with decord and decode its first and last frames; raise `BadVideoError` if unusable.

    Decoding the last frame catches truncated files whose header promises more than the file holds.
    """
    fix = "re-encode it (e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`) or remove it from videos/"
    size = path.stat().st_size
    if size == 0:
        raise BadVideoError("file is empty (0 bytes); copy it again or remove it from videos/")
    with open(path, "rb") as f:
        header = f.read(12)
    if header[4:8] != b"ftyp":
        raise BadVideoError(f"not an MP4 video (no 'ftyp' box at the start of the file); {fix}")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        num_frames = len(reader)
        if num_frames == 0:
            raise BadVideoError(f"contains no video frames; {fix}")
        first = reader[0].shape
        reader[num_frames - 1].asnumpy()
        fps = reader.get_avg_fps()
    except (decord.DECORDError, RuntimeError) as exc:  # decord raises both for broken input
        raise BadVideoError(f"cannot be decoded ({str(exc).splitlines()[0]}); {fix}") from exc
    if num_frames < min_frames:
        raise BadVideoError(
            f"has {num_frames} frames, fewer than the {min_frames} consecutive frames a sample needs; "
            f"use a longer clip, lower the frame count, or remove it"
        )
    if not fps or not math.isfinite(fps) or fps <= 0:
        fps = DEFAULT_FPS
    return VideoInfo(num_frames=num_frames, fps=float(fps), width=int(first[1]), height=int(first[0]))


def read_caption(meta_path: Path) -> str:
    """The caption of one video; raise `BadVideoError` when it is missing or empty."""
    fix = "write the caption into it, or run prepare_data with --prompt"
    if not meta_path.is_file():
        raise BadVideoError(f"caption file {meta_path} is missing; {fix}")
    caption = meta_path.read_text(encoding="utf-8", errors="replace").strip()
    if not caption:
        raise BadVideoError(f"caption file {meta_path} is empty; {fix}")
    return caption


def list_videos(dataset_path: str | Path) -> list[Path]:
    """The `.mp4` files under `<dataset_path>/videos`, sorted (NVIDIA's order)."""
    videos_dir = Path(dataset_path) / "videos"
    if not videos_dir.is_dir():
        raise FileNotFoundError(
            f"{videos_dir} does not exist: a dataset folder holds videos/*.mp4 (and metas/, t5_xxl/ made by "
            f"`python -m cosmos_v2w_diffusers.prepare_data --dataset_path {dataset_path}`)."
        )
    return sorted(p for p in videos_dir.iterdir() if p.suffix.lower() == ".mp4" and p.is_file())


def scan_dataset_folder(
    dataset_path: str | Path,
    min_frames: int,
    embed_dim: int | None = None,
) -> tuple[list[dict], list[SkippedFile]]:
    """Sort a dataset folder's videos into usable rows and skipped files.

    Each row: `video_path`, `caption`, `num_frames`, `fps`, `width`, `height`, `t5_path` (the pickle, or
    "" if there is none yet). With `embed_dim`, existing pickles are validated against it.
    """
    root = Path(dataset_path)
    rows, skipped = [], []
    for video in list_videos(root):
        name = video.stem
        t5_path = root / "t5_xxl" / f"{name}.pickle"
        try:
            info = probe_video(video, min_frames)
            caption = read_caption(root / "metas" / f"{name}.txt")
            if embed_dim is not None and t5_path.exists():
                read_t5_pickle(t5_path, embed_dim)
        except (BadVideoError, InvalidEmbeddingError) as exc:
            skipped.append(SkippedFile(str(video), str(exc)))
            continue
        rows.append(
            dict(
                # absolute(), not resolve(): a symlinked clip keeps its own name, which its pickle follows.
                video_path=str(video.absolute()),
                caption=caption,
                num_frames=info.num_frames,
                fps=info.fps,
                width=info.width,
                height=info.height,
                t5_path=str(t5_path.absolute()) if t5_path.exists() else "",
            )
        )
    return rows, skipped


def report_skipped(skipped: list[SkippedFile]) -> None:
    for item in skipped:
        logger.warning("Skipping %s", item)


def raise_if_empty(rows: list[dict], skipped: list[SkippedFile], dataset_path: str | Path) -> None:
    if rows:
        return
    if not skipped:
        raise NoUsableVideosError(f"{Path(dataset_path) / 'videos'} holds no .mp4 files.")
    details = "\n".join(f"  - {item}" for item in skipped)
    raise NoUsableVideosError(f"No usable video in {dataset_path}; every video was skipped:\n{details}")

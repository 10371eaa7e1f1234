"""NVIDIA's dataset folder: `videos/*.mp4`, `metas/<name>.txt` (caption), `t5_xxl/<name>.pickle`.

Scanning checks every video once, up front, and sorts the folder into usable rows and skipped files,
each skip with its file name and reason. Nothing bad is trained on and nothing is dropped silently
(NVIDIA's loader drops videos without a pickle silently and crashes on short clips).
"""

from __future__ import annotations

import logging
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import decord

from ..models.text_encoding import (
    InvalidEmbeddingError,
    read_t5_pickle,
    stale_embedding_reason,
)
from ..utils.io_utils import read_regular_file

logger = logging.getLogger(__name__)

# docs/recipe.md: fps from the container, 16 if unknown.
DEFAULT_FPS = 16.0
# T5 reads at most 512 tokens, a few KB of text: a caption file far larger is a mistake, not a caption.
MAX_CAPTION_BYTES = 64 * 1024


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


def presented_frame_count(reader: "decord.VideoReader") -> int:
    """How many frames a player shows: decord's frames minus those an MP4 edit list hides.

    A clip cut without re-encoding (`ffmpeg -ss 0.5 -i in.mp4 -c copy cut.mp4`) starts at an earlier
    keyframe and hides the frames before the cut with an edit list (they get negative timestamps). decord
    counts them, yet returns the shown frames first and pads its count with copies of the last one: a window
    reaching past the shown frames would train on frozen video. decord has no call for the shown count, so
    it is read off the frames' timestamps (no frame is decoded).
    """
    total = len(reader)
    if total == 0:
        return 0
    starts = reader.get_frame_timestamp(list(range(total)))[:, 0]
    return int((starts >= -1e-6).sum())


def _check_regular_file(path: Path, where: str) -> None:
    """A clear `BadVideoError` for what is not a readable regular file (dangling or looping symlinks,
    folders, FIFOs, devices); opening a FIFO would block the scan forever."""
    try:
        info = os.stat(path)
    except OSError as exc:
        kind = "a symlink whose target is missing or loops" if path.is_symlink() else "unreadable"
        raise BadVideoError(f"{kind} ({exc.strerror}); fix the link or remove it from {where}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadVideoError(f"not a regular file (a folder, FIFO or device); remove it from {where}")


def probe_video(path: Path, min_frames: int) -> VideoInfo:
    """Open a video with decord and decode its first and last shown frames; raise `BadVideoError` if unusable.

    Decoding the last frame catches truncated files whose header promises more than the file holds. The
    frame count is what a player shows (`presented_frame_count`).
    """
    fix = "re-encode it (e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`) or remove it from videos/"
    if any(ord(c) < 32 for c in path.name):
        raise BadVideoError("its name holds a newline or another control character; rename it")
    _check_regular_file(path, "videos/")
    if path.stat().st_size == 0:
        raise BadVideoError("file is empty (0 bytes); copy it again or remove it from videos/")
    with open(path, "rb") as f:
        header = f.read(12)
    if header[4:8] != b"ftyp":
        raise BadVideoError(f"not an MP4 video (no 'ftyp' box at the start of the file); {fix}")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        num_frames = presented_frame_count(reader)
        if num_frames == 0:
            raise BadVideoError(f"contains no video frames; {fix}")
        if num_frames < len(reader):
            logger.warning(
                "%s: its edit list hides %d of its %d frames (a clip cut without re-encoding); using the %d a "
                "player shows.",
                path,
                len(reader) - num_frames,
                len(reader),
                num_frames,
            )
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
    """The caption of one video; raise `BadVideoError` when it is missing, empty, not a regular file, larger
    than `MAX_CAPTION_BYTES` or not UTF-8 (decoding with replacement characters would train on garbage)."""
    fix = "write the caption into it, or run prepare_data with --prompt"
    if not meta_path.exists() and not meta_path.is_symlink():
        raise BadVideoError(f"caption file {meta_path} is missing; {fix}")
    try:
        data = read_regular_file(meta_path, MAX_CAPTION_BYTES)
    except ValueError as exc:
        raise BadVideoError(f"caption file {exc}") from None
    except OSError as exc:
        raise BadVideoError(f"caption file {meta_path} cannot be read ({exc.strerror}); {fix}") from None
    try:
        caption = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise BadVideoError(
            f"caption file {meta_path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 "
            f"(e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
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
    # Every `.mp4` entry, not only regular files: a dangling link or a folder is reported by the scan, not dropped.
    return sorted(p for p in videos_dir.iterdir() if p.suffix.lower() == ".mp4")


def scan_dataset_folder(
    dataset_path: str | os.PathLike,
    min_frames: int,
    embed_dim: int | None = None,
    check_stale: bool = True,
) -> tuple[list[dict], list[SkippedFile]]:
    """Sort a dataset folder's videos into usable rows and skipped files.

    Each row: `video_path`, `caption`, `num_frames`, `fps`, `width`, `height`, `t5_path` (the pickle, or
    "" if there is none yet). With `embed_dim`, existing pickles are validated against it and, with
    `check_stale`, against the caption their record says they encode (`text_encoding.stale_embedding_reason`).
    """
    root = Path(dataset_path)
    rows, skipped = [], []
    for video in list_videos(root):
        name = video.stem
        t5_path = root / "t5_xxl" / f"{name}.pickle"
        try:
            info = probe_video(video, min_frames)
            caption = read_caption(root / "metas" / f"{name}.txt")
            if embed_dim is not None and (t5_path.exists() or t5_path.is_symlink()):
                read_t5_pickle(t5_path, embed_dim)
                stale = check_stale and stale_embedding_reason(t5_path, caption)
                if stale:
                    raise InvalidEmbeddingError(stale)
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
                t5_path=str(t5_path.absolute()) if t5_path.exists() or t5_path.is_symlink() else "",
            )
        )
    return rows, skipped


def report_skipped(skipped: list[SkippedFile]) -> None:
    for item in skipped:
        logger.warning("Skipping %s", item)


def raise_if_empty(rows: list[dict], skipped: list[SkippedFile], dataset_path: str | os.PathLike) -> None:
    if rows:
        return
    if not skipped:
        raise NoUsableVideosError(f"{Path(dataset_path) / 'videos'} holds no .mp4 files.")
    details = "\n".join(f"  - {item}" for item in skipped)
    raise NoUsableVideosError(f"No usable video in {dataset_path}; every video was skipped:\n{details}")

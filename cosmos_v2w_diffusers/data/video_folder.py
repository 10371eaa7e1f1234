"""A `datasets` video table: clips beside a `metadata.csv` (or `.jsonl`, `.parquet`) whose `file_name` column names
each clip and whose caption column (`--caption_column`) describes it, the layout diffusers' video examples read; or
parquet files (at the top or in `data/`, as the Hub stores datasets) whose video column holds the clips' bytes.

datasets' `videofolder` and `parquet` builders read the table and resolve the files; its rows are then checked as
NVIDIA-layout clips are (`folder.probe_video`: each bad clip is reported and left out). A clip stored inside the
table is written once to a file named by its hash under the cache (training reads clips from files: decord opens a
path). The captions have no T5 pickles: the dataset's `.map` encodes them (`hf_dataset.CaptionEncoder`), once, into
datasets' cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import datasets

from ..utils.io_utils import atomic_write
from .folder import BadVideoError, SkippedFile, probe_video

METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def _parquet_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.parquet")) + sorted(path.glob("data/*.parquet"))


def is_video_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a `datasets` video table (a metadata table at its top, or parquet files) rather than
    NVIDIA's layout."""
    return any((Path(path) / name).is_file() for name in METADATA_FILES) or bool(_parquet_files(Path(path)))


def _clip_file(video: dict, clips_dir: Path) -> Path | None:
    """The file a table's video entry names, or, for a clip stored inside the table, the file its bytes are
    written to (once: the name is their hash, the write atomic)."""
    if video.get("path") and Path(video["path"]).is_file():
        return Path(video["path"])
    if not video.get("bytes"):
        return None
    digest = hashlib.sha256(video["bytes"]).hexdigest()[:32]
    file = clips_dir / f"{digest}{Path(video.get('path') or 'clip.mp4').suffix or '.mp4'}"
    if not file.is_file():
        with atomic_write(file) as f:
            f.write(video["bytes"])
    return file


def scan_video_folder(
    path: str | os.PathLike,
    min_frames: int,
    video_column: str = "video",
    caption_column: str = "text",
    cache_dir: str | os.PathLike | None = None,
) -> tuple[list[dict], list[SkippedFile]]:
    """Rows as `folder.scan_dataset_folder` gives them (`t5_path` empty: captions are encoded by the `.map`), and
    the clips left out with the reason. A column that is not there is one line naming the columns that are."""
    folder = Path(path)
    cache = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
    if any((folder / name).is_file() for name in METADATA_FILES):
        table = datasets.load_dataset("videofolder", data_dir=str(folder), split="train", cache_dir=str(cache))
    else:
        files = [str(f) for f in _parquet_files(folder)]
        table = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache))
    for flag, column in (("--video_column", video_column), ("--caption_column", caption_column)):
        if column not in table.column_names:
            raise ValueError(
                f"{flag} {column}: {path} has no such column; its columns are {', '.join(table.column_names)}."
            )
    table = table.cast_column(video_column, datasets.Video(decode=False))  # path or bytes, not frames
    rows, skipped = [], []
    for index, record in enumerate(table):
        video, caption = record[video_column], record[caption_column]
        where = video.get("path") or f"row {index} of {path}"
        try:
            if not isinstance(caption, str) or not caption.strip():
                raise BadVideoError(f"its {caption_column} in the metadata is empty; write the clip's caption there")
            file = _clip_file(video, cache / "cosmos_v2w_clips")
            if file is None:
                raise BadVideoError(f"its {video_column} entry names no file and holds no bytes")
            info = probe_video(file, min_frames)
        except BadVideoError as exc:
            skipped.append(SkippedFile(str(where), str(exc)))
            continue
        rows.append(
            dict(
                video_path=str(file.absolute()),
                caption=caption.strip(),
                num_frames=info.num_frames,
                fps=info.fps,
                width=info.width,
                height=info.height,
                t5_path="",
            )
        )
    return rows, skipped

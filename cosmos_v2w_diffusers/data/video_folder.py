"""A `datasets` video folder: clips beside a `metadata.csv` (or `.jsonl`, `.parquet`) whose `file_name` column names
each clip and whose caption column (`--caption_column`) describes it, the layout diffusers' video examples read.

datasets' `videofolder` builder reads the table and resolves the files; its rows are then checked as NVIDIA-layout
clips are (`folder.probe_video`: each bad clip is reported and left out). The captions have no T5 pickles: the
dataset's `.map` encodes them (`hf_dataset.CaptionEncoder`), once, into datasets' cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from .folder import BadVideoError, SkippedFile, probe_video

METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def is_video_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a `datasets` video folder (a metadata table at its top) rather than NVIDIA's layout."""
    return any((Path(path) / name).is_file() for name in METADATA_FILES)


def scan_video_folder(
    path: str | os.PathLike,
    min_frames: int,
    video_column: str = "video",
    caption_column: str = "text",
    cache_dir: str | os.PathLike | None = None,
) -> tuple[list[dict], list[SkippedFile]]:
    """Rows as `folder.scan_dataset_folder` gives them (`t5_path` empty: captions are encoded by the `.map`), and
    the clips left out with the reason. A column that is not there is one line naming the columns that are."""
    table = datasets.load_dataset(
        "videofolder", data_dir=str(path), split="train", cache_dir=str(cache_dir) if cache_dir else None
    )
    for flag, column in (("--video_column", video_column), ("--caption_column", caption_column)):
        if column not in table.column_names:
            raise ValueError(
                f"{flag} {column}: {path} has no such column; its columns are {', '.join(table.column_names)}."
            )
    table = table.cast_column(video_column, datasets.Video(decode=False))  # paths only: probe_video reads them
    rows, skipped = [], []
    for record in table:
        video, caption = record[video_column], record[caption_column]
        where = video.get("path") or f"a {video_column} entry of {path}"
        try:
            if not video.get("path"):
                raise BadVideoError("the clip is stored inside the table; training reads clips from files")
            if not isinstance(caption, str) or not caption.strip():
                raise BadVideoError(f"its {caption_column} in the metadata is empty; write the clip's caption there")
            info = probe_video(Path(video["path"]), min_frames)
        except BadVideoError as exc:
            skipped.append(SkippedFile(str(where), str(exc)))
            continue
        rows.append(
            dict(
                video_path=str(Path(video["path"]).absolute()),
                caption=caption.strip(),
                num_frames=info.num_frames,
                fps=info.fps,
                width=info.width,
                height=info.height,
                t5_path="",
            )
        )
    return rows, skipped

"""Training samples exactly as RECIPE.md: N consecutive frames from a random start, resized, in [-1, 1].

Sample `i` is the i-th draw of an endless seeded stream: epoch `i // len` visits the clips in a
permutation seeded by (seed, epoch), and the start frame is drawn from a generator seeded by (seed, i).
Every draw is a pure function of (seed, i), so any number of DataLoader workers, any rank split, and a
resume that restarts the stream at draw `k` all see exactly the same samples.
"""

from __future__ import annotations

import logging

import datasets
import decord
import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..text_encoding import MAX_TEXT_TOKENS, pad_embedding
from .hf_dataset import T5_COLUMN

logger = logging.getLogger(__name__)


def read_frames(path: str, start: int, num_frames: int) -> torch.Tensor:
    """Decode `num_frames` consecutive frames from `start` with decord: uint8 `[T, 3, H, W]`."""
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    total = len(reader)
    if start < 0 or start + num_frames > total:
        raise ValueError(f"{path}: frames [{start}, {start + num_frames}) are outside its {total} frames.")
    try:
        frames = reader.get_batch(list(range(start, start + num_frames))).asnumpy()  # [T, H, W, 3]
    except (decord.DECORDError, RuntimeError) as exc:  # decord raises both for broken input
        raise RuntimeError(
            f"{path}: decoding frames [{start}, {start + num_frames}) failed ({exc}); re-encode or remove the file."
        ) from exc
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def to_model_range(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 `[T, 3, H0, W0]` -> float `[3, T, height, width]` in [-1, 1].

    Each frame is resized straight to (height, width): bilinear with antialias, no crop, aspect not kept
    (NVIDIA's resize), on uint8 as torchvision does, then scaled with x/127.5 - 1.
    """
    frames = TF.resize(frames, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return (frames.float() / 127.5 - 1.0).permute(1, 0, 2, 3).contiguous()


class Video2WorldTrainDataset(torch.utils.data.Dataset):
    """Map-style dataset over a `load_video2world_dataset` table, for a `DataLoader` with any worker count.

    `len(ds)` is the number of clips (one epoch); indices past it continue the seeded stream into later
    epochs, so a sampler can ask for draw `k` directly (see the module docstring).

    Each item: `video` `[3, num_frames, height, width]` in [-1, 1]; `t5_text_embeddings`
    `[max_text_tokens, d]` zero-padded; `fps`; `frame_start`; `video_path`; `caption`.
    """

    def __init__(
        self,
        table: datasets.Dataset,
        num_frames: int = 93,
        height: int = 704,
        width: int = 1280,
        seed: int = 0,
        max_text_tokens: int = MAX_TEXT_TOKENS,
        dtype: torch.dtype = torch.float32,
    ):
        # Frame counts are kept in memory so a draw does not read its row (embedding included) twice.
        self.frame_counts = table["num_frames"]
        too_short = [p for p, n in zip(table["video_path"], self.frame_counts) if n < num_frames]
        if too_short:
            raise ValueError(
                f"{len(too_short)} clips are shorter than num_frames={num_frames} (e.g. {too_short[0]}): load the "
                f"table with load_video2world_dataset(..., num_frames={num_frames}) so they are skipped."
            )
        self.table = table
        self.num_frames, self.height, self.width = num_frames, height, width
        self.seed, self.max_text_tokens, self.dtype = seed, max_text_tokens, dtype

    def __len__(self) -> int:
        return len(self.table)

    def draw(self, index: int) -> tuple[int, int]:
        """(row, start frame) of draw `index`."""
        epoch, position = divmod(index, len(self.table))
        row = int(np.random.default_rng([self.seed, epoch]).permutation(len(self.table))[position])
        # NVIDIA draws from {0 .. total-94}; we draw from {0 .. total-num_frames} (RECIPE.md, Data).
        last_start = int(self.frame_counts[row]) - self.num_frames
        start = int(np.random.default_rng([self.seed, epoch, position, 1]).integers(0, last_start + 1))
        return row, start

    def __getitem__(self, index: int) -> dict:
        row_index, start = self.draw(index)
        row = self.table[row_index]
        frames = read_frames(row["video_path"], start, self.num_frames)
        return {
            "video": to_model_range(frames, self.height, self.width).to(self.dtype),
            "t5_text_embeddings": pad_embedding(row[T5_COLUMN], self.max_text_tokens).to(self.dtype),
            "fps": torch.tensor(row["fps"], dtype=torch.float32),
            "frame_start": start,
            "video_path": row["video_path"],
            "caption": row["caption"],
        }

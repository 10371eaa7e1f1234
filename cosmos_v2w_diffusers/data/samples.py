"""Training samples exactly as docs/recipe.md: N consecutive frames from a random start, resized, as uint8.

Sample `i` is the i-th draw of an endless seeded stream: epoch `i // len` visits the clips in a
permutation seeded by (seed, epoch), and the start frame is drawn from a generator seeded by (seed, i).
Every draw is a pure function of (seed, i), so any number of DataLoader workers, any rank split, and a
resume that restarts the stream at draw `k` all see exactly the same samples.

A clip that passed the scan but fails to decode part-way (corruption in the middle of the file) is
reported by name and replaced by a clip drawn from (seed, i, attempt): still a pure function of the draw,
so resume stays exact. Each item lists the clips it skipped, for the trainer's `skipped_clips.txt`.

With a latent table (`data/latent_cache.py`) a draw picks one of each clip's cached windows instead of a
start frame, and the item carries its latents rather than pixels.
"""

from __future__ import annotations

import logging

import datasets
import decord
import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..models.text_encoding import MAX_TEXT_TOKENS, pad_embedding
from .folder import presented_frame_count
from .hf_dataset import T5_COLUMN

logger = logging.getLogger(__name__)

# Replacement draws tried before a sample gives up: only reached if most clips are broken.
MAX_REPLACEMENTS = 16


class ClipDecodeError(RuntimeError):
    """A clip that could not be decoded at sample time; the message names the file and the fix."""


def read_frames(path: str, start: int, num_frames: int) -> torch.Tensor:
    """Decode `num_frames` consecutive frames from `start` with decord: uint8 `[T, 3, H, W]`."""
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        total = presented_frame_count(reader)
        if start < 0 or start + num_frames > total:  # re-encoded or replaced since the scan: skip it like a broken one
            raise ClipDecodeError(
                f"{path}: frames [{start}, {start + num_frames}) are outside its {total} frames (was it replaced "
                f"or re-encoded shorter during the run?); restore it, or remove it and restart to rescan."
            )
        frames = reader.get_batch(list(range(start, start + num_frames))).asnumpy()  # [T, H, W, 3]
    except ClipDecodeError:
        raise
    except (decord.DECORDError, RuntimeError) as exc:  # decord raises both for broken input
        raise ClipDecodeError(
            f"{path}: decoding frames [{start}, {start + num_frames}) failed ({str(exc).splitlines()[0]}); "
            f"re-encode or remove the file."
        ) from exc
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 `[T, 3, H0, W0]` -> uint8 `[3, T, height, width]`.

    Each frame is resized straight to (height, width): bilinear with antialias, no crop, aspect not kept
    (NVIDIA's resize), on uint8 as torchvision does. Scaling to [-1, 1] happens on the GPU
    (`latents.to_model_range`).
    """
    frames = TF.resize(frames, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return frames.permute(1, 0, 2, 3).contiguous()


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


class Video2WorldTrainDataset(torch.utils.data.Dataset):
    """Map-style dataset over a `load_video2world_dataset` table, for a `DataLoader` with any worker count.

    `len(ds)` is the number of clips (one epoch); indices past it continue the seeded stream into later
    epochs, so a sampler can ask for draw `k` directly (see the module docstring).

    Each item: `video` uint8 `[3, num_frames, height, width]` (or, with `latent_table`, `latents` float32
    `[16, latent_frames, height/8, width/8]`); `t5_text_embeddings` `[max_text_tokens, d]` zero-padded;
    `fps`; `frame_start`; `video_path`; `caption`; `skipped_clips` (newline-separated paths replaced in this draw).
    """

    def __init__(
        self,
        table: datasets.Dataset,
        num_frames: int = 93,
        height: int = 704,
        width: int = 1280,
        seed: int = 0,
        max_text_tokens: int = MAX_TEXT_TOKENS,
        latent_table: datasets.Dataset | None = None,
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
        self.seed, self.max_text_tokens = seed, max_text_tokens
        self.latent_table = latent_table.with_format("torch", columns=["latents"]) if latent_table else None
        self.windows_per_clip = len(latent_table) // len(table) if latent_table else 0

    def __len__(self) -> int:
        return len(self.table)

    def draw(self, index: int) -> tuple[int, int]:
        """(row, start frame) of draw `index`; with a latent table, (row, cached window)."""
        epoch, position = divmod(index, len(self.table))
        row = int(_rng(self.seed, epoch).permutation(len(self.table))[position])
        if self.latent_table is not None:
            return row, int(_rng(self.seed, epoch, position, 1).integers(0, self.windows_per_clip))
        # NVIDIA draws from {0 .. total-94}; we draw from {0 .. total-num_frames} (docs/recipe.md, Data).
        last_start = int(self.frame_counts[row]) - self.num_frames
        return row, int(_rng(self.seed, epoch, position, 1).integers(0, last_start + 1))

    def replacement_draw(self, index: int, attempt: int) -> tuple[int, int]:
        """(row, start) standing in for draw `index` after `attempt` failed decodes: a pure function of both."""
        rng = _rng(self.seed, index, attempt, 2)
        row = int(rng.integers(0, len(self.table)))
        return row, int(rng.integers(0, int(self.frame_counts[row]) - self.num_frames + 1))

    def __getitem__(self, index: int) -> dict:
        row_index, position = self.draw(index)
        if self.latent_table is not None:
            pixels = {"latents": self.latent_table[row_index * self.windows_per_clip + position]["latents"]}
            skipped = []
        else:
            row_index, position, frames, skipped = self._decode_with_replacements(index, row_index, position)
            pixels = {"video": resize_frames(frames, self.height, self.width)}
        row = self.table[row_index]
        return {
            **pixels,
            "t5_text_embeddings": pad_embedding(row[T5_COLUMN], self.max_text_tokens),
            "fps": torch.tensor(row["fps"], dtype=torch.float32),
            "frame_start": position,
            "video_path": row["video_path"],
            "caption": row["caption"],
            "skipped_clips": "\n".join(skipped),
        }

    def _decode_with_replacements(self, index: int, row: int, start: int):
        skipped: list[str] = []
        for attempt in range(MAX_REPLACEMENTS + 1):
            path = self.table[row]["video_path"]
            try:
                return row, start, read_frames(path, start, self.num_frames), skipped
            except ClipDecodeError as exc:
                # Reported here, in whichever DataLoader worker meets it; the trainer collects `skipped`.
                logger.warning("Skipping a clip at draw %d: %s", index, exc)
                skipped.append(path)
                row, start = self.replacement_draw(index, attempt)
        raise ClipDecodeError(
            f"draw {index}: {MAX_REPLACEMENTS + 1} clips in a row failed to decode (last: {skipped[-1]}); "
            f"check the dataset folder: most of its videos seem broken."
        )


class DrawSampler:
    """This rank's draw indices from optimizer step `start_step` on (see the module docstring).

    Step s, micro-step m, rank r, slot b reads draw `((s * accum + m) * world + r) * batch + b`: the global
    stream is split across ranks without gaps or overlap, and starts mid-run without replaying anything.
    """

    def __init__(self, start_step: int, end_step: int, accum: int, world: int, rank: int, batch: int):
        self.steps, self.accum, self.world, self.rank, self.batch = (
            range(start_step, end_step),
            accum,
            world,
            rank,
            batch,
        )

    def __iter__(self):
        for step in self.steps:
            for micro in range(self.accum):
                first = ((step * self.accum + micro) * self.world + self.rank) * self.batch
                yield from range(first, first + self.batch)

    def __len__(self) -> int:
        return len(self.steps) * self.accum * self.batch

    def step_batches(self, samples: torch.utils.data.Dataset, num_workers: int, pin_memory: bool):
        """Batches of `samples` read through a DataLoader, grouped into one list of micro-batches per step.

        The DataLoader is not `accelerator.prepare`d: this sampler already splits the stream by rank, and
        accelerate's skip-ahead on resume would decode every skipped clip again.
        """
        loader = torch.utils.data.DataLoader(
            samples,
            batch_size=self.batch,
            sampler=self,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,
        )
        batches = iter(loader)
        for _ in self.steps:
            yield [next(batches) for _ in range(self.accum)]

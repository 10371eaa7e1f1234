"""The data section: the clips, the samples cut from them and how they are read (`data/`, the latent cache)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...choices import MAX_TEXT_TOKENS
from ...models.sample_shape import check_sample_shape
from ...utils.flags import Flags, flag

# The sides a sample may have, in pixels (the largest NVIDIA's models take is 1280).
SIDE_PIXELS = (16, 2048)


def parse_resolution(resolution: str) -> tuple[int, int]:
    """(height, width) of `--resolution`: `N` (a square, as diffusers' examples) or `HxW`."""
    parts = resolution.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ValueError(f"--resolution {resolution!r}: pass one size (512) or height x width (704x1280).")
    height, width = (int(parts[0]), int(parts[-1]))
    if not (SIDE_PIXELS[0] <= min(height, width) and max(height, width) <= SIDE_PIXELS[1]):
        raise ValueError(
            f"--resolution {resolution!r}: each side must be {SIDE_PIXELS[0]} to {SIDE_PIXELS[1]} pixels "
            f"(NVIDIA's 720p is 704x1280)."
        )
    return height, width


@dataclass(frozen=True)
class DataConfig(Flags):
    """The clips, the samples cut from them and how they are read (`data/`, the latent cache)."""

    dataset_path: str | None = flag(None, "NVIDIA-layout dataset folder (default: the built-in sample clips)")
    dataset_name: str | None = flag(
        None,
        "a datasets video folder (clips and a metadata.csv with file_name and caption columns; local or a Hub "
        "dataset repo), or a Hub dataset repo in NVIDIA's layout (videos/, metas/, t5_xxl/)",
    )
    dataset_config_name: str | None = flag(
        None, "with --dataset_name: the folder of the repo that holds the NVIDIA layout (a subset, in datasets' terms)"
    )
    video_column: str = flag("video", "a video folder's column of clips (datasets names it video, from file_name)")
    caption_column: str = flag(
        "text", "a video folder's column of captions, encoded by the base's T5 once, then cached"
    )
    max_sequence_length: int = flag(
        512, "T5 tokens a caption or validation prompt is encoded to (NVIDIA's 512; embeddings are zero-padded to 512)"
    )
    num_frames: int = flag(None, "frames per sample (default 93)", at_least=1, at_most=1001)
    height: int = flag(None, "sample height (default 704)", at_least=SIDE_PIXELS[0], at_most=SIDE_PIXELS[1])
    width: int = flag(None, "sample width (default 1280)", at_least=SIDE_PIXELS[0], at_most=SIDE_PIXELS[1])
    resolution: str | None = flag(None, "sample size as diffusers' examples give it: N (N x N) or HxW, e.g. 704x1280")
    batch_size: int = flag(1, "clips per GPU per micro-step", aliases=["--train_batch_size"], at_least=1, at_most=256)
    dataloader_num_workers: int = flag(2, "DataLoader worker processes", at_least=0, at_most=256)
    seed: int = flag(0, "seed of data order, frame windows, noise and dropout")
    cache_latents: bool = flag(
        False,
        "encode --cache_windows_per_clip seeded frame windows of each clip once (a cached datasets .map on the "
        "GPU) and train on their latents instead of running the VAE every step",
    )
    cache_windows_per_clip: int = flag(
        4, "with --cache_latents: windows per clip, each draw picks one at random", at_least=1, at_most=64
    )
    max_skipped_clips: int | None = flag(
        None,
        "stop when more clips than this fail to decode at sample time (default: 10%% of the clips, at least 1)",
        at_least=0,
    )

    def check(self) -> None:
        super().check()
        if self.dataset_path and Path(self.dataset_path).is_symlink() and not Path(self.dataset_path).exists():
            raise ValueError(
                f"--dataset_path {self.dataset_path} is a link that loops or leads nowhere: pass the folder holding "
                f"videos/ and metas/."
            )
        # The sizes given (the preset fills in the rest when the run is resolved, and this checks them again).
        check_sample_shape(
            self.num_frames or 1, self.height or 16, self.width or 16, "--num_frames", "--height and --width"
        )
        if self.resolution:
            if self.height or self.width:
                raise ValueError("--resolution sets --height and --width: pass one or the other.")
            parse_resolution(self.resolution)
        if self.dataset_config_name and not self.dataset_name:
            raise ValueError("--dataset_config_name picks a folder of --dataset_name's repo: pass --dataset_name too.")
        if not 1 <= self.max_sequence_length <= MAX_TEXT_TOKENS:
            raise ValueError(
                f"--max_sequence_length {self.max_sequence_length}: T5 reads 1 to {MAX_TEXT_TOKENS} tokens (the "
                f"embeddings the transformer was trained on are {MAX_TEXT_TOKENS} long)."
            )
        if self.dataset_name and self.dataset_path:
            raise ValueError("--dataset_name downloads the dataset --dataset_path names locally: pass one of them.")

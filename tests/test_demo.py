"""The demo a newcomer runs (`make demo`) and the tiny model the package ships for it."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from conftest import ONE_CPU_PROCESS, accelerate_launch
from PIL import Image

from cosmos_v2w_diffusers.cli.tiny_model import eval_windows, frame_weighted_mean, reconstruction_psnr
from cosmos_v2w_diffusers.data.demo_clips import export_clip, render_clip
from cosmos_v2w_diffusers.data.samples import read_frames
from cosmos_v2w_diffusers.models.components import load_text_encoder, load_vae
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.models.text_encoding import embed_prompts

REPO = Path(__file__).resolve().parents[1]


def test_exported_clips_keep_their_colours(tmp_path):
    """uint8 frames straight into diffusers' export_to_video are multiplied by 255 and wrap around."""
    frames = render_clip(17, 64, 112, seed=0)
    export_clip(frames, tmp_path / "clip.mp4")
    decoded = read_frames(str(tmp_path / "clip.mp4"), 0, 17).permute(0, 2, 3, 1).numpy().astype(float)
    assert np.abs(decoded - np.stack(frames)).mean() < 6  # mp4 compression only


@pytest.mark.slow  # 9 s; `make test` keeps the VAE's check on the robot clip (below)
def test_the_shipped_tiny_vae_reconstructs_footage_it_never_saw(video_paths):
    """The whole of a real clip the VAE never saw (all 14 of `bikes.mp4`'s 17-frame windows, as `cli/tiny_model.py`
    reports it), and a demo clip. A random VAE of the same shape scores 10.7 and 11.2 dB; the shipped one 24.23
    and 42.1 dB (issue 20's aim: 24 dB on the real clip). The VAEs shipped before: 23.81 and 22.94 dB on the real
    clip, and 19.83 with the real one's 8x spatial compression."""
    vae = load_vae(get_preset("tiny"))
    demo = torch.from_numpy(np.stack(render_clip(17, 64, 112, seed=99))).permute(3, 0, 1, 2)[None]
    assert reconstruction_psnr(vae, eval_windows(str(video_paths["bikes"]))) >= 24
    assert reconstruction_psnr(vae, demo) > 40


def test_the_shipped_tiny_vae_keeps_the_robot_in_the_frame_video2world_continues():
    """The first frame, which the Wan VAE encodes alone and the demo conditions on: in 20 clips the demo never
    trained on, the reconstructed frame shows the teal square within 1 pixel of where it was drawn (the
    shipped VAE: 0.23 pixels at most). The VAE shipped before, with 8x spatial compression, found it within 4
    pixels in 15 of the 20, a blurred blob in the other 5."""
    from cosmos_v2w_diffusers.cli.demo import robot_distance
    from cosmos_v2w_diffusers.cli.tiny_model import reconstruct

    vae = load_vae(get_preset("tiny"))
    # The first frames alone: the causal VAE encodes and decodes frame 0 from itself only, as in a whole clip.
    clips = torch.stack(
        [torch.from_numpy(np.stack(render_clip(17, 64, 112, seed=s)[:1])).permute(3, 0, 1, 2) for s in range(16, 36)]
    )
    distances = [
        robot_distance(decoded.float() / 255, drawn.float() / 255)
        for drawn, decoded in zip(clips[:, :, 0], reconstruct(vae, clips)[:, :, 0])
    ]
    assert all(distance is not None and distance < 1 for distance in distances), distances


def test_the_tiny_vae_loss_weighs_the_first_frame_as_several():
    """The conditioning frame's error counts `first_frame_weight` times; weight 1 is the plain mean."""
    errors = torch.ones(2, 3, 5, 4, 4)
    errors[:, :, 0] = 6.0  # the first frame's error; the other four frames' are 1
    assert frame_weighted_mean(errors, 1.0) == pytest.approx(errors.mean())
    assert frame_weighted_mean(errors, 4.0) == pytest.approx((4 * 6 + 4 * 1) / 8)


def test_the_tiny_text_encoder_tells_prompts_apart():
    tokenizer, encoder = load_text_encoder("tiny")
    robot, car, empty = embed_prompts(
        ["A video of sks teal robot.", "A red car drives on a road.", ""], tokenizer, encoder, 512
    )
    first_tokens = slice(0, 8)
    assert (robot[first_tokens] - car[first_tokens]).norm() > 0.5 * robot[first_tokens].norm()
    assert (robot - empty).norm() > 0.5 * robot.norm()


@pytest.mark.slow  # 62 s on 2 cores: five subprocesses of the README's demo path. `make test` keeps its parts: the
# trainer (test_training.py), the generation CLI (test_pipeline.py's test_cli_writes_a_playable_mp4), the metrics
# (the robot tests below)
def test_make_demo_writes_a_video_a_comparison_and_metrics_and_a_rerun_is_complete(tmp_path):
    """The two commands of `make demo`, with fewer steps."""
    run_dir = tmp_path / "outputs" / "demo" / "run"
    train = accelerate_launch(
        *ONE_CPU_PROCESS,
        str(REPO / "train_video2world.py"),
        "--model",
        "tiny",
        "--output_dir",
        str(run_dir),
        "--cache_latents",
        "--cache_windows_per_clip",
        "1",
        "--max_iter",
        "20",
        "--save_iter",
        "10",
    )
    demo = [
        sys.executable,
        "-m",
        "cosmos_v2w_diffusers.cli.demo",
        "--run_dir",
        str(run_dir),
        "--output_dir",
        "outputs/demo",
    ]
    result = subprocess.run(train, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Mean loss of the first" in result.stderr
    shown = subprocess.run(demo, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr[-3000:]

    out = tmp_path / "outputs" / "demo"
    metrics = json.loads((out / "demo_metrics.json").read_text())
    # The recorded PSNR is the written video's against the held-out clip: recomputed here from the two files
    # (decoded by decord, compared with numpy), within the MP4 encoding's loss.
    frames = read_frames(str(out / "generated.mp4"), 0, 17)
    real = decord.VideoReader(metrics["held_out_clip"], ctx=decord.cpu(0)).get_batch(list(range(17))).asnumpy()
    generated = frames.permute(0, 2, 3, 1).numpy()
    assert real.shape == generated.shape
    mse = np.mean((generated[1:].astype(np.float64) / 255 - real[1:].astype(np.float64) / 255) ** 2)
    assert abs(10 * np.log10(1 / mse) - metrics["psnr_after"]) < 1.0, (10 * np.log10(1 / mse), metrics)
    assert metrics["psnr_before"] != metrics["psnr_after"]
    assert {"robot_error_px_before", "robot_error_px_after"} <= metrics.keys()
    assert frames.shape[0] == 17 and frames.float().std() > 1
    preset = get_preset("tiny")
    comparison = Image.open(out / "comparison.png")
    assert comparison.height >= 3 * preset.height and comparison.width >= 5 * preset.width
    for name in ("generated.mp4", "comparison.png", "demo_metrics.json", "infer_video2world.py"):
        assert name in shown.stdout

    # The printed next command makes the demo's video again.
    command = shlex.split(shown.stdout.split("Next:")[1].splitlines()[1])
    # with the interpreter that ran the demo (`.venv/bin/python` under `make demo`), as a path from where it ran
    assert (
        os.path.samefile(os.path.join(tmp_path, command[0]), sys.executable) and command[1] == "infer_video2world.py"
    )
    command[:2] = [sys.executable, str(REPO / "infer_video2world.py")]
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    mine = read_frames(str(out / "my_video.mp4"), 0, 17).float()
    assert (mine - frames.float()).abs().mean() < 1.0  # the same frames, through the same MP4 encoder

    (out / "generated.mp4").unlink()
    again = subprocess.run(train, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already complete" in again.stderr
    assert subprocess.run(demo, cwd=tmp_path, capture_output=True, text=True, timeout=600).returncode == 0
    assert (out / "generated.mp4").is_file()


def test_the_robot_is_found_where_it_was_drawn_and_missed_where_it_is_gone():
    from cosmos_v2w_diffusers.cli.demo import robot_centre, robot_error
    from cosmos_v2w_diffusers.data.demo_clips import render_clip

    frames = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in render_clip(17, 64, 112, 3)])
    side = 16
    for frame in frames:
        teal = (frame[1] == 128 / 255) & (frame[0] == 0)
        rows, cols = teal.nonzero(as_tuple=True)
        assert len(rows) == side * side
        centre = robot_centre(frame)
        assert centre == pytest.approx((float(rows.float().mean()), float(cols.float().mean())))
    assert robot_error(frames, frames) == 0.0
    shifted = torch.roll(frames, shifts=(3, 4), dims=(2, 3))
    assert robot_error(shifted, frames) == pytest.approx(5.0, abs=1e-4)
    floor = frames.clone()
    teal = (frames[0, 1] - frames[0, 0]) > 0.15
    empty_column = int(teal.any(dim=0).logical_not().nonzero()[0])
    floor[-1] = frames[0, :, :, empty_column : empty_column + 1].expand_as(frames[-1])  # the floor alone
    assert robot_centre(floor[-1]) is None and robot_error(floor, frames) is None

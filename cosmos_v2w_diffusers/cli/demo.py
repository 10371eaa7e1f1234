"""The demo's last act: what post-training changed, as a video, a picture and two numbers.

`make demo` post-trains the tiny model on the built-in sample clips (`train_video2world.py --model tiny`),
then runs this module. It continues the first frame of a clip the run never saw, once with the transformer
the run started from and once with the post-trained EMA weights, and writes to `--output_dir`:

- `generated.mp4`: the post-trained model's continuation;
- `comparison.png`: frames 0, 4, 8, 12 and 16 of the real clip, of the continuation before post-training,
  and after;
- `demo_metrics.json`: `psnr_before` and `psnr_after`, the PSNR (dB) of the generated frames against
  the real continuation (the conditioning frame left out), and `robot_error_px_before`/`_after`, how far (in
  pixels) the square's centre in the last generated frame is from the real one's (null where it is gone);
- `first_frame.png`: the frame it continues. The generation is the one `infer_video2world.py` makes from it
  (NVIDIA's initial noise from `--seed`), so the printed command reproduces `generated.mp4`.

With `--student_dir` (`make demo-distill`: the post-trained model distilled into a 4-step student), a third row
"distilled" in `comparison.png` and `psnr_distilled` / `robot_error_px_distilled` in `demo_metrics.json`: the
student's continuation of the same frame from the same noise, in its 4 steps.

    python -m cosmos_v2w_diffusers.demo --run_dir outputs/demo/run --output_dir outputs/demo
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import CosmosTransformer3DModel
from diffusers.utils import export_to_video
from PIL import Image, ImageDraw

from ..data.builtin_sample import held_out_clip_path
from ..data.demo_clips import DEMO_PROMPT, robot_side
from ..data.samples import read_frames, resize_frames
from ..generation.inputs import nvidia_initial_noise
from ..generation.pipeline import CosmosVideo2WorldPipeline
from ..generation.video_metrics import psnr
from ..models.components import tiny_pretrained_path
from ..models.presets import ModelPreset, get_preset
from ..models.sample_shape import latent_shape

logger = logging.getLogger(__name__)

# Classifier-free guidance of the demo's generations: none (1, as in diffusers). NVIDIA's 7 amplifies the tiny
# model's errors into stripes (measured on the held-out clip, PSNR before -> after post-training: 12 -> 18 dB at
# 7; without guidance 21.4 -> 27.0 dB, on an earlier tiny model and sample).
GUIDANCE_SCALE = 1.0
# Frames shown side by side in comparison.png.
SHOWN_FRAMES = (0, 4, 8, 12, 16)


# A pixel is the robot's where green and blue both exceed red by this much (of 1): the square is (0, 0.5, 0.5),
# and the floor's tint keeps its red above its green.
ROBOT_MARGIN = 0.15


def robot_centre(frame: torch.Tensor) -> tuple[float, float] | None:
    """The (row, column) centre of the teal square in `frame` (`[3, H, W]` in [0, 1]), or None where fewer pixels
    than a quarter of its area look teal (the square is gone)."""
    red, green, blue = frame
    teal = ((green - red) > ROBOT_MARGIN) & ((blue - red) > ROBOT_MARGIN)
    side = robot_side(*frame.shape[-2:])
    if int(teal.sum()) < side * side / 4:
        return None
    rows, cols = teal.nonzero(as_tuple=True)
    return float(rows.float().mean()), float(cols.float().mean())


def robot_distance(made: torch.Tensor, truth: torch.Tensor) -> float | None:
    """Pixels between the square's centre in frame `made` and in frame `truth` (`[3, H, W]` in [0, 1]); None where
    either has no square."""
    made_centre, true_centre = robot_centre(made), robot_centre(truth)
    if made_centre is None or true_centre is None:
        return None
    return float(np.hypot(made_centre[0] - true_centre[0], made_centre[1] - true_centre[1]))


def robot_error(generated: torch.Tensor, real: torch.Tensor) -> float | None:
    """`robot_distance` of the last generated frame from the real one (`[T, 3, H, W]`)."""
    return robot_distance(generated[-1], real[-1])


def held_out_clip(preset: ModelPreset) -> torch.Tensor:
    """The first frames of the built-in sample's held-out clip, decoded and resized as training samples are:
    float `[T, 3, H, W]` in [0, 1]."""
    frames = read_frames(str(held_out_clip_path(preset)), 0, preset.num_frames)
    return resize_frames(frames, preset.height, preset.width).permute(1, 0, 2, 3).float() / 255


def first_frame(real: torch.Tensor) -> Image.Image:
    """The frame the demo continues: `real[0]` as an 8-bit image (what a user would pass as --input_path)."""
    return Image.fromarray((real[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def continue_first_frame(pipe: CosmosVideo2WorldPipeline, real: torch.Tensor, seed: int = 0, **kwargs) -> torch.Tensor:
    """The pipeline's continuation of `real[0]`, from NVIDIA's initial noise for `seed` as
    `infer_video2world.py --seed` draws it: float `[T, 3, H, W]` in [0, 1]. `kwargs` replace the pipeline arguments
    (the benchmarks' guidance, say)."""
    frames, _, height, width = real.shape
    shape = (1, *latent_shape(pipe.vae.config, frames, height, width))
    arguments = dict(prompt=DEMO_PROMPT, guidance_scale=GUIDANCE_SCALE, latents=nvidia_initial_noise(seed, shape))
    return (
        pipe(
            image=first_frame(real),
            height=height,
            width=width,
            num_frames=frames,
            output_type="pt",
            **{**arguments, **kwargs},
        )
        .frames[0]
        .cpu()
    )


def comparison_image(
    rows: dict[str, torch.Tensor], frames: tuple[int, ...] = SHOWN_FRAMES, zoom: int = 3
) -> Image.Image:
    """One row of `frames` per video (`[T, 3, H, W]` in [0, 1]), top to bottom in `rows`' order, each frame
    enlarged `zoom` times (nearest neighbour: the pixels as generated), with a label strip on the left."""
    height, width = (zoom * size for size in next(iter(rows.values())).shape[-2:])
    label_width, gap = 64, 4
    canvas = Image.new("RGB", (label_width + len(frames) * (width + gap), len(rows) * (height + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, video) in enumerate(rows.items()):
        top = r * (height + gap)
        draw.text((4, top + height // 2 - 6), label, fill="black")
        for c, index in enumerate(frames):
            tile = (video[index].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(tile).resize((width, height), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_width + c * (width + gap), top))
    return canvas


def run_demo(
    run_dir: str | Path, output_dir: str | Path = "outputs/demo", student_dir: str | Path | None = None
) -> dict:
    """Generate before and after post-training from the held-out clip and write the demo's three files.

    `run_dir` is the tiny run's output folder: its `transformer_ema/` (exported at the end of the run) holds
    the post-trained EMA weights. `student_dir`, a distillation's output folder, adds its student (the exported
    `pipeline/`, sampled as it loads: its few steps, no guidance). Returns the metrics written to
    `demo_metrics.json`.
    """
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    ema_dir = run_dir / "transformer_ema"
    if not (ema_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{ema_dir}: no exported EMA transformer; run `accelerate launch train_video2world.py --model tiny "
            f"--output_dir {run_dir}` to the end first."
        )
    preset = get_preset("tiny")
    real = held_out_clip(preset)
    pipe = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    pipe.set_progress_bar_config(leave=False)  # each generation's steps as they run, gone once done
    logger.info("Continuing the held-out clip's first frame with the shipped model, then with the post-trained one")
    before = continue_first_frame(pipe, real)
    pipe.transformer = CosmosTransformer3DModel.from_pretrained(ema_dir)
    after = continue_first_frame(pipe, real)
    rows = {"real": real, "before": before, "after": after}
    if student_dir is not None:
        student = CosmosVideo2WorldPipeline.from_pretrained(
            str(Path(student_dir) / "pipeline"), disable_guardrail=True
        )
        student.set_progress_bar_config(leave=False)
        steps = student.scheduler.config.num_train_steps
        # The student's own sampling (its steps, no guidance), not the demo's: `guidance_scale=None` lets it choose.
        rows["distilled"] = continue_first_frame(student, real, guidance_scale=None)

    metrics = {
        "psnr_before": psnr(before[1:], real[1:]),
        "psnr_after": psnr(after[1:], real[1:]),
        "robot_error_px_before": robot_error(before, real),
        "robot_error_px_after": robot_error(after, real),
        "held_out_clip": str(held_out_clip_path(preset)),
        "weights_after": str(ema_dir),
    }
    if student_dir is not None:
        distilled = list(rows.values())[-1]
        metrics.update(
            psnr_distilled=psnr(distilled[1:], real[1:]),
            robot_error_px_distilled=robot_error(distilled, real),
            distilled_steps=steps,
            weights_distilled=str(Path(student_dir) / "pipeline"),
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    export_to_video(list(after.permute(0, 2, 3, 1).numpy()), str(output_dir / "generated.mp4"), fps=16)
    comparison_image(rows).save(output_dir / "comparison.png")
    first_frame(real).save(output_dir / "first_frame.png")
    (output_dir / "demo_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--run_dir", type=Path, required=True, help="the tiny run's --output_dir")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument(
        "--student_dir", type=Path, default=None, help="a distillation of the run (make demo-distill): a third row"
    )
    args = parser.parse_args(argv)
    # On stdout: the summary is the command's result, which a newcomer reads and scripts capture.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    metrics = run_demo(args.run_dir, args.output_dir, args.student_dir)
    out = args.output_dir

    def robot(error: float | None) -> str:
        return "gone" if error is None else f"{error:.1f} px off"

    lines = [
        f"\nPSNR of the continuation against the real clip: {metrics['psnr_before']:.2f} dB before post-training, "
        f"{metrics['psnr_after']:.2f} dB after. The robot in the last frame: "
        f"{robot(metrics['robot_error_px_before'])} before, {robot(metrics['robot_error_px_after'])} after."
    ]
    if args.student_dir:
        lines.append(
            f"Distilled into {metrics['distilled_steps']} steps without guidance: {metrics['psnr_distilled']:.2f} dB, "
            f"the robot {robot(metrics['robot_error_px_distilled'])}."
        )
    rows = "real, before, after" + (", distilled" if args.student_dir else "")
    lines += [
        f"  {out / 'generated.mp4'}\n  {out / 'comparison.png'}   (rows: {rows})\n  {out / 'demo_metrics.json'}",
        "Next: this command makes generated.mp4 again; pass any image or video of yours as --input_path:",
        f"  {shlex.quote(os.path.relpath(sys.executable))} infer_video2world.py --model_size tiny "
        f"--dit_path {args.run_dir / 'transformer_ema'} "
        f'--input_path {out / "first_frame.png"} --prompt "{DEMO_PROMPT}" --guidance {GUIDANCE_SCALE:g} --seed 0 '
        f"--disable_guardrail --save_path {out / 'my_video.mp4'}",
    ]
    logger.info("\n".join(lines))


if __name__ == "__main__":
    main()

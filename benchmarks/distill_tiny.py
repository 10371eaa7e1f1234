"""Few-step distillation on the one trained network here (issue 42): the demo's post-trained tiny model as teacher,
a 4-step student distilled from it on the demo's sample clips (CPU), both scored as `make demo` scores.

1. Distil: `train_video2world.py --model tiny --dit_path <teacher run>/checkpoints/model/iter_N.pt --load_ema
   --distill_steps 4 --guidance G`, on the demo's cached latent windows.
2. Score: the teacher (35 steps of NVIDIA's sampler with guidance G: the demo's "after" for G = 1) and the student
   (the exported `pipeline/`, loaded with `CosmosVideo2WorldPipeline.from_pretrained` and called with its
   defaults: 4 steps of its few-step sampler, no guidance) continue the first frame of the held-out clip from
   NVIDIA's noise for seeds 0..3: PSNR against the real continuation and the robot's position error in the last
   frame (`cli/demo.py`), and the student's PSNR against the teacher's video. Seed 0 is the demo's own input; the
   means are over the seeds. Guidance's unconditional side is the zero text embedding, as distilled (the demo
   itself generates without guidance: NVIDIA's negative prompt at 7 turns the tiny model's errors into stripes).
   The control: the teacher itself sampled with the student's 4-step sampler and guidance G (`teacher_4_steps_*`),
   i.e. what distillation adds over simply taking fewer steps.

    make demo   # the teacher: outputs/demo/run
    python -m benchmarks.distill_tiny --teacher_run outputs/demo/run --guidance 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from diffusers import CosmosTransformer3DModel

from benchmarks.common import write_result
from cosmos_v2w_diffusers.cli.demo import continue_first_frame, held_out_clip, robot_error
from cosmos_v2w_diffusers.cli.train import parse_train_flags
from cosmos_v2w_diffusers.data.demo_clips import DEMO_PROMPT
from cosmos_v2w_diffusers.generation.pipeline import CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.generation.scheduler_few_step import CosmosFewStepScheduler
from cosmos_v2w_diffusers.generation.video_metrics import psnr
from cosmos_v2w_diffusers.models.components import tiny_pretrained_path
from cosmos_v2w_diffusers.models.presets import get_preset

SEEDS = (0, 1, 2, 3)


def distil(teacher_checkpoint: Path, output_dir: Path, max_iter: int, guidance: float, extra: list[str]) -> float:
    """Run the distillation (resuming if `output_dir` holds part of it); returns its seconds."""
    from cosmos_v2w_diffusers.training.trainer import Trainer

    argv = [
        "--model", "tiny",
        "--dit_path", str(teacher_checkpoint),
        "--load_ema",
        "--distill_steps", "4",
        "--guidance", str(guidance),
        "--cache_latents",
        "--cache_windows_per_clip", "4",
        "--max_iter", str(max_iter),
        "--output_dir", str(output_dir),
        *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    trainer = Trainer(parse_train_flags(argv))
    trainer.train()
    trainer.close()
    return time.perf_counter() - start


def score(pipe: CosmosVideo2WorldPipeline, real: torch.Tensor, guidance: float | None = None) -> list[torch.Tensor]:
    """`pipe`'s continuation of `real[0]` for each seed (`demo.continue_first_frame`), with `guidance` (None: the
    pipeline's default) against the zero text embedding."""
    text = pipe.encode_prompt(DEMO_PROMPT, do_classifier_free_guidance=False)[0]
    unconditional = dict(prompt_embeds=text, negative_prompt_embeds=torch.zeros_like(text))
    return [continue_first_frame(pipe, real, seed, guidance_scale=guidance, **unconditional) for seed in SEEDS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher_run", type=Path, default=Path("outputs/demo/run"), help="make demo's run folder")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/distill_tiny"))
    parser.add_argument("--max_iter", type=int, default=1000)
    parser.add_argument("--guidance", type=float, default=3.0, help="the teacher's, folded into the student")
    parser.add_argument("--name", default="distill_tiny")
    parser.add_argument("extra", nargs="*", help="more training flags, after --")
    args = parser.parse_args()
    checkpoints = sorted((args.teacher_run / "checkpoints" / "model").glob("iter_*.pt"))
    if not checkpoints or not (args.teacher_run / "transformer_ema" / "config.json").is_file():
        raise SystemExit(f"{args.teacher_run}: no finished tiny run; run `make demo` first.")
    seconds = distil(checkpoints[-1], args.output_dir, args.max_iter, args.guidance, args.extra)

    real = held_out_clip(get_preset("tiny"))
    teacher = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    teacher.transformer = CosmosTransformer3DModel.from_pretrained(args.teacher_run / "transformer_ema")
    student = CosmosVideo2WorldPipeline.from_pretrained(str(args.output_dir / "pipeline"), disable_guardrail=True)
    for pipe in (teacher, student):
        pipe.set_progress_bar_config(disable=True)
    teacher_videos, student_videos = score(teacher, real, args.guidance), score(student, real)
    teacher.scheduler = CosmosFewStepScheduler(student.scheduler.config.num_train_steps)
    control_videos = score(teacher, real, args.guidance)

    def mean(values):
        values = [v for v in values if v is not None]
        return statistics.mean(values) if values else None

    per_seed = [
        {
            "seed": seed,
            "teacher_psnr_db": psnr(t[1:], real[1:]),
            "student_psnr_db": psnr(s[1:], real[1:]),
            "teacher_robot_error_px": robot_error(t, real),
            "student_robot_error_px": robot_error(s, real),
            "student_vs_teacher_psnr_db": psnr(s[1:], t[1:]),
            "teacher_4_steps_psnr_db": psnr(c[1:], real[1:]),
            "teacher_4_steps_robot_error_px": robot_error(c, real),
            "teacher_4_steps_vs_teacher_psnr_db": psnr(c[1:], t[1:]),
        }
        for seed, t, s, c in zip(SEEDS, teacher_videos, student_videos, control_videos)
    ]
    result = {
        "student_steps": student.scheduler.config.num_train_steps,
        "teacher_steps": 35,
        "guidance": args.guidance,
        "distill_iterations": args.max_iter,
        "distill_seconds": round(seconds, 1),
        "device": "cpu",
        "teacher": str(checkpoints[-1]),
        **{key: mean(row[key] for row in per_seed) for key in per_seed[0] if key != "seed"},
        "seed_0": per_seed[0],
        "per_seed": per_seed,
        "command": f"python -m benchmarks.distill_tiny --teacher_run {args.teacher_run} --max_iter {args.max_iter} "
        f"--guidance {args.guidance:g} --name {args.name}",
    }
    write_result(args.name, result)


if __name__ == "__main__":
    main()

"""Seconds per training step, throughput and peak GPU memory, for any trainer configuration.

Every flag after `--` is a `train_video2world.py` flag, so a row of BENCHMARKS.md is exactly the
configuration a user runs; the defaults are the trainer's (bf16, compiled blocks, selective
checkpointing in as many blocks as fit, EMA on the CPU). Weights are random (nothing can be
downloaded on the benchmark machine); timing does not depend on their values.

    python benchmarks/train_step.py --name train_step_2b_full_cached --steps 3 -- --model 2B --cache_latents
    python benchmarks/train_step.py --name lora_720p_low_vram --memory_fraction 0.30 -- \
        --model 2B --train_architecture lora --low_vram

`--save_checkpoint` times one checkpoint after the steps (then deletes it) and checks what it holds: under
DeepSpeed or FSDP that is the gathering of every shard into NVIDIA's layout.

`--memory_fraction` caps the process with `torch.cuda.set_per_process_memory_fraction`, to show that a
configuration fits a smaller card. The first step (compilation, allocator warm-up) is left out of the
median. The latent cache is built before the timed steps; its time is reported apart.

Several GPUs: start it with accelerate (`accelerate launch --num_processes 4 [--config_file ...]
benchmarks/train_step.py ...`). The row then counts the clips of a step over every data-parallel rank,
the GPU-seconds per clip (`seconds * num_gpus / clips_per_step`, the figure that compares layouts), and
the highest peak of any rank.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from diffusers import AutoencoderKLWan
from filelock import FileLock
from torch.profiler import ProfilerActivity

from benchmarks.common import make_dataset, write_result
from cosmos_v2w_diffusers.cli.train import parse_train_flags
from cosmos_v2w_diffusers.models.components import build_transformer
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.training.metrics import throughput_summary
from cosmos_v2w_diffusers.training.run_config import resolve
from cosmos_v2w_diffusers.training.trainer import Trainer


def write_profile(name: str, profiler: torch.profiler.profile) -> None:
    """The profiled step's busiest ops, by GPU time and by CPU time, as text beside the JSON result (rank 0)."""
    if PartialState().process_index != 0:
        return
    averages = profiler.key_averages()
    text = "\n\n".join(
        averages.table(sort_by=key, row_limit=40, max_name_column_width=90)
        for key in ("self_cuda_time_total", "cpu_time_total")
    )
    folder = Path(os.environ.get("OUT") or Path(__file__).parent / "results")
    (folder / f"{name}_profile.txt").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True, help="result file name (benchmarks/results/<name>.json)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--workdir", default="/tmp/cosmos_bench", help="weights and data are made here once")
    parser.add_argument("--data", default=None, help="an NVIDIA-layout folder of clips (default: rendered here)")
    parser.add_argument("--memory_fraction", type=float, default=None)
    parser.add_argument("--save_checkpoint", action="store_true", help="time one checkpoint after the steps")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one more step after the timed ones with torch.profiler: <name>_profile.txt beside the JSON",
    )
    argv = sys.argv[1:]
    ours, trainer_argv = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    logging.basicConfig(level=logging.INFO)

    config = parse_train_flags(trainer_argv)
    resolved = resolve(config)
    preset = get_preset(resolved.model)
    work = Path(args.workdir)
    weights = work / f"weights_{preset.short_name}"
    work.mkdir(parents=True, exist_ok=True)
    # One process makes the weights and clips, the others read them: the ranks of one launch, and the separate
    # runs that share a host, one a GPU (gpu_session.sh workstation), which accelerate's main_process_first
    # cannot order, so a file lock does.
    with PartialState().main_process_first(), FileLock(work / f"weights_{preset.short_name}.lock"):
        if not (weights / "transformer").exists():
            # Initialised on the GPU: a 14B model's fp32 initialisation on the CPU takes minutes.
            build_transformer(preset, "cuda").to(torch.bfloat16).save_pretrained(weights / "transformer")
            AutoencoderKLWan().save_pretrained(weights / "vae")
        data = (
            Path(args.data)
            if args.data
            else make_dataset(
                work / "data", 2, resolved.num_frames + 8, resolved.height, resolved.width, preset.text_embed_dim
            )
        )
    if args.memory_fraction:  # after the weights: 14B's fp32 initialisation takes 56 GB on the GPU
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(args.memory_fraction)
    config = config.replace(
        pretrained_model_name_or_path=str(weights),
        dataset_path=str(data),
        output_dir=str(work / "runs" / args.name),
        max_iter=args.steps + 1 + args.profile,
        save_iter=10**6,  # no checkpoint inside the timed steps (the last step still writes one; not timed)
        resume=False,
        dataloader_num_workers=4,
    )

    setup_start = time.perf_counter()
    trainer = Trainer(config)
    setup_seconds = time.perf_counter() - setup_start
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**30
    times, losses = [], []
    batches = trainer._micro_batches()
    for step in range(args.steps + 1 + args.profile):
        micro = next(batches)
        torch.cuda.synchronize()
        profiling = step == args.steps + 1  # one more step after the timed ones, left out of them
        profiler = (
            torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) if profiling else None
        )
        if profiler:
            profiler.start()
        start = time.perf_counter()
        loss = trainer.train_step(step, micro)
        # An overlapped CPU EMA update runs on while the next step starts, as in training; the next update
        # waits for it, so any part of it that the step does not hide is counted there.
        torch.cuda.synchronize()
        if profiler:
            profiler.stop()
            write_profile(args.name, profiler)
            continue
        times.append(time.perf_counter() - start)
        losses.append(loss)
        print(f"step {step}: {times[-1]:.3f} s, loss {loss:.4f}", flush=True)
    c, plan, accelerator = trainer.config, trainer.plan, trainer.accelerator
    checkpoint = save_and_check_checkpoint(trainer, args.steps + 1) if args.save_checkpoint else None
    clips_per_step = trainer.dims.clips_per_step(c.batch_size, c.gradient_accumulation_steps)
    num_gpus = accelerator.num_processes
    summary = throughput_summary(
        times, clips_per_step, num_gpus, trainer._unwrapped().config, trainer.tokens, trainer.device
    )
    peak = float(accelerator.gather(torch.tensor([summary["peak_memory_gib"]], device=trainer.device)).max())
    # The launch command, as benchmarks/multi_gpu.sh passes it (the script alone when run with python).
    launcher = os.environ.get("BENCH_LAUNCHER", "python")
    if accelerator.is_main_process:
        write_result(
            args.name,
            {
                "command": f"{launcher} benchmarks/train_step.py " + " ".join(argv),
                "date": time.strftime("%Y-%m-%d"),
                "model": preset.name,
                "sample": [c.num_frames, c.height, c.width],
                "tokens": trainer.tokens,
                "num_gpus": num_gpus,
                "distributed_type": str(accelerator.distributed_type),
                "context_parallel_size": c.context_parallel_size,
                "clips_per_step": clips_per_step,
                "train_architecture": c.train_architecture,
                "mixed_precision": plan.mixed_precision,
                "compile": plan.compile,
                "attention_backend": plan.attention_backend,
                "activation_checkpointing": c.activation_checkpointing,
                "selective_blocks": plan.selective_blocks,
                "ema_device": plan.ema_device if c.ema else None,
                "cache_latents": c.cache_latents,
                "low_vram": c.low_vram,
                "memory_fraction": args.memory_fraction,
                "setup_seconds_incl_latent_cache": round(setup_seconds, 1),
                "seconds": round(summary["s_per_step"], 3),
                "seconds_per_step_all": [round(t, 3) for t in times],
                "gpu_seconds_per_clip": round(summary["s_per_step"] * num_gpus / clips_per_step, 3),
                "peak_gib": round(peak, 2),
                "resident_before_step_gib": round(before, 2),
                "model_tflops_per_s": round(summary["model_tflops_per_s_per_device"], 1),
                "losses": [round(x, 5) for x in losses],
                "checkpoint": checkpoint,
            },
        )
    trainer.close()


def save_and_check_checkpoint(trainer: Trainer, iteration: int) -> dict:
    """Seconds to write checkpoint `iteration`, its size, and whether it holds every trainable tensor as an
    fp32 master, with its AdamW moments; the folder is deleted afterwards (a 2B checkpoint is ~36 GB)."""
    start = time.perf_counter()
    trainer._save(iteration, force=True)  # a collective: every rank saves, the main process writes
    seconds = time.perf_counter() - start
    if not trainer.accelerator.is_main_process:
        return {}
    folder = trainer.checkpointer.folder
    sizes = {part: folder.path(part, iteration).stat().st_size / 2**30 for part in ("model", "optim")}
    optim = torch.load(folder.path("optim", iteration), weights_only=True, mmap=True)
    model = torch.load(folder.path("model", iteration), weights_only=True, mmap=True)
    masters, moments = optim["master_weights"], optim["optimizer"]["state"]
    result = {
        "seconds": round(seconds, 1),
        "gib": {part: round(size, 2) for part, size in sizes.items()},
        "masters_fp32_complete": set(masters) == set(trainer.trainable)
        and all(t.dtype == torch.float32 for t in masters.values()),
        "moments_complete": set(moments) == set(trainer.trainable)
        and all({"exp_avg", "exp_avg_sq", "step"} <= set(m) for m in moments.values()),
        "net_tensors_bf16": sum(k.startswith("net.") and v.dtype == torch.bfloat16 for k, v in model.items()),
        "net_ema_tensors_fp32": sum(k.startswith("net_ema.") and v.dtype == torch.float32 for k, v in model.items()),
    }
    del optim, model, masters, moments
    shutil.rmtree(folder.root)
    return result


if __name__ == "__main__":
    main()

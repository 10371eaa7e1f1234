"""Seconds for a whole guided generation (35 steps + the final x0: 72 transformer forwards, VAE encode and
decode) of the 2B model at 720p, 93 frames, through `CosmosVideo2WorldPipeline`, compiled by default as
`infer_video2world.py` is on CUDA. Compilation is timed apart, in a one-step warm-up call.

Random weights and random text embeddings (nothing can be downloaded here); bf16 throughout.

    python benchmarks/inference.py --model 2B             # --no-compile for diffusers' transformer as is
    torchrun --nproc_per_node 4 benchmarks/inference.py --num_gpus 4 [--guidance_parallel]
    python benchmarks/inference.py --model 14B --steps 8   # a long run's time from fewer steps (seconds_at_35_steps)
    python benchmarks/inference.py --student_steps 4 --name generation_2b_720p_distilled   # a distilled student

With `--num_gpus N`, the pipeline is set up as `infer_video2world.py --num_gpus N` sets it up: context
parallelism over the N ranks, or guidance-parallel pairs of N / 2 context-parallel ranks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import PIL.Image
import torch
import torch.distributed as dist
from diffusers import AutoencoderKLWan

from benchmarks.common import write_result
from cosmos_v2w_diffusers import CosmosFewStepScheduler, CosmosMultistepScheduler, CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.generation.cuda_graphs import WARMUP_CALLS, enable_cuda_graphs
from cosmos_v2w_diffusers.generation.long_video import generate_long_video
from cosmos_v2w_diffusers.generation.runner import generation_dims, offload_transformer_blocks, process_device
from cosmos_v2w_diffusers.models.attention import BACKENDS, set_attention_backend
from cosmos_v2w_diffusers.models.compile import compile_blocks
from cosmos_v2w_diffusers.models.components import build_transformer
from cosmos_v2w_diffusers.models.latents import use_channels_last_3d
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.models.sample_shape import latent_tokens
from cosmos_v2w_diffusers.parallel.context_parallel import enable_context_parallel
from cosmos_v2w_diffusers.utils.allocator import set_allocator_defaults


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="2B")
    parser.add_argument("--steps", type=int, default=None, help="default: 35, or --student_steps")
    parser.add_argument(
        "--student_steps",
        type=int,
        default=None,
        help="a distilled student's generation: its few-step sampler (CosmosFewStepScheduler) for this many steps, "
        "no guidance, no final x0 evaluation",
    )
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--cuda_graphs", action="store_true", help="as infer_video2world.py's --use_cuda_graphs")
    parser.add_argument(
        "--num_chunks",
        type=int,
        default=1,
        help="as infer_video2world.py's: a long video of this many chunks (`generate_long_video`), each chunk's new "
        "frames dropped as made, as the video writer takes them",
    )
    parser.add_argument("--attention_backend", default="auto", choices=BACKENDS)
    parser.add_argument("--num_gpus", type=int, default=1, help="as infer_video2world.py's, under torchrun")
    parser.add_argument("--guidance_parallel", action="store_true", help="as infer_video2world.py's")
    parser.add_argument("--offload_model", action="store_true", help="as infer_video2world.py's (model CPU offload)")
    parser.add_argument("--group_offload", action="store_true", help="as infer_video2world.py's")
    parser.add_argument("--height", type=int, default=None, help="default: the preset's (704)")
    parser.add_argument("--width", type=int, default=None, help="default: the preset's (1280)")
    parser.add_argument(
        "--memory_fraction",
        type=float,
        default=None,
        help="cap the process with torch.cuda.set_per_process_memory_fraction once the weights are built, to show "
        "that generation fits a smaller card",
    )
    args = parser.parse_args()
    args.steps = args.steps or args.student_steps or 35
    set_allocator_defaults()  # as infer_video2world.py
    preset = get_preset(args.model)
    height, width = args.height or preset.height, args.width or preset.width
    device = process_device(args.num_gpus)
    torch.manual_seed(0)  # every rank builds the same random weights
    pipe = CosmosVideo2WorldPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=build_transformer(preset, device).to(torch.bfloat16),
        vae=AutoencoderKLWan().to(device, torch.bfloat16),
        scheduler=CosmosFewStepScheduler(args.student_steps) if args.student_steps else CosmosMultistepScheduler(),
        disable_guardrail=True,
    )
    if args.memory_fraction:  # after the weights: 14B's fp32 initialisation takes 56 GB on the GPU
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(args.memory_fraction)
    torch.backends.cudnn.benchmark = True  # as infer_video2world.py sets it on CUDA, with channels-last VAE weights
    use_channels_last_3d(pipe.vae)
    backend = set_attention_backend(pipe.transformer, args.attention_backend, device)
    dims = generation_dims(args.num_gpus, args.guidance_parallel)
    if dims.cp > 1:
        tokens = latent_tokens(preset.num_frames, height, width)
        enable_context_parallel(pipe.transformer, dims, device, tokens)
    if dims.guidance_parallel:
        pipe.enable_guidance_parallel(dims.guidance_group())
    if args.compile:
        compile_blocks(pipe.transformer)
    if args.cuda_graphs:
        enable_cuda_graphs(pipe.transformer)
    if args.offload_model:  # as infer_video2world.py: each component on the GPU only while it computes
        pipe.enable_model_cpu_offload(device=device)
    if args.group_offload:  # as infer_video2world.py: the transformer's blocks streamed from the CPU
        offload_transformer_blocks(pipe.transformer.to("cpu"), device)
    text = torch.randn(1, 512, preset.text_embed_dim, device=device, dtype=torch.bfloat16)
    image = PIL.Image.new("RGB", (width, height), (0, 128, 128))
    kwargs = dict(
        image=image,
        prompt_embeds=text,
        negative_prompt_embeds=text.flip(1),
        guidance_scale=1.0 if args.student_steps else 7.0,
        height=height,
        width=width,
        num_frames=preset.num_frames,
        generator=torch.Generator(device).manual_seed(0),
    )

    launcher = f"torchrun --nproc_per_node {args.num_gpus}" if args.num_gpus > 1 else "python"
    # Compilation apart: a one-step call compiles the blocks (and warms cuDNN); then the whole generation.
    torch.cuda.synchronize()
    start = time.perf_counter()
    # With CUDA graphs, enough forwards to warm up and record (`cuda_graphs.WARMUP_CALLS`, then the recording).
    pipe(num_inference_steps=WARMUP_CALLS + 1 if args.cuda_graphs else 1, output_type="latent", **kwargs)
    torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    step_ends = []

    def time_step(pipe, step, timestep, callback_kwargs):
        torch.cuda.synchronize()
        step_ends.append(time.perf_counter())
        return callback_kwargs

    start = time.perf_counter()
    if args.num_chunks == 1:
        pipe(num_inference_steps=args.steps, output_type="np", callback_on_step_end=time_step, **kwargs)
    else:  # NVIDIA's seeds and hand-off; each chunk's new frames dropped as made (the writer's memory is the CPU's)
        del kwargs["generator"]
        frames: list[int] = []
        generate_long_video(
            pipe,
            args.num_chunks,
            num_inference_steps=args.steps,
            callback_on_step_end=time_step,
            on_chunk=lambda new: frames.append(len(new)),
            **kwargs,
        )
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    # A denoising step (two guided forwards): the median of the steps after the first, which also encodes the image.
    per_step = statistics.median(b - a for a, b in zip(step_ends, step_ends[1:])) if args.steps > 2 else None
    if args.num_gpus > 1 and dist.get_rank() != 0:
        return
    write_result(
        args.name or f"generation_{preset.short_name}_720p" + ("_compiled" if args.compile else ""),
        {
            "command": launcher + " benchmarks/inference.py " + " ".join(sys.argv[1:]),
            "model": preset.name,
            "sample": [preset.num_frames, height, width],
            "num_inference_steps": args.steps,
            "guidance": not args.student_steps,
            "student_steps": args.student_steps,
            "compiled_blocks": args.compile,
            "attention_backend": backend,
            "num_gpus": args.num_gpus,
            "clips_per_step": 1,  # one video a call, on however many GPUs
            "context_parallel_size": dims.cp,
            "guidance_parallel": args.guidance_parallel,
            "memory_fraction": args.memory_fraction,
            "offload_model": args.offload_model,
            "group_offload": args.group_offload,
            "cuda_graphs": args.cuda_graphs,
            "num_chunks": args.num_chunks,
            "seconds": round(total, 2),
            "seconds_per_step": round(per_step, 3) if per_step else None,
            # A shorter run (--steps) stands for the default 35 steps: its time with the missing steps added.
            "seconds_at_35_steps": (
                round(total + (35 - args.steps) * per_step, 1) if per_step and not args.student_steps else None
            ),
            "warmup_call_seconds_incl_compile": round(warmup, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        },
    )


if __name__ == "__main__":
    main()

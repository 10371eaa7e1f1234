"""The generation CLI's flags (`infer_video2world.py`, NVIDIA's `examples/video2world.py` names), in a module that
imports neither torch nor diffusers: `--help` answers at once. The choices it offers live in the library
(`choices.py`), which the CLI imports, never the other way round.
"""

from __future__ import annotations

import argparse

from ..choices import ATTENTION_BACKENDS, DEFAULT_PROMPT_REFINER, NUM_FRAMES_BY_FPS, RESOLUTIONS
from .flag_parser import DefaultsHelpFormatter, FlagParser


def build_parser() -> argparse.ArgumentParser:
    """The generation flags; `--help` shows each one's default."""
    p = FlagParser(
        description="Cosmos-Predict2 Video2World generation",
        allow_abbrev=False,
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--model_size", default="2B", choices=["2B", "14B", "tiny"], help="the model's architecture")
    p.add_argument(
        "--pretrained_model_name_or_path", default=None, help="Hub id or diffusers folder (default: the preset's)"
    )
    p.add_argument(
        "--dit_path",
        default=None,
        help="post-trained transformer: native iter_N.pt, NVIDIA's .pt, or our diffusers export folder",
    )
    p.add_argument("--load_ema", action="store_true", help="with a native --dit_path: use its net_ema.* weights")
    p.add_argument("--lora_path", default=None, help="LoRA adapter from our training (<output_dir>/lora)")
    p.add_argument("--prompt", default=None, help="what the video shows (or each entry of --batch_input_json)")
    p.add_argument(
        "--negative_prompt",
        default=None,
        help="the unconditional text of classifier-free guidance (default: NVIDIA's negative prompt)",
    )
    p.add_argument("--input_path", default=None, help="conditioning image or video")
    p.add_argument(
        "--num_conditional_frames", type=int, default=1, choices=[1, 5], help="a video's last N frames condition"
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale; 1 or less: no guidance (default: 7, NVIDIA's; 1 for a distilled "
        "student, whose guidance is built in)",
    )
    p.add_argument("--seed", type=int, default=0, help="the initial noise, drawn as NVIDIA draws it")
    p.add_argument("--resolution", default="720", choices=sorted(RESOLUTIONS), help="the video's height class")
    p.add_argument(
        "--aspect_ratio", default="16:9", choices=["16:9", "9:16", "1:1", "4:3", "3:4"], help="with --resolution"
    )
    p.add_argument(
        "--fps", type=int, default=16, choices=sorted(NUM_FRAMES_BY_FPS), help="frame rate: 93 frames at 16, 61 at 10"
    )
    p.add_argument("--height", type=int, default=None, help="override the resolution table (multiple of 16)")
    p.add_argument("--width", type=int, default=None, help="override the resolution table (multiple of 16)")
    p.add_argument("--num_frames", type=int, default=None, help="override the frame count (4k+1)")
    p.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="sampling steps (default: 35, NVIDIA's; for a distilled student --dit_path, the steps it was distilled "
        "for, sampled with its few-step sampler)",
    )
    p.add_argument(
        "--scheduler", default="cosmos", choices=["cosmos", "euler"], help="NVIDIA's sampler or diffusers' Euler"
    )
    p.add_argument(
        "--num_chunks",
        type=_whole_number,
        default=1,
        help="a long video: this many chunks, each continuing the last --num_conditional_frames frames of the one "
        "before (NVIDIA's video2world_lvg.py, the frames handed over in memory at full precision), from seeds "
        "--seed, --seed + 1, ...; F + (N-1)(F-c) frames (1 to 100)",
    )
    p.add_argument(
        "--seam_correction",
        action="store_true",
        help="with --num_chunks: shift each later chunk's first frames by the VAE's offset on its conditioning "
        "frame, fading over 8 frames, so the seams do not jump (not in NVIDIA's loop: off by default)",
    )
    p.add_argument("--save_path", default="output/generated_video.mp4", help="the .mp4 to write")
    p.add_argument(
        "--batch_input_json",
        default=None,
        help='JSON list of {"prompt", "input_path", "save_path"} (NVIDIA: input_video, output_video), each with an '
        'optional "num_chunks"',
    )
    p.add_argument("--disable_guardrail", action="store_true", help="run without cosmos_guardrail")
    p.add_argument(
        "--prompt_refiner",
        nargs="?",
        const=DEFAULT_PROMPT_REFINER,
        default=None,
        metavar="MODEL",
        help=f"rewrite each prompt with a vision-language model that sees the conditioning image or video (NVIDIA's "
        f"prompt refiner; alone: {DEFAULT_PROMPT_REFINER}, a Hub id or folder of a Qwen2.5-VL model); off by "
        f"default, as in NVIDIA's post-training configs",
    )
    p.add_argument(
        "--offload_prompt_refiner",
        action="store_true",
        help="keep the prompt refiner on the CPU, on the GPU only while it writes (about 16 GB in bf16)",
    )
    p.add_argument(
        "--disable_prompt_refiner",
        action="store_true",
        help="accepted for NVIDIA's command lines: the refiner is off unless --prompt_refiner is given",
    )
    p.add_argument(
        "--downcast_text_encoder",
        action="store_true",
        help="accepted for NVIDIA's command lines: the T5 encoder already runs in the pipeline's precision (bf16 on a "
        "GPU), which is what NVIDIA's flag asks for",
    )
    p.add_argument(
        "--benchmark",
        action="store_true",
        help="NVIDIA's benchmark mode: each generation runs once untimed (warm-up), then 3 timed times; each time and "
        "their mean are logged, and the last video is written",
    )
    p.add_argument(
        "--offload_text_encoder",
        action="store_true",
        help="keep the T5 encoder on the CPU (about 11 GB of GPU memory in bf16)",
    )
    p.add_argument("--offload_guardrail", action="store_true", help="keep the guardrail models on the CPU")
    p.add_argument("--offload_model", action="store_true", help="diffusers' model CPU offload of every component")
    p.add_argument(
        "--group_offload",
        action="store_true",
        help="diffusers' group offloading of the transformer: its weights in CPU memory, each block's copied to the "
        "GPU while the one before it computes (14B at 432x768 on a 30 GB card)",
    )
    p.add_argument(
        "--num_gpus",
        type=int,
        default=1,
        help="shard each generation's latent tokens over this many processes started together "
        "(torchrun --nproc_per_node N; NVIDIA's flag); rank 0 writes the video",
    )
    p.add_argument(
        "--guidance_parallel",
        action="store_true",
        help="with an even --num_gpus N: each half of the processes evaluates one side of classifier-free guidance "
        "(conditional, unconditional), sharding the tokens over its N/2 processes (none inside the transformer "
        "with N = 2)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile each transformer block (default: on with CUDA; about 30 s once, pays off over a "
        "35-step video)",
    )
    p.add_argument(
        "--attention_backend",
        default="auto",
        choices=ATTENTION_BACKENDS,
        help="attention kernel: cudnn, flash4 (FlashAttention-4), native (torch's choice), or auto (the fastest "
        "installed)",
    )
    fast = p.add_argument_group(
        "faster generation",
        "each measured against the dense 35-step output, speed and PSNR/SSIM, in BENCHMARKS.md (Fast generation)",
    )
    fast.add_argument(
        "--cache",
        type=_cache_threshold,
        default=None,
        metavar="THRESHOLD|auto",
        help="training-free step caching (diffusers' First Block Cache): where the first block's residual changed by "
        "less than THRESHOLD (relative) since the last step, the other blocks are skipped and their last residual "
        "reused; the log says how many block evaluations were skipped. On trained weights (the tiny models, 35 "
        "steps with guidance 7, worst frame against dense): 0.1 skips 43-45%% of the forwards at 32-44 dB, 0.2 "
        "57-59%% at 25-32 dB (BENCHMARKS.md). auto: the first "
        "input is generated dense and again at falling thresholds until one keeps --cache_min_psnr; the choice is "
        "logged and stored beside the weights (step_cache.json), so later runs with the same settings reuse it",
    )
    fast.add_argument(
        "--cache_min_psnr",
        type=float,
        default=30.0,
        help="with --cache auto: the lowest PSNR (dB) against dense any frame of the first input may have",
    )
    fast.add_argument(
        "--sparse_attention",
        default="none",
        choices=["none", "natten"],
        help="natten: NVIDIA's neighbourhood attention in its sparse layers (pip install natten); made for NVIDIA's "
        "NATTEN checkpoints (on a dense-trained tiny model: 12 dB from dense; with natten's Flex backend 15%% slower "
        "than dense cuDNN on an H100: its Hopper kernels are what give NVIDIA's 2.4x)",
    )
    fast.add_argument(
        "--natten",
        dest="sparse_attention",
        action="store_const",
        const="natten",
        help="NVIDIA's name for --sparse_attention natten",
    )
    fast.add_argument(
        "--use_cuda_graphs",
        action="store_true",
        help="record the transformer's forward once per shape as a CUDA graph and replay it (NVIDIA's flag): the CPU "
        "stops launching each kernel; it pays where kernels are short (small models and sizes; BENCHMARKS.md). Not "
        "with --cache, offloading or several GPUs",
    )
    fast.add_argument(
        "--fp8",
        action="store_true",
        help="the transformer blocks' linear layers in fp8 (e4m3 weights, per-token activation scales; fp8 matmuls "
        "on Hopper and newer GPUs; the tiny model: 39.7 dB from dense, worst frame; the 2B on an H100: 9%% faster)",
    )
    return p


def _whole_number(value: str) -> int:
    """An integer, also written as `1e3`; the bounds are checked with the rest (`long_video.check_chunks`)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number")
    return int(number)


def _cache_threshold(value: str) -> float | str:
    """`--cache`: a number, or `auto`."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number nor auto") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if isinstance(args.cache, float) and not 0 < args.cache < 1:
        p.error(
            f"--cache {args.cache}: the threshold is a relative change between steps, between 0 and 1 (0.05 to 0.3)."
        )
    if args.offload_model and args.group_offload:
        p.error(
            "--offload_model moves whole models and --group_offload the transformer's blocks: pass one (group "
            "offloading needs less GPU memory)."
        )
    if args.use_cuda_graphs:
        clashing = [
            flag
            for flag, on in (
                ("--cache", args.cache is not None),
                ("--offload_model", args.offload_model),
                ("--group_offload", args.group_offload),
                (f"--num_gpus {args.num_gpus}", args.num_gpus > 1),
            )
            if on
        ]
        if clashing:
            p.error(
                f"--use_cuda_graphs replays a recorded forward, which cannot read the GPU or copy from the host as "
                f"{clashing[0]} does: drop one of the two."
            )
    if args.prompt_refiner and args.disable_prompt_refiner:
        p.error("--prompt_refiner turns the refiner on and --disable_prompt_refiner off: pass one.")
    if args.offload_prompt_refiner and not args.prompt_refiner:
        p.error("--offload_prompt_refiner places the refiner, which runs only with --prompt_refiner: add it.")
    if not 0 < args.cache_min_psnr < 100:
        p.error(
            f"--cache_min_psnr {args.cache_min_psnr}: give a PSNR in dB between 0 and 100 (30 is close, 40 near exact)"
        )
    if args.guidance_parallel and (args.num_gpus < 2 or args.num_gpus % 2 or (args.guidance or 7.0) <= 1):
        p.error(
            "--guidance_parallel splits the two sides of guidance over two halves of the processes (each half "
            "shards the tokens when it has several): pass an even --num_gpus (under torchrun --nproc_per_node N) "
            "and a --guidance above 1."
        )
    return args

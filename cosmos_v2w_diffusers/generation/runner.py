"""Command-line generation with NVIDIA's `examples/video2world.py` flags, on `CosmosVideo2WorldPipeline`.

    python infer_video2world.py --model_size 2B --dit_path checkpoints/.../model/iter_000001000.pt \
        --input_path robot.jpg --prompt "A video of sks teal robot." --save_path output/robot.mp4

Every input is checked (files, sizes, checkpoint shapes) before any model is loaded.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import decord
import PIL.Image
import torch
import torch.distributed as dist
from diffusers import CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler
from tqdm.auto import tqdm

from ..choices import NUM_FRAMES_BY_FPS, RESOLUTIONS
from ..data.folder import presented_frame_count
from ..models.attention import set_attention_backend
from ..models.checkpoint_format import (
    distilled_steps_of,
    load_into_transformer,
)
from ..models.compile import compile_block_forwards, compile_blocks
from ..models.components import (
    cache_root,
    check_is_pipeline_folder,
    check_transformer_matches,
    hub_source,
    resolve_pretrained,
)
from ..models.latents import use_channels_last_3d
from ..models.presets import get_preset
from ..models.sample_shape import check_sample_shape, latent_shape, latent_tokens
from ..parallel.context_parallel import enable_context_parallel
from ..parallel.parallel_dims import ParallelDims
from ..utils.allocator import set_allocator_defaults
from .cuda_graphs import enable_cuda_graphs
from .jobs import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, check_chunks
from .long_video import ChunkWriter, generate_long_video
from .pipeline import CosmosVideo2WorldPipeline, check_conditioning_frames, nvidia_initial_noise, open_image
from .post_trained import check_lora_adapter, load_post_trained_weights
from .prompt_refiner import PromptRefiner

if TYPE_CHECKING:
    from argparse import Namespace  # the CLI's parsed flags
from .scheduler_few_step import CosmosFewStepScheduler
from .step_cache import STEP_CACHE_FILE, Calibration, calibrate, read_calibration, write_calibration

logger = logging.getLogger(__name__)


def sample_size(args: Namespace) -> tuple[int, int, int]:
    """(height, width, num_frames) from the flags, refusing sizes the model cannot take."""
    preset = get_preset(args.model_size)
    if args.model_size == "tiny":
        height, width, frames = preset.height, preset.width, preset.num_frames
    else:
        table = RESOLUTIONS[args.resolution]
        if args.aspect_ratio not in table and (args.height is None or args.width is None):
            raise ValueError(f"No {args.aspect_ratio} size at {args.resolution}p; pass --height and --width.")
        width, height = table.get(args.aspect_ratio, (args.width, args.height))
        frames = NUM_FRAMES_BY_FPS[args.fps]
    height, width, frames = args.height or height, args.width or width, args.num_frames or frames
    check_sample_shape(frames, height, width, "--num_frames", "--height and --width")
    return height, width, frames


def read_conditioning(path: str, num_frames: int = 5) -> tuple[PIL.Image.Image | None, list[PIL.Image.Image] | None]:
    """(image, None) or (None, the video's last `num_frames` frames); a clear error for a missing,
    unsupported or unreadable file. Only the frames used are decoded (a minute of 720p video decoded whole
    takes about 12 GB); an image is turned as its EXIF orientation says, as a viewer shows it."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--input_path {file} does not exist.")
    suffix = file.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return open_image(file, "--input_path"), None
    if suffix in VIDEO_EXTENSIONS:
        try:
            reader = decord.VideoReader(str(file), ctx=decord.cpu(0))
            total = presented_frame_count(reader)
            frames = reader.get_batch(list(range(max(0, total - num_frames), total))).asnumpy()
        except (decord.DECORDError, RuntimeError) as exc:
            raise ValueError(
                f"--input_path {file} cannot be decoded as a video ({str(exc).splitlines()[0]})."
            ) from None
        return None, [PIL.Image.fromarray(f) for f in frames]
    raise ValueError(
        f"--input_path {file}: unsupported file type {suffix or '(none)'}; use an image "
        f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or a video ({', '.join(sorted(VIDEO_EXTENSIONS))})."
    )


def student_steps(args: Namespace) -> int | None:
    """The steps `--dit_path` was distilled for, if it is a distilled student (`checkpoint_format.distilled_steps_of`),
    checked against the flags before any model loads: a student takes no step cache (its few steps have none
    to skip) and no other scheduler."""
    steps = distilled_steps_of(args.dit_path) if args.dit_path else None
    if steps is None:
        return None
    if args.cache is not None:
        raise ValueError(
            f"--cache skips steps of a long sampling; --dit_path {args.dit_path} is a {steps}-step distilled student, "
            f"which has none to spare: drop --cache."
        )
    if args.scheduler != "cosmos":
        raise ValueError(
            f"--scheduler {args.scheduler}: --dit_path {args.dit_path} is a distilled student, which samples with its "
            f"own few-step sampler; drop --scheduler."
        )
    return steps


def build_pipeline(args: Namespace, steps: int | None = None) -> CosmosVideo2WorldPipeline:
    """The pipeline the flags ask for; `steps`: those of a distilled student's `--dit_path` (`student_steps`)."""
    preset = get_preset(args.model_size)
    weights = load_post_trained_weights(args.dit_path, args.load_ema, args.model_size) if args.dit_path else None
    if args.lora_path:
        check_lora_adapter(args.lora_path, preset)
    device = process_device(args.num_gpus)
    if args.offload_model and device.type != "cuda":  # diffusers' model offload needs an accelerator
        raise ValueError("--offload_model moves each model to the GPU as it runs, and there is no GPU here: drop it.")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs = {"dtype": dtype, "disable_guardrail": args.disable_guardrail}
    if args.scheduler == "euler":
        kwargs["scheduler"] = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    if steps is not None:
        kwargs["scheduler"] = CosmosFewStepScheduler(steps)
        logger.info(
            "%s is a %d-step distilled student: its few-step sampler, no guidance by default", args.dit_path, steps
        )
    if isinstance(weights, CosmosTransformer3DModel):
        kwargs["transformer"] = weights.to(dtype)
    pipe = CosmosVideo2WorldPipeline.from_pretrained(
        resolve_pretrained(preset, args.pretrained_model_name_or_path), **kwargs
    )
    check_transformer_matches(pipe.transformer, preset, args.pretrained_model_name_or_path or "the base model")
    if isinstance(weights, dict):
        load_into_transformer(pipe.transformer, weights, args.dit_path)
    if args.lora_path:
        pipe.load_lora_weights(args.lora_path)
    set_attention_backend(pipe.transformer, args.attention_backend, device)
    dims = generation_dims(args.num_gpus, args.guidance_parallel)
    if dims.cp > 1:
        height, width, num_frames = sample_size(args)
        enable_context_parallel(pipe.transformer, dims, device, latent_tokens(num_frames, height, width))
    if dims.guidance_parallel:
        pipe.enable_guidance_parallel(dims.guidance_group())
    if args.fp8:
        pipe.enable_fp8()
    if args.sparse_attention == "natten":
        logger.info("Sparse attention (natten) in %d of the transformer's blocks", pipe.enable_sparse_attention())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes within a generation: the VAE's convolutions autotune once
    if args.compile if args.compile is not None else device.type == "cuda":
        # The step cache's hooks go around each block's forward, so only the forward inside them is compiled.
        (compile_block_forwards if args.cache is not None else compile_blocks)(pipe.transformer)
    if args.use_cuda_graphs:
        enable_cuda_graphs(pipe.transformer)
    if isinstance(args.cache, float):  # `auto` is calibrated on the first input (`main`)
        pipe.enable_step_cache(args.cache)
    if args.offload_model:
        pipe.enable_model_cpu_offload()
        return pipe
    if args.group_offload:  # pipe.to leaves a group-offloaded transformer where its hooks put it
        offload_transformer_blocks(pipe.transformer, device)
    pipe.to(device)
    if device.type == "cuda":
        use_channels_last_3d(pipe.vae)
    if args.offload_text_encoder:
        pipe.text_encoder.to("cpu")
    if args.offload_guardrail and pipe.safety_checker is not None:
        pipe.safety_checker.to("cpu")
    return pipe


def offload_transformer_blocks(transformer: CosmosTransformer3DModel, device: torch.device) -> None:
    """`--group_offload`: diffusers' group offloading of `transformer` (on the CPU), one block a group, each block's
    weights copied to `device` while the one before it computes (on a side stream where `device` is a GPU)."""
    transformer.enable_group_offload(
        device, offload_type="block_level", num_blocks_per_group=1, use_stream=device.type == "cuda"
    )


def step_cache_file(args: Namespace) -> Path:
    """Where `--cache auto` stores its choice: beside the weights it was made for (the LoRA adapter, else
    `--dit_path`, else a local base folder), else in this package's cache folder."""
    for given in (args.lora_path, args.dit_path, args.pretrained_model_name_or_path):
        if given and Path(given).is_dir():
            return Path(given) / STEP_CACHE_FILE
        if given and Path(given).is_file():
            return Path(given).with_name(f"{Path(given).stem}.{STEP_CACHE_FILE}")
    return cache_root() / "step_cache" / f"{args.model_size}.json"


def step_cache_settings(args: Namespace, height: int, width: int, num_frames: int) -> dict:
    """What a `--cache auto` choice holds for: the weights and every sampling setting that changes the steps."""
    weights = {
        name: str(Path(value).resolve()) if value and Path(value).exists() else value
        for name, value in (
            ("pretrained", args.pretrained_model_name_or_path),
            ("dit_path", args.dit_path),
            ("lora_path", args.lora_path),
        )
    }
    return {
        **weights,
        "model_size": args.model_size,
        "load_ema": args.load_ema,
        "size": [num_frames, height, width],
        "num_inference_steps": args.num_inference_steps or 35,
        "guidance": 7.0 if args.guidance is None else args.guidance,
        "scheduler": args.scheduler,
        "num_conditional_frames": args.num_conditional_frames,
        "fp8": args.fp8,
        "sparse_attention": args.sparse_attention,
        "min_psnr_db": args.cache_min_psnr,
    }


def generation_dims(num_gpus: int, guidance_parallel: bool) -> ParallelDims:
    """The layout of this generation's processes (`process_device` has joined them)."""
    rank = dist.get_rank() if num_gpus > 1 else 0
    return ParallelDims.for_generation(num_gpus, rank, guidance_parallel)


def process_device(num_gpus: int) -> torch.device:
    """This process's device; with `--num_gpus N > 1`, after joining the N processes torchrun started."""
    if num_gpus < 1:
        raise ValueError(f"--num_gpus must be at least 1, got {num_gpus}.")
    if num_gpus == 1:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "LOCAL_RANK" not in os.environ:
        raise ValueError(
            f"--num_gpus {num_gpus}: start the processes with `torchrun --nproc_per_node {num_gpus} "
            f"infer_video2world.py ...`."
        )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_world_size() != num_gpus:
        raise ValueError(f"--num_gpus {num_gpus} but {dist.get_world_size()} processes were started: make them equal.")
    if not torch.cuda.is_available():
        logger.info(
            "CPU processes: each runs %d thread(s) (torchrun's OMP_NUM_THREADS); a single process on more threads "
            "rounds differently, so compare videos with OMP_NUM_THREADS=1 on both sides.",
            torch.get_num_threads(),
        )
        return torch.device("cpu")
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return torch.device("cuda", int(os.environ["LOCAL_RANK"]))


BENCHMARK_TIMED_RUNS = 3  # NVIDIA's benchmark mode: 4 runs, the first one untimed


def benchmark(write: Callable[[ChunkWriter], None], save_path: Path, fps: int) -> list[float]:
    """`--benchmark`, as NVIDIA's `examples/video2world.py` means it: a warm-up generation, then
    `BENCHMARK_TIMED_RUNS` timed ones (the GPU synchronised around each), each logged and their mean; the videos
    are not written (the one after them is). Returns the seconds."""
    seconds = []
    for run in range(BENCHMARK_TIMED_RUNS + 1):
        synchronize()
        start = time.perf_counter()
        write(ChunkWriter(save_path, fps, enabled=False))
        synchronize()
        if run:
            seconds.append(time.perf_counter() - start)
            logger.info("[run %d of %d] generation: %.1f s", run, BENCHMARK_TIMED_RUNS, seconds[-1])
    logger.info("Mean generation time over %d runs after a warm-up: %.1f s", len(seconds), sum(seconds) / len(seconds))
    return seconds


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def store_calibration(path: Path, calibration: Calibration) -> None:
    """Write `--cache auto`'s choice for the next run; a folder we may not write to costs only the reuse."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_calibration(path, calibration)
        logger.info("Stored the choice in %s: later runs with these weights and settings reuse it", path)
    except OSError as exc:
        logger.warning("Could not store the --cache auto choice in %s (%s); the next run calibrates again.", path, exc)


def check_before_loading(args: Namespace, jobs: list[dict], inputs: list[tuple]) -> int | None:
    """What needs no model but the inputs' frames, checked before any loads: each job's chunks and conditioning
    frames, a distilled student's flags, the base folder, the prompt refiner's reach. Returns the student's steps
    (None for any other weights)."""
    for job, (image, video) in zip(jobs, inputs):
        check_chunks(
            job["num_chunks"], args.num_conditional_frames, image is not None, f"--input_path {job['input_path']}"
        )
        if video is not None:
            check_conditioning_frames(
                len(video),
                args.num_conditional_frames,
                f"--input_path {job['input_path']}",
                "--num_conditional_frames",
            )
    steps = student_steps(args)  # a student's flags, before any model loads
    if args.pretrained_model_name_or_path:
        check_is_pipeline_folder(args.pretrained_model_name_or_path)
    if args.use_cuda_graphs and not torch.cuda.is_available():
        raise ValueError("--use_cuda_graphs records GPU kernels, and there is no GPU here: drop it.")
    if args.prompt_refiner:
        hub_source(args.prompt_refiner, "--prompt_refiner")  # a refiner that cannot load: one line, before any model
    return steps


def generate_videos(args: Namespace, jobs: list[dict]) -> list[Path]:
    """Every video of `jobs` (`jobs.check_jobs(args)`, checked before torch was imported) made as `args` (the CLI's
    flags, `cli/infer_flags.py`) say, and written; their paths (rank 0)."""
    height, width, num_frames = sample_size(args)
    inputs = [
        read_conditioning(job["input_path"], args.num_conditional_frames) for job in jobs
    ]  # fail before loading any model
    steps = check_before_loading(args, jobs, inputs)
    set_allocator_defaults()
    pipe = build_pipeline(args, steps)
    refiner = (
        PromptRefiner(args.prompt_refiner, pipe._execution_device, pipe.transformer.dtype, args.offload_prompt_refiner)
        if args.prompt_refiner
        else None
    )
    main_rank = args.num_gpus == 1 or dist.get_rank() == 0  # every rank holds the whole video; one writes it
    calibration = None
    if args.cache == "auto":
        settings = step_cache_settings(args, height, width, num_frames)
        calibration = read_calibration(step_cache_file(args), settings)
        if calibration is not None:
            logger.info("--cache auto: %s (stored in %s)", calibration.describe(), step_cache_file(args))
            if calibration.threshold is not None:
                pipe.enable_step_cache(calibration.threshold)
    written = []
    for job, (image, video) in tqdm(list(zip(jobs, inputs)), desc="Videos", disable=len(jobs) == 1):
        shape = (1, *latent_shape(pipe.vae.config, num_frames, height, width))
        prompt = refiner.refine(job["prompt"], image, video) if refiner is not None else job["prompt"]
        call = dict(
            prompt=prompt,
            negative_prompt=args.negative_prompt,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance,
            fps=args.fps,
        )

        def generate(image=image, video=video, call=call):
            conditioning = dict(image=image, video=video, num_conditional_frames=args.num_conditional_frames)
            latents = nvidia_initial_noise(args.seed, shape)
            return pipe(**conditioning, **call, latents=latents, output_type="np").frames[0]

        frames = None
        if args.cache == "auto" and calibration is None:
            calibration, frames = calibrate(pipe, generate, args.cache_min_psnr, settings)
            logger.info("--cache auto, calibrated on %s: %s", job["input_path"], calibration.describe())
            if main_rank:
                store_calibration(step_cache_file(args), calibration)
        save_path = Path(job["save_path"])

        def write(writer: ChunkWriter, job=job, image=image, video=video, call=call, frames=frames) -> None:
            if job["num_chunks"] == 1:
                writer.append(frames if frames is not None else generate())
            else:  # (a calibration's dense video was its first chunk alone: the long one is made anew)
                generate_long_video(
                    pipe,
                    job["num_chunks"],
                    image=image,
                    video=video,
                    num_conditional_frames=args.num_conditional_frames,
                    seed=args.seed,
                    on_chunk=writer.append,
                    seam_correction=args.seam_correction,
                    **call,
                )

        if args.benchmark:  # each timed run generates (a calibration's video is not reused)
            benchmark(functools.partial(write, frames=None), save_path, args.fps)
        with ChunkWriter(save_path, args.fps, enabled=main_rank) as writer:  # every rank holds the video; one writes
            write(writer)
        if main_rank:
            logger.info("Wrote %s (%d frames, %dx%d, %d fps)", save_path, writer.frames, width, height, args.fps)
            written.append(save_path)
    if args.num_gpus > 1:
        dist.destroy_process_group()
    return written

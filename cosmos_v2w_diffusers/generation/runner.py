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
from typing import Callable

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
from .config import GenerationConfig
from .cuda_graphs import enable_cuda_graphs
from .inputs import check_conditioning_frames, nvidia_initial_noise, open_image
from .jobs import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, check_chunks
from .long_video import ChunkWriter, generate_long_video
from .pipeline import CosmosVideo2WorldPipeline
from .post_trained import check_lora_adapter, load_post_trained_weights
from .prompt_refiner import PromptRefiner
from .scheduler_few_step import CosmosFewStepScheduler
from .step_cache import calibrate, read_calibration, step_cache_file, step_cache_settings, store_calibration

logger = logging.getLogger(__name__)


def sample_size(config: GenerationConfig) -> tuple[int, int, int]:
    """(height, width, num_frames) from the flags, refusing sizes the model cannot take."""
    preset = get_preset(config.model_size)
    if config.model_size == "tiny":
        height, width, frames = preset.height, preset.width, preset.num_frames
    else:
        table = RESOLUTIONS[config.resolution]
        size = table.get(config.aspect_ratio)
        if size is None and (config.height is None or config.width is None):
            raise ValueError(f"No {config.aspect_ratio} size at {config.resolution}p; pass --height and --width.")
        width, height = size or (0, 0)  # without a table size, --height and --width (given) replace it below
        frames = NUM_FRAMES_BY_FPS[config.fps]
    height, width, frames = config.height or height, config.width or width, config.num_frames or frames
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


def student_steps(config: GenerationConfig) -> int | None:
    """The steps `--dit_path` was distilled for, if it is a distilled student (`checkpoint_format.distilled_steps_of`),
    checked against the flags before any model loads: a student takes no step cache (its few steps have none
    to skip) and no other scheduler."""
    steps = distilled_steps_of(config.dit_path) if config.dit_path else None
    if steps is None:
        return None
    if config.cache is not None:
        raise ValueError(
            f"--cache skips steps of a long sampling; --dit_path {config.dit_path} is a {steps}-step distilled "
            f"student, which has none to spare: drop --cache."
        )
    if config.scheduler != "cosmos":
        raise ValueError(
            f"--scheduler {config.scheduler}: --dit_path {config.dit_path} is a distilled student, which samples "
            f"with its own few-step sampler; drop --scheduler."
        )
    return steps


def build_pipeline(config: GenerationConfig, steps: int | None = None) -> CosmosVideo2WorldPipeline:
    """The pipeline the flags ask for; `steps`: those of a distilled student's `--dit_path` (`student_steps`)."""
    preset = get_preset(config.model_size)
    weights = (
        load_post_trained_weights(config.dit_path, config.load_ema, config.model_size) if config.dit_path else None
    )
    if config.lora_path:
        check_lora_adapter(config.lora_path, preset)
    device = process_device(config.num_gpus)
    if config.offload_model and device.type != "cuda":  # diffusers' model offload needs an accelerator
        raise ValueError("--offload_model moves each model to the GPU as it runs, and there is no GPU here: drop it.")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs = {"dtype": dtype, "disable_guardrail": config.disable_guardrail}
    if config.scheduler == "euler":
        kwargs["scheduler"] = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    if steps is not None:
        kwargs["scheduler"] = CosmosFewStepScheduler(steps)
        logger.info(
            "%s is a %d-step distilled student: its few-step sampler, no guidance by default", config.dit_path, steps
        )
    if isinstance(weights, CosmosTransformer3DModel):
        kwargs["transformer"] = weights.to(dtype)
    pipe = CosmosVideo2WorldPipeline.from_pretrained(
        resolve_pretrained(preset, config.pretrained_model_name_or_path), **kwargs
    )
    check_transformer_matches(pipe.transformer, preset, config.pretrained_model_name_or_path or "the base model")
    if isinstance(weights, dict) and config.dit_path:
        load_into_transformer(pipe.transformer, weights, config.dit_path)
    if config.lora_path:
        pipe.load_lora_weights(config.lora_path)
    set_attention_backend(pipe.transformer, config.attention_backend, device)
    dims = generation_dims(config.num_gpus, config.guidance_parallel)
    if dims.cp > 1:
        height, width, num_frames = sample_size(config)
        enable_context_parallel(pipe.transformer, dims, device, latent_tokens(num_frames, height, width))
    if dims.guidance_parallel:
        pipe.enable_guidance_parallel(dims.guidance_group())
    if config.fp8:
        pipe.enable_fp8()
    if config.sparse_attention == "natten":
        logger.info("Sparse attention (natten) in %d of the transformer's blocks", pipe.enable_sparse_attention())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes within a generation: the VAE's convolutions autotune once
    if config.compile if config.compile is not None else device.type == "cuda":
        # The step cache's hooks go around each block's forward, so only the forward inside them is compiled.
        (compile_block_forwards if config.cache is not None else compile_blocks)(pipe.transformer)
    if config.use_cuda_graphs:
        enable_cuda_graphs(pipe.transformer)
    if isinstance(config.cache, float):  # `auto` is calibrated on the first input (`main`)
        pipe.enable_step_cache(config.cache)
    if config.offload_model:
        pipe.enable_model_cpu_offload()
        return pipe
    if config.group_offload:  # pipe.to leaves a group-offloaded transformer where its hooks put it
        offload_transformer_blocks(pipe.transformer, device)
    pipe.to(device)
    if device.type == "cuda":
        use_channels_last_3d(pipe.vae)
    if config.offload_text_encoder:
        pipe.text_encoder.to("cpu")
    if config.offload_guardrail and pipe.safety_checker is not None:
        pipe.safety_checker.to("cpu")
    return pipe


def offload_transformer_blocks(transformer: CosmosTransformer3DModel, device: torch.device) -> None:
    """`--group_offload`: diffusers' group offloading of `transformer` (on the CPU), one block a group, each block's
    weights copied to `device` while the one before it computes (on a side stream where `device` is a GPU)."""
    transformer.enable_group_offload(
        device, offload_type="block_level", num_blocks_per_group=1, use_stream=device.type == "cuda"
    )


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


def check_before_loading(config: GenerationConfig, jobs: list[dict], inputs: list[tuple]) -> int | None:
    """What needs no model but the inputs' frames, checked before any loads: each job's chunks and conditioning
    frames, a distilled student's flags, the base folder, the prompt refiner's reach. Returns the student's steps
    (None for any other weights)."""
    for job, (image, video) in zip(jobs, inputs):
        check_chunks(
            job["num_chunks"], config.num_conditional_frames, image is not None, f"--input_path {job['input_path']}"
        )
        if video is not None:
            check_conditioning_frames(
                len(video),
                config.num_conditional_frames,
                f"--input_path {job['input_path']}",
                "--num_conditional_frames",
            )
    steps = student_steps(config)  # a student's flags, before any model loads
    if config.pretrained_model_name_or_path:
        check_is_pipeline_folder(config.pretrained_model_name_or_path)
    if config.use_cuda_graphs and not torch.cuda.is_available():
        raise ValueError("--use_cuda_graphs records GPU kernels, and there is no GPU here: drop it.")
    if config.prompt_refiner:
        hub_source(config.prompt_refiner, "--prompt_refiner")  # a refiner that cannot load: one line, before any model
    return steps


def generate_videos(config: GenerationConfig, jobs: list[dict]) -> list[Path]:
    """Every video of `jobs` (`jobs.check_jobs(config)`, checked before torch was imported) made as `config` (the CLI's
    flags, `cli/infer_flags.py`) say, and written; their paths (rank 0)."""
    height, width, num_frames = sample_size(config)
    inputs = [
        read_conditioning(job["input_path"], config.num_conditional_frames) for job in jobs
    ]  # fail before loading any model
    steps = check_before_loading(config, jobs, inputs)
    set_allocator_defaults()
    pipe = build_pipeline(config, steps)
    refiner = (
        PromptRefiner(
            config.prompt_refiner, pipe._execution_device, pipe.transformer.dtype, config.offload_prompt_refiner
        )
        if config.prompt_refiner
        else None
    )
    main_rank = config.num_gpus == 1 or dist.get_rank() == 0  # every rank holds the whole video; one writes it
    calibration = None
    if config.cache == "auto":
        settings = step_cache_settings(config, height, width, num_frames)
        calibration = read_calibration(step_cache_file(config), settings)
        if calibration is not None:
            logger.info("--cache auto: %s (stored in %s)", calibration.describe(), step_cache_file(config))
            if calibration.threshold is not None:
                pipe.enable_step_cache(calibration.threshold)
    written = []
    for job, (image, video) in tqdm(list(zip(jobs, inputs)), desc="Videos", disable=len(jobs) == 1):
        shape = (1, *latent_shape(pipe.vae.config, num_frames, height, width))
        prompt = refiner.refine(job["prompt"], image, video) if refiner is not None else job["prompt"]
        call = dict(
            prompt=prompt,
            negative_prompt=config.negative_prompt,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance,
            fps=config.fps,
        )

        def generate(image=image, video=video, call=call):
            conditioning = dict(image=image, video=video, num_conditional_frames=config.num_conditional_frames)
            latents = nvidia_initial_noise(config.seed, shape)
            return pipe(**conditioning, **call, latents=latents, output_type="np").frames[0]

        frames = None
        if config.cache == "auto" and calibration is None:
            calibration, frames = calibrate(pipe, generate, config.cache_min_psnr, settings)
            logger.info("--cache auto, calibrated on %s: %s", job["input_path"], calibration.describe())
            if main_rank:
                store_calibration(step_cache_file(config), calibration)
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
                    num_conditional_frames=config.num_conditional_frames,
                    seed=config.seed,
                    on_chunk=writer.append,
                    seam_correction=config.seam_correction,
                    **call,
                )

        if config.benchmark:  # each timed run generates (a calibration's video is not reused)
            benchmark(functools.partial(write, frames=None), save_path, config.fps)
        with ChunkWriter(save_path, config.fps, enabled=main_rank) as writer:  # every rank holds the video; one writes
            write(writer)
        if main_rank:
            logger.info("Wrote %s (%d frames, %dx%d, %d fps)", save_path, writer.frames, width, height, config.fps)
            written.append(save_path)
    if config.num_gpus > 1:
        dist.destroy_process_group()
    return written

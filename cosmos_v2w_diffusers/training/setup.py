"""How a run is built, stage by stage, in the order that fails cheapest first: the Accelerator, the clips (and the
run resolved for them, once), where the run writes and uploads, the models, the optimisation state. Each builder
returns what it built (a small record where there are several things) for `Trainer` to hold; none keeps state of
its own, so each can be run, and tested, alone.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import (
    AutocastKwargs,
    DistributedDataParallelKwargs,
    InitProcessGroupKwargs,
    ProjectConfiguration,
)
from datasets import Dataset

from ..data.builtin_sample import demo_dataset_path
from ..data.hf_dataset import CaptionEncoder, hub_dataset_folder, load_video2world_dataset
from ..data.latent_cache import build_latent_cache
from ..data.samples import Video2WorldTrainDataset
from ..data.video_folder import is_video_folder
from ..export.exports import check_export_targets
from ..generation.sampling import SIGMA_MAX
from ..models.components import load_vae, resolve_pretrained
from ..models.latents import use_channels_last_3d
from ..models.presets import ModelPreset
from ..models.sample_shape import latent_tokens
from ..parallel.parallel_dims import ParallelDims
from .activation_checkpointing import canonical_name
from .checkpointer import Checkpointer, RunRecord
from .distill import DMD2, student_scale
from .guards import RunGuards
from .hub import HubUploader
from .memory import LeanLevers, check_fits, choose_lean_levers, memory_budget_bytes
from .model import load_trainable_transformer, meta_trainable_transformer
from .nodes import caches_filled_in_order
from .optim import PowerEMA, build_lr_scheduler, build_optimizer
from .parallel import DevicePlan, default_mixed_precision, prepare_for_wrapping
from .run_config import RunConfig, card_facts, export_settings, resolve
from .state import TorchTrainState, ZeroTrainState, train_state
from .validation import Validator, read_validation_inputs

logger = get_logger(__name__)


def build_accelerator(run: RunConfig, on_gpu: bool) -> Accelerator:
    """The Accelerator of a run: its precision (`default_mixed_precision`), accumulation, trackers and folders,
    and the process group's timeout. `on_gpu`: whether the launch runs on GPUs (read before the Accelerator exists,
    which is built with it)."""
    # Under DDP, gradients as views into the communication buckets, as DDP's docs advise for memory. A 2B DDP step
    # still peaked one gradient-sized buffer above one GPU's (4x H200), which the planner counts. A distillation's
    # steps train one adapter each (student or critic): the other gets no gradient. And its steps run forwards
    # without gradients before the one with them: autocast's cache would keep the bf16 weight copies cast there
    # (no autograd history) for the later forward, and activation checkpointing's recompute would then cast anew
    # and not match (measured: CheckpointError on the first critic step).
    distill = bool(run.distill.distill_steps)
    hub, output_dir = run.hub, run.checkpointing.output_dir
    return Accelerator(
        mixed_precision=default_mixed_precision(run.parallel, on_gpu),
        gradient_accumulation_steps=run.optim.gradient_accumulation_steps,
        log_with=None if hub.report_to == "none" else hub.report_to,
        project_config=ProjectConfiguration(
            project_dir=output_dir, logging_dir=hub.logging_dir or str(Path(output_dir) / "logs")
        ),
        kwargs_handlers=[
            DistributedDataParallelKwargs(gradient_as_bucket_view=True, find_unused_parameters=distill),
            AutocastKwargs(cache_enabled=False if distill else None),
            InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=run.parallel.ddp_timeout)),
        ],
    )


def load_clips(run: RunConfig, preset: ModelPreset, accelerator: Accelerator) -> Dataset:
    """The clips' table (one row per clip: its path and T5 embedding), first: a folder with nothing usable fails
    before any model is loaded. One process a node fills the caches (captions encoded, a Hub dataset fetched);
    the others read them."""
    c = run.data
    with caches_filled_in_order(accelerator):
        dataset_path: str | Path
        if c.dataset_name and not Path(c.dataset_name).is_dir():
            dataset_path = hub_dataset_folder(c.dataset_name, run.weights.cache_dir, c.dataset_config_name)
        else:
            dataset_path = c.dataset_name or c.dataset_path or demo_dataset_path(preset)
        # Captions without a T5 pickle (a video folder's) are encoded by the base's encoder, loaded only if needed.
        weights = run.weights
        text_encoder = CaptionEncoder(
            resolve_pretrained(preset, weights.pretrained_model_name_or_path),
            accelerator.device,
            **weights.hub_kwargs(),
        )
        table = load_video2world_dataset(
            dataset_path,
            c.num_frames,
            text_encoder=text_encoder if is_video_folder(dataset_path) else None,
            embed_dim=preset.text_embed_dim,
            max_text_tokens=c.max_sequence_length,
            video_column=c.video_column,
            caption_column=c.caption_column,
        )
        text_encoder.free()
    logger.info(
        "Dataset %s: %d clips, %d x %d x %d samples", dataset_path, len(table), c.num_frames, c.height, c.width
    )
    return table


def resolve_for_clips(launch: RunConfig, dims: ParallelDims, num_clips: int) -> RunConfig:
    """The run, with the clips and the ranks counted: epochs become steps and `--scale_lr` scales by the clips a
    step takes (resolved again from `launch`'s flags); `launch` itself where neither is asked for."""
    flags = launch.flags
    if not (flags.num_train_epochs or flags.validation_epochs or flags.scale_lr):
        return launch
    clips_per_step = dims.clips_per_step(launch.data.batch_size, launch.optim.gradient_accumulation_steps)
    steps_per_epoch = math.ceil(num_clips / clips_per_step)
    run = resolve(flags, steps_per_epoch, clips_per_step)
    logger.info(
        "%d steps to a pass over the clips: --max_iter %d; learning rate %.4g",
        steps_per_epoch,
        run.optim.max_iter,
        run.optim.learning_rate,
    )
    return run


@dataclass
class Targets:
    """Where a run resumes from, writes and uploads, checked before any model loads."""

    checkpointer: Checkpointer  # its resume point settled
    base_pipeline: str  # the base's diffusers folder, whose parts the exports take
    uploader: HubUploader | None  # the main process of a --push_to_hub run
    guards: RunGuards
    validation_inputs: tuple[PIL.Image.Image, torch.Tensor | None] | None  # read on the main process


def check_targets(
    run: RunConfig, preset: ModelPreset, accelerator: Accelerator, table: Dataset, holds_lock: bool
) -> Targets:
    """Where the run resumes from, exports and uploads: another run's checkpoint, a folder of the user's in the
    way, a bad repo id or token fail now, not after training. `holds_lock`: this process holds the output
    folder's lock, and so clears what a killed run left."""
    weights = run.weights
    clips = [Path(path).name for path in table["video_path"]]
    scale = student_scale(weights) if run.distill.distill_steps else None
    record = RunRecord(run.run_definition(), run.to_json(), scale)
    checkpointer = Checkpointer(run.checkpointing, run.optim, record, accelerator, clips)
    if holds_lock:
        checkpointer.folder.remove_stale_temp_files()
    checkpointer.resume_point()  # before any model is loaded: a resume must come from the same run
    base_pipeline = resolve_pretrained(preset, weights.pretrained_model_name_or_path)
    main = accelerator.is_main_process
    if main:
        check_export_targets(export_settings(run), base_pipeline)
    base_model = weights.pretrained_model_name_or_path or preset.hub_id
    uploader = HubUploader(run.hub, card_facts(run), base_model) if run.hub.push_to_hub and main else None
    data = run.data
    max_skipped = data.max_skipped_clips if data.max_skipped_clips is not None else max(1, len(table) // 10)
    guards = RunGuards(accelerator, run.checkpointing.output_dir, max_skipped)
    validating = run.validation.validation_prompt and main
    inputs = read_validation_inputs(run.validation, data, table[0]["video_path"]) if validating else None
    return Targets(checkpointer, base_pipeline, uploader, guards, inputs)


@dataclass
class Models:
    """The models of a run, placed for its engine."""

    transformer: torch.nn.Module  # prepared for wrapping (`prepare_for_wrapping`), not yet by accelerate
    vae: torch.nn.Module  # frozen; on the CPU once the latents are cached
    samples: Video2WorldTrainDataset
    plan: DevicePlan
    tokens: int  # latent tokens of a sample


def load_models(
    run: RunConfig,
    preset: ModelPreset,
    accelerator: Accelerator,
    dims: ParallelDims,
    table: Dataset,
    compute_dtype: torch.dtype,
) -> Models:
    """The transformer, the VAE and the training samples, once the leanest step is known to fit the memory the
    run has (a budget, or the card's); the transformer prepared for its engine."""
    data, weights, parallel, device = run.data, run.weights, run.parallel, accelerator.device
    tokens = latent_tokens(data.num_frames, data.height, data.width)
    budget = memory_budget_bytes(parallel, device)
    levers = asked = LeanLevers.asked_by(parallel)
    distill = run.distill if run.distill.distill_steps else None
    if budget is not None and dims.engine in ("single", "ddp"):
        meta = meta_trainable_transformer(preset, weights, data.seed, compute_dtype, distill)
        one_gpu, lora = dims.engine == "single", weights.train_architecture == "lora"
        levers = choose_lean_levers(meta, parallel, tokens, compute_dtype, budget, one_gpu, lora)
        least = check_fits(meta, parallel, tokens, compute_dtype, budget, levers)
        chosen = levers.beyond(asked)
        if chosen:
            logger.info(
                "Chosen to fit %.1f GiB: %s (the leanest step then needs %.1f GiB)",
                budget / 2**30,
                ", ".join(name.replace("_", " ") for name in chosen),
                least / 2**30,
            )
    transformer = load_trainable_transformer(preset, weights, data.seed, compute_dtype, distill)
    vae = load_vae(preset, weights.pretrained_model_name_or_path, compute_dtype, **weights.hub_kwargs())
    vae.to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        use_channels_last_3d(vae)
    latent_table = None
    if data.cache_latents:
        with caches_filled_in_order(accelerator):
            latent_table = build_latent_cache(
                table, vae, data.num_frames, data.height, data.width, data.cache_windows_per_clip, data.seed
            )
        vae.to("cpu")  # no longer needed on the GPU
    samples = Video2WorldTrainDataset(
        table, data.num_frames, data.height, data.width, seed=data.seed, latent_table=latent_table
    )
    plan = prepare_for_wrapping(
        transformer,
        vae,
        parallel,
        accelerator,
        dims,
        tokens,
        compute_dtype,
        levers,
        batch_size=data.batch_size,
        max_grad_norm=run.optim.max_grad_norm,
        ema=run.optim.ema,
        vae_resident=not data.cache_latents,
        distillation=bool(run.distill.distill_steps),
    )
    transformer.train()
    return Models(transformer, vae, samples, plan, tokens)


@dataclass
class Optimisation:
    """What trains: the model and optimizer as accelerate prepared them, their schedule and EMA, and where the
    run starts."""

    transformer: torch.nn.Module  # prepared by accelerate (DDP, FSDP2 or DeepSpeed wrapped)
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable: dict[str, torch.nn.Parameter]  # by canonical name, as the prepared model holds them
    state: TorchTrainState | ZeroTrainState
    ema: PowerEMA | None
    distiller: DMD2 | None
    start_iter: int  # the checkpoint's iteration, or 0


def build_optimisation(
    run: RunConfig,
    preset: ModelPreset,
    accelerator: Accelerator,
    dims: ParallelDims,
    models: Models,
    checkpointer: Checkpointer,
    compute_dtype: torch.dtype,
) -> Optimisation:
    """The optimizer, its schedule and the EMA, the model handed to accelerate, and the checkpoint this run
    resumes from loaded into them."""
    trainable = [p for p in models.transformer.parameters() if p.requires_grad]
    n_trainable, total = sum(p.numel() for p in trainable), sum(p.numel() for p in models.transformer.parameters())
    logger.info(
        "Transformer %s (%s): %s trainable of %s parameters (%.2f%%)",
        preset.name,
        run.weights.train_architecture,
        f"{n_trainable:,}",
        f"{total:,}",
        100 * n_trainable / total,
    )
    distiller = DMD2(run.distill, SIGMA_MAX) if run.distill.distill_steps else None
    optimizer = build_optimizer(trainable, run.optim)
    lr_scheduler = build_lr_scheduler(optimizer, run.optim)
    transformer, optimizer = accelerator.prepare(models.transformer, optimizer)
    # FSDP and DeepSpeed swap parameters for sharded or bf16 ones: take them from the prepared model.
    unwrapped = accelerator.unwrap_model(transformer)
    named = {canonical_name(n): p for n, p in unwrapped.named_parameters() if p.requires_grad}
    state = train_state(dims, transformer, optimizer, named)
    ema_device = "cpu" if models.plan.ema_device == "cpu" else None
    optim = run.optim
    ema = PowerEMA(state.ema_sources, optim.ema_gamma, compute_dtype, ema_device) if optim.ema else None
    start_iter = checkpointer.load(state, lr_scheduler, ema, named)
    return Optimisation(transformer, optimizer, lr_scheduler, named, state, ema, distiller, start_iter)


def build_validator(
    run: RunConfig,
    preset: ModelPreset,
    accelerator: Accelerator,
    vae: torch.nn.Module,
    inputs: tuple[PIL.Image.Image, torch.Tensor | None] | None,
    compute_dtype: torch.dtype,
) -> Validator:
    """The validator of the run (it generates on the main process only)."""
    return Validator(
        run.validation,
        run.data,
        run.weights,
        run.distill.distill_steps,
        Path(run.checkpointing.output_dir) / "validation",
        preset,
        vae,
        inputs,
        compute_dtype,
        accelerator.device,
        accelerator.is_main_process,
    )

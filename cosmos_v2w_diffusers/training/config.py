"""Training flags: `TrainConfig`, one dataclass whose fields are the command-line flags, as given.

A field's `help` metadata is its flag's help; `None` defaults are filled from the model preset (docs/recipe.md's
optimisation table) by `run_config.resolve(flags)`, which also checks them (`checks.py`). The
resolved `RunConfig` hands each component its section (`sections.py`). Adding a flag is adding a field here and
to its section. The command line is read by `cli/train.py` (a checkpoint file's recipe merged in there); secrets are
kept out of what is stored (`secrets.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..choices import ATTENTION_BACKENDS

LORA_TARGET_MODULES = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"
# What a checkpoint's weights and optimizer state depend on: a resume must not change these.
RUN_DEFINING_FIELDS = (
    "model",
    "train_architecture",
    "num_frames",
    "height",
    "width",
    "lora_rank",
    "lora_alpha",
    "lora_target_modules",
    "base_precision",  # the frozen base's weights and the loss they give (fp8 or bf16)
    "distill_steps",  # a distillation's student and its sampler
)
# What a distillation's checkpoints depend on besides (its teacher: the frozen base the adapters sit on, which the
# checkpoint does not hold, and the guidance folded into the student). Not taken from a checkpoint file on
# `--resume_from_checkpoint <path>`: where weights come from is the user's flags' to say.
TEACHER_FIELDS = ("pretrained_model_name_or_path", "dit_path", "load_ema", "lora_path", "guidance")
# What a run rebuilt from a checkpoint file (`--resume_from_checkpoint <path>`) takes from the config stored
# there: what the run is and the numbers of its recipe. Where weights are read from, where the run uploads or
# logs to, and any secret always come from the user's own flags: a checkpoint received from someone else must
# not be able to redirect an upload or load other weights.
RESUMED_FIELDS = RUN_DEFINING_FIELDS + (
    "max_iter",
    "save_iter",
    "batch_size",
    "gradient_accumulation_steps",
    "seed",
    "learning_rate",
    "weight_decay",
    "lr_f_max",
    "lr_decay_steps",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "ema",
    "ema_relative_std",
    "cache_latents",
    "cache_windows_per_clip",
)
# accelerate's trackers (`accelerate.tracking.LOGGER_TYPE_TO_CLASS`) and the package each needs; listed here so
# `--help` imports neither accelerate nor torch (a test keeps the two lists equal).
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "mlflow": "mlflow",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}
# diffusers' `get_scheduler` names (`diffusers.optimization.SchedulerType`; a test keeps them equal).
DIFFUSERS_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "piecewise_constant",
)


# The sides a sample may have, in pixels (the largest NVIDIA's models take is 1280).
SIDE_PIXELS = (16, 2048)


def _f(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


def parse_resolution(resolution: str) -> tuple[int, int]:
    """(height, width) of `--resolution`: `N` (a square, as diffusers' examples) or `HxW`."""
    parts = resolution.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ValueError(f"--resolution {resolution!r}: pass one size (512) or height x width (704x1280).")
    height, width = (int(parts[0]), int(parts[-1]))
    if not (SIDE_PIXELS[0] <= min(height, width) and max(height, width) <= SIDE_PIXELS[1]):
        raise ValueError(
            f"--resolution {resolution!r}: each side must be {SIDE_PIXELS[0]} to {SIDE_PIXELS[1]} pixels "
            f"(NVIDIA's 720p is 704x1280)."
        )
    return height, width


@dataclass(frozen=True)
class TrainConfig:
    model: str | None = _f(
        None,
        "model size: 2B, 14B or tiny (default: the architecture of --pretrained_model_name_or_path's "
        "transformer, else 2B; a --model that contradicts the weights is refused)",
        choices=["2B", "14B", "tiny"],
    )
    pretrained_model_name_or_path: str | None = _f(None, "Hub id or local diffusers folder (default: the preset's)")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) of --pretrained_model_name_or_path")
    variant: str | None = _f(
        None,
        "weights variant of --pretrained_model_name_or_path, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)",
    )
    cache_dir: str | None = _f(None, "where Hub downloads are cached (default: huggingface_hub's)")
    dataset_path: str | None = _f(None, "NVIDIA-layout dataset folder (default: the built-in sample clips)")
    dataset_name: str | None = _f(
        None,
        "a datasets video folder (clips and a metadata.csv with file_name and caption columns; local or a Hub "
        "dataset repo), or a Hub dataset repo in NVIDIA's layout (videos/, metas/, t5_xxl/)",
    )
    dataset_config_name: str | None = _f(
        None, "with --dataset_name: the folder of the repo that holds the NVIDIA layout (a subset, in datasets' terms)"
    )
    video_column: str = _f("video", "a video folder's column of clips (datasets names it video, from file_name)")
    caption_column: str = _f("text", "a video folder's column of captions, encoded by the base's T5 once, then cached")
    max_sequence_length: int = _f(
        512, "T5 tokens a caption or validation prompt is encoded to (NVIDIA's 512; embeddings are zero-padded to 512)"
    )
    output_dir: str | None = _f(
        None, "run folder (default: checkpoints/posttraining/<video2world|video2world_lora>/<model>_<dataset>)"
    )
    dit_path: str | None = _f(None, "initialise the transformer from a native iter_N.pt (NVIDIA's or ours)")
    load_ema: bool = _f(False, "with --dit_path: take the net_ema.* weights")
    resume: bool = _f(True, "continue from <output_dir>/checkpoints/latest_checkpoint.txt when it exists")
    resume_from_checkpoint: str = _f(
        "latest",
        "which checkpoint to resume from: latest, iter_N (diffusers' checkpoint-N too), or a path to one of its "
        "iter_N.pt files",
    )

    train_architecture: str = _f("full", "full post-training or LoRA", choices=["full", "lora"])
    lora_rank: int | None = _f(None, "LoRA rank (default: 16 for 2B, 32 for 14B)", aliases=["--rank"])
    lora_alpha: int | None = _f(None, "LoRA alpha (default: equal to the rank)")
    lora_target_modules: str = _f(LORA_TARGET_MODULES, "comma-separated diffusers module names LoRA wraps")
    lora_dropout: float = _f(0.0, "dropout on the LoRA branch's input during training (NVIDIA's recipe: 0)")

    max_iter: int | None = _f(None, "optimizer steps (default 1000)", aliases=["--max_train_steps"])
    num_train_epochs: int | None = _f(
        None, "passes over the clips, which set --max_iter from the dataset's size (a --max_iter given wins)"
    )
    save_iter: int | None = _f(
        None, "checkpoint every N steps (default 500 full, 200 LoRA)", aliases=["--checkpointing_steps"]
    )
    checkpoints_total_limit: int | None = _f(None, "keep only the newest N checkpoints (default: keep all)")
    batch_size: int = _f(1, "clips per GPU per micro-step", aliases=["--train_batch_size"])
    gradient_accumulation_steps: int = _f(1, "micro-steps per optimizer step")
    dataloader_num_workers: int = _f(2, "DataLoader worker processes")
    seed: int = _f(0, "seed of data order, frame windows, noise and dropout")
    num_frames: int | None = _f(None, "frames per sample (default 93)")
    height: int | None = _f(None, "sample height (default 704)")
    width: int | None = _f(None, "sample width (default 1280)")
    resolution: str | None = _f(None, "sample size as diffusers' examples give it: N (N x N) or HxW, e.g. 704x1280")

    learning_rate: float | None = _f(None, "peak learning rate (default 2^-14.5)")
    scale_lr: bool = _f(
        False, "multiply the learning rate by the clips of a step (batch x accumulation x data-parallel ranks)"
    )
    weight_decay: float | None = _f(
        None,
        "AdamW weight decay, on every trainable tensor (default 0.1 2B, 0.2 14B)",
        aliases=["--adam_weight_decay"],
    )
    lr_f_max: float | None = _f(
        None, "linear schedule's f_max: lr * f_max * (1 - step/decay) (default 0.6 2B, 0.25 14B)"
    )
    lr_decay_steps: int | None = _f(None, "steps over which the factor falls to 0 (default: max_iter)")
    lr_scheduler: str = _f(
        "nvidia",
        "learning-rate schedule: nvidia (the recipe's linear f_max decay) or one of diffusers' get_scheduler names",
        choices=["nvidia", *DIFFUSERS_SCHEDULERS],
    )
    lr_warmup_steps: int = _f(0, "warm-up steps of --lr_scheduler (diffusers' schedules; nvidia has none)")
    lr_num_cycles: int = _f(1, "hard restarts of --lr_scheduler cosine_with_restarts (diffusers' flag)")
    lr_power: float = _f(1.0, "power factor of --lr_scheduler polynomial (diffusers' flag)")
    new_lr_cycle: bool = _f(
        False,
        "on resume, start the learning-rate schedule again at the checkpoint's step (a new cycle, as NVIDIA's "
        "cycle_lengths give), running to --max_iter; the weights, optimizer moments and EMA go on as saved",
    )
    use_8bit_adam: bool = _f(False, "bitsandbytes' 8-bit AdamW (needs the bitsandbytes package and a CUDA GPU)")
    allow_tf32: bool = _f(False, "allow TF32 matmuls and convolutions on Ampere and newer GPUs (fp32 runs go faster)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.99, "AdamW beta2")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "gradient-norm clip (non-finite gradients are zeroed first)")
    ema: bool = _f(
        True, "keep an fp32 EDM2 power EMA of the trained weights (the LoRA adapter's in a LoRA run, as NVIDIA does)"
    )
    ema_relative_std: float = _f(0.1, "EDM2 EMA relative std; 0.1 gives gamma 6.9372")
    ema_device: str | None = _f(
        None,
        "where the fp32 EMA lives: gpu, or cpu with its update overlapped with the next step (same values; frees "
        "4 bytes a parameter on the GPU). Default: cpu for full post-training on a GPU, else with the weights",
        choices=["gpu", "cpu"],
    )
    activation_checkpointing: str | None = _f(
        None,
        "recompute activations in the backward: selective (keep attention outputs, in as many blocks as the GPU "
        "has memory for; full recompute in the rest), full (every block), none (default: selective; full with "
        "--low_vram)",
        choices=["full", "selective", "none"],
    )
    selective_checkpointing_blocks: int | None = _f(
        None, "with selective checkpointing: how many blocks keep their attention outputs (default: as many as fit)"
    )
    context_parallel_size: int = _f(
        1,
        "shard each sample's latent tokens over this many processes (Ulysses attention); the data-parallel degree "
        "is processes / N, and N must divide the attention heads and the tokens",
    )
    ddp_timeout: int = _f(
        1800,
        "seconds a process waits for the others in a collective before the job ends with an error naming a lost "
        "node (transformers' name and default; torch's process-group timeout)",
    )
    memory_budget_gib: float | None = _f(
        None,
        "plan the step for this much GPU memory instead of the card's (a smaller card, or room for other work); a run "
        "that cannot fit it is refused before any weight loads",
    )
    base_precision: str = _f(
        "bf16",
        "LoRA runs: how the frozen base's block weights are stored. fp8: e4m3 with a scale per output channel, "
        "dequantised in each forward (half bf16's memory; numerics differ, see BENCHMARKS.md). nf4 is not yet offered",
        choices=["bf16", "fp8"],
    )
    block_swap: bool = _f(
        False,
        "LoRA runs on one GPU: keep the frozen base's block weights in pinned CPU memory and copy each block's to the "
        "GPU while the block before it computes (a side stream), so the GPU holds two blocks' instead of all; same "
        "results",
    )
    low_vram: bool = _f(
        False,
        "fit small GPUs: full recompute with each block's saved input offloaded to pinned CPU memory, EMA on the "
        "CPU, and --block_swap / --checkpoint_block_parts where the step fits only with them (2B LoRA at 720p in "
        "20.6 GiB, and 12.8 GiB with --base_precision fp8 and both levers; slower steps, same results)",
    )
    checkpoint_block_parts: bool = _f(
        False,
        "with --low_vram: checkpoint each block's attention projections and MLP again inside its recompute (about "
        "28%% less activation memory, steps about 8%% slower; same results)",
    )
    cache_latents: bool = _f(
        False,
        "encode --cache_windows_per_clip seeded frame windows of each clip once (a cached datasets .map on the "
        "GPU) and train on their latents instead of running the VAE every step",
    )
    cache_windows_per_clip: int = _f(4, "with --cache_latents: windows per clip, each draw picks one at random")

    mixed_precision: str | None = _f(
        None,
        "compute precision: bf16 autocast over fp32 master weights (NVIDIA trains in bf16), fp16, or no (fp32). "
        "Default: bf16 on a GPU, no on the CPU; overrides the accelerate config's",
        choices=["bf16", "fp16", "no"],
    )
    compile: bool | None = _f(
        None, "torch.compile each transformer block (~40 s of compilation, faster steps; default: on with CUDA)"
    )
    attention_backend: str = _f(
        "auto",
        "attention kernel: cudnn, flash4 (FlashAttention-4, the flash4 extra; Hopper/Blackwell), native "
        "(torch's choice), or auto (the fastest installed; native on the CPU)",
        choices=list(ATTENTION_BACKENDS),
    )

    max_skipped_clips: int | None = _f(
        None, "stop when more clips than this fail to decode at sample time (default: 10%% of the clips, at least 1)"
    )
    max_nonfinite_steps: int = _f(
        5, "stop after this many consecutive steps with a NaN/Inf loss (each such step is skipped, not applied)"
    )

    logging_dir: str | None = _f(None, "tracker logs (default: <output_dir>/logs)")
    report_to: str = _f(
        "none",
        "experiment tracker through accelerate (all: every one installed); one not installed is refused",
        choices=[*TRACKER_PACKAGES, "all", "none"],
    )
    tracker_project_name: str = _f("cosmos_v2w_posttraining", "the trackers' project (run group) name")
    validation_prompt: str | None = _f(None, "generate a validation video with this prompt every --validation_steps")
    validation_image: str | None = _f(
        None, "image the validation video continues (default: the first frame of --validation_video or of a clip)"
    )
    validation_video: str | None = _f(
        None, "a held-out clip: the validation continues its first frame and is scored (PSNR, SSIM) against it"
    )
    validation_steps: int | None = _f(None, "validate every N steps (default: at every checkpoint)")
    validation_epochs: int | None = _f(None, "validate every N passes over the clips (instead of --validation_steps)")
    num_validation_videos: int = _f(1, "videos per validation, from seeds --seed, --seed + 1, ...")
    validation_num_frames: int | None = _f(None, "frames of the validation video (default: --num_frames)")
    validation_num_inference_steps: int = _f(35, "sampling steps of the validation video")
    validation_num_chunks: int = _f(
        1,
        "a long validation video: this many chunks, each continuing the last frame of the one before (as "
        "infer_video2world.py --num_chunks); with --validation_video, PSNR/SSIM per chunk as far as the clip reaches",
    )
    validation_live: bool = _f(False, "also validate the live weights, not only the EMA")

    export_live_weights: bool = _f(
        False,
        "full runs: the exported pipeline/ takes the live weights instead of the EMA's (transformer/ holds them too)",
    )
    export_dtype: str = _f(
        "bf16",
        "dtype of the exported transformer weights (transformer/, transformer_ema/, pipeline/): bf16, what the model "
        "runs in and half the size, or fp32 (the masters; the checkpoints keep them either way)",
        choices=["bf16", "fp32"],
    )
    export_max_shard_size: str = _f(
        "10GB",
        "split exported weights into files of at most this size, with diffusers' index file (the Hub takes at most "
        "50 GB a file)",
    )
    push_to_hub: bool = _f(
        False,
        "upload what the pipeline loads (the diffusers transformer or the LoRA adapter) at every checkpoint "
        "and at the end, in the background, with a model card",
    )
    hub_model_id: str | None = _f(None, "Hub repo for --push_to_hub (default: the output folder's name)")
    hub_token: str | None = field(  # a secret: kept out of repr(), checkpoints, trackers and the model card
        default=None,
        repr=False,
        metadata={
            "help": "Hub token for --push_to_hub (default: HF_TOKEN or the logged-in one, which we prefer: a "
            "token on the command line is visible to other users of the machine)"
        },
    )
    hub_private: bool = _f(False, "create the --push_to_hub repo as private")

    distill_steps: int | None = _f(
        None,
        "distil the loaded model (the teacher: --dit_path, --lora_path) into a student that generates in this many "
        "steps (1-8) without guidance (DMD2, with the student and its critic as two LoRA adapters of --lora_rank "
        "over the frozen teacher); its presence makes the run a distillation",
    )
    guidance: float = _f(
        7.0, "with --distill_steps: the teacher's classifier-free guidance, folded into the student (1: none)"
    )
    lora_path: str | None = _f(
        None, "with --distill_steps: the teacher's LoRA adapter (<output_dir>/lora of a LoRA run), fused into it"
    )
    student_update_freq: int = _f(
        5, "with --distill_steps: every Nth step updates the student, the others its critic (NVIDIA's 5)"
    )

    def hub_kwargs(self) -> dict:
        """What `from_pretrained` takes besides the name: --revision, --variant and --cache_dir, where given."""
        from .sections import hub_kwargs

        return hub_kwargs(self)

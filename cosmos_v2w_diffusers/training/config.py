"""Training configuration: one dataclass, whose fields are also the command-line flags.

A field's `help` metadata is its flag's help; `None` defaults are filled from the model preset (docs/recipe.md's
optimisation table) by `TrainConfig.resolved()`. Adding a flag is adding a field.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..choices import ATTENTION_BACKENDS
from ..sample_shape import check_sample_shape

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
)
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
# Flags whose values are secrets: never stored in a checkpoint, a tracker, a log or a model card.
SECRET_FIELDS = ("hub_token",)
# A Hugging Face access token anywhere in a command line (a value given to some other flag, say).
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")
# Flags that must be at least 1 (or 0), checked before any default replaces them.
_AT_LEAST = {
    "max_iter": 1,
    "save_iter": 1,
    "batch_size": 1,
    "gradient_accumulation_steps": 1,
    "num_frames": 1,
    "height": 16,
    "width": 16,
    "lora_rank": 1,
    "lora_alpha": 1,
    "lr_decay_steps": 1,
    "cache_windows_per_clip": 1,
    "max_nonfinite_steps": 1,
    "checkpoints_total_limit": 1,
    "validation_steps": 1,
    "validation_num_frames": 1,
    "validation_num_inference_steps": 1,
    "dataloader_num_workers": 0,
    "max_skipped_clips": 0,
    "selective_checkpointing_blocks": 0,
    "context_parallel_size": 1,
    "lr_warmup_steps": 0,
    "num_train_epochs": 1,
    "validation_epochs": 1,
    "num_validation_videos": 1,
}

# Upper bounds, so a typo or a received checkpoint's stored numbers cannot ask for hours of caching, a rank no
# layer has, or a sample no memory holds (the largest side NVIDIA's models take is 1280 pixels).
_AT_MOST = {
    "height": 2048,
    "width": 2048,
    "num_frames": 1001,
    "lora_rank": 1024,
    "lora_alpha": 2**16,
    "cache_windows_per_clip": 64,
    "batch_size": 256,
    "gradient_accumulation_steps": 2**14,
    "num_validation_videos": 64,
    "validation_num_frames": 1001,
    "validation_num_inference_steps": 1000,
    "dataloader_num_workers": 256,
    "context_parallel_size": 4096,
    "max_iter": 10**9,
    "save_iter": 10**9,
    "lr_decay_steps": 10**9,
    "lr_warmup_steps": 10**9,
    "num_train_epochs": 10**6,
}
# Real-valued recipe numbers and the interval each must lie in: (low, high, whether low itself is allowed).
# ema_relative_std: EDM2's power EMA has gamma > 0 only below sqrt(1/12) = 0.2887 (Karras et al. 2024, eq. 2).
_INTERVALS = {
    "learning_rate": (0.0, 1e30, False),  # finite; a diverging run is stopped by `--max_nonfinite_steps`
    "lr_f_max": (0.0, 1e3, False),
    "weight_decay": (0.0, 1e3, True),
    "adam_beta1": (0.0, 1.0 - 1e-12, True),
    "adam_beta2": (0.0, 1.0 - 1e-12, True),
    "adam_epsilon": (0.0, 1.0, False),
    "max_grad_norm": (0.0, 1e12, False),
    "ema_relative_std": (0.0, 0.2886, False),
    "memory_budget_gib": (0.0, 2.0**20, False),
    "lora_dropout": (0.0, 1.0 - 1e-12, True),
}


def _f(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


def redacted_command(argv: list[str]) -> list[str]:
    """A command line safe to write down: the values of secret flags and anything shaped like a Hub token
    are replaced by `***`."""
    out, hide_next = [], False
    for arg in argv:
        flag, equals, _ = arg.partition("=")
        secret = _names_a_secret(flag)
        if hide_next:
            out.append("***")
        elif equals and secret:
            out.append(f"{flag}=***")
        else:
            out.append(_HF_TOKEN.sub("***", arg))
        hide_next = not equals and secret
    return out


def _names_a_secret(arg: str) -> bool:
    """Whether `arg` is a secret flag in any spelling argparse could take for it (an abbreviation such as
    `--hub_tok`, even though our parsers refuse abbreviations)."""
    return arg.startswith("--") and len(arg) > len("--hub_") and any(f"--{n}".startswith(arg) for n in SECRET_FIELDS)


def parse_resolution(resolution: str) -> tuple[int, int]:
    """(height, width) of `--resolution`: `N` (a square, as diffusers' examples) or `HxW`."""
    parts = resolution.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ValueError(f"--resolution {resolution!r}: pass one size (512) or height x width (704x1280).")
    height, width = (int(parts[0]), int(parts[-1]))
    if not (_AT_LEAST["height"] <= min(height, width) and max(height, width) <= _AT_MOST["height"]):
        raise ValueError(
            f"--resolution {resolution!r}: each side must be {_AT_LEAST['height']} to {_AT_MOST['height']} pixels "
            f"(NVIDIA's 720p is 704x1280)."
        )
    return height, width


def edm2_ema_gamma(relative_std: float) -> float:
    """EDM2's power-EMA exponent for a relative std: the largest real root of
    `g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2)` (Karras et al. 2024, eq. 3); 6.9372 for s = 0.1."""
    roots = np.roots([1.0, 7.0, 16.0 - relative_std**-2, 12.0 - relative_std**-2])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


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
        None, "a Hub dataset repo in NVIDIA's layout (videos/, metas/, t5_xxl/), downloaded and used as --dataset_path"
    )
    dataset_config_name: str | None = _f(
        None, "with --dataset_name: the folder of the repo that holds the NVIDIA layout (a subset, in datasets' terms)"
    )
    output_dir: str | None = _f(
        None, "run folder (default: checkpoints/posttraining/<video2world|video2world_lora>/<model>_<dataset>)"
    )
    dit_path: str | None = _f(None, "initialise the transformer from a native iter_N.pt (NVIDIA's or ours)")
    load_ema: bool = _f(False, "with --dit_path: take the net_ema.* weights")
    resume: bool = _f(True, "continue from <output_dir>/checkpoints/latest_checkpoint.txt when it exists")
    resume_from_checkpoint: str = _f(
        "latest", "which checkpoint to resume from: latest, iter_N, or a path to one of its iter_N.pt files"
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

    def _check_values(self) -> None:
        """Refuse values no run can use, before any work (a 0 is refused, not replaced by the default)."""
        for name, least in _AT_LEAST.items():
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"--{name} must be at least {least}, got {value}.")
        for name, most in _AT_MOST.items():
            value = getattr(self, name)
            if value is not None and value > most:
                raise ValueError(f"--{name} must be at most {most:,}, got {value:,}.")
        for name, (low, high, low_allowed) in _INTERVALS.items():
            value = getattr(self, name)
            if value is not None and not (low <= value <= high and (low_allowed or value > low)):
                side = "at least" if low_allowed else "more than"
                raise ValueError(f"--{name} must be {side} {low:g} and at most {high:g}, got {value}.")
        if not re.fullmatch(r"[0-9]+ *[KMGT]?I?B", self.export_max_shard_size.upper()):
            raise ValueError(
                f"--export_max_shard_size {self.export_max_shard_size!r}: give a size such as 10GB or 500MB."
            )
        if self.dataset_path and Path(self.dataset_path).is_symlink() and not Path(self.dataset_path).exists():
            raise ValueError(
                f"--dataset_path {self.dataset_path} is a link that loops or leads nowhere: pass the folder holding "
                f"videos/ and metas/."
            )
        if self.revision and self.pretrained_model_name_or_path and Path(self.pretrained_model_name_or_path).is_dir():
            raise ValueError(
                f"--revision {self.revision}: --pretrained_model_name_or_path {self.pretrained_model_name_or_path} is "
                f"a local folder, which has no revisions; drop --revision (or pass the Hub id)."
            )
        if self.resolution and (self.height or self.width):
            raise ValueError("--resolution sets --height and --width: pass one or the other.")
        if self.validation_epochs and self.validation_steps:
            raise ValueError("--validation_epochs and --validation_steps both say when to validate: pass one.")
        if self.dataset_config_name and not self.dataset_name:
            raise ValueError("--dataset_config_name picks a folder of --dataset_name's repo: pass --dataset_name too.")
        if self.dataset_name and self.dataset_path:
            raise ValueError("--dataset_name downloads the dataset --dataset_path names locally: pass one of them.")
        if self.lr_scheduler == "nvidia" and self.lr_warmup_steps:
            raise ValueError(
                "--lr_warmup_steps: NVIDIA's schedule (--lr_scheduler nvidia, the default) has no warm-up; pick one "
                "of diffusers' schedules (e.g. --lr_scheduler constant_with_warmup) or drop --lr_warmup_steps."
            )
        if self.block_swap and self.train_architecture != "lora":
            raise ValueError(
                "--block_swap streams a frozen base: it is for --train_architecture lora (full post-training updates "
                "every weight each step)."
            )
        if self.base_precision != "bf16" and self.train_architecture != "lora":
            raise ValueError(
                f"--base_precision {self.base_precision} stores a frozen base: it is for --train_architecture lora "
                f"(full post-training trains every weight in fp32)."
            )
        if self.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("--use_8bit_adam needs the bitsandbytes package: `pip install bitsandbytes`, or drop it.")
        if self.load_ema and not self.dit_path:
            raise ValueError(
                "--load_ema picks the EMA weights of --dit_path: pass --dit_path too, or drop --load_ema."
            )
        if self.selective_checkpointing_blocks is not None and self.activation_checkpointing not in (
            None,
            "selective",
        ):
            raise ValueError("--selective_checkpointing_blocks needs --activation_checkpointing selective.")
        if self.hub_token and self.report_to in ("wandb", "all"):  # as diffusers' examples: W&B would upload the token
            raise ValueError(
                "--hub_token with --report_to wandb would expose the token; log in with `hf auth login` (or set "
                "HF_TOKEN) and drop --hub_token."
            )
        tracker_package = TRACKER_PACKAGES.get(self.report_to)
        if tracker_package and importlib.util.find_spec(tracker_package) is None:  # accelerate would only warn
            raise ValueError(
                f"--report_to {self.report_to} needs the {tracker_package} package: "
                f"`pip install {tracker_package}`, or "
                f"pick another tracker."
            )
        if self.output_dir and self.pretrained_model_name_or_path:
            output, base = Path(self.output_dir).absolute(), Path(self.pretrained_model_name_or_path).absolute()
            if output == base or (base.exists() and output.exists() and output.samefile(base)):
                raise ValueError(
                    f"--output_dir {self.output_dir} is the base model's folder "
                    f"(--pretrained_model_name_or_path): the "
                    f"run's export would replace its transformer/. Pass another --output_dir."
                )

    def run_definition(self) -> dict:
        """The run-defining flags of a resolved config (`RUN_DEFINING_FIELDS`)."""
        return {name: getattr(self, name) for name in RUN_DEFINING_FIELDS}

    def hub_kwargs(self) -> dict:
        """What `from_pretrained` takes besides the name: --revision, --variant and --cache_dir, where given."""
        return {k: getattr(self, k) for k in ("revision", "variant", "cache_dir") if getattr(self, k) is not None}

    def public_dict(self) -> dict:
        """Every flag but the secrets: what checkpoints store and trackers log."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in SECRET_FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.public_dict(), sort_keys=True)

    def resolved(self, steps_per_epoch: int | None = None, clips_per_step: int | None = None) -> "RunConfig":
        """A frozen copy with every default that depends on the preset (and the weights) filled in.

        `steps_per_epoch` (optimizer steps in one pass over the clips, which only the loaded dataset tells) turns
        `--num_train_epochs` and `--validation_epochs` into steps, and `clips_per_step` (which the launch tells)
        scales the learning rate under `--scale_lr`; without them neither is applied. The trainer resolves once for
        the run's folder and data, then again with those counts; neither copy changes.
        """
        if isinstance(self, RunConfig) and self.flags is not None:  # resolved values are no flags: start again
            return self.flags.resolved(steps_per_epoch, clips_per_step)
        # diffusers and transformers: imported here, kept out of `--help`
        from ..components import preset_of_pretrained
        from ..presets import get_preset

        self._check_values()
        asked = get_preset(self.model) if self.model else None
        found = (
            preset_of_pretrained(self.pretrained_model_name_or_path, **self.hub_kwargs())
            if self.pretrained_model_name_or_path
            else None
        )
        if asked and found and asked.name != found.name:
            raise ValueError(
                f"--model {self.model} contradicts --pretrained_model_name_or_path "
                f"{self.pretrained_model_name_or_path}, "
                f"whose transformer is the {found.name} architecture: pass --model {found.name}, or drop --model."
            )
        preset = asked or found or get_preset("2B")
        lora = self.train_architecture == "lora"

        def given_or(name: str, default):
            value = getattr(self, name)
            return default if value is None else value

        rank = self.lora_rank or preset.lora_rank
        lr_scale = (clips_per_step or 1) if self.scale_lr else 1  # diffusers' --scale_lr
        height, width = parse_resolution(self.resolution) if self.resolution else (self.height, self.width)
        epochs = self.num_train_epochs if steps_per_epoch else None
        max_iter = self.max_iter or (epochs * steps_per_epoch if epochs and steps_per_epoch else preset.max_iter)
        every_epochs = self.validation_epochs * steps_per_epoch if self.validation_epochs and steps_per_epoch else None
        save_iter = self.save_iter or (preset.save_iter_lora if lora else preset.save_iter)
        # Selective checkpointing is the default: the trainer keeps attention outputs in as many blocks as
        # the GPU has memory for and recomputes the rest in full (`training/memory.py`).
        recompute = self.activation_checkpointing or ("full" if self.low_vram else "selective")
        if self.dataset_path:
            dataset = Path(self.dataset_path).resolve().name
        else:
            dataset = self.dataset_name.rsplit("/", 1)[-1] if self.dataset_name else "demo"
        group = "video2world_lora" if lora else "video2world"
        flags: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        resolved: dict[str, Any] = dict(
            model=preset.name,
            lora_rank=rank,
            lora_alpha=self.lora_alpha or rank,
            max_iter=max_iter,
            save_iter=save_iter,
            num_frames=self.num_frames or preset.num_frames,
            height=preset.height if height is None else height,
            width=preset.width if width is None else width,
            resolution=None,  # now in --height and --width
            learning_rate=given_or("learning_rate", preset.learning_rate) * lr_scale,
            weight_decay=given_or("weight_decay", preset.weight_decay),
            lr_f_max=given_or("lr_f_max", preset.lr_f_max),
            lr_decay_steps=self.lr_decay_steps or max_iter,
            activation_checkpointing=recompute,
            validation_steps=self.validation_steps or every_epochs or save_iter,
            output_dir=self.output_dir
            or str(Path("checkpoints", "posttraining", group, f"{preset.short_name}_{dataset}")),
        )
        c = RunConfig(**{**flags, **resolved}, flags=self)
        if c.block_swap and c.activation_checkpointing == "none":
            raise ValueError(
                "--block_swap drops a block's weights once it has run, so the backward must recompute the block: "
                "drop --activation_checkpointing none."
            )
        if c.checkpoint_block_parts and not c.low_vram:
            raise ValueError("--checkpoint_block_parts goes with --low_vram: add it.")
        if c.low_vram and c.activation_checkpointing != "full":
            raise ValueError("--low_vram offloads what full recompute keeps: drop --activation_checkpointing.")
        if c.validation_num_frames is not None and (c.validation_num_frames - 1) % 4:
            raise ValueError(f"--validation_num_frames must be 4k+1, got {c.validation_num_frames}.")
        if c.lr_warmup_steps >= min(c.max_iter, c.lr_decay_steps):
            raise ValueError(
                f"--lr_warmup_steps {c.lr_warmup_steps} is not shorter than the run's {c.max_iter} steps: the "
                f"learning rate would never reach its peak; shorten the warm-up."
            )
        if c.lr_decay_steps < c.max_iter and c.lr_scheduler not in ("constant", "constant_with_warmup"):
            raise ValueError(
                f"--lr_decay_steps {c.lr_decay_steps} is shorter than --max_iter {c.max_iter}: the last "
                f"{c.max_iter - c.lr_decay_steps} steps would train at learning rate 0; raise it or drop it."
            )
        if (c.validation_image or c.validation_video) and not c.validation_prompt:
            raise ValueError("--validation_image/--validation_video need a --validation_prompt.")
        check_sample_shape(c.num_frames, c.height, c.width, "--num_frames", "--height and --width")
        return c

    @property
    def ema_gamma(self) -> float:
        return edm2_ema_gamma(self.ema_relative_std)

    @classmethod
    def parser(cls, defaults: bool = True) -> argparse.ArgumentParser:
        """The flags; `defaults=False` leaves out every flag not given (to tell what the user set)."""
        # No abbreviations: `--hub_tok` would otherwise set the token under a spelling no redaction expects.
        parser = argparse.ArgumentParser(description="Cosmos-Predict2 Video2World post-training", allow_abbrev=False)
        for f in dataclasses.fields(cls):
            # A None default is resolved from the preset or the device: the help text says how.
            shown = "" if f.default is None else " (default: %(default)s)"
            kwargs = dict(
                default=f.default if defaults else argparse.SUPPRESS, help=f.metadata["help"] + shown, dest=f.name
            )
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            kind = f.type.split(" |")[0]
            if kind == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = {"int": int, "float": float, "str": str}[kind]
            parser.add_argument(f"--{f.name}", *f.metadata.get("aliases", []), **kwargs)
        # diffusers' examples switch full recompute on with a bare `--gradient_checkpointing`.
        parser.add_argument(
            "--gradient_checkpointing",
            dest="activation_checkpointing",
            nargs="?",
            const="full",
            choices=["full", "selective", "none"],
            default=argparse.SUPPRESS,
            help="alias of --activation_checkpointing; alone it means full",
        )
        return parser

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "TrainConfig":
        """The config of a command line. With `--resume_from_checkpoint <path to a checkpoint file>`, the run
        continues in that checkpoint's output folder with the `RESUMED_FIELDS` stored there (what the run is
        and its recipe's numbers), changed only by the flags given on the command line. Everything else (the
        dataset, the base weights, trackers, the Hub) comes from the command line alone."""
        config = cls(**vars(cls.parser().parse_args(argv)))
        checkpoint = Path(config.resume_from_checkpoint)
        if config.resume_from_checkpoint == "latest" or not checkpoint.is_file():
            return config
        from .checkpoint import config_of_checkpoint, output_dir_of  # torch: kept out of `--help`

        stored = config_of_checkpoint(checkpoint)
        if stored is None:
            return config
        given = vars(cls.parser(defaults=False).parse_args(argv))
        if stored.get("dataset_path") and "dataset_path" not in given:
            raise ValueError(
                f"{checkpoint} was trained on --dataset_path {stored['dataset_path']}: pass --dataset_path (that "
                f"folder, or another) to continue it; a checkpoint never chooses what a run reads."
            )
        rebuilt = {name: stored[name] for name in RESUMED_FIELDS if name in stored}
        if stored.get("lr_decay_steps") == stored.get("max_iter") and "lr_decay_steps" not in given:
            rebuilt.pop("lr_decay_steps", None)  # it was the default: it follows --max_iter, as in a plain resume
        taken = [f"--{name} {value}" for name, value in rebuilt.items() if name not in given]
        # A received file's numbers are bounded like flags (`_check_values`) and listed, so none is taken unseen.
        logging.getLogger(__name__).info("Taken from %s: %s", checkpoint, ", ".join(taken) or "nothing")
        rebuilt["output_dir"] = str(output_dir_of(checkpoint))
        return dataclasses.replace(config, **{**rebuilt, **given})


@dataclass(frozen=True)
class RunConfig(TrainConfig):
    """A `TrainConfig` resolved (`TrainConfig.resolved`): every default that depends on the preset, the weights, the
    dataset's size or the launch filled in, so these fields are never None, and the flags it came from kept
    (`flags`), so that resolving again starts from them. The defaults below are placeholders: a RunConfig is only
    ever made by `resolved()`, which gives every one of them."""

    model: str = ""
    output_dir: str = ""
    lora_rank: int = 0
    lora_alpha: int = 0
    max_iter: int = 0
    save_iter: int = 0
    num_frames: int = 0
    height: int = 0
    width: int = 0
    learning_rate: float = 0.0
    weight_decay: float = 0.0
    lr_f_max: float = 0.0
    lr_decay_steps: int = 0
    activation_checkpointing: str = ""
    validation_steps: int = 0
    flags: TrainConfig | None = field(default=None, repr=False, compare=False)

    def public_dict(self) -> dict:
        return {k: v for k, v in super().public_dict().items() if k != "flags"}

"""The parallel section: how a step runs on the devices: precision, kernels, compilation, memory levers, context
parallelism (`training/parallel.py`, `training/memory.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...choices import ATTENTION_BACKENDS
from ...utils.flags import Flags, flag


@dataclass(frozen=True)
class ParallelConfig(Flags):
    """How a step runs on the devices: precision, kernels, compilation, memory levers, context parallelism
    (`training/parallel.py`, `training/memory.py`)."""

    context_parallel_size: int = flag(
        1,
        "shard each sample's latent tokens over this many processes (Ulysses attention); the data-parallel degree "
        "is processes / N, and N must divide the attention heads and the tokens",
        at_least=1,
        at_most=4096,
    )
    ddp_timeout: int = flag(
        1800,
        "seconds a process waits for the others in a collective before the job ends with an error naming a lost "
        "node (transformers' name and default; torch's process-group timeout)",
        at_least=10,
        at_most=7 * 24 * 3600,
    )
    mixed_precision: str | None = flag(
        None,
        "compute precision: bf16 autocast over fp32 master weights (NVIDIA trains in bf16), fp16, or no (fp32). "
        "Default: bf16 on a GPU, no on the CPU; overrides the accelerate config's",
        choices=["bf16", "fp16", "no"],
    )
    allow_tf32: bool = flag(
        False, "allow TF32 matmuls and convolutions on Ampere and newer GPUs (fp32 runs go faster)"
    )
    compile: bool | None = flag(
        None, "torch.compile each transformer block (~40 s of compilation, faster steps; default: on with CUDA)"
    )
    attention_backend: str = flag(
        "auto",
        "attention kernel: cudnn, flash4 (FlashAttention-4, the flash4 extra; Hopper/Blackwell), native "
        "(torch's choice), or auto (the fastest installed; native on the CPU)",
        choices=list(ATTENTION_BACKENDS),
    )
    activation_checkpointing: str = flag(
        None,
        "recompute activations in the backward: selective (keep attention outputs, in as many blocks as the GPU "
        "has memory for; full recompute in the rest), full (every block), none (default: selective; full with "
        "--low_vram)",
        choices=["full", "selective", "none"],
    )
    selective_checkpointing_blocks: int | None = flag(
        None,
        "with selective checkpointing: how many blocks keep their attention outputs (default: as many as fit)",
        at_least=0,
    )
    memory_budget_gib: float | None = flag(
        None,
        "plan the step for this much GPU memory instead of the card's (a smaller card, or room for other work); a run "
        "that cannot fit it is refused before any weight loads",
        interval=(0.0, 2.0**20, False),
    )
    ema_device: str | None = flag(
        None,
        "where the fp32 EMA lives: gpu, or cpu with its update overlapped with the next step (same values; frees "
        "4 bytes a parameter on the GPU). Default: cpu for full post-training on a GPU, else with the weights",
        choices=["gpu", "cpu"],
    )
    block_swap: bool = flag(
        False,
        "LoRA runs on one GPU: keep the frozen base's block weights in pinned CPU memory and copy each block's to the "
        "GPU while the block before it computes (a side stream), so the GPU holds two blocks' instead of all; same "
        "results",
    )
    low_vram: bool = flag(
        False,
        "fit small GPUs: full recompute with each block's saved input offloaded to pinned CPU memory, EMA on the "
        "CPU, and --block_swap / --checkpoint_block_parts where the step fits only with them (2B LoRA at 720p in "
        "20.6 GiB, and 12.8 GiB with --base_precision fp8 and both levers; slower steps, same results)",
    )
    checkpoint_block_parts: bool = flag(
        False,
        "with --low_vram: checkpoint each block's attention projections and MLP again inside its recompute (about "
        "28%% less activation memory, steps about 8%% slower; same results)",
    )

    def check(self) -> None:
        super().check()
        recompute = self.activation_checkpointing  # None until resolved: selective, or full with --low_vram
        if self.selective_checkpointing_blocks is not None and recompute not in (None, "selective"):
            raise ValueError("--selective_checkpointing_blocks needs --activation_checkpointing selective.")
        if self.block_swap and recompute == "none":
            raise ValueError(
                "--block_swap drops a block's weights once it has run, so the backward must recompute the block: "
                "drop --activation_checkpointing none."
            )
        if self.checkpoint_block_parts and not self.low_vram:
            raise ValueError("--checkpoint_block_parts goes with --low_vram: add it.")
        if self.low_vram and recompute not in (None, "full"):
            raise ValueError("--low_vram offloads what full recompute keeps: drop --activation_checkpointing.")

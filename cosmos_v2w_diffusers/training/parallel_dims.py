"""How a run is spread over its processes, worked out once (torchtitan's `ParallelDims` is the model).

The trainer builds it from the accelerator and `--context_parallel_size` and hands it to whatever depends on
the layout: the draw stream (data-parallel rank and size), the loss scaling, the memory planner (how many
ranks share the states), the wrapping (which engine), the train state (DeepSpeed's stage) and the metrics
(clips per step). Ranks are laid out as `data_parallel_rank * cp + cp_rank`: each group of `cp` consecutive
ranks shares one sample.
"""

from __future__ import annotations

from dataclasses import dataclass

from accelerate.utils import DistributedType

ENGINES = ("single", "ddp", "fsdp", "deepspeed")


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    rank: int
    cp: int  # ranks sharing one sample's tokens (context parallelism)
    engine: str  # one of ENGINES
    zero_stage: int | None = None  # DeepSpeed's ZeRO stage

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"Unknown engine {self.engine!r}: one of {', '.join(ENGINES)}.")
        if self.engine == "deepspeed" and self.cp > 1:  # its gradient scaling is tested under DDP and FSDP2 only
            raise ValueError(
                "--context_parallel_size is supported under DDP and FSDP2, not DeepSpeed: use "
                "accelerate_configs/fsdp_8gpu.yaml, or drop --context_parallel_size."
            )
        if self.world_size % self.cp:
            raise ValueError(
                f"--context_parallel_size {self.cp} must divide the number of processes ({self.world_size})."
            )

    @classmethod
    def from_accelerator(cls, accelerator, context_parallel_size: int = 1) -> "ParallelDims":
        kind = accelerator.distributed_type
        if kind == DistributedType.DEEPSPEED:
            engine = "deepspeed"
        elif kind == DistributedType.FSDP:
            engine = "fsdp"
            version = getattr(getattr(accelerator.state, "fsdp_plugin", None), "fsdp_version", 2)
            if version != 2:  # the trainer wraps blocks and shards states as FSDP2 does; FSDP1 is not supported
                raise ValueError(
                    f"The accelerate config asks for FSDP{version}: this trainer runs FSDP2. Set `fsdp_version: 2` "
                    "in it, or use accelerate_configs/fsdp_8gpu.yaml."
                )
        elif accelerator.num_processes > 1:
            engine = "ddp"
        else:
            engine = "single"
        plugin = accelerator.state.deepspeed_plugin if engine == "deepspeed" else None
        return cls(
            world_size=accelerator.num_processes,
            rank=accelerator.process_index,
            cp=context_parallel_size,
            engine=engine,
            zero_stage=plugin.zero_stage if plugin else None,
        )

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks: groups of `cp` ranks, each drawing its own samples."""
        return self.world_size // self.cp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp

    @property
    def state_shards(self) -> int | None:
        """Ranks that share the weights, gradients, optimizer state and EMA (FSDP), or None when each holds them
        whole."""
        return self.world_size if self.engine == "fsdp" else None

    def clips_per_step(self, batch_size: int, gradient_accumulation_steps: int) -> int:
        """Clips one optimizer step trains on, over every data-parallel rank."""
        return batch_size * gradient_accumulation_steps * self.dp_size

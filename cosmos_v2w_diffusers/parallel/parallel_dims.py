"""How a run's processes are laid out, worked out once (torchtitan's `ParallelDims` is the model).

Training builds it from the accelerator and `--context_parallel_size` (`from_accelerator`), generation from the
processes torchrun started and `--guidance_parallel` (`for_generation`); whatever depends on the layout asks it:
the draw stream (data-parallel rank and size), the loss scaling, the memory planner (how many ranks share the
states), the wrapping (which engine), the train state (DeepSpeed's stage), the metrics (clips per step), the
context-parallel mesh (`parallel/context_parallel.py`) and the guidance pairs (`pipeline.enable_guidance_parallel`).

One layout everywhere: rank = group * cp + cp_rank. Each group of `cp` consecutive ranks shares one sample's
tokens; the groups are the data-parallel ranks in training and, under guidance parallelism, the two sides of
classifier-free guidance in generation (group 0 the conditional side, group 1 the unconditional one), so ranks
`i` and `i + cp` hold the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from accelerate.utils import DistributedType

ENGINES = ("single", "ddp", "fsdp", "deepspeed", "generation")


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    rank: int
    cp: int  # ranks sharing one sample's tokens (context parallelism)
    engine: str  # one of ENGINES
    zero_stage: int | None = None  # DeepSpeed's ZeRO stage
    guidance_parallel: bool = False  # generation: the two groups of `cp` ranks each run one side of the guidance

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"Unknown engine {self.engine!r}: one of {', '.join(ENGINES)}.")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"Rank {self.rank} is not one of the {self.world_size} processes.")
        if self.cp < 1:  # one that does not divide the processes is refused by training's `validate`
            raise ValueError(f"--context_parallel_size must be at least 1, got {self.cp}.")
        if self.guidance_parallel and (self.engine != "generation" or self.world_size != 2 * self.cp):
            raise ValueError(
                f"Guidance parallelism splits generation's {self.world_size} processes into two halves: it needs "
                f"an even number of processes, each half sharing the tokens."
            )

    @classmethod
    def from_accelerator(cls, accelerator, context_parallel_size: int = 1) -> "ParallelDims":
        """A training run's layout: accelerate's engine and processes, `--context_parallel_size` ranks a sample."""
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

    @classmethod
    def for_generation(cls, world_size: int, rank: int, guidance_parallel: bool = False) -> "ParallelDims":
        """A generation's layout over `world_size` processes: every one shares the video's tokens, or, with
        `guidance_parallel`, each half shares them and runs one side of the guidance."""
        cp = world_size // 2 if guidance_parallel else world_size
        return cls(world_size, rank, cp, "generation", guidance_parallel=guidance_parallel)

    @property
    def dp_size(self) -> int:
        """Groups of `cp` ranks: data-parallel ranks, each drawing its own samples (training), or guidance sides."""
        return self.world_size // self.cp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp

    @property
    def cp_rank(self) -> int:
        """This rank's place in its group: which shard of the tokens it holds."""
        return self.rank % self.cp

    @property
    def state_shards(self) -> int | None:
        """Ranks that share the weights, gradients, optimizer state and EMA (FSDP), or None when each holds them
        whole."""
        return self.world_size if self.engine == "fsdp" else None

    def clips_per_step(self, batch_size: int, gradient_accumulation_steps: int) -> int:
        """Clips one optimizer step trains on, over every data-parallel rank."""
        return batch_size * gradient_accumulation_steps * self.dp_size

    def guidance_pairs(self) -> list[tuple[int, int]]:
        """The rank pairs that hold the same tokens, one for each side of the guidance: `(i, i + cp)`."""
        return [(i, i + self.cp) for i in range(self.cp)] if self.guidance_parallel else []

    def context_parallel_mesh(self, device_type: str):
        """The `(ring, ulysses)` device mesh of this rank's group of `cp` ranks, out of a `(groups, 1, cp)` mesh
        over every rank (diffusers' `ContextParallelConfig.setup` takes it). Needs torch.distributed started."""
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device_type, (self.dp_size, 1, self.cp), mesh_dim_names=("dp", "ring", "ulysses"))
        return mesh["ring", "ulysses"]

    def guidance_group(self):
        """This rank's process group of guidance parallelism (the pair holding its tokens). Every rank makes every
        pair, as `torch.distributed.new_group` requires."""
        import torch.distributed as dist

        if not self.guidance_parallel:
            raise ValueError("guidance_group: this layout has no guidance parallelism (for_generation(..., True)).")
        mine = None
        for pair in self.guidance_pairs():
            group = dist.new_group(list(pair))
            mine = group if self.rank in pair else mine
        return mine

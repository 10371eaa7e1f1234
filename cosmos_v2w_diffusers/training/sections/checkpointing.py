"""The checkpointing section: where the run writes, when it checkpoints, what it resumes from and what it exports
(`training/checkpointer.py`, `export/exports.py`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...utils.flags import Flags, flag


@dataclass(frozen=True)
class CheckpointConfig(Flags):
    """Where the run writes, when it checkpoints, what it resumes from and what it exports
    (`training/checkpointer.py`, `export/exports.py`)."""

    output_dir: str = flag(
        None, "run folder (default: checkpoints/posttraining/<video2world|video2world_lora>/<model>_<dataset>)"
    )
    resume: bool = flag(True, "continue from <output_dir>/checkpoints/latest_checkpoint.txt when it exists")
    resume_from_checkpoint: str = flag(
        "latest",
        "which checkpoint to resume from: latest, iter_N (diffusers' checkpoint-N too), or a path to one of its "
        "iter_N.pt files",
    )
    save_iter: int = flag(
        None,
        "checkpoint every N steps (default 500 full, 200 LoRA)",
        aliases=["--checkpointing_steps"],
        at_least=1,
        at_most=10**9,
    )
    checkpoints_total_limit: int | None = flag(
        None, "keep only the newest N checkpoints (default: keep all)", at_least=1
    )
    export_live_weights: bool = flag(
        False,
        "full runs: the exported pipeline/ takes the live weights instead of the EMA's (transformer/ holds them too)",
    )
    export_dtype: str = flag(
        "bf16",
        "dtype of the exported transformer weights (transformer/, transformer_ema/, pipeline/): bf16, what the model "
        "runs in and half the size, or fp32 (the masters; the checkpoints keep them either way)",
        choices=["bf16", "fp32"],
    )
    export_max_shard_size: str = flag(
        "10GB",
        "split exported weights into files of at most this size, with diffusers' index file (the Hub takes at most "
        "50 GB a file)",
    )

    def check(self) -> None:
        super().check()
        if not re.fullmatch(r"[0-9]+ *[KMGT]?I?B", self.export_max_shard_size.upper()):
            raise ValueError(
                f"--export_max_shard_size {self.export_max_shard_size!r}: give a size such as 10GB or 500MB."
            )

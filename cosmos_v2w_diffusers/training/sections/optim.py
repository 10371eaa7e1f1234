"""The optim section: the optimizer, its schedule, the EMA and when a run stops (`training/optim.py`)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from ...utils.flags import Flags, flag

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


def edm2_ema_gamma(relative_std: float) -> float:
    """EDM2's power-EMA exponent for a relative std: the largest real root of
    `g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2)` (Karras et al. 2024, eq. 3); 6.9372 for s = 0.1."""
    roots = np.roots([1.0, 7.0, 16.0 - relative_std**-2, 12.0 - relative_std**-2])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


@dataclass(frozen=True)
class OptimConfig(Flags):
    """The optimizer, its schedule, the EMA and when a run stops (`training/optim.py`). A learning rate is finite
    (a diverging run is stopped by --max_nonfinite_steps); EDM2's power EMA has gamma > 0 only below a relative
    std of sqrt(1/12) = 0.2887 (Karras et al. 2024, eq. 2)."""

    max_iter: int = flag(
        None, "optimizer steps (default 1000)", aliases=["--max_train_steps"], at_least=1, at_most=10**9
    )
    num_train_epochs: int | None = flag(
        None,
        "passes over the clips, which set --max_iter from the dataset's size (a --max_iter given wins)",
        at_least=1,
        at_most=10**6,
    )
    gradient_accumulation_steps: int = flag(1, "micro-steps per optimizer step", at_least=1, at_most=2**14)
    learning_rate: float = flag(None, "peak learning rate (default 2^-14.5)", interval=(0.0, 1e30, False))
    scale_lr: bool = flag(
        False, "multiply the learning rate by the clips of a step (batch x accumulation x data-parallel ranks)"
    )
    weight_decay: float = flag(
        None,
        "AdamW weight decay, on every trainable tensor (default 0.1 2B, 0.2 14B)",
        aliases=["--adam_weight_decay"],
        interval=(0.0, 1e3, True),
    )
    lr_f_max: float = flag(
        None,
        "linear schedule's f_max: lr * f_max * (1 - step/decay) (default 0.6 2B, 0.25 14B)",
        interval=(0.0, 1e3, False),
    )
    lr_decay_steps: int = flag(
        None, "steps over which the factor falls to 0 (default: max_iter)", at_least=1, at_most=10**9
    )
    lr_scheduler: str = flag(
        "nvidia",
        "learning-rate schedule: nvidia (the recipe's linear f_max decay) or one of diffusers' get_scheduler names",
        choices=["nvidia", *DIFFUSERS_SCHEDULERS],
    )
    lr_warmup_steps: int = flag(
        0, "warm-up steps of --lr_scheduler (diffusers' schedules; nvidia has none)", at_least=0, at_most=10**9
    )
    lr_num_cycles: int = flag(
        1, "hard restarts of --lr_scheduler cosine_with_restarts (diffusers' flag)", at_least=1, at_most=10**6
    )
    lr_power: float = flag(
        1.0, "power factor of --lr_scheduler polynomial (diffusers' flag)", interval=(0.0, 100.0, False)
    )
    new_lr_cycle: bool = flag(
        False,
        "on resume, start the learning-rate schedule again at the checkpoint's step (a new cycle, as NVIDIA's "
        "cycle_lengths give), running to --max_iter; the weights, optimizer moments and EMA go on as saved",
    )
    use_8bit_adam: bool = flag(False, "bitsandbytes' 8-bit AdamW (needs the bitsandbytes package and a CUDA GPU)")
    adam_beta1: float = flag(0.9, "AdamW beta1", interval=(0.0, 1.0 - 1e-12, True))
    adam_beta2: float = flag(0.99, "AdamW beta2", interval=(0.0, 1.0 - 1e-12, True))
    adam_epsilon: float = flag(1e-8, "AdamW epsilon", interval=(0.0, 1.0, False))
    max_grad_norm: float = flag(
        1.0, "gradient-norm clip (non-finite gradients are zeroed first)", interval=(0.0, 1e12, False)
    )
    max_nonfinite_steps: int = flag(
        5,
        "stop after this many consecutive steps with a NaN/Inf loss (each such step is skipped, not applied)",
        at_least=1,
    )
    ema: bool = flag(
        True, "keep an fp32 EDM2 power EMA of the trained weights (the LoRA adapter's in a LoRA run, as NVIDIA does)"
    )
    ema_relative_std: float = flag(0.1, "EDM2 EMA relative std; 0.1 gives gamma 6.9372", interval=(0.0, 0.2886, False))

    def check(self) -> None:
        super().check()
        if self.lr_scheduler == "nvidia" and self.lr_warmup_steps:
            raise ValueError(
                "--lr_warmup_steps: NVIDIA's schedule (--lr_scheduler nvidia, the default) has no warm-up; pick one "
                "of diffusers' schedules (e.g. --lr_scheduler constant_with_warmup) or drop --lr_warmup_steps."
            )
        if self.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("--use_8bit_adam needs the bitsandbytes package: `pip install bitsandbytes`, or drop it.")
        # Given, or filled in by the resolution: the run's length and its schedule's.
        ends = [steps for steps in (self.max_iter, self.lr_decay_steps) if steps is not None]
        if ends and self.lr_warmup_steps >= min(ends):
            raise ValueError(
                f"--lr_warmup_steps {self.lr_warmup_steps} is not shorter than the run's {min(ends)} steps: the "
                f"learning rate would never reach its peak; shorten the warm-up."
            )
        if (
            self.max_iter is not None
            and self.lr_decay_steps is not None
            and self.lr_decay_steps < self.max_iter
            and self.lr_scheduler not in ("constant", "constant_with_warmup")
        ):
            raise ValueError(
                f"--lr_decay_steps {self.lr_decay_steps} is shorter than --max_iter {self.max_iter}: the last "
                f"{self.max_iter - self.lr_decay_steps} steps would train at learning rate 0; raise it or drop it."
            )

    @property
    def ema_gamma(self) -> float:
        """The power EMA's exponent for `ema_relative_std` (EDM2's relation)."""
        return edm2_ema_gamma(self.ema_relative_std)

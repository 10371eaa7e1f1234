"""The scheduler a generation samples with, its timesteps set: the pipeline's own (NVIDIA's multistep sampler, a
distilled student's few-step one, or diffusers' Euler), or for parity the Euler scheduler diffusers' Cosmos-Predict2
pipeline drives, with its settings.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .scheduler import CosmosMultistepScheduler
from .scheduler_few_step import CosmosFewStepScheduler

# Cosmos' noise levels: where sampling starts and ends.
SIGMA_MAX = 80.0
SIGMA_MIN = 0.002


def sampling_scheduler(
    scheduler: SchedulerMixin, num_inference_steps: int, device: torch.device, diffusers_compat: bool = False
) -> SchedulerMixin:
    """`scheduler` (a pipeline's) with its timesteps set, or with `diffusers_compat` the Euler scheduler
    diffusers' pipeline samples with. The user's scheduler config is never changed: the Euler
    scheduler gets diffusers' Cosmos-Predict2 settings on a copy. Any other scheduler is refused: the
    sampling loop hands it x0 predictions (or velocities, for Euler), which no other one takes."""
    if diffusers_compat and not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        euler = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)  # what diffusers' exports hold
        return euler_schedule(euler.config, num_inference_steps, device)
    if not isinstance(scheduler, (CosmosMultistepScheduler, CosmosFewStepScheduler, FlowMatchEulerDiscreteScheduler)):
        raise ValueError(
            f"{type(scheduler).__name__} cannot drive this pipeline: use CosmosMultistepScheduler (NVIDIA's "
            f"sampler, the default), CosmosFewStepScheduler (a distilled student's) or "
            f"FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)."
        )
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler
    return euler_schedule(scheduler.config, num_inference_steps, device)


def euler_schedule(scheduler_config, num_inference_steps: int, device) -> FlowMatchEulerDiscreteScheduler:
    """A copy of an Euler scheduler of `scheduler_config` with Karras sigmas between Cosmos' extremes, and a last
    sigma equal to the one before (a zero-length final step), as diffusers' Cosmos-Predict2 pipeline sets them."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    # Not `from_config` arguments: these keys exist only in the config, which set_timesteps reads.
    scheduler.register_to_config(
        sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, sigma_data=1.0, final_sigmas_type="sigma_min"
    )
    scheduler.set_timesteps(sigmas=torch.linspace(0, 1, num_inference_steps, dtype=torch.float64), device=device)
    scheduler.sigmas[-1] = scheduler.sigmas[-2]
    return scheduler

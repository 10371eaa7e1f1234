"""The sampler of a distilled few-step student (`train_video2world.py --distill_steps N`), as a diffusers scheduler.

A DMD2 student predicts x0 in one evaluation. It samples as NVIDIA's distilled Cosmos models do: at each of its N
noise levels it predicts x0, then noises that x0 to the next level **with the initial noise** (not fresh noise, not
the noise implied by the sample); the last step returns x0 itself:

    x_0 = sigma_0 * eps,     x_{k+1} = x0_pred(x_k, sigma_k) + sigma_{k+1} * eps,     output x0_pred(x_{N-1})

The levels are rectified-flow times `t_k = 1 - k/N` under NVIDIA's timestep shift of 5,
`t' = s t / (1 + (s - 1) t)`, as EDM sigmas `sigma = t' / (1 - t')`: for N = 4, sigma_max (80, for t = 1), 15, 5
and 5/3 (NVIDIA's TrigFlow times pi/2, atan(15), atan(5), atan(5/3)).
Source: cosmos-predict2.5 `cosmos_predict2/_src/predict2/distill/` (the DMD2 models' student sampling).

The training loop draws the student's inputs from the same levels (`few_step_sigmas`), so a student is sampled as
it was trained. diffusers has no scheduler that re-noises with the initial noise: its Euler and LCM schedulers
re-noise with the implied or with fresh noise, which is another sampler. diffusers' stock Cosmos pipeline cannot
drive this one either (it hands its scheduler a velocity and its own sigma ramp), so a student's exported
`pipeline/` samples with it in `CosmosVideo2WorldPipeline` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..choices import MAX_DISTILL_STEPS

# NVIDIA's DMD2 student times are rectified-flow times shifted by 5 (DISTILLATION: `[pi/2, atan(15), atan(5),
# atan(5/3)]` for 4 steps); the first level is the teacher's sigma_max.
DEFAULT_SHIFT = 5.0


def few_step_sigmas(num_steps: int, shift: float = DEFAULT_SHIFT, sigma_max: float = 80.0) -> torch.Tensor:
    """`num_steps + 1` float64 sigmas: the student's `num_steps` noise levels, then 0 (its output is x0)."""
    if not 1 <= num_steps <= MAX_DISTILL_STEPS:
        raise ValueError(f"a few-step student takes 1 to {MAX_DISTILL_STEPS} steps, got {num_steps}.")
    t = 1 - torch.arange(num_steps, dtype=torch.float64) / num_steps  # 1, (N-1)/N, ..., 1/N
    shifted = shift * t / (1 + (shift - 1) * t)
    sigmas = shifted / (1 - shifted)
    sigmas[0] = sigma_max  # t = 1 is pure noise (an infinite sigma): the teacher's largest level stands for it
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@dataclass
class CosmosFewStepSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor


class CosmosFewStepScheduler(SchedulerMixin, ConfigMixin):
    """The few-step sampler of a distilled student: x0 at each level, re-noised with the initial noise.

    `num_train_steps` is the number of steps the student was distilled for; `set_timesteps` takes another number
    (the levels follow the same rule) but a student is best at its own. Like `CosmosMultistepScheduler`, `step`
    takes the model's x0 prediction. The pipeline starts from `sigma_max * eps`, from which the first `step`
    reads `eps` back.
    """

    order = 1

    @register_to_config
    def __init__(self, num_train_steps: int = 4, shift: float = DEFAULT_SHIFT, sigma_max: float = 80.0):
        self.sigmas: torch.Tensor | None = None
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._step_index = 0
        self._initial_noise: torch.Tensor | None = None

    @property
    def init_noise_sigma(self) -> float:
        return self.config.sigma_max

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """The levels for `num_inference_steps` (default: the student's own); `timesteps` are the sigmas the model
        is evaluated at."""
        steps = num_inference_steps or self.config.num_train_steps
        self.num_inference_steps = steps
        self.sigmas = few_step_sigmas(steps, self.config.shift, self.config.sigma_max)
        self.timesteps = self.sigmas[:-1].to(device)
        self._step_index = 0
        self._initial_noise = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> CosmosFewStepSchedulerOutput | tuple[torch.Tensor]:
        """Noise the x0 prediction `model_output` to the next level with the initial noise (x0 itself after the
        last level). `sample` is `[B, C, T, H, W]`; at the first step it is `sigma_0 * eps`."""
        if self.sigmas is None:
            raise RuntimeError("Call set_timesteps before step.")
        i = self._step_index
        if i == 0:
            self._initial_noise = sample.float() / float(self.sigmas[0])
        assert self._initial_noise is not None  # read at the first step
        prev = model_output.float() + float(self.sigmas[i + 1]) * self._initial_noise
        self._step_index += 1
        return CosmosFewStepSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def __len__(self) -> int:
        return self.num_inference_steps or 0

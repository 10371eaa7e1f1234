"""NVIDIA's Cosmos-Predict2 sampler as a diffusers scheduler (docs/recipe.md, "Inference").

A Karras sigma ramp (sigma_max 80, sigma_min 0.002, rho 7; `num_inference_steps + 1` values in float64),
an Euler first step in x0 form, then a 2-step exponential multistep in `lambda = -log(sigma)`:

    h = lambda_next - lambda,  c = (lambda_prev - lambda) / h
    x <- exp(-h) x + h * ((phi1(-h) - phi2(-h) / c) x0 + (phi2(-h) / c) x0_prev)
    phi1(z) = (e^z - 1) / z,  phi2(z) = (phi1(z) - 1) / z

Each update is computed in float64; `x` and `x0_prev` are kept in float32 between steps. Unlike most
diffusers schedulers, `step` takes the model's x0 prediction (NVIDIA's sampler works in x0 form).
Source: cosmos-predict2 `imaginaire/functional/multi_step.py` and `runge_kutta.py` (`res_x0_rk2`/`2ab`).

diffusers has no scheduler that does this: `DPMSolverMultistepScheduler` is the same family but works in
its own timestep/alpha parametrisation and does not reproduce these steps to float64 precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput


@dataclass
class CosmosMultistepSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor


def karras_sigmas(num_steps: int, sigma_max: float, sigma_min: float, rho: float) -> torch.Tensor:
    """`num_steps + 1` float64 sigmas from sigma_max down to sigma_min."""
    ramp = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def _phi1(z: torch.Tensor) -> torch.Tensor:
    return torch.expm1(z) / z


def _phi2(z: torch.Tensor) -> torch.Tensor:
    return (_phi1(z) - 1) / z


class CosmosMultistepScheduler(SchedulerMixin, ConfigMixin):
    """Euler-then-2-step exponential multistep sampler over a Karras ramp, as NVIDIA samples Cosmos-Predict2."""

    order = 1

    @register_to_config
    def __init__(self, sigma_max: float = 80.0, sigma_min: float = 0.002, rho: float = 7.0):
        self.sigmas: torch.Tensor | None = None
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._step_index = 0
        self._x0_prev: torch.Tensor | None = None

    @property
    def init_noise_sigma(self) -> float:
        return self.config.sigma_max

    def set_timesteps(self, num_inference_steps: int = 35, device: str | torch.device | None = None) -> None:
        """Build the ramp; `timesteps` are the sigmas the model is evaluated at (all but the last)."""
        self.num_inference_steps = num_inference_steps
        self.sigmas = karras_sigmas(num_inference_steps, self.config.sigma_max, self.config.sigma_min, self.config.rho)
        self.timesteps = self.sigmas[:-1].to(device)
        self._step_index = 0
        self._x0_prev = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> CosmosMultistepSchedulerOutput | tuple[torch.Tensor]:
        """Advance `sample` from sigma[i] to sigma[i+1] given the x0 prediction `model_output` at sigma[i]."""
        if self.sigmas is None:
            raise RuntimeError("Call set_timesteps before step.")
        i = self._step_index
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x, x0 = sample.double(), model_output.double()
        if i == 0:
            # 1. Euler in x0 form.
            x_next = x0 + (sigma_next / sigma) * (x - x0)
        else:
            # 2. Two-step exponential multistep, with the previous step's x0.
            lam, lam_next, lam_prev = -torch.log(sigma), -torch.log(sigma_next), -torch.log(self.sigmas[i - 1])
            h = lam_next - lam
            c = (lam_prev - lam) / h
            b2 = _phi2(-h) / c
            b1 = _phi1(-h) - b2
            assert self._x0_prev is not None  # every step after the first has one
            x_next = torch.exp(-h) * x + h * (b1 * x0 + b2 * self._x0_prev.double())
        self._x0_prev = model_output.float()
        self._step_index += 1
        prev = x_next.float()
        return CosmosMultistepSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def __len__(self) -> int:
        return self.num_inference_steps or 0

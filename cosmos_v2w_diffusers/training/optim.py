"""Optimizer, learning-rate schedule, gradient clipping and the EDM2 power EMA (RECIPE.md, "Optimisation").

torch supplies AdamW and LambdaLR; what is written here is NVIDIA's schedule shape, its gradient
sanitising, and the EDM2 EMA (neither torch, accelerate nor diffusers' `EMAModel`, whose decay is
`1 - (1 + step / inv_gamma) ** -power`, implements the `(1 - 1/(it+1))^(gamma+1)` power EMA).
"""

from __future__ import annotations

import torch


def build_optimizer(params: list[torch.nn.Parameter], config) -> torch.optim.AdamW:
    """AdamW with weight decay on every trainable tensor (NVIDIA uses no no-decay group)."""
    return torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
        fused=all(p.is_cuda for p in params) or None,
    )


def linear_decay_factor(step: int, f_max: float, decay_steps: int) -> float:
    """NVIDIA's LambdaLinear schedule without warm-up: `f_max * (1 - step / decay_steps)`, floored at 0."""
    return f_max * max(0.0, 1.0 - step / decay_steps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step by the trainer itself, with step counted from 0.

    Not passed through `accelerator.prepare`: its wrapper steps a scheduler once per process, which would
    run the schedule `num_processes` times too fast.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_decay_factor(step, config.lr_f_max, config.lr_decay_steps)
    )


def sanitize_gradients(params: list[torch.nn.Parameter]) -> None:
    """Set non-finite gradient entries to 0 before clipping, as NVIDIA's trainer does."""
    for p in params:
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)


class PowerEMA:
    """EDM2 power EMA in fp32: `ema <- beta * ema + (1 - beta) * w`, `beta(it) = (1 - 1/(it+1))^(gamma+1)`.

    `it` is the 0-based optimizer step, so the first update copies the weights. The source weights are
    rounded to the compute dtype first, since NVIDIA averages its bf16 live weights.
    Source: cosmos-predict2 `imaginaire/utils/ema.py` (`PowerEMATracker`).
    """

    def __init__(self, named_params: dict[str, torch.nn.Parameter], gamma: float, source_dtype: torch.dtype):
        self.gamma, self.source_dtype = gamma, source_dtype
        self.params = named_params
        self.shadow = {n: p.detach().float().clone() for n, p in named_params.items()}

    def beta(self, iteration: int) -> float:
        return (1.0 - 1.0 / (iteration + 1)) ** (self.gamma + 1)

    @torch.no_grad()
    def update(self, iteration: int) -> None:
        beta = self.beta(iteration)
        for name, p in self.params.items():
            source = p.detach().to(self.source_dtype).float()
            self.shadow[name].lerp_(source, 1.0 - beta)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}...")
        for name, tensor in self.shadow.items():
            tensor.copy_(state[name])

"""Optimizer, learning-rate schedule, gradient clipping and the EDM2 power EMA (docs/recipe.md, "Optimisation").

torch supplies AdamW and LambdaLR; what is written here is NVIDIA's schedule shape, its gradient
sanitising, and the EDM2 EMA (neither torch, accelerate nor diffusers' `EMAModel`, whose decay is
`1 - (1 + step / inv_gamma) ** -power`, implements the `(1 - 1/(it+1))^(gamma+1)` power EMA).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .sections import OptimConfig


def build_optimizer(params: list[torch.nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on every trainable tensor (NVIDIA uses no no-decay group); bitsandbytes' 8-bit
    AdamW with `--use_8bit_adam`, as diffusers' examples offer it (CUDA only)."""
    settings = dict(
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )
    if config.use_8bit_adam:  # on CUDA: `run_config.validate` refuses it elsewhere
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(params, **settings)
    return torch.optim.AdamW(params, **settings, fused=all(p.is_cuda for p in params) or None)


def linear_decay_factor(step: int, f_max: float, decay_steps: int) -> float:
    """NVIDIA's LambdaLinear schedule without warm-up: `f_max * (1 - step / decay_steps)`, floored at 0."""
    return f_max * max(0.0, 1.0 - step / decay_steps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """NVIDIA's schedule (`--lr_scheduler nvidia`, the default), or diffusers' `get_scheduler` by name, with
    `--lr_warmup_steps` and `--lr_decay_steps` as its training steps (diffusers' schedules peak at
    `--learning_rate` itself; NVIDIA's at `lr_f_max` times it). Stepped once per optimizer step by the trainer
    itself, with step counted from 0.

    Not passed through `accelerator.prepare`: its wrapper steps a scheduler once per process, which would
    run the schedule `num_processes` times too fast.
    """
    if config.lr_scheduler != "nvidia":
        from diffusers.optimization import get_scheduler

        return get_scheduler(
            config.lr_scheduler,
            optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=config.lr_decay_steps,
            num_cycles=config.lr_num_cycles,
            power=config.lr_power,
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_decay_factor(step, config.lr_f_max, config.lr_decay_steps)
    )


def continue_linearly(lr_scheduler: torch.optim.lr_scheduler.LambdaLR, step: int, end: int) -> None:
    """Make a restored schedule (now at `step`, with its learning rate then) fall linearly from that rate to 0 at
    `end`: a schedule whose length changed on resume goes on without a jump. Constant schedules stay constant."""
    if not isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise TypeError(f"cannot continue a {type(lr_scheduler).__name__}")
    factors = [lr / base for lr, base in zip(lr_scheduler.get_last_lr(), lr_scheduler.base_lrs)]
    constant = all(fn(step) == fn(step + 1) == fn(end) for fn in lr_scheduler.lr_lambdas)
    lr_scheduler.lr_lambdas = [
        (lambda s, f=f: f) if constant else (lambda s, f=f: f * max(0.0, (end - s) / (end - step))) for f in factors
    ]


def start_new_cycle(lr_scheduler: torch.optim.lr_scheduler.LambdaLR, step: int, config: OptimConfig) -> None:
    """Make a restored schedule (now at `step`) begin again: this run's schedule over the `--max_iter - step` steps
    left, from its start (warm-up included), as one more of NVIDIA's cycles. The learning rate takes the new
    cycle's first value at once."""
    if not isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise TypeError(f"cannot restart a {type(lr_scheduler).__name__}")
    cycle = build_lr_scheduler(
        lr_scheduler.optimizer, dataclasses.replace(config, lr_decay_steps=config.max_iter - step)
    )
    lr_scheduler.lr_lambdas = [lambda s, fn=fn: fn(s - step) for fn in cycle.lr_lambdas]
    lr_scheduler.last_epoch -= 1  # stepping again to `step` sets the new cycle's rate
    lr_scheduler.step()


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

    `device="cpu"` with weights on a GPU keeps the fp32 average in host memory (4 bytes a parameter off
    the GPU: 7.3 GiB for 2B). Each update then queues a copy of the rounded weights into pinned buffers
    and averages them on a background thread while the GPU runs the next step; the next update, and
    every read of the state, waits for it first. The same formula runs either way.
    """

    def __init__(
        self,
        named_params: dict[str, torch.nn.Parameter],
        gamma: float,
        source_dtype: torch.dtype,
        device: torch.device | str | None = None,
    ):
        self.gamma, self.source_dtype = gamma, source_dtype
        self.params = named_params
        first = next(iter(named_params.values()))
        self.device = torch.device(device) if device is not None else first.device
        self.shadow = {n: p.detach().float().to(self.device, copy=True) for n, p in named_params.items()}
        self._overlapped = self.device.type == "cpu" and first.device.type == "cuda"
        self._staging: dict[str, torch.Tensor] = {}
        self._pending: Future | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ema") if self._overlapped else None

    def beta(self, iteration: int) -> float:
        return (1.0 - 1.0 / (iteration + 1)) ** (self.gamma + 1)

    @torch.no_grad()
    def update(self, iteration: int) -> None:
        self.wait()
        weight = 1.0 - self.beta(iteration)
        if not self._overlapped:
            for name, p in self.params.items():
                self.shadow[name].lerp_(p.detach().to(self.source_dtype).float(), weight)
            return
        if not self._staging:
            self._staging = {
                n: torch.empty(p.shape, dtype=self.source_dtype, pin_memory=True) for n, p in self.params.items()
            }
        for name, p in self.params.items():
            self._staging[name].copy_(p.detach().to(self.source_dtype), non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        assert self._worker is not None  # made with the staging buffers' owner, on CUDA only
        self._pending = self._worker.submit(self._average_on_host, copied, weight)

    def _average_on_host(self, copied: torch.cuda.Event, weight: float) -> None:
        copied.synchronize()
        for name, staged in self._staging.items():
            self.shadow[name].lerp_(staged.float(), weight)

    def wait(self) -> None:
        """Block until the last overlapped update has finished (re-raising its error, if any)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.wait()
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.wait()
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}...")
        for name, tensor in self.shadow.items():
            tensor.copy_(state[name])

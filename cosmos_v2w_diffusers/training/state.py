"""Whole tensors of a run's training state, wherever accelerate's engine keeps them.

A checkpoint in NVIDIA's layout holds whole fp32 master weights, AdamW moments and EMA. Where those live
depends on the engine:
- one GPU or DDP: whole tensors on every rank;
- FSDP2: DTensor shards of the parameters themselves (the EMA is sharded alike), and torch's
  `get/set_optimizer_state_dict` gather and scatter the moments;
- DeepSpeed ZeRO-2/3: the module's parameters are in the compute dtype (bf16), and the fp32 masters and
  moments sit in flat partitions inside DeepSpeed's optimizer, reached through DeepSpeed's
  `safe_get_full_*` / `safe_set_full_*`.

`train_state` picks the class for the engine; the trainer sees one interface. Every method that gathers or
scatters is a collective: call it on every rank, in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from .. import compat
from ..compat import zero3_partition
from .parallel import full_tensor, like


class _TrainState:
    """What both engines share: copying gathered tensors to the main process's CPU, one at a time, so no rank
    ever holds the whole state on its GPU. Subclasses define `full_masters` and `full_ema`."""

    def full_masters(self):
        """Each trainable parameter's whole fp32 master, as `(name, tensor)` pairs, on every rank."""
        raise NotImplementedError

    def full_ema(self, name: str, shadow: torch.Tensor) -> torch.Tensor:
        """The whole EMA tensor of parameter `name`, from this rank's `shadow`."""
        raise NotImplementedError

    def masters_on_main(self, main: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The whole fp32 masters (on the CPU of the main process; empty elsewhere), and the names of those
        holding NaN/Inf (the same on every rank: each tensor is whole)."""
        masters, bad = {}, []
        for name, master in self.full_masters():
            if not torch.isfinite(master).all():
                bad.append(name)
            if main:
                masters[name] = master.detach().float().cpu()
        return masters, bad

    def ema_on_main(self, shadows: dict[str, torch.Tensor], main: bool) -> dict[str, torch.Tensor]:
        """The whole EMA from each rank's `shadows`, on the CPU of the main process (empty elsewhere)."""
        whole = {}
        for name, shadow in shadows.items():
            tensor = self.full_ema(name, shadow)
            if main:
                whole[name] = tensor.detach().cpu()
        return whole


class TorchTrainState(_TrainState):
    """One GPU, DDP and FSDP2: the trainable parameters are the fp32 masters (DTensor shards under FSDP2)."""

    def __init__(self, model: torch.nn.Module, optimizer, trainable: dict[str, torch.nn.Parameter]):
        self.model, self.optimizer, self.trainable = model, optimizer, trainable
        # What the EMA averages, by name: the live weights (sharded under FSDP2, so the EMA is too).
        self.ema_sources: dict[str, torch.Tensor] = trainable

    def full_masters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, whole fp32 master weight), one tensor gathered at a time."""
        for name, param in self.trainable.items():
            yield name, full_tensor(param)

    def full_ema(self, name: str, shadow: torch.Tensor) -> torch.Tensor:
        return full_tensor(shadow)

    def local_ema(self, name: str, shadow: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        """The part of the whole EMA tensor `full` that this rank keeps, placed like its `shadow`."""
        return like(shadow, full)

    def optimizer_state_dict(self) -> dict:
        """torch's full optimizer state dict (parameter names as keys), on the CPU of rank 0."""
        return get_optimizer_state_dict(
            self.model, self.optimizer.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load(self, masters: dict[str, torch.Tensor], optimizer_state: dict) -> None:
        with torch.no_grad():
            for name, param in self.trainable.items():
                param.copy_(like(param, masters[name]))
        set_optimizer_state_dict(
            self.model, self.optimizer.optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True)
        )


class ZeroTrainState(_TrainState):
    """DeepSpeed ZeRO-2 or ZeRO-3 (through accelerate): bf16 module parameters, fp32 masters and moments
    partitioned inside DeepSpeed's optimizer. The optimizer state is written in torch's full format (the
    same names and keys as `TorchTrainState`'s), so a checkpoint resumes under any engine.

    The EMA averages the bf16 live weights, as it does elsewhere (`PowerEMA` rounds to bf16 first). Under
    ZeRO-2 every rank holds them whole, and so the whole EMA; under ZeRO-3 each rank averages its own
    partition of them, so the EMA is partitioned like the weights.
    """

    def __init__(self, optimizer, trainable: dict[str, torch.nn.Parameter], stage3: bool):
        self.trainable = trainable
        self.zero = optimizer.optimizer  # DeepSpeed's ZeRO optimizer (accelerate wraps it once more)
        self.adamw = self.zero.optimizer  # our AdamW, over DeepSpeed's flat fp32 partitions
        self.stage3 = stage3
        self.ema_sources = {n: zero3_partition(p).local for n, p in trainable.items()} if self.stage3 else trainable

    def full_masters(self) -> Iterator[tuple[str, torch.Tensor]]:
        from deepspeed.utils import safe_get_full_fp32_param

        for name, param in self.trainable.items():
            yield name, safe_get_full_fp32_param(param)

    def full_ema(self, name: str, shadow: torch.Tensor) -> torch.Tensor:
        if not self.stage3:
            return shadow
        # ZeRO-3 splits the flattened tensor into equal parts by rank, the last part padded.
        zero3 = zero3_partition(self.trainable[name])
        parts = [torch.empty_like(shadow) for _ in range(dist.get_world_size(zero3.group))]
        dist.all_gather(parts, shadow, group=zero3.group)
        return torch.cat(parts)[: zero3.numel].view(zero3.shape)

    def local_ema(self, name: str, shadow: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        part = self._partition(self.trainable[name], full) if self.stage3 else full
        return part.to(shadow.device, shadow.dtype)

    @staticmethod
    def _partition(param: torch.nn.Parameter, full: torch.Tensor) -> torch.Tensor:
        """This rank's ZeRO-3 part of the flattened `full`, zero-padded to the part's size."""
        zero3 = zero3_partition(param)
        size = zero3.local.numel()
        start = dist.get_rank(zero3.group) * size
        part = torch.zeros(size, dtype=full.dtype, device=full.device)
        piece = full.flatten()[start : start + size]
        part[: piece.numel()] = piece
        return part

    def optimizer_state_dict(self) -> dict:
        from deepspeed.utils import safe_get_full_optimizer_state

        # AdamW's state of any flat partition: its per-element moments (which DeepSpeed maps per parameter)
        # and its step count (the same for all).
        first: dict = next(iter(self.adamw.state.values()), {})
        keys = [k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0]
        step = first.get("step")
        state = {}
        if keys:  # no state before the first optimizer step
            main = dist.get_rank() == 0
            for name, param in self.trainable.items():
                moments = {k: safe_get_full_optimizer_state(param, k) for k in keys}
                if main:
                    assert step is not None  # AdamW keeps a step count with its moments
                    state[name] = {"step": step.detach().cpu().clone(), **{k: v.cpu() for k, v in moments.items()}}
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": list(self.trainable)}
            for g in self.adamw.param_groups
        ]
        return {"state": state, "param_groups": groups}

    def load(self, masters: dict[str, torch.Tensor], optimizer_state: dict) -> None:
        from deepspeed.utils import (
            safe_set_full_fp32_param,
            safe_set_full_optimizer_state,
        )

        saved = optimizer_state["state"]
        if saved:
            self._create_optimizer_state(next(iter(saved.values())))
        device = self._flat_partitions()[0].device
        with torch.no_grad():
            for name, param in self.trainable.items():
                master = masters[name].to(device, torch.float32)
                safe_set_full_fp32_param(param, master)
                # The bf16 live weights: DeepSpeed's rounding of the masters (it refreshes them after each step).
                if self.stage3:
                    zero3_partition(param).local.copy_(self._partition(param, master))
                else:
                    param.copy_(master)
                for key, value in saved.get(name, {}).items():
                    if value.dim() > 0:
                        safe_set_full_optimizer_state(param, value.to(device, torch.float32), key)
        for group, saved_group in zip(self.adamw.param_groups, optimizer_state["param_groups"]):
            group.update({k: saved_group[k] for k in ("lr", "initial_lr") if k in saved_group})

    def _flat_partitions(self) -> list[torch.Tensor]:
        """The flat fp32 master partitions of this rank, which AdamW's state is keyed by. DeepSpeed names them
        differently in ZeRO-1/2 and ZeRO-3 and exposes neither publicly."""
        return compat.zero_flat_fp32_partitions(self.zero, self.stage3)

    def _create_optimizer_state(self, saved: dict[str, torch.Tensor]) -> None:
        """AdamW creates its state at its first step, and DeepSpeed offers no public call that sets it before:
        so it is created here as AdamW would (the moments as zeros, the step where AdamW keeps it), with the
        saved step count, for `safe_set_full_optimizer_state` to fill. ZeRO-1/2 then links each parameter to
        its slice of it (`_lazy_init_hp_params_optimizer_state`, which its own step calls the same way)."""
        group = self.adamw.param_groups[0]
        for flat in self._flat_partitions():
            step_device = flat.device if group.get("fused") or group.get("capturable") else "cpu"
            self.adamw.state[flat] = {
                key: value.to(step_device) if value.dim() == 0 else torch.zeros_like(flat)
                for key, value in saved.items()
            }
        if not self.stage3:
            compat.zero_link_optimizer_state(self.zero)


def train_state(dims, model, optimizer, trainable: dict[str, torch.nn.Parameter]):
    """The state access for the run's engine (`ParallelDims.engine`): `ZeroTrainState` under DeepSpeed, else
    `TorchTrainState`."""
    if dims.engine == "deepspeed":
        return ZeroTrainState(optimizer, trainable, stage3=dims.zero_stage == 3)
    return TorchTrainState(model, optimizer, trainable)

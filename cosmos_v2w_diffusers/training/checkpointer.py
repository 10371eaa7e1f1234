"""The run's checkpointing, as one component the training loop calls once a step (torchtitan's checkpointer is
the model): which checkpoint a run resumes from, when to save, what a checkpoint holds, pruning, and which
saves go to the Hub. The files and their layout are `checkpoint.py`'s.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from accelerate.logging import get_logger

from ..models.checkpoint_format import from_native_state_dict, to_native_state_dict
from .checkpoint import PARTS, CheckpointDir, rng_state, set_rng_state, stored_config
from .config import TrainConfig
from .distill import student_nets
from .guards import NonFiniteSteps
from .optim import continue_linearly, start_new_cycle
from .sections import CheckpointConfig, OptimConfig

logger = get_logger(__name__)
_DEFAULTS = TrainConfig().values()


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What every checkpoint records of its run, and what a resume must share with it: the run-defining fields
    (`RunConfig.run_definition`), every field but the secrets as JSON, and, for a distillation, the student
    adapter's scale (its model file holds the student merged into the teacher)."""

    definition: dict
    flags_json: str
    student_scale: float | None


class Checkpointer:
    """Saves and restores a run's state in NVIDIA's layout under `<output_dir>/checkpoints/`.

    `resume_point()` settles, before any heavy work, which checkpoint the run continues from and that it
    comes from the same run; `load(...)` restores it once the model and optimizer exist. In the loop,
    `save(iteration, last_step, force)` writes a checkpoint every `--save_iter` steps, at the last step and
    when `force`d (a stop signal), unless the weights have just given a non-finite loss (`NonFiniteSteps`);
    it keeps `--checkpoints_total_limit` of them and hands what the pipeline loads to the Hub uploader.
    """

    def __init__(
        self,
        config: CheckpointConfig,
        optim: OptimConfig,
        record: RunRecord,
        accelerator,
        clips: list[str] | None = None,
    ):
        """`config` says where and when; `optim` the schedule a resume continues and when non-finite steps stop
        the run; `record` is what each checkpoint records of the run; `clips` the file names of the clips trained
        on (recorded, so a resume can say what changed)."""
        self.config, self.optim, self.accelerator = config, optim, accelerator
        self.clips = sorted(clips or [])
        self.run_definition, self.stored_flags = record.definition, record.flags_json
        self.folder = CheckpointDir(config.output_dir)
        self.nonfinite = NonFiniteSteps(
            self.folder, optim.max_nonfinite_steps, optim.learning_rate, accelerator.is_main_process
        )
        self._resume_iteration: int | None = None
        self._trainer_part: dict | None = None  # the resume point's trainer part, read once
        # A distillation's model file holds the student as a plain net (the adapters merged into the teacher), as
        # every Video2World checkpoint does; its adapters' EMA, which that cannot give back, goes with the optimizer.
        self.student_scale = record.student_scale

    def resume_point(self) -> int | None:
        """The iteration this run resumes from (None: it starts afresh), refused if its run-defining flags differ."""
        c = self.config
        iteration = self.folder.resolve(c.resume_from_checkpoint) if c.resume else None
        if iteration is not None:
            self._trainer_part = self.folder.load_part("trainer", iteration)
            stored = stored_config(self._trainer_part)
            changed = (
                []
                if stored is None
                else [  # NVIDIA's trainer stores no config: nothing to compare
                    f"--{k} {stored.get(k, _DEFAULTS[k])} -> {v}"
                    for k, v in self.run_definition.items()
                    if stored.get(k, _DEFAULTS[k]) != v  # a flag added since the checkpoint: its default then
                ]
            )
            if changed:
                raise ValueError(
                    f"{self.folder.path('trainer', iteration)} was written by a run with other run-defining flags "
                    f"({'; '.join(changed)}): use the checkpoint's values, a new --output_dir, or --no-resume."
                )
            self._report_clip_changes(self._trainer_part.get("clips"), iteration)
        self._resume_iteration = iteration
        return iteration

    def _report_clip_changes(self, stored: list[str] | None, iteration: int) -> None:
        """Say which clips were added or removed since checkpoint `iteration` (checkpoints record them), and what
        that means: training goes on from the saved state, but the samples are drawn from the new list."""
        if stored is None or stored == self.clips:
            return
        added, removed = sorted(set(self.clips) - set(stored)), sorted(set(stored) - set(self.clips))

        def some(names: list[str]) -> str:
            return f"{len(names)} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else "none"

        logger.warning(
            "The dataset changed since checkpoint %d: clips added: %s; removed: %s. Training goes on from the saved "
            "weights, optimizer and schedule, but from here the samples are drawn from the %d clips now there, so "
            "the data order differs from a run that was not interrupted.",
            iteration,
            some(added),
            some(removed),
            len(self.clips),
        )

    def load(self, state, lr_scheduler, ema, trainable: dict[str, torch.nn.Parameter]) -> int:
        """Restore the resume point into the train state, the schedule, the EMA and the RNGs; returns the
        iteration to continue from (0 when there is none)."""
        iteration = self._resume_iteration
        if iteration is None:
            return 0
        parts = {part: self.folder.load_part(part, iteration) for part in PARTS if part != "trainer"}
        masters = parts["optim"]["master_weights"]
        if set(masters) != set(trainable):
            raise ValueError(
                f"{self.folder.root}: checkpoint {iteration} was written by a different run (its trainable tensors "
                f"differ: full vs LoRA, or another model). Use a new --output_dir or --no-resume."
            )
        assert self._trainer_part is not None  # read with the other parts above
        state.load(masters, parts["optim"]["optimizer"])
        lr_scheduler.load_state_dict(parts["scheduler"])
        self._continue_schedule(lr_scheduler, iteration)
        if ema is not None:
            shadows = parts["optim"].get("ema") or from_native_state_dict(parts["model"], "net_ema.")
            ema.load_state_dict({n: state.local_ema(n, t, shadows[n]) for n, t in ema.state_dict().items()})
        set_rng_state(self._trainer_part["rng"])
        logger.info("Resumed from %s", self.folder.path("model", iteration), main_process_only=False)
        return self._trainer_part["iteration"]

    def _continue_schedule(self, lr_scheduler, iteration: int) -> None:
        """Where this run's schedule gives another learning rate at `iteration` than the checkpoint's (its end
        moved: a raised --max_iter or --lr_decay_steps, clips added under --num_train_epochs), go on from the
        checkpoint's rate, falling linearly to 0 at the new end, rather than jump to where a schedule of the new
        length would be; a resume of such a run compares with that continued schedule again (it is stored in the
        checkpoint as its rate). A schedule that already ended cannot go on: refused with what to do instead."""
        if self.optim.new_lr_cycle and iteration < self.optim.max_iter:
            start_new_cycle(lr_scheduler, iteration, self.optim)
            logger.info(
                "--new_lr_cycle: a new learning-rate cycle from step %d to %d, starting at lr %.3g",
                iteration,
                self.optim.max_iter,
                lr_scheduler.get_last_lr()[0],
            )
            return
        restored = lr_scheduler.get_last_lr()[0]
        planned = lr_scheduler.base_lrs[0] * lr_scheduler.lr_lambdas[0](iteration)
        end = self.optim.lr_decay_steps
        if math.isclose(restored, planned, rel_tol=1e-6) or iteration >= end:  # unchanged, or nothing left to train
            return
        if restored == 0:
            raise ValueError(
                f"{self.folder.root}: checkpoint {iteration} ended its learning-rate schedule (lr 0); training on "
                f"would run at lr 0. Raise --max_iter and pass --new_lr_cycle to start a new cycle that keeps the "
                f"optimizer state and EMA, or start afresh from its weights with --dit_path "
                f"{self.folder.path('model', iteration)} (--load_ema for the EMA) and a new --output_dir."
            )
        continue_linearly(lr_scheduler, iteration, end)
        logger.warning(
            "The schedule's end moved to step %d: at step %d this run's schedule gives lr %.3g, the checkpoint's "
            "%.3g; the learning rate goes on from %.3g, falling linearly to 0 at step %d.",
            end,
            iteration,
            planned,
            restored,
            restored,
            end,
        )

    def record_loss(self, step: int, loss: float, micro_batches) -> None:
        """Report a non-finite step (and retract the checkpoint whose weights gave it); raise on divergence."""
        self.nonfinite.record(step, loss, micro_batches)

    def save(
        self,
        iteration: int,
        state,
        transformer,
        lr_scheduler,
        ema,
        last_step: bool = False,
        force: bool = False,
        upload: Callable[[int, dict, dict | None], None] | None = None,
    ) -> bool:
        """Checkpoint `iteration` (= optimizer steps done) if it is due (every `--save_iter`, `last_step`, or
        `force`) and the weights are finite; returns whether it saved. A collective: every rank calls it.
        `upload(iteration, weights, ema)`, on the main process, sends what the pipeline loads to the Hub."""
        due = iteration % self.config.save_iter == 0 or last_step or force
        if not due or not self.nonfinite.allow_saving(iteration):
            return False
        main = self.accelerator.is_main_process
        # Collective calls first, on every rank: they gather FSDP/DeepSpeed shards.
        masters, bad = state.masters_on_main(main)
        if bad:  # never name a diverged state "latest": the previous checkpoint stays the one to resume from
            raise FloatingPointError(
                f"Not saving checkpoint {iteration}: {len(bad)} weight tensors hold NaN/Inf (e.g. {bad[0]}); "
                f"resume from {self.folder.root / 'latest_checkpoint.txt'} with a lower --learning_rate."
            )
        weights = self.accelerator.get_state_dict(transformer)
        shadows = state.ema_on_main(ema.state_dict(), main) if ema is not None else None
        optimizer = state.optimizer_state_dict()
        if main:
            model_config = self.accelerator.unwrap_model(transformer).config
            weights = {k: v.cpu() for k, v in weights.items()}
            optim = {"optimizer": optimizer, "master_weights": masters}
            net, net_ema = weights, shadows
            if self.student_scale is not None:
                net, net_ema = student_nets(weights, shadows, self.student_scale)
                optim["ema"] = shadows
            model = to_native_state_dict(net, model_config, "net.", torch.bfloat16)
            if net_ema is not None:
                model.update(to_native_state_dict(net_ema, model_config, "net_ema.", torch.float32))
            trainer_part = {
                "grad_scaler": {},
                "iteration": iteration,
                "rng": rng_state(),
                "config": self.stored_flags,
                "clips": self.clips,
            }
            self.folder.save(
                iteration,
                {
                    "model": model,
                    "optim": optim,
                    "scheduler": lr_scheduler.state_dict(),
                    "trainer": trainer_part,
                },
            )
            if self.config.checkpoints_total_limit:
                self.folder.prune(self.config.checkpoints_total_limit)
            if upload is not None and iteration < self.optim.max_iter:  # the final upload follows the export
                upload(iteration, weights, shadows)
        self.accelerator.wait_for_everyone()
        return True

    def check_end(self) -> None:
        """At the end of training: a run whose last steps were not finite is not exported."""
        self.nonfinite.check_end()

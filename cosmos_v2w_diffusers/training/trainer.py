"""The post-training loop: build everything from a `TrainConfig`, train, checkpoint, resume, export.

Launch with accelerate (one GPU to many nodes; DDP, FSDP or DeepSpeed come from the accelerate config):

    accelerate launch train_video2world.py --model 2B --dataset_path datasets/cosmos_nemo_assets
    accelerate launch --config_file accelerate_configs/fsdp_8gpu.yaml train_video2world.py --model 14B ...

Randomness is a pure function of the seed and a micro-batch's place in the run's stream
(`(step * accumulation + micro-step) * data-parallel size + data-parallel rank`): the data stream, each clip's frame
window, the noise, sigma, conditioning frames and text dropout. A resumed run therefore replays exactly what the
uninterrupted run would have done, with nothing but the weights, optimizer and scheduler to restore, and one
process accumulating N micro-batches draws what N data-parallel processes draw.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import parse_flag_from_env
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..data.samples import DrawSampler
from ..export.exports import export_final
from ..models.latents import encode_video
from ..models.presets import get_preset
from ..parallel.parallel_dims import ParallelDims
from ..utils.allocator import set_allocator_defaults
from .config import RESUMED_FIELDS, TrainConfig
from .distill import student_nets, student_scale
from .hub import write_model_card
from .metrics import describe_throughput, loss_trend, throughput_summary
from .nodes import check_same_run_everywhere
from .objective import draw_training_randomness, video2world_loss
from .optim import sanitize_gradients
from .run_config import RunConfig, card_facts, export_settings, resolve, validate
from .run_lock import RunLock
from .setup import (
    build_accelerator,
    build_optimisation,
    build_validator,
    check_targets,
    load_clips,
    load_models,
    resolve_for_clips,
)

# accelerate's logger: the main process logs (per-rank facts say `main_process_only=False`).
logger = get_logger(__name__)


@contextlib.contextmanager
def _schedule_without_update():
    """A skipped update still advances the schedule (so later steps draw the same): where no optimizer step has run
    yet, torch takes that for a misordered call and warns; here it is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
        yield


def _step_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class Trainer:
    """A post-training run: built stage by stage from its flags (`setup.py`'s builders, cheapest to fail first),
    then `train()`; the last call of a training process is `close()`."""

    def __init__(self, config: TrainConfig):
        set_allocator_defaults()
        # The device decides defaults the Accelerator is built with, so it is read from the launcher's
        # settings as accelerate reads them; building accelerate's state here, before the Accelerator,
        # would leave out `--cpu` and make every rank a main process.
        on_gpu = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
        # What the launch needs (precision, accumulation, folders) does not depend on the clips; the run is
        # resolved once more, from the same flags, when they are counted (`setup.resolve_for_clips`).
        launch = resolve(config)
        self.preset = get_preset(launch.model)
        self.accelerator = build_accelerator(launch, on_gpu)
        self.device = self.accelerator.device
        if self.device.type == "cuda":
            # Every sample has the same shape, so cuDNN's one-time timing of its convolution algorithms
            # (the VAE encode's Conv3d) pays from the second step on.
            torch.backends.cudnn.benchmark = True
            if launch.allow_tf32:  # as diffusers' examples: fp32 matmuls and convolutions in TF32
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.accelerator.mixed_precision, torch.float32
        )
        self.lock = RunLock(launch.output_dir) if self.accelerator.is_main_process else None
        if self.lock:
            self.lock.acquire()
        try:
            self._setup(launch)
        except BaseException:  # a refused or failed setup frees the output folder for the next attempt
            self._release_lock()
            raise

    def _setup(self, launch: RunConfig) -> None:
        """Everything after the output folder is ours, in the order that fails cheapest first: the layout and the
        flags it rules out, the data (and the run resolved for it, once), where the run writes and uploads, the
        models, the optimisation state."""
        run_defining = {name: getattr(launch, name) for name in RESUMED_FIELDS}
        check_same_run_everywhere(self.accelerator, run_defining)  # the first exchange: every node's flags alike
        # Context parallelism: groups of `cp` consecutive ranks share a sample, each holding 1/cp of its tokens.
        self.dims = ParallelDims.from_accelerator(self.accelerator, launch.context_parallel_size)
        validate(launch, self.dims, self.device)
        self.history: list[float] = []  # mean loss of each optimizer step run by this process
        self.step_seconds: list[float] = []
        self.preempted = False  # True once a run stopped early on a signal, on every rank
        self.summary: dict[str, float] = {}  # throughput at the end of a run (`metrics.throughput_summary`)
        table = load_clips(launch, self.preset, self.accelerator)
        self.config: RunConfig = resolve_for_clips(launch, self.dims, len(table))
        c = self.config
        targets = check_targets(c, self.preset, self.accelerator, table, holds_lock=self.lock is not None)
        self.checkpointer, self.base_pipeline = targets.checkpointer, targets.base_pipeline
        self.uploader, self.guards = targets.uploader, targets.guards
        models = load_models(c, self.preset, self.accelerator, self.dims, table, self.compute_dtype)
        self.vae, self.samples, self.plan, self.tokens = models.vae, models.samples, models.plan, models.tokens
        trained = build_optimisation(
            c, self.preset, self.accelerator, self.dims, models, self.checkpointer, self.compute_dtype
        )
        self.transformer, self.optimizer, self.lr_scheduler = (
            trained.transformer,
            trained.optimizer,
            trained.lr_scheduler,
        )
        self.trainable, self.state, self.ema = trained.trainable, trained.state, trained.ema
        self.distiller, self.start_iter = trained.distiller, trained.start_iter
        inputs = targets.validation_inputs
        self.validator = build_validator(c, self.preset, self.accelerator, self.vae, inputs, self.compute_dtype)

    # ------------------------------------------------------------------ checkpoints

    def _unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.transformer)

    def _gathered_ema(self) -> dict[str, torch.Tensor] | None:
        """The whole EMA on the main process (a collective under FSDP and ZeRO-3: every rank calls it)."""
        return self.state.ema_on_main(self.ema.state_dict(), self.accelerator.is_main_process) if self.ema else None

    def _net_weights(self, weights: dict, ema: dict | None) -> tuple[dict, dict | None]:
        """What validation and exports generate with: the trained weights, or a distillation's student as a plain
        net (its adapter merged into the teacher)."""
        if self.distiller is None or not weights:  # `weights` is empty off the main process under FSDP
            return weights, ema
        return student_nets(weights, ema, student_scale(self.config.weights))

    def _export(self, weights: dict, ema: dict | None) -> Path:
        net, net_ema = self._net_weights(weights, ema)
        return export_final(self._unwrapped(), net, net_ema, export_settings(self.config), self.base_pipeline)

    def _upload(self, iteration: int, weights: dict, ema: dict | None) -> None:
        """Send what the pipeline loads to the Hub in the background, unless an upload is still running."""
        assert self.uploader is not None  # the main process of a --push_to_hub run uploads
        if not self.uploader.busy():
            self.uploader.upload(self._export(weights, ema), iteration)

    # ------------------------------------------------------------------ training

    def train_step(self, step: int, micro_batches) -> float:
        """One optimizer step over `gradient_accumulation_steps` micro-batches; returns the mean loss.

        A non-finite loss on any rank skips the update (no optimizer or EMA step; the schedule still
        advances, so the draws of later steps are unchanged) and returns NaN for the caller to report.
        """
        losses, skip_backward = [], False
        for micro, batch in enumerate(micro_batches):
            with self.accelerator.accumulate(self.transformer):
                if "latents" in batch:
                    latents = batch["latents"].to(self.device, non_blocking=True)
                else:
                    latents = encode_video(self.vae, batch["video"])
                # Seeded by the micro-batch's place in the run's stream, as the data sampler reads it: one process
                # accumulating 2 micro-batches draws the noise 2 data-parallel processes draw (and a context-parallel
                # group draws alike). One process, one micro-batch a step: the place is the step, and the two
                # zeros keep that stream the one it was when the step, micro-step and rank were seeded apart.
                place = (
                    step * self.config.gradient_accumulation_steps + micro
                ) * self.dims.dp_size + self.dims.dp_rank
                generator = torch.Generator().manual_seed(_step_seed(self.config.seed, place, 0, 0))
                draws = draw_training_randomness(tuple(latents.shape), generator)
                text = batch["t5_text_embeddings"].to(self.device)
                with self._autocast():
                    if self.distiller is not None:
                        distill_batch = self.distiller.draw(latents, text, draws, generator)
                        loss = self.distiller.loss(step, self.transformer, self._unwrapped(), distill_batch)
                    else:
                        loss = video2world_loss(
                            self.transformer,
                            latents,
                            draws.noise.to(self.device),
                            draws.sigma.to(self.device),
                            draws.num_cond_frames,
                            text,
                            draws.drop_text,
                        )
                # DeepSpeed's engine steps its optimizer inside `backward` at the step's last micro-batch, before
                # the loss below is looked at: there a non-finite loss (on any rank) skips the backward of this and
                # every later micro-batch of the step, so the engine never steps on it.
                if self.dims.engine == "deepspeed" and not skip_backward:
                    skip_backward = self._nonfinite_on_any_rank(loss, ran_backward=micro > 0)
                if not skip_backward:
                    # Each rank of a context-parallel group holds the gradient of its own tokens only, and DDP
                    # averages over all ranks: scaling by cp makes that average the data-parallel mean.
                    self.accelerator.backward(loss * self.dims.cp)
            losses.append(loss.detach())
        mean_loss = float(self.accelerator.reduce(torch.stack(losses).mean(), reduction="mean"))  # one host sync
        self.grad_norm = None
        if math.isfinite(mean_loss):
            params = list(self.trainable.values())
            sanitize_gradients(params)
            # the norm before clipping, for the trackers (DeepSpeed clips inside its step and returns None here)
            self.grad_norm = self.accelerator.clip_grad_norm_(params, self.config.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with contextlib.nullcontext() if math.isfinite(mean_loss) else _schedule_without_update():
            self.lr_scheduler.step()
        if self.ema is not None and math.isfinite(mean_loss):
            self.ema.update(step)
        return mean_loss

    def _nonfinite_on_any_rank(self, loss: torch.Tensor, ran_backward: bool) -> bool:
        """Whether `loss` is NaN/Inf on any rank (a collective). Gradients already accumulated by this step's
        earlier micro-batches are then dropped, so they cannot reach the next step either."""
        bad = self.accelerator.reduce((~torch.isfinite(loss.detach())).float(), reduction="sum").item() > 0
        if bad and ran_backward:
            self.transformer.zero_grad()  # DeepSpeed's engine: clears its accumulated partitions
        return bad

    def _autocast(self):
        """accelerate's autocast, except under DeepSpeed: there accelerate leaves precision to DeepSpeed,
        which keeps the module in bf16 but casts no inputs, so the forward runs under torch's autocast as
        everywhere else (fp32 inputs, bf16 matmuls, fp32 norms)."""
        if self.dims.engine == "deepspeed" and self.compute_dtype != torch.float32:
            return torch.autocast(self.device.type, dtype=self.compute_dtype)
        return self.accelerator.autocast()

    def _micro_batches(self):
        """This rank's micro-batches, a list per optimizer step, from `start_iter` on."""
        c = self.config
        sampler = DrawSampler(
            self.start_iter,
            c.max_iter,
            c.gradient_accumulation_steps,
            self.dims.dp_size,
            self.dims.dp_rank,
            c.batch_size,
        )
        return sampler.step_batches(self.samples, c.dataloader_num_workers, pin_memory=self.device.type == "cuda")

    def train(self) -> list[float]:
        """Train to `--max_iter` (or until a stop signal), checkpointing and exporting; returns the step losses.

        The output folder's lock is released when this returns or raises, so the same process may start
        another run on it (a resume, say)."""
        try:
            return self._train()
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        if self.lock:
            self.lock.release()

    def _train(self) -> list[float]:
        c = self.config
        self.accelerator.init_trackers(c.tracker_project_name, config={k: str(v) for k, v in c.public_dict().items()})
        clips_per_step = self.dims.clips_per_step(c.batch_size, c.gradient_accumulation_steps)
        progress = tqdm(
            total=c.max_iter,
            initial=self.start_iter,
            desc="Post-training",
            disable=not self.accelerator.is_main_process,
        )
        if self.start_iter >= c.max_iter:
            logger.info(
                "The run is already complete: %s holds iteration %d of --max_iter %d. Raise --max_iter to train "
                "on, or pass --no-resume (or another --output_dir) to start afresh.",
                c.output_dir,
                self.start_iter,
                c.max_iter,
            )
        with self.guards, progress, logging_redirect_tqdm():
            last = time.perf_counter()
            for step, micro_batches in zip(range(self.start_iter, c.max_iter), self._micro_batches()):
                lr = self.lr_scheduler.get_last_lr()[0]
                loss = self.train_step(step, micro_batches)
                self.checkpointer.record_loss(step, loss, micro_batches)
                self.history.append(loss)
                now = time.perf_counter()
                seconds, last = now - last, now
                self.step_seconds.append(seconds)
                progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", s_per_step=f"{seconds:.2f}")
                progress.update()
                logs = {"loss": loss, "lr": lr, "clips_per_s": clips_per_step / seconds}
                if self.distiller is not None:  # the two updates' losses are of different kinds: apart
                    logs[f"{'student' if self.distiller.updates_student(step) else 'critic'}_loss"] = loss
                if self.grad_norm is not None and c.report_to != "none":  # a host sync: only when it is logged
                    logs["grad_norm"] = float(self.grad_norm)
                self.accelerator.log(logs, step=step + 1)
                stop = self.guards.check(micro_batches)
                saved = self._save(step + 1, force=stop)
                if self.validator.should_validate(step + 1) and not stop:
                    self.validate(step + 1)
                    stop = self.guards.stop_requested()  # a signal during validation stops now, not a step later
                    if stop and not saved:
                        self._save(step + 1, force=True)
                if stop:
                    self.preempted = True
                    logger.warning(
                        "Stopped by a signal after step %d; run the same command again to resume.",
                        step + 1,
                        main_process_only=False,
                    )
                    return self.history
        self.checkpointer.check_end()
        self._log_summary(clips_per_step)
        state = self.accelerator.get_state_dict(self.transformer)
        ema = self._gathered_ema()
        if self.accelerator.is_main_process:
            try:
                export_dir = self._export(state, ema)
            except KeyboardInterrupt:  # Ctrl-C: each export folder is swapped in whole, so the last one stands
                self.preempted = True
                logger.warning(
                    "Stopped while exporting; earlier exports are as they were. Run the same command again."
                )
                return self.history
            if self.uploader:
                self.uploader.finish(export_dir, c.max_iter)
            else:  # the card `hf upload <repo> <export> .` publishes with it
                base = c.pretrained_model_name_or_path or self.preset.hub_id
                write_model_card(card_facts(c), base, export_dir, self.validator.last)
        self.accelerator.wait_for_everyone()
        return self.history

    def _save(self, iteration: int, force: bool = False) -> bool:
        return self.checkpointer.save(
            iteration,
            self.state,
            self.transformer,
            self.lr_scheduler,
            self.ema,
            last_step=iteration == self.config.max_iter,
            force=force,
            upload=self._upload if self.uploader else None,
        )

    def validate(self, iteration: int) -> None:
        """Validation videos from the EMA (and, with --validation_live, the live) weights. Gathering the
        weights is a collective under FSDP; the main process generates while the others wait."""
        state = self.accelerator.get_state_dict(self.transformer)
        ema = self._gathered_ema()
        self.validator.validate(iteration, *self._net_weights(state, ema), self.accelerator)
        if self.uploader:
            self.uploader.validation = self.validator.last
        self.accelerator.wait_for_everyone()

    def _log_summary(self, clips_per_step: int) -> None:
        trend = loss_trend(self.history)
        if trend:
            logger.info(trend)
        skipped = sum(not math.isfinite(loss) for loss in self.history)
        logger.info("%d of %d steps were skipped for a non-finite loss.", skipped, len(self.history))
        if self.step_seconds:
            self.summary = throughput_summary(
                self.step_seconds,
                clips_per_step,
                self.accelerator.num_processes,
                self._unwrapped().config,
                self.tokens,
                self.device,
            )
            logger.info(describe_throughput(self.summary))

    def close(self) -> None:
        """Finish the trackers, release the output folder and leave the process group: the last call of a
        training process."""
        self._release_lock()
        self.accelerator.end_training()

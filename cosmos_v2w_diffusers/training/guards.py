"""What keeps a long run going and lets it stop cleanly: SIGTERM/SIGINT handling, the skipped-clip log, and
what a run does with steps whose loss is not finite (`NonFiniteSteps`).

Both need the ranks to agree (all stop after the same step; all know every skipped clip), so the trainer
asks `RunGuards.check` once per step: one small all-reduce carries both counts, and the list of skipped
clips itself is gathered only in the rare step where some rank replaced one.

Under a launcher (`accelerate launch`, `torchrun`) a signal may reach the launcher alone, and a launcher may
exit before the trainer has saved. Neither launcher has a setting for it, so each training process asks the
kernel for `LAUNCHER_GONE` when its launcher exits (Linux `PR_SET_PDEATHSIG`) and treats it as a stop request:
it finishes the step, saves and exits 75 instead of training on as an orphan. Only the same signal received
twice stops at once: `LAUNCHER_GONE`, or the SIGTERM accelerate's launcher sends after a Ctrl-C, does not.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object

from ..utils.io_utils import atomic_write

logger = get_logger(__name__)

# Exit status of a run stopped by SIGTERM or SIGINT after saving a checkpoint (EX_TEMPFAIL: run it again
# to resume). `train_video2world.py` exits with it; schedulers can requeue on it.
EXIT_PREEMPTED = 75
SKIPPED_CLIPS_FILE = "skipped_clips.txt"
# Sent by the kernel to a training process whose launcher has exited (see the module docstring).
LAUNCHER_GONE = signal.SIGUSR2
_PR_SET_PDEATHSIG = 1
_LAUNCHERS = (
    "accelerate",
    "torchrun",
    "torch.distributed.run",
    "torch.distributed.launch",
    "accelerate.commands.launch",
)


def _parent_is_launcher() -> bool:
    """Whether this process was started by `accelerate launch` or `torchrun` (read from /proc, Linux only)."""
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(Path(arg).name in _LAUNCHERS for arg in argv[:3])


def _set_parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


class RunGuards:
    """Signal handlers (installed with `with guards:`) and the set of clips skipped so far."""

    def __init__(self, accelerator: Accelerator, output_dir: str | Path, max_skipped_clips: int):
        self.accelerator, self.max_skipped_clips = accelerator, max_skipped_clips
        self.skipped_file = Path(output_dir) / SKIPPED_CLIPS_FILE
        self.skipped_clips: set[str] = set()
        self.signal_received: int | None = None
        self._previous_handlers: dict = {}
        self._launcher = os.getppid() if _parent_is_launcher() else None

    def __enter__(self) -> "RunGuards":
        signals = (signal.SIGTERM, signal.SIGINT, LAUNCHER_GONE)
        self._previous_handlers = {s: signal.signal(s, self._on_signal) for s in signals}
        if self._launcher is not None and _set_parent_death_signal(LAUNCHER_GONE) and os.getppid() != self._launcher:
            self._on_signal(LAUNCHER_GONE, None)  # it exited before we asked
        return self

    def __exit__(self, *exc) -> None:
        if self._launcher is not None:
            _set_parent_death_signal(0)
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if signum == LAUNCHER_GONE:
            if self.signal_received is None:
                self.signal_received = signum
            logger.warning(
                "The launcher (PID %s) has exited: finishing this step, saving a checkpoint, then exiting.",
                self._launcher,
                main_process_only=False,
            )
            return
        if self.signal_received == signum:  # the same signal again (Ctrl-C twice): stop at once
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.signal_received not in (None, LAUNCHER_GONE):
            # Another signal for the same stop: accelerate's launcher (1.16) answers Ctrl-C by sending SIGTERM to
            # the process it started, which then has 5 s before a SIGKILL: the step and the save go on.
            logger.warning("Received %s as well: still saving, then exiting.", signal.Signals(signum).name)
            return
        self.signal_received = signum
        logger.warning(
            "Received %s: finishing this step, saving a checkpoint, then exiting (send it again to stop at once).",
            signal.Signals(signum).name,
            main_process_only=False,
        )

    def stop_requested(self) -> bool:
        """True when any rank has received a stop signal (a collective: every rank calls it)."""
        flag = torch.tensor([float(self.signal_received is not None)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def check(self, micro_batches) -> bool:
        """Record this step's skipped clips (from every rank); True when any rank received a stop signal.

        Raises when more clips than `max_skipped_clips` have failed to decode.
        """
        local = [p for batch in micro_batches for entry in batch["skipped_clips"] for p in entry.split("\n") if p]
        counts = torch.tensor(
            [float(self.signal_received is not None), float(len(local))], device=self.accelerator.device
        )
        stop, any_skipped = (self.accelerator.reduce(counts, reduction="sum") > 0).tolist()
        if any_skipped:
            everyone = gather_object(local) if self.accelerator.num_processes > 1 else local
            self._record(set(everyone) - self.skipped_clips)
        return stop

    def _record(self, new: set[str]) -> None:
        if not new:
            return
        self.skipped_clips |= new
        if self.accelerator.is_main_process:
            with atomic_write(self.skipped_file, "w") as f:
                f.write("".join(f"{p}\n" for p in sorted(self.skipped_clips)))
        if len(self.skipped_clips) > self.max_skipped_clips:
            raise RuntimeError(
                f"{len(self.skipped_clips)} clips failed to decode during training (more than --max_skipped_clips "
                f"{self.max_skipped_clips}); they are listed in {self.skipped_file}: "
                f"re-encode or remove them, then run the same command again to resume."
            )


class NonFiniteSteps:
    """The run of consecutive steps with a non-finite loss. Each is reported (its update was skipped); the
    checkpoint saved just before one stops being the latest, since its weights gave it; nothing is saved while
    the run lasts; `max_steps` of them in a row, or a run that ends in one, stop training with an error that
    names the learning rate."""

    def __init__(self, checkpoints, max_steps: int, learning_rate: float, is_main_process: bool):
        self.checkpoints, self.max_steps, self.learning_rate = checkpoints, max_steps, learning_rate
        self.is_main_process = is_main_process
        self.streak = 0

    def record(self, step: int, loss: float, micro_batches) -> None:
        if math.isfinite(loss):
            self.streak = 0
            return
        self.streak += 1
        clips = ", ".join(p for batch in micro_batches for p in batch["video_path"])
        logger.warning("Step %d: loss is %s; update skipped (clips: %s).", step, loss, clips)
        if self.is_main_process:
            self.checkpoints.retract_latest(step)
        if self.streak >= self.max_steps:
            latest = self.checkpoints.latest_iteration()
            raise FloatingPointError(
                f"{self.streak} consecutive steps had a non-finite loss (--max_nonfinite_steps {self.max_steps}), the "
                f"last at step {step}: the run has diverged. Lower --learning_rate (this run: {self.learning_rate:g}) "
                f"or check the clips named above; "
                + (
                    f"checkpoint {latest} holds the last weights that gave a finite loss."
                    if latest
                    else "no checkpoint was kept."
                )
            )

    def allow_saving(self, iteration: int) -> bool:
        """Whether checkpoint `iteration` may be written: not while the current weights have just given a
        non-finite loss (a diverged state must never become the one to resume from)."""
        if self.streak:
            logger.warning(
                "Not saving checkpoint %d: the last %d steps had a non-finite loss; %s stays the one to resume from.",
                iteration,
                self.streak,
                self.checkpoints.root / "latest_checkpoint.txt",
            )
        return not self.streak

    def check_end(self) -> None:
        """At the end of training: a run whose last steps were not finite is not exported."""
        if self.streak:
            raise FloatingPointError(
                f"The run ended with {self.streak} steps of non-finite loss: its weights were not exported. Lower "
                f"--learning_rate (this run: {self.learning_rate:g}) and resume from "
                f"{self.checkpoints.root / 'latest_checkpoint.txt'}."
            )

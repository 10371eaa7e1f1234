"""Training checkpoints in NVIDIA's layout (docs/recipe.md, "Checkpoints").

    <output_dir>/checkpoints/
        model/iter_{N:09d}.pt       net.* (bf16) and net_ema.* (fp32) tensors, NVIDIA's key names
        optim/iter_{N:09d}.pt       optimizer state + the fp32 master weights
        scheduler/iter_{N:09d}.pt   learning-rate scheduler state
        trainer/iter_{N:09d}.pt     {"grad_scaler": ..., "iteration": N} (+ our RNG states and the run's
                                    flags as JSON, so a resume with different run-defining flags is refused)
        latest_checkpoint.txt       "iter_{N:09d}.pt\\n", written last

NVIDIA's model file stores bf16 weights, while training keeps fp32 masters (our live weights under
accelerate's bf16 autocast, or DeepSpeed's partitions); so, as in NVIDIA's trainer, the exact fp32 weights
travel with the optimizer state, and resume reads them from there (`state.py` gathers and scatters them).
Every file is written atomically and `latest_checkpoint.txt` only after all of them, so a kill
or a full disk at any moment leaves the previous checkpoint whole and named.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..utils.io_utils import atomic_write, read_regular_file

logger = logging.getLogger(__name__)

PARTS = ("model", "optim", "scheduler", "trainer")
LATEST = "latest_checkpoint.txt"
GIB = 2**30


class CheckpointSpaceError(OSError):
    """Not enough disk space for a checkpoint; the message names the folder and the space it needs."""


def _size(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.1f} MiB"


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors inside nested dicts and lists: about what `torch.save` writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _iteration_of(name: str) -> int | None:
    """N of `iter_N.pt` or `iter_N`, in ASCII digits only (`str.isdigit` takes "²", which `int` refuses), or None."""
    match = re.fullmatch(r"iter_([0-9]+)(\.pt)?", name)
    return int(match.group(1)) if match else None


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:09d}.pt"


class CheckpointDir:
    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir) / "checkpoints"

    def latest_iteration(self) -> int | None:
        """The iteration named by `latest_checkpoint.txt`, or None when there is none."""
        marker = self.root / LATEST
        if not marker.exists() and not marker.is_symlink():
            return None
        fix = (
            f"write the name of a complete checkpoint into it ({self._complete_list()}), or delete it to start afresh"
        )
        try:
            name = read_regular_file(marker, max_bytes=256).decode("ascii").strip()
        except (OSError, ValueError):
            raise ValueError(f"{marker} is not a short text file naming iter_NNNNNNNNN.pt; {fix}.") from None
        if not name.endswith(".pt") or _iteration_of(name) is None:
            raise ValueError(f"{marker} holds {name[:40]!r}, not iter_NNNNNNNNN.pt; {fix}.")
        missing = [part for part in PARTS if not (self.root / part / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"{marker} names {name}, but {', '.join(missing)}/{name} is missing under {self.root}; "
                f"restore those files or point {LATEST} at a complete checkpoint."
            )
        return _iteration_of(name)

    def path(self, part: str, iteration: int) -> Path:
        return self.root / part / checkpoint_name(iteration)

    def complete_iterations(self) -> list[int]:
        """Iterations whose four parts are all on disk, oldest first."""
        names = {p.name for p in (self.root / "model").glob("iter_*.pt")} if (self.root / "model").is_dir() else set()
        complete = [n for n in names if all((self.root / part / n).is_file() for part in PARTS)]
        return sorted(i for i in map(_iteration_of, complete) if i is not None)

    def resolve(self, spec: str) -> int | None:
        """The iteration `--resume_from_checkpoint` names: `latest`, `iter_N` / `iter_N.pt`, diffusers' `checkpoint-N`,
        or a path to one of its files (`.../model/iter_000000500.pt`). None when `latest` finds no checkpoint."""
        if spec == "latest":
            return self.latest_iteration()
        diffusers_name = re.fullmatch(r"checkpoint-([0-9]+)", spec)  # diffusers' examples name their folders so
        iteration = int(diffusers_name.group(1)) if diffusers_name else _iteration_of(Path(spec).name)
        if iteration is None:
            raise ValueError(
                f"--resume_from_checkpoint {spec!r}: use latest, iter_N (or checkpoint-N), or a path to a "
                f"checkpoint's iter_N.pt."
            )
        missing = [part for part in PARTS if not self.path(part, iteration).is_file()]
        if missing:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {spec}: {', '.join(missing)}/{checkpoint_name(iteration)} is missing under "
                f"{self.root}; complete checkpoints: {self._complete_list()}."
            )
        return iteration

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` complete checkpoints (`--checkpoints_total_limit`). The one
        `latest_checkpoint.txt` names is never deleted."""
        latest = self.latest_iteration()
        for iteration in self.complete_iterations()[:-keep]:
            if iteration != latest:
                for part in PARTS:
                    self.path(part, iteration).unlink(missing_ok=True)
                logger.info("Removed checkpoint %s (--checkpoints_total_limit %d)", checkpoint_name(iteration), keep)

    def retract_latest(self, iteration: int) -> None:
        """If checkpoint `iteration` is the latest, point `latest_checkpoint.txt` back at the newest complete
        earlier one (or remove it): the weights it holds have since given a non-finite loss. Its files stay."""
        marker = self.root / LATEST
        if self.latest_iteration() != iteration:
            return
        earlier = [i for i in self.complete_iterations() if i < iteration]
        if earlier:
            with atomic_write(marker, "w") as f:
                f.write(checkpoint_name(earlier[-1]) + "\n")
        else:
            marker.unlink()
        logger.warning(
            "Checkpoint %d is no longer the latest: its weights gave a non-finite loss; %s.",
            iteration,
            f"resume from {checkpoint_name(earlier[-1])}" if earlier else "no earlier checkpoint exists",
        )

    def _complete_list(self) -> str:
        done = self.complete_iterations()
        return ", ".join(f"iter_{i}" for i in done) if done else "none"

    def remove_stale_temp_files(self) -> None:
        """Delete the temp files of writes cut short by an earlier kill (tens of GB at 2B size).

        Call it only while holding the run lock: then no other process is writing here."""
        stale = list(self.root.glob("*/.iter_*.tmp")) + list(self.root.glob(f".{LATEST}.*.tmp"))
        if stale:
            freed = sum(p.stat().st_size for p in stale)
            for path in stale:
                path.unlink(missing_ok=True)
            logger.warning(
                "Removed %d temp files left by an interrupted save (%s) under %s", len(stale), _size(freed), self.root
            )

    def save(self, iteration: int, parts: dict[str, dict]) -> Path:
        """Write each part atomically, then move `latest_checkpoint.txt` to this iteration.

        Too little free space is found before anything is written; a disk that fills up during the write
        leaves no partial file (`atomic_write`). Either way `CheckpointSpaceError` names the folder and the
        space the checkpoint needs, and the previous checkpoint stays the latest.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        needed = sum(_tensor_bytes(parts[part]) for part in PARTS)
        free = shutil.disk_usage(self.root).free
        if free < needed:
            raise self._space_error(iteration, needed, free)
        try:
            for part in PARTS:
                with atomic_write(self.path(part, iteration)) as f:
                    torch.save(parts[part], f)
        except (OSError, RuntimeError) as exc:
            # torch.save reports a full disk as a RuntimeError from its zip writer, so the disk is asked too.
            free = shutil.disk_usage(self.root).free
            if getattr(exc, "errno", None) == errno.ENOSPC or free < needed:
                raise self._space_error(iteration, needed, free) from None
            raise
        with atomic_write(self.root / LATEST, "w") as f:
            f.write(checkpoint_name(iteration) + "\n")
        logger.info("Saved checkpoint %s", self.path("model", iteration))
        return self.path("model", iteration)

    def _space_error(self, iteration: int, needed: int, free: int) -> CheckpointSpaceError:
        return CheckpointSpaceError(
            errno.ENOSPC,
            f"No space left for checkpoint {iteration} in {self.root}: it needs about {_size(needed)}, {_size(free)} "
            f"is free; free space there (or use another --output_dir) and run the same command to resume from the "
            f"previous checkpoint",
        )

    def load_part(self, part: str, iteration: int) -> dict:
        """One part, read with `weights_only=True`: tensors and plain containers only, so a checkpoint folder
        from anywhere cannot run code. A file that fails to read is named, with the earlier checkpoints."""
        path = self.path(part, iteration)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, corrupt or hostile: the same problem for the user
            earlier = [i for i in self.complete_iterations() if i < iteration]
            way_out = (
                f"resume from an earlier one with --resume_from_checkpoint iter_{earlier[-1]}"
                if earlier
                else "start afresh with --no-resume"
            )
            raise ValueError(
                f"{path} cannot be read as a checkpoint ({str(exc).splitlines()[0][:200]}); it may be truncated, "
                f"corrupt or not ours: {way_out}."
            ) from None


def output_dir_of(checkpoint_file: str | Path) -> Path:
    """The run folder a checkpoint file belongs to: `<output_dir>/checkpoints/<part>/iter_N.pt`."""
    path = Path(checkpoint_file).absolute()
    if len(path.parents) < 3 or path.parent.name not in PARTS or path.parents[1].name != "checkpoints":
        raise ValueError(
            f"--resume_from_checkpoint {path}: a checkpoint file lives in "
            f"<output_dir>/checkpoints/<{'|'.join(PARTS)}>/, "
            f"beside its other three parts; copy the whole checkpoints/ folder and pass the file there."
        )
    return path.parents[2]


def config_of_checkpoint(checkpoint_file: str | Path) -> dict | None:
    """The run config stored with a checkpoint, given the path of any of its files."""
    checkpoints = CheckpointDir(output_dir_of(checkpoint_file))
    iteration = checkpoints.resolve(str(checkpoint_file))
    if iteration is None:
        return None
    return stored_config(checkpoints.load_part("trainer", iteration))


def stored_config(trainer_part: dict) -> dict | None:
    """The run config a checkpoint was written with (None for NVIDIA's, whose trainer part holds none)."""
    return json.loads(trainer_part["config"]) if "config" in trainer_part else None


def rng_state() -> dict:
    """The process's RNG states as tensors and plain lists, which `torch.load(weights_only=True)` reads."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state(legacy=True)
    assert not isinstance(keys, str)  # the legacy tuple form: (name, keys, position, has_gauss, cached_gauss)
    version, python_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gauss),
        },
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

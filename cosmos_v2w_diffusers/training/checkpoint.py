"""Training checkpoints in NVIDIA's layout (docs/recipe.md, "Checkpoints").

    <output_dir>/checkpoints/
        model/iter_{N:09d}.pt       net.* (bf16) and net_ema.* (fp32) tensors, NVIDIA's key names
        optim/iter_{N:09d}.pt       optimizer state + the fp32 master weights
        scheduler/iter_{N:09d}.pt   learning-rate scheduler state
        trainer/iter_{N:09d}.pt     {"grad_scaler": ..., "iteration": N} (+ our RNG states)
        latest_checkpoint.txt       "iter_{N:09d}.pt\\n", written last

Our live weights are fp32 masters (accelerate's bf16 autocast), while NVIDIA's model file stores bf16;
so, as in NVIDIA's trainer, the exact fp32 weights travel with the optimizer state, and resume reads them
from there. Every file is written atomically and `latest_checkpoint.txt` only after all of them, so a kill
or a full disk at any moment leaves the previous checkpoint whole and named.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from ..io_utils import atomic_write

logger = logging.getLogger(__name__)

PARTS = ("model", "optim", "scheduler", "trainer")
LATEST = "latest_checkpoint.txt"


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:09d}.pt"


class CheckpointDir:
    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir) / "checkpoints"

    def latest_iteration(self) -> int | None:
        """The iteration named by `latest_checkpoint.txt`, or None when there is none."""
        marker = self.root / LATEST
        if not marker.exists():
            return None
        name = marker.read_text().strip()
        if not (name.startswith("iter_") and name.endswith(".pt") and name[5:-3].isdigit()):
            raise ValueError(f"{marker} holds {name!r}, not iter_NNNNNNNNN.pt; fix or delete it to start afresh.")
        missing = [part for part in PARTS if not (self.root / part / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"{marker} names {name}, but {', '.join(missing)}/{name} is missing under {self.root}; "
                f"restore those files or point {LATEST} at a complete checkpoint."
            )
        return int(name[5:-3])

    def path(self, part: str, iteration: int) -> Path:
        return self.root / part / checkpoint_name(iteration)

    def save(self, iteration: int, parts: dict[str, dict]) -> Path:
        """Write each part atomically, then move `latest_checkpoint.txt` to this iteration."""
        for part in PARTS:
            with atomic_write(self.path(part, iteration)) as f:
                torch.save(parts[part], f)
        with atomic_write(self.root / LATEST, "w") as f:
            f.write(checkpoint_name(iteration) + "\n")
        logger.info("Saved checkpoint %s", self.path("model", iteration))
        return self.path("model", iteration)

    def load(self, iteration: int) -> dict[str, dict]:
        """Every part, read with `weights_only=True`: tensors and plain containers only, so a checkpoint
        folder from anywhere cannot run code. A file that fails to read is named, with the way out."""
        parts = {}
        for part in PARTS:
            path = self.path(part, iteration)
            try:
                parts[part] = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # truncated, corrupt or hostile: the same problem for the user
                raise ValueError(
                    f"{path} cannot be read as a checkpoint ({str(exc).splitlines()[0][:200]}); it may be truncated, "
                    f"corrupt or not ours. Resume from an earlier complete checkpoint (edit {self.root / LATEST}) "
                    f"or start afresh with --no-resume."
                ) from None
        return parts


def rng_state() -> dict:
    """The process's RNG states as tensors and plain lists, which `torch.load(weights_only=True)` reads."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gauss)},
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

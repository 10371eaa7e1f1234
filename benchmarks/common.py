"""Helpers shared by the GPU benchmark scripts: synthetic inputs of the real sizes, JSON output."""

from __future__ import annotations

import json
import os
import pickle
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cosmos_v2w_diffusers.utils.io_utils import atomic_write


def environment() -> dict:
    import accelerate
    import diffusers
    import transformers

    info = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def median_seconds(fn, repeats: int = 3, warmup: bool = True) -> float:
    """Median wall time of `fn()` over `repeats` calls, the GPU synchronised around each; `warmup` runs it once
    untimed first (compilation, cuDNN's autotuning)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_result(name: str, result: dict) -> Path:
    """Write `<name>.json` under $OUT (the device tool's folder), else under outputs/benchmarks/: never over a
    committed result in benchmarks/results/, which is updated by copying a reviewed file there."""
    folder = Path(os.environ.get("OUT") or Path(__file__).parents[1] / "outputs" / "benchmarks")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    with atomic_write(path, "w") as f:  # a kill mid-write leaves the previous result whole
        f.write(json.dumps({"environment": environment(), **result}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path


def make_dataset(root: Path, num_clips: int, num_frames: int, height: int, width: int, embed_dim: int) -> Path:
    """An NVIDIA-layout folder of synthetic clips with random T5-shaped pickles (no text encoder needed)."""
    from cosmos_v2w_diffusers.data.demo_clips import export_clip, render_clip

    for sub in ("videos", "metas", "t5_xxl"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(num_clips):
        name = f"clip_{i}"
        if not (root / "videos" / f"{name}.mp4").exists():
            export_clip(render_clip(num_frames, height, width, seed=i), root / "videos" / f"{name}.mp4")
        (root / "metas" / f"{name}.txt").write_text("A video of sks teal robot.")
        with open(root / "t5_xxl" / f"{name}.pickle", "wb") as f:
            pickle.dump([rng.standard_normal((12, embed_dim)).astype(np.float16)], f)
    return root

"""The generations a command asks for, checked from the flags and the file system alone: this module imports
neither torch nor diffusers, so `infer_video2world.py` refuses a bad job list, chunk count, save path or missing
guardrail in well under three seconds, before the heavy imports (and `runner.generate_videos` checks the inputs again).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..utils.io_utils import read_regular_file
from .config import GenerationConfig

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv", ".webm"}

# A bound on --num_chunks: 100 chunks of 93 frames at 16 fps are over 9 minutes of video (hours to generate).
MAX_CHUNKS = 100


def long_video_frames(num_frames: int, num_chunks: int, num_conditional_frames: int) -> int:
    """Frames of an N-chunk video of F-frame chunks conditioned on c frames: `F + (N - 1)(F - c)`."""
    return num_frames + (num_chunks - 1) * (num_frames - num_conditional_frames)


def check_chunks(
    num_chunks: int, num_conditional_frames: int, image_input: bool, source: str = "--input_path"
) -> None:
    """Refuse, before any model loads, a chunk count out of 1..`MAX_CHUNKS` or a 5-frame continuation of an image."""
    if not 1 <= num_chunks <= MAX_CHUNKS:
        raise ValueError(
            f"--num_chunks must be 1 to {MAX_CHUNKS} (100 chunks of 93 frames are over 9 minutes at 16 fps), got "
            f"{num_chunks}."
        )
    if num_chunks > 1 and num_conditional_frames > 1 and image_input:
        raise ValueError(
            f"{source} is an image, one frame, and --num_conditional_frames {num_conditional_frames} continues each "
            f"chunk from its last {num_conditional_frames} frames: pass a video, or --num_conditional_frames 1."
        )


def jobs_from_config(config: GenerationConfig) -> list[dict]:
    """The generations to run, each checked (prompt, input, a writable `.mp4` save path) before any model loads."""
    if config.batch_input_json:
        source = Path(config.batch_input_json)
        try:
            entries = json.loads(read_regular_file(source, max_bytes=64 * 2**20))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--batch_input_json {source} cannot be read as JSON ({exc}).") from None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(
                f'--batch_input_json {source} must hold a list of {{"prompt", "input_path", "save_path"}} objects.'
            )
        jobs = [
            {
                "prompt": e.get("prompt"),
                "input_path": e.get("input_path") or e.get("input_video"),
                "save_path": e.get("save_path") or e.get("output_video"),
                "num_chunks": e.get("num_chunks", config.num_chunks),
            }
            for e in entries
        ]
    else:
        jobs = [
            {
                "prompt": config.prompt,
                "input_path": config.input_path,
                "save_path": config.save_path,
                "num_chunks": config.num_chunks,
            }
        ]
    for job in jobs:
        if not job["prompt"] or not job["input_path"] or not job["save_path"]:
            missing = [name for name in ("prompt", "input_path", "save_path") if not job[name]]
            raise ValueError(
                f"Each generation needs a prompt, an input_path and a save_path: {', '.join(missing)} missing "
                f"(--{' --'.join(missing)}, or the entries of --batch_input_json)."
            )
        if type(job["num_chunks"]) is not int:
            raise ValueError(f"num_chunks of {job['save_path']} must be a whole number, got {job['num_chunks']!r}.")
        check_save_path(Path(job["save_path"]))
    check_no_input_is_overwritten(jobs)
    return jobs


def check_no_input_is_overwritten(jobs: list[dict]) -> None:
    """Refuse, before any generation, a save path that is an input of any job (the input would be destroyed,
    perhaps before a later job reads it) or that two jobs share (the first video would be lost)."""

    def same(a: Path, b: Path) -> bool:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))

    inputs = [Path(job["input_path"]) for job in jobs]
    for n, job in enumerate(jobs):
        save = Path(job["save_path"])
        for source in inputs:
            if same(save, source):
                raise ValueError(
                    f"--save_path {save} is the input {source}: writing it would destroy the input; pass another path."
                )
        for other in jobs[n + 1 :]:
            if same(save, Path(other["save_path"])):
                raise ValueError(
                    f"--save_path {save} is given to two generations: the second would replace the first; pass two."
                )


def check_save_path(path: Path) -> None:
    """Refuse a save path that would fail only after the whole generation: a folder, or not `.mp4`."""
    if path.is_dir():
        raise ValueError(f"--save_path {path} is a folder: pass a file name ending in .mp4 inside it.")
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"--save_path {path} does not end in .mp4: the video is written as MP4.")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"--save_path {path}: {path.parent} is a file, not a folder.")


def check_jobs(config: GenerationConfig) -> list[dict]:
    """`jobs_from_config`, each job's chunk count against its input's kind (told by its suffix here; the frames are
    read later), and the guardrail's presence: every refusal that needs neither torch nor a model."""
    jobs = jobs_from_config(config)
    for job in jobs:
        image_input = Path(job["input_path"]).suffix.lower() in IMAGE_EXTENSIONS
        check_chunks(
            job["num_chunks"], config.num_conditional_frames, image_input, f"--input_path {job['input_path']}"
        )
    # diffusers' is_cosmos_guardrail_available asks the same, but importing diffusers costs seconds.
    if not config.disable_guardrail and importlib.util.find_spec("cosmos_guardrail") is None:
        raise ValueError(
            "NVIDIA's tooling runs the cosmos_guardrail safety checker by default, and it is not installed: "
            "`pip install cosmos_guardrail`, or pass --disable_guardrail."
        )
    return jobs

"""`infer_video2world.py`: parse NVIDIA's generation flags (`infer_flags.py`), refuse what needs no model before
torch is imported, then generate (`generation/runner.py`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..generation.jobs import check_jobs
from .infer_flags import parse_args


def main(argv: list[str] | None = None) -> list[Path]:
    """Generate what `argv` asks for; the videos written (on rank 0). Bad input raises with one line."""
    args = parse_args(argv)
    jobs = check_jobs(args)  # before the heavy imports below: every check that needs no model answers at once
    from ..generation.runner import generate_videos

    return generate_videos(args, jobs)


def cli() -> None:
    """`main` with its refusals as one `error:` line and exit status 1."""
    from safetensors import SafetensorError  # (no torch: safetensors' own error type)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (ValueError, OSError, ImportError, SafetensorError) as exc:  # bad input: one line naming it
        sys.exit(f"error: {exc}")

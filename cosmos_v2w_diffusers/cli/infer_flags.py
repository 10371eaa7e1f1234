"""The generation CLI's command line (`infer_video2world.py`, NVIDIA's `examples/video2world.py` names), built from
the fields of `generation/config.py`'s `GenerationConfig`, in a module that imports neither torch nor diffusers:
`--help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..choices import DEFAULT_PROMPT_REFINER
from ..generation.config import FAST_GENERATION_FLAGS, GenerationConfig
from .flag_parser import FlagParser, add_flags


def build_parser() -> argparse.ArgumentParser:
    """The generation flags, one per `GenerationConfig` field; `--help` shows each one's default."""
    p = FlagParser(description="Cosmos-Predict2 Video2World generation", allow_abbrev=False)
    # Values the command line spells its own way: a chunk count as `1e3`, a cache threshold or `auto`.
    types = {"num_chunks": _whole_number, "cache": _cache_threshold}
    fields = [f.name for f in dataclasses.fields(GenerationConfig)]
    add_flags(p, GenerationConfig, types=types, names=[n for n in fields if n not in FAST_GENERATION_FLAGS])
    fast = p.add_argument_group(
        "faster generation",
        "each measured against the dense 35-step output, speed and PSNR/SSIM, in BENCHMARKS.md (Fast generation)",
    )
    add_flags(fast, GenerationConfig, types=types, names=FAST_GENERATION_FLAGS)
    # NVIDIA's spellings: `--prompt_refiner` alone picks its refiner, `--natten` is `--sparse_attention natten`
    # (argparse's own parts: a field declares one value of one type).
    actions = {action.dest: action for action in p._actions}
    actions["prompt_refiner"].nargs, actions["prompt_refiner"].const = "?", DEFAULT_PROMPT_REFINER
    actions["prompt_refiner"].metavar, actions["cache"].metavar = "MODEL", "THRESHOLD|auto"
    fast.add_argument(
        "--natten",
        dest="sparse_attention",
        action="store_const",
        const="natten",
        help="NVIDIA's name for --sparse_attention natten",
    )
    return p


def _whole_number(value: str) -> int:
    """An integer, also written as `1e3`; the bounds are checked with the rest (`long_video.check_chunks`)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number")
    return int(number)


def _cache_threshold(value: str) -> float | str:
    """`--cache`: a number, or `auto`."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number nor auto") from None


def parse_args(argv: list[str] | None = None) -> GenerationConfig:
    """The generation config of a command line; a value no run can use, or flags that contradict each other,
    end the process with one `error:` line (`GenerationConfig.check`)."""
    p = build_parser()
    config = GenerationConfig(**vars(p.parse_args(argv)))
    try:
        config.check()
    except ValueError as exc:
        p.error(str(exc))
    return config

"""`train_video2world.py`: the training flags (one per section field, `training/sections/`, listed by section),
the command line read into a `TrainConfig` (a checkpoint file's recipe merged in), and the run started.

No torch at import: `--help` and the flag checks answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..training.config import RESUMED_FIELDS, TrainConfig
from ..training.sections import SECTIONS
from .flag_parser import FlagParser, add_flags


def train_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The flags, listed by section (`training/sections/`); `defaults=False` leaves out every flag not given (to
    tell what the user set)."""
    # No abbreviations: `--hub_tok` would otherwise set the token under a spelling no redaction expects.
    parser = FlagParser(description="Cosmos-Predict2 Video2World post-training", allow_abbrev=False)
    groups = {}
    for name, section in SECTIONS.items():
        title = section.__name__.removesuffix("Config").lower()
        groups[name] = parser.add_argument_group(title, (section.__doc__ or "").split("(")[0].strip())
        add_flags(groups[name], section, defaults)
    # diffusers' examples switch full recompute on with a bare `--gradient_checkpointing`.
    groups["parallel"].add_argument(
        "--gradient_checkpointing",
        dest="activation_checkpointing",
        nargs="?",
        const="full",
        choices=["full", "selective", "none"],
        default=argparse.SUPPRESS,
        help="alias of --activation_checkpointing; alone it means full",
    )
    return parser


def parse_train_flags(argv: list[str] | None = None) -> TrainConfig:
    """The config of a command line. With `--resume_from_checkpoint <path to a checkpoint file>`, the run
    continues in that checkpoint's output folder with the `RESUMED_FIELDS` stored there (what the run is
    and its recipe's numbers), changed only by the flags given on the command line. Everything else (the
    dataset, the base weights, trackers, the Hub) comes from the command line alone."""
    config = TrainConfig.from_flags(**vars(train_parser().parse_args(argv)))
    checkpoint = Path(config.resume_from_checkpoint)
    if config.resume_from_checkpoint == "latest" or not checkpoint.is_file():
        return config
    from ..training.checkpoint import config_of_checkpoint, output_dir_of  # torch: kept out of `--help`

    stored = config_of_checkpoint(checkpoint)
    if stored is None:
        return config
    given = vars(train_parser(defaults=False).parse_args(argv))
    if stored.get("dataset_path") and "dataset_path" not in given:
        raise ValueError(
            f"{checkpoint} was trained on --dataset_path {stored['dataset_path']}: pass --dataset_path (that "
            f"folder, or another) to continue it; a checkpoint never chooses what a run reads."
        )
    rebuilt = {name: stored[name] for name in RESUMED_FIELDS if name in stored}
    if stored.get("lr_decay_steps") == stored.get("max_iter") and "lr_decay_steps" not in given:
        rebuilt.pop("lr_decay_steps", None)  # it was the default: it follows --max_iter, as in a plain resume
    taken = [f"--{name} {value}" for name, value in rebuilt.items() if name not in given]
    # A received file's numbers are bounded like flags (`run_config.validate`, when the run is resolved) and
    # listed, so none is taken unseen.
    logging.getLogger(__name__).info("Taken from %s: %s", checkpoint, ", ".join(taken) or "nothing")
    rebuilt["output_dir"] = str(output_dir_of(checkpoint))
    return config.replace(**{**rebuilt, **given})


def main(argv: list[str] | None = None) -> None:
    """Train as `argv` says; refusals and lost peers end the process with one `error:` line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = parse_train_flags(argv)  # before the heavy imports below, so `--help` answers at once
        config.check()  # and so does a flag no run can use
    except (ValueError, OSError) as exc:  # a flag no run can use, or a checkpoint file that is not one
        sys.exit(f"error: {exc}")
    import torch

    if not torch.cuda.is_available():  # DeepSpeed picks its CPU accelerator here anyway, with a warning each start
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from ..data.folder import NoUsableVideosError
    from ..training.checkpoint import CheckpointSpaceError
    from ..training.guards import EXIT_PREEMPTED
    from ..training.hub import HubUploadError
    from ..training.nodes import lost_peer_message
    from ..training.run_lock import OutputDirInUseError
    from ..training.trainer import Trainer
    from ..utils.io_utils import describe_os_error

    try:  # bad input, a busy output folder, a full disk: one line that says what and how to fix
        trainer = Trainer(config)
        trainer.train()
    except (
        NoUsableVideosError,
        FileNotFoundError,
        ValueError,
        OutputDirInUseError,
        CheckpointSpaceError,
        FloatingPointError,
        HubUploadError,
    ) as exc:
        sys.exit(f"error: {exc}")
    except OSError as exc:  # a full disk, a read-only or missing folder: one line naming the file
        sys.exit(f"error: {describe_os_error(exc, 'the output folder or a cache')}")
    except RuntimeError as exc:  # a collective that lost a peer (torch's DistBackendError is one): name the node
        message = lost_peer_message(exc, config.ddp_timeout, config.output_dir or "the output folder")
        if message is None:
            raise
        sys.exit(f"error: {message}")
    trainer.close()
    if trainer.preempted:  # SIGTERM/SIGINT: a checkpoint was saved; run the same command to resume
        sys.exit(EXIT_PREEMPTED)

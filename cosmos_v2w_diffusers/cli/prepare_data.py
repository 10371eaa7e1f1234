"""`python -m cosmos_v2w_diffusers.prepare_data`: NVIDIA's `metas/` captions and `t5_xxl/` pickles for a folder of
videos (`data/prepare_data.py` does the work)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..data import prepare_data as preparation
from ..data.folder import NoUsableVideosError
from ..data.prepare_data import DEFAULT_TEXT_ENCODER, MAX_TEXT_TOKENS
from ..utils.io_utils import describe_os_error

logger = logging.getLogger(__name__)
DESCRIPTION = "Write NVIDIA's metas/ captions and t5_xxl/ pickles for a folder of videos."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION, allow_abbrev=False)
    parser.add_argument("--dataset_path", required=True, help="folder holding videos/*.mp4")
    parser.add_argument("--prompt", default=None, help="caption for videos without metas/<name>.txt")
    parser.add_argument(
        "--hub_dataset",
        default=None,
        help="first fetch this Hub dataset's mp4s into videos/ (e.g. nvidia/Cosmos-NeMo-Assets)",
    )
    parser.add_argument(
        "--text_encoder",
        default=DEFAULT_TEXT_ENCODER,
        help="T5 encoder: Hub id or local folder (default T5-XXL), or `tiny` for the tiny preset's encoder",
    )
    parser.add_argument(
        "--num_frames",
        type=int,
        default=93,
        help="training's frame count: shorter clips are prepared, with a warning that training will skip them",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="captions encoded per forward pass")
    parser.add_argument("--max_length", type=int, default=MAX_TEXT_TOKENS, help="T5 token budget")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.hub_dataset:
            preparation.download_hub_dataset(args.hub_dataset, args.dataset_path)
        usable, written = preparation.prepare_dataset(
            args.dataset_path, args.prompt, args.text_encoder, args.num_frames, args.batch_size, args.max_length
        )
    except (NoUsableVideosError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 1
    except OSError as exc:
        logger.error("%s", describe_os_error(exc, "the dataset folder"))
        return 1
    logger.info("%d usable videos; wrote %d T5 pickles under %s", usable, written, Path(args.dataset_path) / "t5_xxl")
    return 0


if __name__ == "__main__":
    sys.exit(main())

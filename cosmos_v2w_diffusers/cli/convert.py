"""Convert transformer weights between NVIDIA's native files and diffusers, in both directions.

    # a native iter_N.pt (ours or NVIDIA's; --load_ema for net_ema.*) -> a diffusers transformer folder
    python -m cosmos_v2w_diffusers.convert to_diffusers --input model/iter_000001000.pt --output transformer/
    # a diffusers transformer folder -> a native .pt (net.* in the folder's dtype, RoPE buffers, counters)
    python -m cosmos_v2w_diffusers.convert to_native --input transformer/ --output model.pt
    # the LoRA adapter of a native LoRA checkpoint -> a diffusers LoRA file, and back
    python -m cosmos_v2w_diffusers.convert lora_to_diffusers --input model/iter_000000200.pt --output lora/
    python -m cosmos_v2w_diffusers.convert lora_to_native \
        --input lora/pytorch_lora_weights.safetensors --output lora.pt

The model size is read from the tensors' shapes; round trips of our files are bit-exact (`export/conversion.py`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


# subcommand -> (what it reads, what it writes, whether it takes --load_ema, whether it takes --dtype)
SUBCOMMANDS = {
    "to_diffusers": ("a native iter_N.pt (ours or NVIDIA's)", "a diffusers transformer folder", True, True),
    "to_native": ("a diffusers transformer folder", "a native .pt file", False, False),
    "lora_to_diffusers": ("a native LoRA checkpoint's model/iter_N.pt", "a diffusers LoRA folder", True, False),
    "lora_to_native": ("a diffusers LoRA .safetensors file", "a native .pt file", False, False),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    subcommands = parser.add_subparsers(dest="direction", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (reads, writes, ema, dtype) in SUBCOMMANDS.items():
        sub = subcommands.add_parser(name, help=f"{reads} -> {writes}", allow_abbrev=False)
        sub.add_argument("--input", required=True, help=reads)
        sub.add_argument("--output", required=True, help=f"{writes} (a new one: nothing is overwritten)")
        if ema:
            sub.add_argument("--load_ema", action="store_true", help="take the net_ema.* weights")
        if dtype:
            sub.add_argument(
                "--dtype",
                choices=["bf16", "fp32"],
                default=None,
                help="the weights' dtype (default: as stored: net.* in bf16, the EMA in fp32; round trips are exact)",
            )
    args = parser.parse_args(argv)  # before the heavy imports below, so `--help` answers at once
    from safetensors import SafetensorError

    from ..export.conversion import (
        diffusers_to_native,
        lora_diffusers_to_native,
        lora_native_to_diffusers,
        native_to_diffusers,
    )
    from ..export.exports import EXPORT_DTYPES

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    source, output = Path(args.input), Path(args.output)
    try:
        if args.direction == "to_diffusers":
            written = native_to_diffusers(source, output, args.load_ema, EXPORT_DTYPES.get(args.dtype))
        elif args.direction == "to_native":
            written = diffusers_to_native(source, output)
        elif args.direction == "lora_to_diffusers":
            written = lora_native_to_diffusers(source, output, args.load_ema)
        else:
            written = lora_diffusers_to_native(source, output)
    except (ValueError, OSError, SafetensorError) as exc:  # bad or hostile input, an output we must not replace
        logger.error("%s", exc)
        return 1
    logger.info("Wrote %s", written)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert transformer weights between NVIDIA's native files and diffusers, in both directions.

    # a native iter_N.pt (ours or NVIDIA's; --load_ema for net_ema.*) -> a diffusers transformer folder
    python -m cosmos_v2w_diffusers.convert to_diffusers --input model/iter_000001000.pt --output transformer/
    # a diffusers transformer folder -> a native .pt (net.* in the folder's dtype, RoPE buffers, counters)
    python -m cosmos_v2w_diffusers.convert to_native --input transformer/ --output model.pt
    # the LoRA adapter of a native LoRA checkpoint -> a diffusers LoRA file, and back
    python -m cosmos_v2w_diffusers.convert lora_to_diffusers --input model/iter_000000200.pt --output lora/
    python -m cosmos_v2w_diffusers.convert lora_to_native \
        --input lora/pytorch_lora_weights.safetensors --output lora.pt

The model size is read from the tensors' shapes; round trips of our files are bit-exact (`conversion.py`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "direction",
        choices=["to_diffusers", "to_native", "lora_to_diffusers", "lora_to_native"],
        help="what to convert (see the module docstring)",
    )
    parser.add_argument("--input", required=True, help="a native .pt, a diffusers folder, or a LoRA .safetensors")
    parser.add_argument("--output", required=True, help="the folder or .pt file to write")
    parser.add_argument("--load_ema", action="store_true", help="from a native file: take the net_ema.* weights")
    args = parser.parse_args(argv)  # before the heavy imports below, so `--help` answers at once
    from safetensors import SafetensorError

    from .conversion import (
        diffusers_to_native,
        lora_diffusers_to_native,
        lora_native_to_diffusers,
        native_to_diffusers,
    )

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    source, output = Path(args.input), Path(args.output)
    try:
        if args.direction == "to_diffusers":
            written = native_to_diffusers(source, output, args.load_ema)
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

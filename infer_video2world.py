"""Generate videos with a (post-trained) Cosmos-Predict2 Video2World model; NVIDIA's flags.

    python infer_video2world.py --model_size 2B --dit_path <output_dir>/checkpoints/model/iter_000001000.pt \
        --input_path robot.jpg --prompt "A video of sks teal robot." --save_path output/robot.mp4

Every flag: `python infer_video2world.py --help`.
"""

import logging
import sys

from cosmos_v2w_diffusers.generation.flags import parse_args
from cosmos_v2w_diffusers.generation.jobs import check_jobs

if __name__ == "__main__":
    try:  # before the heavy imports below, so `--help` and every check that needs no model answer at once
        check_jobs(parse_args())
    except (ValueError, OSError) as exc:
        sys.exit(f"error: {exc}")
    from safetensors import SafetensorError

    from cosmos_v2w_diffusers.generation.runner import main

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (ValueError, OSError, ImportError, SafetensorError) as exc:  # bad input: one line naming it
        sys.exit(f"error: {exc}")

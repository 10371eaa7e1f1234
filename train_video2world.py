"""Post-train Cosmos-Predict2 Video2World (full or LoRA) with NVIDIA's recipe.

    # the built-in sample on the tiny model (CPU, about 3 minutes; `make demo` also shows the result)
    accelerate launch train_video2world.py --model tiny --cache_latents --cache_windows_per_clip 4
    # 2B on one node; 14B across nodes with FSDP
    accelerate launch --config_file accelerate_configs/fsdp_8gpu.yaml train_video2world.py \
        --model 2B --dataset_path datasets/cosmos_nemo_assets
    accelerate launch --config_file accelerate_configs/fsdp_multinode.yaml train_video2world.py \
        --model 14B --dataset_path datasets/cosmos_nemo_assets
    # LoRA
    accelerate launch train_video2world.py --model 2B --train_architecture lora --dataset_path ...

Every flag: `python train_video2world.py --help`. Re-running the same command resumes from the last
checkpoint in its output folder.
"""

import logging
import os
import sys

from cosmos_v2w_diffusers.training.checks import check_flags
from cosmos_v2w_diffusers.training.config import TrainConfig


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = TrainConfig.from_args()  # before the heavy imports below, so `--help` answers at once
        check_flags(config)  # and so does a flag no run can use
    except (ValueError, OSError) as exc:  # a flag no run can use, or a checkpoint file that is not one
        sys.exit(f"error: {exc}")
    import torch

    if not torch.cuda.is_available():  # DeepSpeed picks its CPU accelerator here anyway, with a warning each start
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from cosmos_v2w_diffusers.data.folder import NoUsableVideosError
    from cosmos_v2w_diffusers.training.checkpoint import CheckpointSpaceError
    from cosmos_v2w_diffusers.training.guards import EXIT_PREEMPTED
    from cosmos_v2w_diffusers.training.hub import HubUploadError
    from cosmos_v2w_diffusers.training.nodes import lost_peer_message
    from cosmos_v2w_diffusers.training.run_lock import OutputDirInUseError
    from cosmos_v2w_diffusers.training.trainer import Trainer
    from cosmos_v2w_diffusers.utils.io_utils import describe_os_error

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


if __name__ == "__main__":
    main()

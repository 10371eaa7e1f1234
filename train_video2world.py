"""Post-train Cosmos-Predict2 Video2World (full or LoRA) with NVIDIA's recipe.

    # the built-in sample on the tiny model (CPU, about 2 minutes)
    accelerate launch train_video2world.py --model tiny
    # 2B on one node; 14B across nodes with FSDP
    accelerate launch --config_file accelerate_configs/single_node_8gpu.yaml train_video2world.py \
        --model 2B --dataset_path datasets/cosmos_nemo_assets
    accelerate launch --config_file accelerate_configs/fsdp_multinode.yaml train_video2world.py \
        --model 14B --dataset_path datasets/cosmos_nemo_assets
    # LoRA
    accelerate launch train_video2world.py --model 2B --train_architecture lora --dataset_path ...

Every flag: `python train_video2world.py --help`. Re-running the same command resumes from the last
checkpoint in its output folder.
"""

import logging

from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.trainer import Trainer


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Trainer(TrainConfig.from_args()).train()


if __name__ == "__main__":
    main()

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

from cosmos_v2w_diffusers.cli.train import main

if __name__ == "__main__":
    main()

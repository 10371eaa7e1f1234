"""Generate videos with a (post-trained) Cosmos-Predict2 Video2World model; NVIDIA's flags.

    python infer_video2world.py --model_size 2B --dit_path <output_dir>/checkpoints/model/iter_000001000.pt \
        --input_path robot.jpg --prompt "A video of sks teal robot." --save_path output/robot.mp4

Every flag: `python infer_video2world.py --help`.
"""

from cosmos_v2w_diffusers.cli.infer import cli

if __name__ == "__main__":
    cli()

from setuptools import find_packages, setup

setup(
    name="cosmos_v2w_diffusers",
    version="0.1.0",
    description="NVIDIA Cosmos-Predict2 Video2World post-training on the Hugging Face stack",
    # The code's licence; the Cosmos-Predict2 weights it trains are under the NVIDIA Open Model License.
    license="Apache-2.0",
    license_files=["LICENSE"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["cosmos_v2w_diffusers", "cosmos_v2w_diffusers.*"]),
    # The tiny model (trained VAE, text encoder, transformer) the demo and the tests load.
    package_data={"cosmos_v2w_diffusers": ["assets/tiny_video2world/*", "assets/tiny_video2world/*/*"]},
    python_requires=">=3.10",
    install_requires=[
        # torch is pinned by the Makefile/CI (a bare `torch` would pull a multi-GB CUDA build here). The floor is
        # the lowest version tested (the GPU machines' 2.11; CI's is 2.14.1): `compat.TORCH_TESTED`.
        "torch>=2.11",
        "torchvision",
        "diffusers>=0.42,<0.43",
        "transformers>=5,<6",
        "accelerate>=1.10",
        "peft>=0.17",
        "datasets>=4",
        "decord>=0.6",
        "sentencepiece",
        "safetensors",
        "huggingface_hub",
        "imageio",
        "imageio-ffmpeg",
        "tqdm",
    ],
    extras_require={
        # DeepSpeed ZeRO-2/3 (accelerate_configs/deepspeed_zero*.yaml); the tests run it in one CPU process.
        "deepspeed": ["deepspeed>=0.19.8"],  # compat.DEEPSPEED_TESTED
        "dev": [
            "pytest",
            "scikit-video",
            "tensorboard",
            "deepspeed>=0.19.8",
            "ruff==0.17.6",
            "mypy==2.4.1",
            "natten>=0.21",
        ],
        # FlashAttention-4 (CuTe DSL, compiled on first use): Hopper/Blackwell GPUs, torch >= 2.11 (SDPA's FA4 hook).
        "flash4": ["flash-attn-4[cu13]==4.0.0b36"],
        # --sparse_attention natten. Built without a GPU it has torch's Flex Attention backend alone; natten.org
        # has wheels with its Hopper/Blackwell kernels for some torch versions.
        "natten": ["natten>=0.21"],
    },
)

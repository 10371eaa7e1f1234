"""diffusers' two CPU offloads on our pipeline: both must generate what the pipeline does on the GPU. They need a
GPU (the offload hooks move weights to an accelerator), so the file is skipped on the CPU; it runs on the GPU
machine (BENCHMARKS.md, "CPU offload", says when it last passed there, and the peaks of the real sizes)."""

import numpy as np
import PIL.Image
import pytest
import torch

from cosmos_v2w_diffusers import CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.models.components import tiny_pretrained_path
from cosmos_v2w_diffusers.models.presets import get_preset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU offload moves weights to a GPU")
TINY = get_preset("tiny")


def _generate(offload: str) -> torch.Tensor:
    pipe = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    pipe.set_progress_bar_config(disable=True)
    if offload == "model":
        pipe.enable_model_cpu_offload()
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    else:
        pipe.to("cuda")
    image = PIL.Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (TINY.height, TINY.width, 3), dtype=np.uint8)
    )
    noise = torch.randn(1, 16, 5, TINY.height // 4, TINY.width // 4, generator=torch.Generator().manual_seed(0))
    return (
        pipe(
            image=image,
            prompt="A video of sks teal robot.",
            height=TINY.height,
            width=TINY.width,
            num_frames=17,
            num_inference_steps=4,
            latents=noise,
            output_type="pt",
        )
        .frames[0]
        .cpu()
    )


def test_model_and_sequential_cpu_offload_generate_what_the_gpu_pipeline_does():
    on_gpu = _generate("none")
    assert on_gpu.std() > 0.01
    for offload in ("model", "sequential"):
        offloaded = _generate(offload)
        assert torch.allclose(offloaded, on_gpu, atol=1e-4), (offload, (offloaded - on_gpu).abs().max())

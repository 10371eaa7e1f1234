"""What a full run exports: a pipeline folder that diffusers' own loaders and ours load and run."""

import numpy as np
import PIL.Image
import torch
from conftest import PROMPT
from safetensors.torch import load_file

from cosmos_v2w_diffusers import CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.export.exports import WEIGHTS_NAME
from cosmos_v2w_diffusers.generation.scheduler import CosmosMultistepScheduler
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.trainer import Trainer


class PassingSafetyChecker(torch.nn.Module):
    """Stands in for cosmos_guardrail's checker (not installed here), which the stock pipeline requires."""

    device, dtype = torch.device("cpu"), torch.float32

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, video: np.ndarray) -> np.ndarray:
        return video


def test_a_full_run_exports_a_pipeline_that_diffusers_and_ours_load_and_run(prepared_dataset, tmp_path):
    from diffusers import (
        Cosmos2VideoToWorldPipeline,
        DiffusionPipeline,
        FlowMatchEulerDiscreteScheduler,
    )

    out = tmp_path / "run"
    trainer = Trainer(
        TrainConfig.from_flags(
            model="tiny", dataset_path=str(prepared_dataset), output_dir=str(out), max_iter=2, dataloader_num_workers=0
        )
    )
    trainer.train()
    trainer.close()
    folder = out / "pipeline"
    exported, ema = load_file(folder / "transformer" / WEIGHTS_NAME), load_file(out / "transformer_ema" / WEIGHTS_NAME)
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)  # the EMA by default

    image = PIL.Image.new("RGB", (112, 64), (0, 128, 128))
    call = dict(
        image=image, prompt=PROMPT, height=64, width=112, num_frames=17, num_inference_steps=2, output_type="np"
    )
    stock = DiffusionPipeline.from_pretrained(str(folder), safety_checker=PassingSafetyChecker())
    assert isinstance(stock, Cosmos2VideoToWorldPipeline) and isinstance(
        stock.scheduler, FlowMatchEulerDiscreteScheduler
    )
    video = stock(**call, generator=torch.Generator().manual_seed(0)).frames[0]
    assert video.shape == (17, 64, 112, 3) and np.isfinite(video).all()

    ours = CosmosVideo2WorldPipeline.from_pretrained(str(folder), disable_guardrail=True)
    assert isinstance(ours.scheduler, CosmosMultistepScheduler)  # NVIDIA's sampler, put in on load
    assert torch.equal(ours.transformer.state_dict()["proj_out.weight"], ema["proj_out.weight"])
    video = ours(**call, generator=torch.Generator().manual_seed(0)).frames[0]
    assert video.shape == (17, 64, 112, 3) and np.isfinite(video).all()


def _lora_scales(transformer: torch.nn.Module) -> set[tuple[str, float]]:
    return {
        (name, scale)
        for m in transformer.modules()
        if isinstance(getattr(m, "scaling", None), dict)
        for name, scale in m.scaling.items()
    }


def test_lora_exports_load_into_the_stock_pipeline_and_combine_on_ours(prepared_dataset, tmp_path):
    """The stock pipeline has no `load_lora_weights` (diffusers gives it to Cosmos 2.5 only); its transformer's
    `load_lora_adapter` takes our file. Ours loads several and mixes them with `set_adapters`."""
    from diffusers import Cosmos2VideoToWorldPipeline

    from cosmos_v2w_diffusers.models.components import tiny_pretrained_path

    folders = {}
    for name, seed in (("robot", 0), ("arm", 1)):
        out = tmp_path / name
        trainer = Trainer(
            TrainConfig.from_flags(
                model="tiny",
                dataset_path=str(prepared_dataset),
                output_dir=str(out),
                max_iter=1,
                train_architecture="lora",
                lora_rank=4,
                lora_alpha=8,
                seed=seed,
                dataloader_num_workers=0,
            )
        )
        trainer.train()
        trainer.close()
        folders[name] = str(out / "lora")

    stock = Cosmos2VideoToWorldPipeline.from_pretrained(
        str(tiny_pretrained_path()), safety_checker=PassingSafetyChecker()
    )
    stock.transformer.load_lora_adapter(
        folders["robot"], weight_name="pytorch_lora_weights.safetensors", prefix="transformer", adapter_name="robot"
    )
    assert _lora_scales(stock.transformer) == {("robot", 2.0)}  # alpha 8 / rank 4, from the file's metadata
    video = stock(
        image=PIL.Image.new("RGB", (112, 64)),
        prompt=PROMPT,
        height=64,
        width=112,
        num_frames=17,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames[0]
    assert np.isfinite(video).all()

    ours = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    for name, folder in folders.items():
        ours.load_lora_weights(folder, adapter_name=name)
    ours.set_adapters(["robot", "arm"], adapter_weights=[1.0, 0.5])
    assert _lora_scales(ours.transformer) == {("robot", 2.0), ("arm", 1.0)}

"""`--base_precision fp8`: a LoRA run's frozen base stored in fp8 (issue 22, lever 1), on the tiny model."""

import numpy as np
import pytest
import torch
from conftest import make_dataset_folder, tiny_config

from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.quantized_base import Float8FrozenLinear
from cosmos_v2w_diffusers.training.trainer import Trainer


def test_an_fp8_linear_computes_the_linear_within_fp8_rounding_and_saves_like_one():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    quantized = Float8FrozenLinear(linear)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    expected, got = linear(x).float(), quantized(x).float()
    # e4m3 keeps 3 mantissa bits: each weight within 1/16 of itself, the sums well within that
    assert (got - expected).norm() / expected.norm() < 0.04
    assert quantized.weight.dtype == torch.float8_e4m3fn and quantized.weight.element_size() == 1
    saved = quantized.state_dict()
    assert set(saved) == {"weight", "bias"} and saved["weight"].dtype == torch.bfloat16
    assert (saved["weight"].float() - linear.weight.float()).abs().max() <= linear.weight.float().abs().max() / 16


@pytest.fixture(scope="module")
def bikes_dataset(video_paths, tmp_path_factory):
    return make_dataset_folder(tmp_path_factory.mktemp("bikes"), {"bikes": video_paths["bikes"]})


def test_lora_on_an_fp8_base_trains_like_the_full_precision_base(bikes_dataset, tmp_path):
    """The same 40 draws on both bases. Measured on the CPU (fp32 base): per-step losses 0.44% apart on average,
    1.7% at most; the base's blocks take a quarter of the bytes. The validation copy gets only the adapter."""
    losses, base_bytes = {}, {}
    for precision in ("bf16", "fp8"):
        extra = (
            dict(validation_prompt="A video of sks teal robot.", validation_num_inference_steps=2)
            if precision == "fp8"
            else {}
        )
        trainer = Trainer(
            tiny_config(
                bikes_dataset,
                tmp_path / precision,
                train_architecture="lora",
                base_precision=precision,
                max_iter=40,
                save_iter=40,
                **extra,
            )
        )
        losses[precision] = np.array(trainer.train())
        base_bytes[precision] = sum(
            p.numel() * p.element_size() for p in trainer.transformer.parameters() if not p.requires_grad
        )
    relative = np.abs(losses["fp8"] - losses["bf16"]) / np.abs(losses["bf16"])
    assert relative.mean() < 0.02 and relative.max() < 0.05, relative
    assert base_bytes["fp8"] < 0.4 * base_bytes["bf16"]
    assert (tmp_path / "fp8" / "validation" / "step_000000040.mp4").is_file()
    assert (tmp_path / "fp8" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_an_fp8_base_is_for_lora_runs():
    with pytest.raises(ValueError, match="for --train_architecture lora"):
        TrainConfig(model="tiny", base_precision="fp8").resolved()

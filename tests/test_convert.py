"""`python -m cosmos_v2w_diffusers.convert`: native <-> diffusers, full and LoRA, bit-exact round trips."""

import torch
from safetensors.torch import load_file

from cosmos_v2w_diffusers.cli import convert
from cosmos_v2w_diffusers.models.checkpoint_format import training_counters
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.trainer import Trainer


def _train(dataset, out, **overrides):
    config = dict(
        model="tiny", dataset_path=str(dataset), output_dir=str(out), dataloader_num_workers=0, max_iter=2, save_iter=2
    )
    Trainer(TrainConfig.from_flags(**{**config, **overrides})).train()
    return out / "checkpoints" / "model" / "iter_000000002.pt"


def _subset(tensors: dict, prefix: str) -> dict:
    return {k: v for k, v in tensors.items() if k.startswith(prefix)}


def test_native_to_diffusers_and_back_is_bit_exact(prepared_dataset, tmp_path):
    native_file = _train(prepared_dataset, tmp_path / "run")
    native = torch.load(native_file, weights_only=True)
    # Our files carry NVIDIA's training counters, so its strict load_state_dict accepts them.
    for prefix in ("net.", "net_ema."):
        for name, value in training_counters().items():
            assert torch.equal(native[prefix + name], value) and native[prefix + name].dtype == value.dtype

    for load_ema, prefix in ((False, "net."), (True, "net_ema.")):
        folder = tmp_path / f"diffusers_{load_ema}"
        args = ["to_diffusers", "--input", str(native_file), "--output", str(folder)] + (
            ["--load_ema"] if load_ema else []
        )
        assert convert.main(args) == 0
        assert (folder / "config.json").is_file()
        back = tmp_path / f"back_{load_ema}.pt"
        assert convert.main(["to_native", "--input", str(folder), "--output", str(back)]) == 0
        round_trip = torch.load(back, weights_only=True)
        original = {"net." + k[len(prefix) :]: v for k, v in _subset(native, prefix).items()}
        assert set(round_trip) == set(original)
        assert all(torch.equal(round_trip[k], v) and round_trip[k].dtype == v.dtype for k, v in original.items())
        # diffusers -> native -> diffusers is bit-exact too.
        again = tmp_path / f"again_{load_ema}"
        assert convert.main(["to_diffusers", "--input", str(back), "--output", str(again)]) == 0
        a, b = (
            load_file(folder / "diffusion_pytorch_model.safetensors"),
            load_file(again / "diffusion_pytorch_model.safetensors"),
        )
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_native_to_diffusers_and_back_is_bit_exact(prepared_dataset, tmp_path):
    native_file = _train(prepared_dataset, tmp_path / "run", train_architecture="lora")
    native = torch.load(native_file, weights_only=True)
    assert convert.main(["lora_to_diffusers", "--input", str(native_file), "--output", str(tmp_path / "lora")]) == 0
    layers = load_file(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    # The same file the trainer exports (diffusers' LoRA format, which pipeline.load_lora_weights reads).
    exported = load_file(tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors")
    assert set(layers) == set(exported) and all(
        torch.equal(layers[k], exported[k].to(layers[k].dtype)) for k in layers
    )
    back = tmp_path / "lora.pt"
    assert (
        convert.main(
            [
                "lora_to_native",
                "--input",
                str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"),
                "--output",
                str(back),
            ]
        )
        == 0
    )
    round_trip = torch.load(back, weights_only=True)
    original = {k: v for k, v in native.items() if k.startswith("net.") and ".lora_" in k}
    assert set(round_trip) == set(original) and all(torch.equal(round_trip[k], v) for k, v in original.items())
    # The EMA adapter converts as well.
    assert (
        convert.main(
            ["lora_to_diffusers", "--input", str(native_file), "--output", str(tmp_path / "lora"), "--load_ema"]
        )
        == 0
    )
    assert (tmp_path / "lora" / "pytorch_lora_weights_ema.safetensors").is_file()


def test_bad_inputs_are_one_line_errors(tmp_path, caplog):
    assert (
        convert.main(["to_diffusers", "--input", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "x")]) == 1
    )
    assert "does not exist" in caplog.text
    not_lora = tmp_path / "full.pt"
    torch.save({"net.x_embedder.proj.1.weight": torch.zeros(2, 2)}, not_lora)
    assert convert.main(["lora_to_diffusers", "--input", str(not_lora), "--output", str(tmp_path / "y")]) == 1
    assert "not a LoRA training checkpoint" in caplog.text

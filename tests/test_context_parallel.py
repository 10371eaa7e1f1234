"""Context parallelism on 2 CPU processes (gloo): the sequence sharded, the result unchanged."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from cosmos_v2w_diffusers.data.samples import read_frames
from cosmos_v2w_diffusers.training.demo_data import render_clip

REPO = Path(__file__).resolve().parents[1]


def _masters(folder: Path, iteration: int) -> dict[str, torch.Tensor]:
    path = folder / "checkpoints" / "optim" / f"iter_{iteration:09d}.pt"
    return torch.load(path, weights_only=True)["master_weights"]


def test_the_sharded_transformer_computes_the_unsharded_output_and_gradient(tmp_path):
    """Each rank holds half the tokens; outputs match; the ranks' gradients sum to the unsharded one."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29539",
           str(REPO / "tests" / "cp_worker.py"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks) == 2
    for rank in ranks:
        assert rank["tokens_seen"] == 70  # of 140
        assert rank["output_max_diff"] < 1e-5
        assert rank["summed_grad_rel_diff"] < 1e-5
        assert rank["own_grad_rel_diff"] > 0.1  # a rank alone holds only its tokens' share


def test_context_parallel_2_trains_like_one_process_and_resumes_in_one(prepared_dataset, tmp_path):
    """Two CPU processes with `--context_parallel_size 2` end 3 steps with the fp32 master weights of one
    process; their checkpoint resumes in one process, as a run of one process would. (torchrun starts the
    ranks, accelerate joins them with gloo: `accelerate launch --cpu` starts several CPU processes only
    through MPI.)"""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    flags = ["--model", "tiny", "--dataset_path", str(prepared_dataset), "--save_iter", "3", "--lr_decay_steps", "6",
             "--dataloader_num_workers", "0"]

    def run(output_dir: Path, max_iter: int, processes: int, *extra: str) -> str:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(29540 + processes), str(REPO / "train_video2world.py"), *flags,
               "--output_dir", str(output_dir), "--max_iter", str(max_iter), *extra]
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr

    run(tmp_path / "one", 4, 1)
    assert "Context parallel: 2 ranks per sample, 70 of its 140 tokens each" in run(
        tmp_path / "cp2", 3, 2, "--context_parallel_size", "2"
    )
    one, cp2 = _masters(tmp_path / "one", 3), _masters(tmp_path / "cp2", 3)
    assert one.keys() == cp2.keys()
    for name in one:
        torch.testing.assert_close(cp2[name], one[name], rtol=1e-5, atol=1e-6, msg=name)

    log = run(tmp_path / "cp2", 4, 1)  # the context-parallel checkpoint, resumed by one process
    assert "Resumed from" in log
    for name, value in _masters(tmp_path / "one", 4).items():
        torch.testing.assert_close(_masters(tmp_path / "cp2", 4)[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_num_gpus_2_generation_writes_the_one_process_video(tmp_path):
    """`torchrun --nproc_per_node 2 infer_video2world.py --num_gpus 2` against one process (same thread count:
    a different one changes float rounding, which a few sampling steps amplify)."""
    image = tmp_path / "first.png"
    Image.fromarray(render_clip(1, 64, 112, seed=3)[0]).save(image)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = ["--model_size", "tiny", "--input_path", str(image), "--prompt", "A video of sks teal robot.",
             "--disable_guardrail", "--num_inference_steps", "4"]
    one = [sys.executable, str(REPO / "infer_video2world.py"), *flags, "--save_path", str(tmp_path / "one.mp4")]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29538",
           str(REPO / "infer_video2world.py"), *flags, "--num_gpus", "2", "--save_path", str(tmp_path / "two.mp4")]
    for cmd in (one, two):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(read_frames(str(tmp_path / "one.mp4"), 0, 17), read_frames(str(tmp_path / "two.mp4"), 0, 17))

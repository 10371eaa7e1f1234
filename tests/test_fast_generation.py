"""Faster generation (issue 36) on the CPU with the shipped tiny model: step caching, NATTEN sparse attention and
fp8 linear layers, each against the dense output of the same seeds (PSNR/SSIM per frame), and their bad inputs.
Speed is measured on a GPU by `benchmarks/fast_generation.py`, not here."""

import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import PIL.Image
import pytest
import torch

from cosmos_v2w_diffusers import CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.generation import sparse_attention as sparse
from cosmos_v2w_diffusers.generation.video_metrics import psnr, ssim
from cosmos_v2w_diffusers.models.components import tiny_pretrained_path
from cosmos_v2w_diffusers.models.fp8 import Float8FrozenLinear
from cosmos_v2w_diffusers.models.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
TINY = get_preset("tiny")
PROMPT = "A video of sks teal robot."
BLOCKS = TINY.transformer_config["num_layers"]
SEEDS = (0, 1, 2, 3)  # four conditioning inputs, as the quality check asks


def _pipe() -> CosmosVideo2WorldPipeline:
    return CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)


def _image(seed: int) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).random((TINY.height // 8, TINY.width // 8, 3))
    return PIL.Image.fromarray((pixels * 255).astype(np.uint8)).resize((TINY.width, TINY.height))


def _videos(pipe, steps: int = 12, seeds: tuple[int, ...] = SEEDS) -> list[torch.Tensor]:
    """One video `[T, C, H, W]` in [0, 1] per seed, each from its own image and noise."""
    videos = []
    for seed in seeds:
        frames = pipe(
            image=_image(seed),
            prompt=PROMPT,
            height=TINY.height,
            width=TINY.width,
            num_frames=TINY.num_frames,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
        ).frames[0]
        videos.append(frames.float())
    return videos


def _worst_frame(videos, dense) -> tuple[float, float]:
    """The lowest PSNR and SSIM of any frame of any video against the dense one."""
    frames = [(v[t : t + 1], d[t : t + 1]) for v, d in zip(videos, dense) for t in range(v.shape[0])]
    return min(psnr(a, b) for a, b in frames), min(ssim(a, b) for a, b in frames)


@pytest.fixture(scope="module")
def dense():
    return _videos(_pipe())


@pytest.mark.slow  # 17 s (the README's CPU numbers); `make test` runs --cache through the CLI
def test_step_cache_skips_blocks_says_how_many_and_stays_near_dense(dense, caplog):
    pipe = _pipe()
    cache = pipe.enable_step_cache(0.1)
    with caplog.at_level(logging.INFO, logger="cosmos_v2w_diffusers.generation.pipeline"):
        cached = _videos(pipe)
    summaries = [r.getMessage() for r in caplog.records if "step cache" in r.getMessage()]
    assert len(summaries) == len(SEEDS)
    # 12 steps + NVIDIA's final x0, two guidance sides: 26 forwards of 4 blocks a video.
    assert cache.forwards == 26 and 0 < cache.skipped_forwards < cache.forwards
    assert f"of {26 * BLOCKS} block evaluations" in summaries[-1]
    worst_psnr, worst_ssim = _worst_frame(cached, dense)
    assert 30 < worst_psnr < math.inf and worst_ssim > 0.99  # close to dense (40.7 dB, 0.9985), not equal to it

    # A threshold no step falls under changes nothing; the cache starts afresh for each video.
    pipe.enable_step_cache(1e-9)
    assert all(torch.equal(a, b) for a, b in zip(_videos(pipe), dense))
    assert pipe._step_cache.skipped_forwards == 0


def test_step_cache_refuses_a_bad_threshold_and_context_parallelism():
    pipe = _pipe()
    for threshold in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="between 0 and 1"):
            pipe.enable_step_cache(threshold)
    pipe.transformer._parallel_config = object()  # what enable_context_parallel leaves on the model
    with pytest.raises(ValueError, match="context parallelism"):
        pipe.enable_step_cache(0.1)


def test_nvidia_windows_at_720p_and_scaled_to_a_small_grid():
    layers = sparse.layer_parameters(28)
    assert len(layers) == 28 and len(sparse.layer_parameters(36)) == 36 and sparse.layer_parameters(36)[27] is None
    grid_720p = (24, 44, 80)
    assert sparse.scaled_window(layers[0], grid_720p) == ((24, 4, 16), (1, 1, 1), (1, 11, 5))
    assert sparse.scaled_window(layers[3], grid_720p) == ((24, 12, 24), (1, 4, 8), (1, 1, 1))
    assert sparse.scaled_window(layers[23], grid_720p) == ((24, 28, 56), (1, 4, 8), (1, 1, 1))
    for layer in layers:  # every layer fits a tiny grid as natten requires
        kernel, stride, dilation = sparse.scaled_window(layer, (2, 4, 6))
        assert all(k * d <= side and s <= k for k, s, d, side in zip(kernel, stride, dilation, (2, 4, 6)))


def test_neighbourhood_attention_over_the_whole_grid_is_dense_attention():
    pytest.importorskip("natten")
    grid = (3, 4, 6)
    query, key, value = (torch.randn(2, math.prod(grid), 2, 8) for _ in range(3))
    whole = sparse.NeighborhoodAttention({"window": (-1, 44, 80)})  # scaled to the whole 4 x 6 grid
    dense = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (query, key, value)))
    torch.testing.assert_close(whole(query, key, value, grid), dense.transpose(1, 2), atol=1e-5, rtol=1e-5)
    local = sparse.NeighborhoodAttention({"window": (-1, 22, 40)})  # half of each side: a different result
    assert not torch.allclose(local(query, key, value, grid), dense.transpose(1, 2), atol=1e-3)


@pytest.mark.slow  # 18 s; `make test` runs natten through the CLI (test_cli_generates_with_every_fast_option...)
def test_sparse_attention_generation_runs_every_layer_kind(dense):
    pytest.importorskip("natten")
    pipe = _pipe()
    assert pipe.enable_sparse_attention() == BLOCKS
    videos = _videos(pipe)
    worst_psnr, _ = _worst_frame(videos, dense)
    assert worst_psnr < 30  # 12 dB: this dense-trained model was not post-trained with NVIDIA's windows
    assert all(torch.isfinite(v).all() for v in videos)


def test_sparse_attention_without_natten_is_a_one_line_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "natten" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install natten") as error:
        _pipe().enable_sparse_attention()
    assert "\n" not in str(error.value)


def test_fp8_linear_layers_stay_near_dense():
    """Two of the four inputs at 6 steps: a guard (BENCHMARKS.md's 39.7 dB are the four at 35 steps, the claim)."""
    dense = _videos(_pipe(), steps=6, seeds=SEEDS[:2])
    pipe = _pipe()
    linears = sum(type(m) is torch.nn.Linear for b in pipe.transformer.transformer_blocks for m in b.modules())
    assert pipe.enable_fp8() == linears > 0
    assert all(not m.fp8_matmul for m in pipe.transformer.modules() if isinstance(m, Float8FrozenLinear))  # CPU
    worst_psnr, worst_ssim = _worst_frame(_videos(pipe, steps=6, seeds=SEEDS[:2]), dense)
    assert 30 < worst_psnr < math.inf and worst_ssim > 0.99


def test_the_generation_flags_are_one_frozen_config_that_checks_itself():
    """`infer_video2world.py`'s parser is built from `GenerationConfig`'s fields (one declaration a flag), parses
    into that frozen config, and the config refuses contradicting flags set in Python as on the command line."""
    import dataclasses

    from cosmos_v2w_diffusers.cli.infer_flags import build_parser, parse_args
    from cosmos_v2w_diffusers.generation.config import GenerationConfig

    config = parse_args(["--num_chunks", "1e1", "--prompt_refiner", "--natten", "--no-compile"])
    assert isinstance(config, GenerationConfig)
    assert (config.num_chunks, config.sparse_attention, config.compile) == (10, "natten", False)
    assert config.prompt_refiner == "nvidia/Cosmos-Reason1-7B"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    assert {a.dest for a in build_parser()._actions} - {"help"} == {f.name for f in dataclasses.fields(config)}
    with pytest.raises(ValueError, match="--group_offload the transformer's blocks: pass one"):
        GenerationConfig(offload_model=True, group_offload=True).check()
    with pytest.raises(ValueError, match="--scheduler 'ddim': pick one of cosmos, euler"):
        GenerationConfig(scheduler="ddim").check()


def test_cli_flags_are_checked_before_anything_loads(capsys):
    from cosmos_v2w_diffusers.cli.infer_flags import parse_args

    refused = {
        ("--cache", "x"): "neither a number nor auto",
        ("--cache", "auto", "--cache_min_psnr", "0"): "give a PSNR in dB between 0 and 100",
        ("--cache", "0"): "between 0 and 1",
        ("--cache", "nan"): "between 0 and 1",
        ("--sparse_attention", "flash"): "invalid choice",
    }
    for argv, says in refused.items():
        with pytest.raises(SystemExit):
            parse_args(list(argv))
        assert says in capsys.readouterr().err
    args = parse_args(["--cache", "0.1", "--sparse_attention", "natten", "--fp8"])
    assert (args.cache, args.sparse_attention, args.fp8) == (0.1, "natten", True)


def test_cli_generates_with_every_fast_option_and_logs_the_skipped_blocks(tmp_path, caplog):
    """Every fast option together through the generation CLI's main (in this process: the script's own process is
    test_pipeline.py::test_cli_writes_a_playable_mp4's)."""
    from cosmos_v2w_diffusers.cli.infer import main

    pytest.importorskip("natten")
    _image(0).save(tmp_path / "in.png")
    argv = ["--model_size", "tiny", "--disable_guardrail", "--input_path", str(tmp_path / "in.png")]
    argv += ["--prompt", PROMPT, "--save_path", str(tmp_path / "out.mp4"), "--num_inference_steps", "6"]
    with caplog.at_level(logging.INFO, logger="cosmos_v2w_diffusers"):
        assert main([*argv, "--cache", "0.1", "--sparse_attention", "natten", "--fp8"]) == [tmp_path / "out.mp4"]
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert f"Sparse attention (natten) in {BLOCKS} of the transformer's blocks" in log
    assert re.search(r"step cache \(threshold 0.1\): skipped \d+ of \d+ block evaluations", log)
    assert len(decord.VideoReader(str(tmp_path / "out.mp4"))) == TINY.num_frames


@pytest.mark.slow  # 8 s: a benchmark script's input check, in a subprocess (not a user's path)
def test_the_benchmark_refuses_a_video_that_is_no_regular_file(tmp_path):
    """`benchmarks/fast_generation.py --video` given a FIFO, which a reader would wait on forever."""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "fast_generation.py"), "--video", str(fifo)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert result.returncode == 2 and f"--video {fifo}: not a regular file" in result.stderr, result.stderr

"""Long videos by continuation (`--num_chunks`): the frame count, parity with NVIDIA's loop, streaming, refusals."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import PROMPT, cli_error, tiny_generation_flags

from cosmos_v2w_diffusers.generation.inputs import nvidia_initial_noise
from cosmos_v2w_diffusers.generation.jobs import MAX_CHUNKS, long_video_frames
from cosmos_v2w_diffusers.generation.long_video import fade_in_handoff, generate_long_video
from cosmos_v2w_diffusers.generation.pipeline import CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.generation.video_metrics import psnr
from cosmos_v2w_diffusers.models.components import tiny_pretrained_path
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.models.sample_shape import latent_shape

TINY = get_preset("tiny")
SIZE = dict(height=TINY.height, width=TINY.width, num_frames=TINY.num_frames)
CALL = dict(prompt=PROMPT, num_inference_steps=4, guidance_scale=1.0)


@pytest.fixture(scope="module")
def pipe():
    pipe = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(seed: int = 0) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).random((TINY.height // 8, TINY.width // 8, 3))
    return PIL.Image.fromarray((pixels * 255).astype(np.uint8)).resize((TINY.width, TINY.height))


@pytest.fixture(scope="module")
def three_chunks(pipe) -> np.ndarray:
    """A 3-chunk video of `_image()`, collected, `[49, H, W, 3]` (read-only: the tests compare against it)."""
    video = generate_long_video(pipe, 3, image=_image(), **SIZE, **CALL)
    video.flags.writeable = False
    return video


def test_chunks_stream_as_made_and_the_video_has_f_plus_n_minus_1_times_f_minus_c_frames(pipe, three_chunks):
    chunks = []
    assert generate_long_video(pipe, 3, image=_image(), on_chunk=chunks.append, **SIZE, **CALL) is None
    assert [len(c) for c in chunks] == [17, 16, 16]
    assert three_chunks.shape == (long_video_frames(17, 3, 1), 64, 112, 3) == (49, 64, 112, 3)
    assert np.array_equal(three_chunks, np.concatenate(chunks))
    frames = list(three_chunks[:9])  # a video input, continued from its last 5 frames each time
    five = generate_long_video(pipe, 2, video=frames, num_conditional_frames=5, **SIZE, **CALL)
    assert len(five) == long_video_frames(17, 2, 5) == 29


def test_one_conditional_frame_equals_nvidias_loop_over_the_one_chunk_pipeline(pipe, three_chunks, tmp_path):
    """NVIDIA's `video2world_lvg.py` loop, as it is written: generate, keep the chunk (all of the first, the rest
    without their first frame), write the last frame to a PNG, read it back as the next chunk's input; seed + chunk.
    Its PNG is lossless but holds 8-bit frames, where our hand-off keeps the float frames: the videos agree to that
    rounding, which the model carries on, and the first chunk is the same."""
    shape = (1, *latent_shape(pipe.vae.config, 17, 64, 112))
    chunks, current = [], _image()
    for chunk_id in range(3):
        video = pipe(image=current, latents=nvidia_initial_noise(chunk_id, shape), output_type="np", **SIZE, **CALL)
        video = video.frames[0]
        chunks.append(video if chunk_id == 0 else video[1:])
        path = tmp_path / f"chunk{chunk_id}_overlap.png"
        PIL.Image.fromarray((video[-1] * 255).round().astype(np.uint8)).save(path)
        current = PIL.Image.open(path).convert("RGB")
    nvidia = torch.from_numpy(np.concatenate(chunks))
    ours = torch.from_numpy(three_chunks.copy())
    assert nvidia.shape == ours.shape
    assert torch.equal(nvidia[:17], ours[:17])  # chunk 0 is the one-chunk video of seed 0
    # measured: 75, 72 dB for chunks 1 and 2, at most 0.5/255 apart
    assert psnr(ours, nvidia) > 60.0 and (ours - nvidia).abs().max() < 2 / 255, psnr(ours, nvidia)


def test_seam_correction_meets_the_handoff_frame_then_fades_to_the_models_own_frames():
    rng = np.random.default_rng(0)
    frames = rng.random((93, 4, 4, 3), dtype=np.float32) * 0.5 + 0.25
    handoff = np.clip(frames[4] + 0.2 * rng.standard_normal((4, 4, 3), dtype=np.float32), 0, 1)
    faded = fade_in_handoff(frames, handoff, num_conditional_frames=5)
    assert np.array_equal(faded[:4], frames[:4])  # before the last conditioning frame: untouched
    np.testing.assert_allclose(faded[4], handoff, atol=1e-6)  # the last conditioning frame is the hand-off
    shift = np.abs(faded - frames).mean(axis=(1, 2, 3))
    assert np.all(np.diff(shift[4:]) <= 1e-7) and shift[-1] < 1e-4 * shift[4]  # fading, gone by the end
    assert fade_in_handoff(frames, np.zeros_like(handoff) - 1, 1).min() == 0.0  # clipped to [0, 1]


def test_seam_correction_smooths_the_seams_of_a_long_video(pipe, three_chunks):
    plain = three_chunks[:33]  # its first two chunks: a 2-chunk video (no chunk depends on a later one)
    corrected = generate_long_video(pipe, 2, image=_image(), seam_correction=True, **SIZE, **CALL)
    assert np.array_equal(plain[:17], corrected[:17]) and not np.array_equal(plain[17:], corrected[17:])
    assert corrected.min() >= 0.0 and corrected.max() <= 1.0

    def seam(video):  # the change into chunk 1's first new frame
        return np.abs(video[17] - video[16]).mean()

    assert seam(corrected) < seam(plain), (seam(corrected), seam(plain))


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--num_chunks", "0"], f"--num_chunks must be 1 to {MAX_CHUNKS}"),
        (["--num_chunks", "-1"], f"--num_chunks must be 1 to {MAX_CHUNKS}"),
        (["--num_chunks", "1e9"], f"--num_chunks must be 1 to {MAX_CHUNKS}"),
        (["--num_chunks", "3", "--num_conditional_frames", "5"], "is an image, one frame"),
        (["--use_cuda_graphs"], "records GPU kernels, and there is no GPU here"),  # CI has none
    ],
)
def test_bad_chunk_flags_are_one_line_before_any_model_loads(tmp_path, monkeypatch, flags, message):
    assert message in cli_error(monkeypatch, "infer_video2world.py", *tiny_generation_flags(tmp_path), *flags)


@pytest.mark.parametrize("clash", [["--cache", "0.1"], ["--group_offload"], ["--num_gpus", "2"]])
def test_cuda_graphs_with_what_leaves_the_gpu_mid_forward_is_one_line(clash, capsys):
    from cosmos_v2w_diffusers.cli.infer_flags import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--use_cuda_graphs", *clash])
    error = capsys.readouterr().err.strip().splitlines()
    assert (
        len(error) == 1 and f"as {' '.join(clash[:1] if clash[0] == '--cache' else clash)} does: drop one" in error[0]
    )


def test_batch_entries_take_their_own_num_chunks(tmp_path):
    import json

    import decord

    from cosmos_v2w_diffusers.cli.infer import main as infer

    image = tmp_path / "in.png"
    _image().save(image)
    entries = [
        {"prompt": PROMPT, "input_path": str(image), "save_path": str(tmp_path / "two.mp4"), "num_chunks": 2},
        {"prompt": PROMPT, "input_path": str(image), "save_path": str(tmp_path / "one.mp4")},
    ]
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps(entries))
    flags = ["--model_size", "tiny", "--disable_guardrail", "--num_inference_steps", "3", "--guidance", "1"]
    infer([*flags, "--batch_input_json", str(batch), "--seam_correction"])  # the correction reaches the runner
    assert [len(decord.VideoReader(str(tmp_path / n))) for n in ("two.mp4", "one.mp4")] == [33, 17]
    batch.write_text(json.dumps([{**entries[0], "num_chunks": "x"}]))
    with pytest.raises(ValueError, match="num_chunks of .* must be a whole number"):
        infer([*flags, "--batch_input_json", str(batch)])


def test_nvidias_other_generation_flags(tmp_path, caplog):
    import logging

    from cosmos_v2w_diffusers.cli.infer import main as infer
    from cosmos_v2w_diffusers.cli.infer_flags import parse_args

    args = parse_args(["--natten", "--disable_prompt_refiner", "--downcast_text_encoder", "--benchmark"])
    assert args.sparse_attention == "natten" and args.benchmark
    image = tmp_path / "in.png"
    _image().save(image)
    flags = ["--model_size", "tiny", "--disable_guardrail", "--num_inference_steps", "2", "--guidance", "1"]
    with caplog.at_level(logging.INFO, logger="cosmos_v2w_diffusers"):
        infer(
            [
                *flags,
                "--input_path",
                str(image),
                "--prompt",
                PROMPT,
                "--save_path",
                str(tmp_path / "b.mp4"),
                "--benchmark",
            ]
        )
    timed = [r.getMessage() for r in caplog.records if "] generation:" in r.getMessage()]
    assert len(timed) == 3 and any("Mean generation time over 3 runs" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "b.mp4").is_file() and not list(tmp_path.glob(".*partial*"))


def test_a_long_validation_videos_chunks_are_the_frames_each_chunk_added():
    """Validation scores a long video chunk by chunk, over the frames each chunk added (the first chunk without
    its conditioning frame), as far as the held-out clip reaches."""
    from cosmos_v2w_diffusers.training.validation import chunk_frames

    assert chunk_frames(17, 1, 100) == []  # one chunk: the whole video's scores alone
    assert chunk_frames(17, 4, 65) == [slice(1, 17), slice(17, 33), slice(33, 49), slice(49, 65)]
    assert chunk_frames(17, 4, 40) == [slice(1, 17), slice(17, 33), slice(33, 40)]  # a 40-frame clip
    assert chunk_frames(93, 2, 132) == [slice(1, 93), slice(93, 132)]


# 14 s: a whole run validating a 4-chunk video; make test keeps its parts: validation scored against a held-out
# clip (test_training.py), the chunks' frames (above), long videos generated (this file).
@pytest.mark.slow
def test_a_long_validation_video_is_scored_chunk_by_chunk_as_far_as_the_clip_reaches(
    tmp_path, video_paths, bikes_dataset
):
    import decord
    from conftest import tiny_config, train_to_the_end

    config = tiny_config(
        bikes_dataset,
        tmp_path / "run",
        max_iter=1,
        save_iter=1,
        validation_prompt=PROMPT,
        validation_video=str(video_paths["bikes"]),  # 250 frames: it reaches the whole 4-chunk video (65)
        validation_num_inference_steps=2,
        validation_num_chunks=4,
        ema=False,
    )
    trainer = train_to_the_end(config)
    assert len(decord.VideoReader(str(tmp_path / "run" / "validation" / "step_000000001_live.mp4"))) == 65
    last = trainer.validator.last
    assert {f"validation/live/psnr_chunk_{k}" for k in (1, 2, 3, 4)} <= set(last)
    assert all(0 < last[f"validation/live/psnr_chunk_{k}"] < 60 for k in (1, 2, 3, 4))

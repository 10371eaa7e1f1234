"""Sampling on CPU with the tiny preset: the scheduler against docs/recipe.md, diffusers parity, inputs, weights,
CLI."""

import logging
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import cli_error
from diffusers import Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

from cosmos_v2w_diffusers import CosmosMultistepScheduler, CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.cli import infer as infer_cli
from cosmos_v2w_diffusers.cli import infer_flags
from cosmos_v2w_diffusers.generation.post_trained import load_post_trained_weights
from cosmos_v2w_diffusers.models.checkpoint_format import to_native_state_dict
from cosmos_v2w_diffusers.models.components import save_tiny_pretrained, tiny_pretrained_path
from cosmos_v2w_diffusers.models.latents import encode_video
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = get_preset("tiny")
PROMPT = "A video of sks teal robot."


class NoOpSafetyChecker:
    """Stands in for cosmos_guardrail's checker (not installable offline): passes everything through."""

    def to(self, *args, **kwargs):
        return self

    def check_text_safety(self, prompt):
        return True

    def check_video_safety(self, video):
        return video


def _image(seed=0, size=(120, 80)) -> PIL.Image.Image:
    return PIL.Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _generate(pipe, **kwargs):
    args = dict(prompt=PROMPT, height=TINY.height, width=TINY.width, num_frames=TINY.num_frames, num_inference_steps=6)
    args.update(kwargs)
    args.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(**args).frames


@pytest.fixture(scope="module")
def pipe():
    return CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)


# ---------------------------------------------------------------- the scheduler


def test_sigmas_and_steps_follow_the_recipe():
    scheduler = CosmosMultistepScheduler()
    scheduler.set_timesteps(35)
    sigmas = scheduler.sigmas.numpy()
    expected = np.array([(80 ** (1 / 7) + i / 35 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(36)])
    assert scheduler.sigmas.dtype == torch.float64 and len(sigmas) == 36
    np.testing.assert_allclose(sigmas, expected, rtol=1e-13)
    assert sigmas[0] == pytest.approx(80) and sigmas[-1] == pytest.approx(0.002)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, generator=g) * 80
    x_np = x.double().numpy()
    x0_prev = None
    for i in range(5):
        x0 = torch.randn(2, 3, generator=g)
        out = scheduler.step(x0, scheduler.timesteps[i], x).prev_sample
        s, s_next = expected[i], expected[i + 1]
        if i == 0:
            ref = x0.double().numpy() + (s_next / s) * (x_np - x0.double().numpy())
        else:
            lam, lam_next, lam_prev = -np.log(s), -np.log(s_next), -np.log(expected[i - 1])
            h = lam_next - lam
            c = (lam_prev - lam) / h
            phi1 = (np.exp(-h) - 1) / -h
            phi2 = (phi1 - 1) / -h
            ref = np.exp(-h) * x_np + h * ((phi1 - phi2 / c) * x0.double().numpy() + (phi2 / c) * x0_prev)
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.double().numpy(), ref.astype(np.float32), rtol=1e-6, atol=1e-6)
        x, x_np, x0_prev = out, out.double().numpy(), x0.float().double().numpy()


def test_scheduler_round_trips_through_save_pretrained(tmp_path):
    CosmosMultistepScheduler(sigma_max=60.0).save_pretrained(tmp_path)
    assert CosmosMultistepScheduler.from_pretrained(tmp_path).config.sigma_max == 60.0


# ---------------------------------------------------------------- parity with diffusers


def test_euler_compat_mode_equals_diffusers_pipeline_and_default_differs():
    path = str(tiny_pretrained_path())
    ours = CosmosVideo2WorldPipeline.from_pretrained(
        path, safety_checker=NoOpSafetyChecker(), scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    )
    theirs = Cosmos2VideoToWorldPipeline.from_pretrained(path, safety_checker=NoOpSafetyChecker())
    for output_type in ("latent", "np"):
        kwargs = dict(image=_image(), output_type=output_type, num_inference_steps=4)
        a = _generate(ours, diffusers_compat=True, **kwargs)
        b = _generate(theirs, **kwargs)
        assert np.array_equal(np.asarray(a), np.asarray(b)), output_type
    video = [_image(seed=i) for i in range(7)]
    a = _generate(ours, diffusers_compat=True, video=video, output_type="latent")
    b = _generate(theirs, video=video, output_type="latent")
    assert torch.equal(a, b)
    # The default (fps=None, NVIDIA's conditioning and final x0) is really different from diffusers.
    default = _generate(ours, image=_image(), output_type="latent", num_inference_steps=4)
    compat = _generate(ours, image=_image(), output_type="latent", num_inference_steps=4, diffusers_compat=True)
    assert (default - compat).abs().max() > 0.1
    # fps alone matters: diffusers' RoPE scaling changes the output.
    ours_fps = _generate(ours, image=_image(), output_type="latent", diffusers_compat=True, fps=24)
    ours_16 = _generate(ours, image=_image(), output_type="latent", diffusers_compat=True, fps=16)
    assert not torch.equal(ours_fps, ours_16)


# ---------------------------------------------------------------- inputs


def test_image_input_conditions_the_first_latent_frame(pipe):
    image = _image()
    latents = _generate(pipe, image=image, output_type="latent")
    assert latents.shape == (1, 16, 5, TINY.height // 4, TINY.width // 4)  # the tiny VAE: 4x in space
    pixels = pipe.video_processor.preprocess(image, TINY.height, TINY.width, resize_mode="crop")[:, :, None]
    padded = torch.cat([pixels, torch.full((1, 3, TINY.num_frames - 1, TINY.height, TINY.width), -1.0)], dim=2)
    clean = encode_video(pipe.vae, padded)
    assert torch.equal(latents[:, :, 0], clean[:, :, 0])
    frames = _generate(pipe, image=image, output_type="np")
    assert frames.shape == (1, TINY.num_frames, TINY.height, TINY.width, 3) and 0 <= frames.min() and frames.max() <= 1
    assert len(_generate(pipe, image=image, output_type="pil")[0]) == TINY.num_frames


def test_video_input_uses_its_last_frames(pipe):
    video = [_image(seed=i) for i in range(12)]
    same_tail = [_image(seed=100 + i) for i in range(7)] + video[7:]
    out = _generate(pipe, video=video, num_conditional_frames=5, output_type="latent")
    assert torch.equal(out, _generate(pipe, video=same_tail, num_conditional_frames=5, output_type="latent"))
    changed_last = video[:-1] + [_image(seed=999)]
    assert not torch.equal(out, _generate(pipe, video=changed_last, num_conditional_frames=5, output_type="latent"))
    # Five pixel frames are two latent frames; one pixel frame is one.
    one = _generate(pipe, video=video, num_conditional_frames=1, output_type="latent")
    assert not torch.equal(out[:, :, 1], one[:, :, 1])


def test_precomputed_embeddings_equal_prompts(pipe):
    from cosmos_v2w_diffusers.models.text_encoding import embed_prompts

    embeds = embed_prompts([PROMPT], pipe.tokenizer, pipe.text_encoder)
    a = _generate(pipe, image=_image(), output_type="latent")
    b = _generate(pipe, image=_image(), output_type="latent", prompt=None, prompt_embeds=embeds)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(height=60), "multiples of 16"),
        (dict(num_frames=16), "4k\\+1"),
        (dict(image=None), "exactly one"),
    ],
)
def test_bad_arguments_are_refused(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _generate(pipe, **{"image": _image(), **kwargs})


def test_guardrail_is_required_unless_disabled(caplog):
    with pytest.raises(ImportError, match="disable_guardrail"):
        CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()))
    with caplog.at_level(logging.WARNING):
        CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    assert any("guardrail disabled" in m for m in caplog.messages)


# ---------------------------------------------------------------- post-trained weights


@pytest.fixture(scope="module")
def trained(prepared_dataset, tmp_path_factory):
    runs = {}
    for arch in ("full", "lora"):
        out = tmp_path_factory.mktemp(arch)
        config = TrainConfig.from_flags(
            model="tiny",
            dataset_path=str(prepared_dataset),
            output_dir=str(out),
            train_architecture=arch,
            max_iter=3,
            save_iter=3,
            dataloader_num_workers=0,
            learning_rate=0.02,
        )
        trainer = Trainer(config)
        trainer.train()
        runs[arch] = (out, trainer)
    return runs


def test_native_and_ema_checkpoints_load(pipe, trained):
    out, trainer = trained["full"]
    native = out / "checkpoints" / "model" / "iter_000000003.pt"
    for use_ema, source in (
        (False, {n: p.to(torch.bfloat16).float() for n, p in trainer.trainable.items()}),
        (True, trainer.ema.shadow),
    ):
        loaded = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
        from cosmos_v2w_diffusers.models.checkpoint_format import load_into_transformer

        load_into_transformer(loaded.transformer, load_post_trained_weights(str(native), use_ema, "tiny"), str(native))
        state = loaded.transformer.state_dict()
        assert all(torch.equal(state[n], source[n]) for n in source)
    # The diffusers export loads as a folder too.
    exported = load_post_trained_weights(str(out / "transformer"), False, "tiny")  # bf16, the default export
    assert all(
        torch.equal(exported.state_dict()[n], p.to(torch.bfloat16).float()) for n, p in trainer.trainable.items()
    )


def test_lora_adapter_loads(pipe, trained):
    out, trainer = trained["lora"]
    base = _generate(pipe, image=_image(), output_type="latent")
    with_lora = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    with_lora.load_lora_weights(str(out / "lora"))
    state = with_lora.transformer.state_dict()
    trained_state = trainer._unwrapped().state_dict()
    loaded_a = next(k for k in state if k.startswith("transformer_blocks.0.attn1.to_q.lora_A."))
    assert torch.equal(state[loaded_a], trained_state["transformer_blocks.0.attn1.to_q.lora_A.default.weight"])
    assert not torch.equal(_generate(with_lora, image=_image(), output_type="latent"), base)


def test_wrong_size_and_missing_checkpoints_are_refused(tmp_path):
    wide = save_tiny_pretrained(tmp_path / "wide")
    from diffusers import CosmosTransformer3DModel

    config = dict(CosmosTransformer3DModel.load_config(wide / "transformer"))
    config.update(num_attention_heads=3)
    other = CosmosTransformer3DModel.from_config(config)
    torch.save(to_native_state_dict(other.state_dict(), other.config), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="different model size"):
        load_post_trained_weights(str(tmp_path / "other.pt"), False, "tiny")
    tiny_native = to_native_state_dict(
        CosmosTransformer3DModel.from_pretrained(wide / "transformer").state_dict(), other.config
    )
    torch.save(tiny_native, tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="different model size"):
        load_post_trained_weights(str(tmp_path / "tiny.pt"), False, "2B")
    with pytest.raises(ValueError, match="no EMA weights"):
        load_post_trained_weights(str(tmp_path / "tiny.pt"), True, "tiny")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_post_trained_weights(str(tmp_path / "missing.pt"), False, "tiny")


# ---------------------------------------------------------------- the CLI


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO / "infer_video2world.py"), *args], cwd=cwd, capture_output=True, text=True
    )


def test_cli_writes_a_playable_mp4(trained, tmp_path):
    out, _ = trained["full"]
    _image(size=(300, 200)).save(tmp_path / "in.png")
    result = _cli(
        "--model_size",
        "tiny",
        "--dit_path",
        str(out / "checkpoints" / "model" / "iter_000000003.pt"),
        "--input_path",
        str(tmp_path / "in.png"),
        "--prompt",
        PROMPT,
        "--save_path",
        str(tmp_path / "out.mp4"),
        "--disable_guardrail",
        "--num_inference_steps",
        "4",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reader = decord.VideoReader(str(tmp_path / "out.mp4"))
    assert len(reader) == TINY.num_frames and reader[0].shape == (TINY.height, TINY.width, 3)
    assert reader.get_avg_fps() == 16
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_refuses_bad_input_before_loading_models(tmp_path, monkeypatch):
    from cosmos_v2w_diffusers.generation import runner

    def no_models(*args, **kwargs):
        raise AssertionError("models were loaded before the input was checked")

    monkeypatch.setattr(runner, "build_pipeline", no_models)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    _image().save(tmp_path / "ok.png")
    common = [
        "--model_size",
        "tiny",
        "--prompt",
        PROMPT,
        "--disable_guardrail",
        "--save_path",
        str(tmp_path / "o.mp4"),
    ]
    cases = [
        (["--input_path", str(tmp_path / "notes.txt")], ValueError, "unsupported file type"),
        (["--input_path", str(tmp_path / "broken.png")], ValueError, "cannot be read as an image"),
        (["--input_path", str(tmp_path / "missing.png")], FileNotFoundError, "does not exist"),
        (["--input_path", str(tmp_path / "ok.png"), "--height", "50"], ValueError, "multiples of 16"),
        (["--input_path", str(tmp_path / "ok.png"), "--num_frames", "20"], ValueError, "4k\\+1"),
    ]
    for extra, error, match in cases:
        with pytest.raises(error, match=match):
            infer_cli.main(common + extra)
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runner.build_pipeline(infer_flags.parse_args(common + ["--dit_path", str(tmp_path / "nope.pt")]))
    # The script turns these into a one-line error and a non-zero exit (in this process: `cli_error` runs the
    # script's `__main__` as `python infer_video2world.py` does; test_cli_writes_a_playable_mp4 runs it apart).
    message = cli_error(monkeypatch, "infer_video2world.py", *common, "--input_path", str(tmp_path / "notes.txt"))
    assert message.startswith("error: --input_path") and "unsupported file type" in message


def test_pipeline_round_trips_through_save_pretrained(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    reloaded = CosmosVideo2WorldPipeline.from_pretrained(str(tmp_path / "saved"), disable_guardrail=True)
    assert isinstance(reloaded.scheduler, CosmosMultistepScheduler)
    a = _generate(pipe, image=_image(), output_type="pt")
    assert a.shape == (1, TINY.num_frames, 3, TINY.height, TINY.width)
    assert torch.equal(a, _generate(reloaded, image=_image(), output_type="pt"))


def test_cli_batch_input_json_writes_every_video(tmp_path, monkeypatch):
    import json
    import os

    from cosmos_v2w_diffusers.generation import runner

    # Sampling configures the CUDA allocator as training does (a 2B generation capped at 15 GiB ran out of memory in
    # the VAE decode with 3.1 GiB reserved but free; with expandable segments it peaked at 13.0 GiB).
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)

    _image(seed=1).save(tmp_path / "a.png")
    frames = [np.asarray(_image(seed=i)) for i in range(9)]
    from diffusers.utils import export_to_video

    export_to_video([f / 255.0 for f in frames], str(tmp_path / "b.mp4"), fps=16)
    jobs = [
        {"prompt": PROMPT, "input_path": str(tmp_path / "a.png"), "save_path": str(tmp_path / "out" / "a.mp4")},
        {
            "prompt": "Another prompt.",
            "input_video": str(tmp_path / "b.mp4"),
            "output_video": str(tmp_path / "out" / "b.mp4"),
        },
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    written = infer_cli.main(
        [
            "--model_size",
            "tiny",
            "--batch_input_json",
            str(tmp_path / "jobs.json"),
            "--disable_guardrail",
            "--num_inference_steps",
            "2",
            "--num_conditional_frames",
            "5",
        ]
    )
    assert written == [tmp_path / "out" / "a.mp4", tmp_path / "out" / "b.mp4"]
    for path in written:
        assert len(decord.VideoReader(str(path))) == TINY.num_frames
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")  # the user's own setting is kept
    runner.set_allocator_defaults()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:64"


def test_group_offload_flag_streams_the_transformer_and_changes_no_result():
    """`--group_offload` (diffusers' group offloading, for 14B on a 30 GB card) hooks the transformer's blocks and
    samples what the plain pipeline samples (on the CPU the blocks stay where they are; the copies are on the GPU)."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    from cosmos_v2w_diffusers.cli.infer_flags import parse_args
    from cosmos_v2w_diffusers.generation import runner

    flags = ["--model_size", "tiny", "--disable_guardrail", "--prompt", PROMPT]
    plain, offloaded = (runner.build_pipeline(parse_args(flags + extra)) for extra in ([], ["--group_offload"]))
    assert _is_group_offload_enabled(offloaded.transformer) and not _is_group_offload_enabled(plain.transformer)
    torch.testing.assert_close(
        _generate(offloaded, image=_image(), output_type="pt"), _generate(plain, image=_image(), output_type="pt")
    )


# ---------------------------------------------------------------- what a diffusers user expects


def test_a_saved_scheduler_and_its_config_survive_reloading_and_sampling(pipe, tmp_path):
    custom = CosmosVideo2WorldPipeline.from_pretrained(
        str(tiny_pretrained_path()), disable_guardrail=True, scheduler=CosmosMultistepScheduler(sigma_max=60.0)
    )
    custom.save_pretrained(tmp_path / "cosmos")
    reloaded = CosmosVideo2WorldPipeline.from_pretrained(str(tmp_path / "cosmos"), disable_guardrail=True)
    assert isinstance(reloaded.scheduler, CosmosMultistepScheduler) and reloaded.scheduler.config.sigma_max == 60.0

    euler = CosmosVideo2WorldPipeline.from_pretrained(
        str(tiny_pretrained_path()),
        disable_guardrail=True,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True, shift=2.0),
    )
    before = dict(euler.scheduler.config)
    _generate(euler, image=_image(), output_type="latent", num_inference_steps=3)
    assert dict(euler.scheduler.config) == before, "sampling changed the user's scheduler config"
    euler.save_pretrained(tmp_path / "euler")
    again = CosmosVideo2WorldPipeline.from_pretrained(str(tmp_path / "euler"), disable_guardrail=True)
    assert isinstance(again.scheduler, FlowMatchEulerDiscreteScheduler) and again.scheduler.config.shift == 2.0
    # NVIDIA's repos (saved as diffusers' Cosmos2VideoToWorldPipeline with Euler) still get NVIDIA's sampler.
    assert isinstance(pipe.scheduler, CosmosMultistepScheduler)


def test_num_videos_per_prompt_and_callback_on_step_end(pipe):
    seen = []

    def callback(pipeline, i, t, tensors):
        seen.append((i, tuple(tensors["latents"].shape), tuple(tensors["x0"].shape)))
        return {"latents": tensors["latents"] * 0} if i == 2 else {}

    videos = _generate(
        pipe,
        image=_image(),
        output_type="latent",
        num_inference_steps=4,
        num_videos_per_prompt=2,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=("latents", "x0"),
    )
    assert videos.shape[0] == 2 and not torch.equal(videos[0], videos[1])  # each from its own noise
    assert [i for i, _, _ in seen] == [0, 1, 2, 3] and all(s[0] == 2 for _, s, _ in seen)
    untouched = _generate(pipe, image=_image(), output_type="latent", num_inference_steps=4, num_videos_per_prompt=2)
    assert not torch.equal(videos, untouched), "the latents the callback returned were used"
    with pytest.raises(ValueError, match="num_videos_per_prompt"):
        _generate(pipe, image=_image(), num_videos_per_prompt=0)


def test_the_pipeline_speaks_diffusers_encode_prompt_interrupt_and_refuses_foreign_schedulers(pipe):
    from diffusers import DPMSolverMultistepScheduler

    text, negative = pipe.encode_prompt("A video of sks teal robot.", num_videos_per_prompt=2)
    assert text.shape == negative.shape == (2, 512, TINY.text_embed_dim)
    assert pipe.encode_prompt("a", do_classifier_free_guidance=False)[1] is None
    seen = []

    def stop_after_two(pipe, i, t, tensors):
        seen.append(sorted(tensors))
        pipe._interrupt = i == 1
        return {}

    _generate(
        pipe,
        image=PIL.Image.new("RGB", (112, 64)),
        prompt="a",
        guidance_scale=3.0,
        callback_on_step_end=stop_after_two,
        callback_on_step_end_tensor_inputs=("latents", "prompt_embeds"),
        output_type="latent",
    )
    assert len(seen) == 2 and seen[0] == ["latents", "prompt_embeds"]
    assert (pipe.guidance_scale, pipe.num_timesteps, pipe.interrupt) == (3.0, 6, True)
    scheduler = pipe.scheduler
    pipe.scheduler = DPMSolverMultistepScheduler()
    try:
        with pytest.raises(ValueError, match="DPMSolverMultistepScheduler cannot drive this pipeline"):
            _generate(
                pipe, image=PIL.Image.new("RGB", (112, 64)), prompt="a", num_inference_steps=2, output_type="latent"
            )
    finally:
        pipe.scheduler = scheduler


@pytest.mark.parametrize("diffusers_compat", [False, True])
def test_a_guidance_scale_of_1_or_less_means_no_guidance_as_in_diffusers(pipe, diffusers_compat):
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        outputs = {}
        for scale in (0.0, 1.0, 3.0):
            calls.clear()
            outputs[scale] = _generate(
                pipe,
                image=_image(),
                output_type="latent",
                num_inference_steps=3,
                guidance_scale=scale,
                diffusers_compat=diffusers_compat,
            )
            outputs[scale, "calls"] = len(calls)
    finally:
        hook.remove()
    steps = 3 + (not diffusers_compat)  # NVIDIA's sampler evaluates one more x0 at the end
    assert outputs[0.0, "calls"] == outputs[1.0, "calls"] == steps and outputs[3.0, "calls"] == 2 * steps
    assert torch.equal(outputs[0.0], outputs[1.0]) and not torch.equal(outputs[1.0], outputs[3.0])

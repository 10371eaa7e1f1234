"""Few-step distillation (`--distill_steps`): the student's sampler, the DMD2 updates, a tiny distillation end to
end (checkpoint, exact resume, exports, generation), and every refusal before models load."""

import dataclasses
import json

import pytest
import torch
from conftest import PROMPT, cli_error, tiny_config, train_to_the_end

from cosmos_v2w_diffusers.cli.infer_flags import parse_args
from cosmos_v2w_diffusers.generation.pipeline import CosmosVideo2WorldPipeline
from cosmos_v2w_diffusers.generation.runner import student_steps
from cosmos_v2w_diffusers.generation.scheduler_few_step import CosmosFewStepScheduler, few_step_sigmas
from cosmos_v2w_diffusers.models.checkpoint_format import distilled_steps_of, load_native_checkpoint
from cosmos_v2w_diffusers.models.components import build_transformer, tiny_pretrained_path
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.distill import (
    DMD2,
    FAKE_SCORE,
    STUDENT,
    add_distillation_adapters,
    merged_student,
    use_adapter,
)
from cosmos_v2w_diffusers.training.objective import draw_training_randomness
from cosmos_v2w_diffusers.training.run_config import card_facts, resolve
from cosmos_v2w_diffusers.training.sections import DistillConfig
from cosmos_v2w_diffusers.training.trainer import Trainer

TEACHER_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def test_the_student_sampler_uses_nvidias_levels_and_renoises_with_the_initial_noise():
    # NVIDIA's 4-step DMD2 times pi/2, atan(15), atan(5), atan(5/3) as EDM sigmas (pi/2: the teacher's sigma_max).
    assert torch.allclose(few_step_sigmas(4), torch.tensor([80.0, 15.0, 5.0, 5 / 3, 0.0], dtype=torch.float64))
    assert few_step_sigmas(1).tolist() == [80.0, 0.0]
    with pytest.raises(ValueError, match="1 to 8 steps"):
        few_step_sigmas(9)
    scheduler = CosmosFewStepScheduler(4)
    scheduler.set_timesteps()
    assert len(scheduler) == 4
    noise = torch.randn(1, 16, 3, 4, 4)
    x, seen = noise * 80.0, []
    for i, sigma in enumerate(scheduler.timesteps):
        x0 = torch.full_like(x, float(i))  # a model whose x0 is the step's number
        seen.append(x.clone())
        x = scheduler.step(x0, sigma, x).prev_sample
    for i in range(1, 4):  # each input: the last x0 noised to this level with the noise the sampling started from
        assert torch.allclose(seen[i], (i - 1) + float(scheduler.sigmas[i]) * noise, atol=1e-5)
    assert torch.equal(x, torch.full_like(x, 3.0))  # the last step returns the x0 itself


def test_a_student_pipeline_runs_its_steps_without_guidance_or_a_final_evaluation(monkeypatch):
    pipe = CosmosVideo2WorldPipeline.from_pretrained(
        str(tiny_pretrained_path()), scheduler=CosmosFewStepScheduler(3), disable_guardrail=True
    )
    pipe.set_progress_bar_config(disable=True)
    calls = []
    forward = pipe.transformer.forward
    monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    frames = pipe(
        image=torch.zeros(3, 64, 112), prompt=PROMPT, height=64, width=112, num_frames=17, output_type="pt"
    ).frames
    assert len(calls) == 3 and pipe.guidance_scale == 1.0 and frames.shape == (1, 17, 3, 64, 112)


def test_the_merged_student_is_the_adapted_network():
    torch.manual_seed(0)
    transformer = build_transformer(get_preset("tiny"))
    add_distillation_adapters(transformer, 4, 8, TEACHER_LORA_TARGETS, seed=0)
    trainable = {n for n, p in transformer.named_parameters() if p.requires_grad}
    assert trainable and all((".student." in n) != (".fake_score." in n) for n in trainable)
    with torch.no_grad():  # B = 0 at the start: make the student differ from the teacher
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    inputs = dict(
        hidden_states=torch.randn(1, 17, 2, 16, 28),
        timestep=torch.full((1, 1, 2, 1, 1), 0.5),
        encoder_hidden_states=torch.randn(1, 512, 32),
        padding_mask=torch.zeros(1, 1, 16, 28),
        return_dict=False,
    )
    use_adapter(transformer, STUDENT)
    with torch.no_grad():
        student = transformer(**inputs)[0]
        use_adapter(transformer, None)
        teacher = transformer(**inputs)[0]
    plain = build_transformer(get_preset("tiny"))
    plain.load_state_dict(merged_student(transformer.state_dict(), scale=8 / 4))
    with torch.no_grad():
        merged = plain(**inputs)[0]
    assert not torch.allclose(student, teacher, atol=1e-3)
    assert torch.allclose(merged, student, atol=1e-4)


def test_each_update_trains_its_own_adapter():
    """A student step's gradients reach the student's adapter alone, a critic step's the fake score's; at the start
    (student = critic = teacher) the distribution-matching gradient is zero without guidance, and with guidance it
    is the guidance's own pull."""
    transformer = build_transformer(get_preset("tiny"))
    add_distillation_adapters(transformer, 4, 4, TEACHER_LORA_TARGETS, seed=0)
    config = DistillConfig(distill_steps=2, guidance=3.0, student_update_freq=2)
    dmd = DMD2(config, sigma_max=80.0)
    latents, text = torch.randn(1, 16, 5, 16, 28), torch.randn(1, 512, 32)
    generator = torch.Generator().manual_seed(0)
    batch = dmd.draw(latents, text, draw_training_randomness(tuple(latents.shape), generator), generator)

    def grads_after(step: int) -> set[str]:
        transformer.zero_grad(set_to_none=True)
        loss = dmd.loss(step, transformer, transformer, batch)
        loss.backward()
        return {n.split(".lora_")[1].split(".")[1] for n, p in transformer.named_parameters() if p.grad is not None}

    assert dmd.updates_student(0) and not dmd.updates_student(1)
    assert grads_after(1) == {FAKE_SCORE}
    unguided = DMD2(dataclasses.replace(config, guidance=1.0), sigma_max=80.0)
    assert unguided.student_loss(transformer, transformer, batch).item() == 0.0
    assert dmd.student_loss(transformer, transformer, batch).item() > 0
    with torch.no_grad():  # once the critic differs from the teacher, the student gets a gradient
        for name, param in transformer.named_parameters():
            if "lora_B" in name and FAKE_SCORE in name:
                param.normal_(0, 0.1)
    assert grads_after(0) == {STUDENT}
    assert unguided.student_loss(transformer, transformer, batch).item() > 0


def _distil(dataset, output_dir, **overrides):
    settings = dict(distill_steps=2, guidance=3.0, max_iter=4, lr_decay_steps=4, save_iter=2, student_update_freq=2)
    return tiny_config(dataset, output_dir, **{**settings, **overrides})


def test_a_tiny_distillation_checkpoints_a_plain_student_resumes_exactly_and_generates_in_its_steps(
    bikes_dataset, tmp_path
):
    straight = train_to_the_end(_distil(bikes_dataset, tmp_path / "straight"))
    assert straight.config.train_architecture == "lora" and straight.config.output_dir == str(tmp_path / "straight")
    half = train_to_the_end(_distil(bikes_dataset, tmp_path / "halves", max_iter=2))
    resumed = Trainer(_distil(bikes_dataset, tmp_path / "halves"))
    assert resumed.start_iter == 2
    resumed.train()
    resumed.close()
    assert resumed.history == straight.history[2:] and half.history == straight.history[:2]
    for name, param in resumed.trainable.items():
        assert torch.equal(param, straight.trainable[name]), name

    # The model file holds the student as a plain Video2World net (NVIDIA's keys, no adapter), live and EMA.
    model_file = tmp_path / "straight" / "checkpoints" / "model" / "iter_000000004.pt"
    for ema in (False, True):
        weights = load_native_checkpoint(model_file, use_ema=ema)
        assert not any("lora" in k or "base_layer" in k for k in weights)
        build_transformer(get_preset("tiny")).load_state_dict(weights)  # strict: every tensor of the net
    assert distilled_steps_of(model_file) == 2
    assert distilled_steps_of(tmp_path / "straight" / "pipeline") == 2
    assert distilled_steps_of(tmp_path / "straight" / "transformer") == 2
    assert distilled_steps_of(tiny_pretrained_path()) is None

    # No export file holds the base's local folder (diffusers' `_name_or_path`): exports go to the Hub.
    base = str(tiny_pretrained_path()).encode()
    for folder in ("pipeline", "transformer", "transformer_ema"):
        files = [f for f in (tmp_path / "straight" / folder).rglob("*") if f.is_file()]
        assert files and not [f for f in files if base in f.read_bytes()], folder

    # The exported pipeline samples with the student's sampler by default; stock loading keeps working.
    pipe = CosmosVideo2WorldPipeline.from_pretrained(str(tmp_path / "straight" / "pipeline"), disable_guardrail=True)
    assert isinstance(pipe.scheduler, CosmosFewStepScheduler) and pipe.scheduler.config.num_train_steps == 2
    index = json.loads((tmp_path / "straight" / "pipeline" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    video = tmp_path / "student.mp4"
    from cosmos_v2w_diffusers.cli.infer import main as infer

    image = tmp_path / "first.png"
    import PIL.Image

    PIL.Image.new("RGB", (112, 64), (0, 128, 128)).save(image)
    written = infer(
        [
            "--model_size", "tiny", "--dit_path", str(model_file), "--load_ema", "--input_path", str(image),
            "--prompt", PROMPT, "--disable_guardrail", "--save_path", str(video),
        ]
    )  # fmt: skip
    assert written == [video] and video.stat().st_size > 0


def test_a_resume_with_another_teacher_is_refused(bikes_dataset, tmp_path):
    train_to_the_end(_distil(bikes_dataset, tmp_path / "run", max_iter=2))
    with pytest.raises(ValueError, match="--guidance 3.0 -> 5.0"):
        Trainer(_distil(bikes_dataset, tmp_path / "run", guidance=5.0))
    with pytest.raises(ValueError, match="--distill_steps 2 -> 4"):
        Trainer(_distil(bikes_dataset, tmp_path / "run", distill_steps=4))


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--distill_steps", "0"], "--distill_steps must be at least 1"),
        (["--distill_steps", "99"], "--distill_steps must be at most 8"),
        (["--distill_steps", "4", "--guidance", "-1"], "--guidance must be at least 0"),
        (["--lora_path", "x"], "--lora_path is the teacher of a distillation"),
        (["--distill_steps", "4", "--base_precision", "fp8"], "the base is the teacher"),
    ],
)
def test_bad_distillation_flags_are_one_line_before_any_model_loads(monkeypatch, flags, message):
    assert message in cli_error(monkeypatch, "train_video2world.py", "--model", "tiny", *flags)


def test_a_teacher_that_does_not_fit_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    lora = tmp_path / "lora.safetensors"  # an adapter of a larger model's layers (2048 wide)
    save_file({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 2048)}, lora)
    message = cli_error(
        monkeypatch, "train_video2world.py", "--model", "tiny", "--distill_steps", "4", "--lora_path", str(lora)
    )
    assert "is for another model" in message
    big = tmp_path / "checkpoints" / "model" / "iter_000000001.pt"
    big.parent.mkdir(parents=True)
    torch.save({"net.x_embedder.proj.1.weight": torch.zeros(2048, 68)}, big)
    message = cli_error(
        monkeypatch, "train_video2world.py", "--model", "tiny", "--distill_steps", "4", "--dit_path", str(big)
    )
    assert "different model size" in message


def test_a_student_as_teacher_and_a_student_with_the_step_cache_are_refused(tmp_path, monkeypatch):
    model_file = tmp_path / "checkpoints" / "model" / "iter_000000010.pt"
    trainer_file = tmp_path / "checkpoints" / "trainer" / "iter_000000010.pt"
    for file in (model_file, trainer_file):
        file.parent.mkdir(parents=True)
    torch.save({"net.x": torch.zeros(1)}, model_file)
    torch.save({"iteration": 10, "config": json.dumps({"distill_steps": 4})}, trainer_file)
    message = cli_error(
        monkeypatch, "train_video2world.py", "--model", "tiny", "--distill_steps", "2", "--dit_path", str(model_file)
    )
    assert "already a 4-step student" in message
    for cache in ("0.1", "auto"):
        args = parse_args(["--model_size", "tiny", "--dit_path", str(model_file), "--cache", cache])
        with pytest.raises(ValueError, match="drop --cache"):
            student_steps(args)
    assert student_steps(parse_args(["--model_size", "tiny", "--dit_path", str(model_file)])) == 4
    assert resolve(TrainConfig.from_flags(model="tiny", distill_steps=2)).output_dir.endswith(
        "video2world_distill/tiny_demo"
    )


def test_cache_auto_calibrates_on_the_first_input_stores_the_choice_and_the_next_run_reuses_it(tmp_path, caplog):
    import logging
    import shutil

    from cosmos_v2w_diffusers.cli.infer import main as infer
    from cosmos_v2w_diffusers.generation.step_cache import CALIBRATION_THRESHOLDS, STEP_CACHE_FILE

    weights = tmp_path / "transformer"  # a post-trained transformer folder, as --dit_path takes it
    shutil.copytree(tiny_pretrained_path() / "transformer", weights)
    image = tmp_path / "first.png"
    import PIL.Image

    PIL.Image.new("RGB", (112, 64), (0, 128, 128)).save(image)
    flags = [
        "--model_size",
        "tiny",
        "--dit_path",
        str(weights),
        "--input_path",
        str(image),
        "--prompt",
        PROMPT,
        "--disable_guardrail",
        "--num_inference_steps",
        "8",
        "--guidance",
        "1",
        "--cache",
        "auto",
    ]  # fmt: skip (without guidance: one forward a step, half the calibration's time)
    with caplog.at_level(logging.INFO, logger="cosmos_v2w_diffusers"):
        infer([*flags, "--save_path", str(tmp_path / "a.mp4")])
    stored = json.loads((weights / STEP_CACHE_FILE).read_text())
    assert stored["threshold"] in (*CALIBRATION_THRESHOLDS, None) and stored["settings"]["num_inference_steps"] == 8
    assert stored["threshold"] is None or stored["psnr_db"] >= 33.0  # the 30 dB bar and its margin
    assert any("--cache auto, calibrated on" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cosmos_v2w_diffusers"):
        infer([*flags, "--save_path", str(tmp_path / "b.mp4")])
    assert not any("calibrated on" in r.getMessage() for r in caplog.records)
    assert any("(stored in" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cosmos_v2w_diffusers"):  # other settings: calibrated again
        infer([*flags, "--cache_min_psnr", "40", "--save_path", str(tmp_path / "c.mp4")])
    assert any("calibrated on" in r.getMessage() for r in caplog.records)


def test_a_students_model_card_says_how_it_samples_and_keeps_the_teachers_paths_out(tmp_path):
    from cosmos_v2w_diffusers.training.hub import model_card

    config = resolve(TrainConfig.from_flags(model="tiny", distill_steps=4, guidance=3.0))
    command = ["train_video2world.py", "--distill_steps", "4", "--lora_path", "/home/me/teacher/lora"]
    card = str(model_card(card_facts(config), None, command, "me/student"))
    assert "4-step student" in card and "its 4-step sampler" in card and "cannot express the student's sampler" in card
    assert "load_lora_weights" not in card and "/home/me" not in card and "| `distill_steps` | 4 |" in card


def test_a_distillation_runs_under_ddp_and_fsdp():  # (DeepSpeed: refused, a row of test_training's REFUSALS)
    from cosmos_v2w_diffusers.parallel.parallel_dims import ParallelDims
    from cosmos_v2w_diffusers.training.run_config import validate

    run = resolve(TrainConfig.from_flags(model="tiny", distill_steps=4))
    for engine in ("ddp", "fsdp"):
        validate(run, ParallelDims(2, 0, 1, engine))


@pytest.mark.slow  # 25 s on 2 cores; the one-process distillation above is in `make test`
def test_a_distillation_runs_under_ddp_on_two_processes(tmp_path):
    from conftest import launch_training

    from cosmos_v2w_diffusers.training.checkpoint import CheckpointDir

    launch_training(
        tmp_path / "run",
        *("--distill_steps", "2", "--max_iter", "4", "--save_iter", "2", "--student_update_freq", "2"),
        launcher=("--num_processes", "2", "--multi_gpu", "--main_process_port", "29561"),
    )
    assert CheckpointDir(tmp_path / "run").latest_iteration() == 4
    assert distilled_steps_of(tmp_path / "run" / "pipeline") == 2


def test_a_distillation_pushes_its_student_pipeline_to_the_hub(bikes_dataset, tmp_path, monkeypatch):
    """The real huggingface_hub client builds the commits; only the two network calls are replaced."""
    from huggingface_hub import HfApi, RepoUrl

    commits = []
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/me/{repo_id}")
    )
    monkeypatch.setattr(
        HfApi,
        "create_commit",
        lambda self, repo_id, operations, **kw: commits.append([o.path_in_repo for o in operations]),
    )
    trainer = Trainer(_distil(bikes_dataset, tmp_path / "student", max_iter=2, push_to_hub=True))
    trainer.uploader.busy = lambda: trainer.uploader.wait() or False  # deterministic order for the test
    trainer.train()
    trainer.close()
    pushed = set().union(*commits)
    assert {"README.md", "scheduler_nvidia/scheduler_config.json", "transformer/config.json"} <= pushed
    assert not any("lora" in path for path in pushed)
    assert "2-step student" in (tmp_path / "student" / "pipeline" / "README.md").read_text()


# 14 s: a process of its own for bf16 autocast (accelerate keeps a process's first precision); make test keeps the
# distillation end to end in fp32 (test_a_tiny_distillation_checkpoints_a_plain_student_...).
@pytest.mark.slow
def test_a_bf16_distillation_with_checkpointing_trains_the_student_through_its_simulated_steps(tmp_path):
    """Under bf16 autocast, the forwards without gradients (the student's simulated steps) must not leave cast
    weights in autocast's cache for the forward with them: the student would get no gradient, and the checkpoint's
    recompute would not match (a CheckpointError on the first critic step, found on an H200). A process of its own:
    accelerate's state keeps the precision of the first run in a process."""
    from conftest import launch_training

    launch_training(
        tmp_path / "run",
        *("--distill_steps", "4", "--guidance", "3", "--max_iter", "2", "--save_iter", "2", "--no-ema"),
        *("--student_update_freq", "2", "--activation_checkpointing", "selective"),
        *("--selective_checkpointing_blocks", "2", "--mixed_precision", "bf16"),
        launcher=None,
    )  # step 0 updates the student, step 1 the critic
    masters = torch.load(tmp_path / "run" / "checkpoints" / "optim" / "iter_000000002.pt", weights_only=True)
    student = {n: t for n, t in masters["master_weights"].items() if ".student." in n and "lora_B" in n}
    assert student and any(t.abs().sum() > 0 for t in student.values())  # B starts at 0: the student moved


@pytest.mark.parametrize("stored", ["x", 99, 0, 4.5])
def test_a_received_students_stored_step_count_is_bounded(tmp_path, stored):
    model_file = tmp_path / "checkpoints" / "model" / "iter_000000001.pt"
    trainer_file = tmp_path / "checkpoints" / "trainer" / "iter_000000001.pt"
    for file in (model_file, trainer_file):
        file.parent.mkdir(parents=True)
    torch.save({"net.x": torch.zeros(1)}, model_file)
    torch.save({"iteration": 1, "config": json.dumps({"distill_steps": stored})}, trainer_file)
    with pytest.raises(ValueError, match="not a whole number from 1 to 8"):
        distilled_steps_of(model_file)
    sampler = tmp_path / "pipeline" / "scheduler_nvidia"
    sampler.mkdir(parents=True)
    (sampler / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "CosmosFewStepScheduler", "num_train_steps": stored})
    )
    with pytest.raises(ValueError, match="not a whole number from 1 to 8"):
        distilled_steps_of(tmp_path / "pipeline")


def test_a_stored_cache_choice_that_cannot_be_right_is_calibrated_again(tmp_path):
    """`--cache auto`'s record is a received file like any: unreadable, out of bounds, for other settings, a FIFO
    or a link where it should be: each is ignored (the run calibrates again and writes its own, replacing it)."""
    import os

    from cosmos_v2w_diffusers.generation.step_cache import Calibration, read_calibration, write_calibration

    settings = {"size": [17, 64, 112]}
    path = tmp_path / "step_cache.json"
    records = [
        {"settings": settings, "threshold": 5, "psnr_db": 40, "skipped_share": 1},  # no threshold is above 1
        {"settings": {"size": [9, 64, 112]}, "threshold": 0.1, "psnr_db": 40, "skipped_share": 0.3},  # other settings
    ]
    for text in ["not json", "[]", *map(json.dumps, records)]:
        path.write_text(text)
        assert read_calibration(path, settings) is None, text
    path.unlink()
    os.mkfifo(path)
    assert read_calibration(path, settings) is None  # read without blocking, and refused
    write_calibration(path, Calibration(0.1, 35.0, 0.4, settings))  # the run's own record replaces it
    assert read_calibration(path, settings) == Calibration(0.1, 35.0, 0.4, settings)
    user_file = tmp_path / "elsewhere.json"
    user_file.write_text("the user's")
    path.unlink()
    path.symlink_to(user_file)
    write_calibration(path, Calibration(None, float("inf"), 0.0, settings))
    assert user_file.read_text() == "the user's" and not path.is_symlink()  # the link is replaced, not followed
    assert read_calibration(path, settings) == Calibration(None, float("inf"), 0.0, settings)

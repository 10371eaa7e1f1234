"""Training on CPU with the tiny preset: steps, checkpoints, resume, LoRA, formats."""

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import before_each_forward, tiny_config, tiny_run_flags, torchrun
from diffusers import CosmosTransformer3DModel
from diffusers.loaders.single_file_utils import (
    convert_cosmos_transformer_checkpoint_to_diffusers,
)

from cosmos_v2w_diffusers.cli.train import parse_train_flags, train_parser
from cosmos_v2w_diffusers.models.components import load_transformer
from cosmos_v2w_diffusers.models.latents import encode_video
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.training.checkpoint import CheckpointDir
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.model import apply_lora
from cosmos_v2w_diffusers.training.objective import draw_training_randomness, video2world_loss
from cosmos_v2w_diffusers.training.optim import PowerEMA, linear_decay_factor
from cosmos_v2w_diffusers.training.run_config import resolve
from cosmos_v2w_diffusers.training.sections.optim import edm2_ema_gamma
from cosmos_v2w_diffusers.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def test_recipe_defaults_per_preset():
    two = resolve(TrainConfig.from_flags(model="2B", dataset_path="datasets/cosmos_nemo_assets"))
    assert (two.learning_rate, two.weight_decay, two.lr_f_max) == (2**-14.5, 0.1, 0.6)
    assert (two.max_iter, two.save_iter, two.lr_decay_steps, two.num_frames, two.height, two.width) == (
        1000,
        500,
        1000,
        93,
        704,
        1280,
    )
    assert (two.adam_beta1, two.adam_beta2, two.adam_epsilon, two.max_grad_norm) == (0.9, 0.99, 1e-8, 1.0)
    assert two.ema and two.output_dir == "checkpoints/posttraining/video2world/2b_cosmos_nemo_assets"
    fourteen = resolve(TrainConfig.from_flags(model="14B", train_architecture="lora", dataset_path="d/x"))
    assert (fourteen.weight_decay, fourteen.lr_f_max, fourteen.lora_rank, fourteen.lora_alpha) == (0.2, 0.25, 32, 32)
    assert fourteen.save_iter == 200 and fourteen.ema  # NVIDIA's LoRA recipe keeps an EMA of the adapter
    assert (two.activation_checkpointing, fourteen.activation_checkpointing) == ("selective", "selective")
    assert resolve(TrainConfig.from_flags(model="2B", low_vram=True)).activation_checkpointing == "full"
    with pytest.raises(ValueError, match="low_vram"):
        resolve(TrainConfig.from_flags(model="2B", low_vram=True, activation_checkpointing="selective"))
    # Device-dependent defaults are the plan's, not the config's: bf16 on a GPU only.
    from cosmos_v2w_diffusers.training.parallel import default_mixed_precision

    assert (default_mixed_precision(two.parallel, True), default_mixed_precision(two.parallel, False)) == (
        "bf16",
        "no",
    )
    assert two.mixed_precision is None and two.compile is None and two.ema_device is None
    # Resolved once, then frozen: nothing may change a field afterwards.
    with pytest.raises(dataclasses.FrozenInstanceError):
        two.learning_rate = 1.0
    assert fourteen.output_dir == "checkpoints/posttraining/video2world_lora/14b_x"
    with pytest.raises(ValueError, match="4k\\+1"):
        resolve(TrainConfig.from_flags(model="tiny", num_frames=18))
    # Every field is a flag.
    parsed = parse_train_flags(["--model", "tiny", "--lora_rank", "8", "--no-resume", "--learning_rate", "0.5"])
    assert (parsed.lora_rank, parsed.resume, parsed.learning_rate) == (8, False, 0.5)


def test_schedule_and_ema_formulas():
    assert linear_decay_factor(0, 0.6, 1000) == 0.6
    assert linear_decay_factor(500, 0.6, 1000) == pytest.approx(0.3)
    assert linear_decay_factor(1200, 0.6, 1000) == 0.0
    gamma = edm2_ema_gamma(0.1)
    assert gamma == pytest.approx(6.9372, abs=1e-4)
    assert gamma**3 + 7 * gamma**2 + (16 - 100) * gamma + (12 - 100) == pytest.approx(0, abs=1e-9)
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = PowerEMA({"w": w}, gamma, torch.float32)
    with torch.no_grad():
        w.fill_(5.0)
    ema.update(0)  # beta(0) = 0: copies
    assert torch.equal(ema.shadow["w"], torch.tensor([5.0, 5.0]))
    with torch.no_grad():
        w.fill_(1.0)
    ema.update(3)
    beta = (1 - 1 / 4) ** (gamma + 1)
    torch.testing.assert_close(ema.shadow["w"], torch.full((2,), beta * 5 + (1 - beta) * 1.0))


def _loss_on_fixed_draws(transformer, latents: torch.Tensor, text: torch.Tensor, draws: int = 16) -> float:
    """The training loss averaged over the same `draws` noise/sigma/conditioning draws, whatever the weights."""
    generator = torch.Generator().manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            d = draw_training_randomness(tuple(latents.shape), generator)
            total += video2world_loss(
                transformer, latents, d.noise, d.sigma, d.num_cond_frames, text, d.drop_text
            ).item()
    return total / draws


def test_loss_falls_on_one_real_clip(bikes_dataset, tmp_path):
    trainer = Trainer(tiny_config(bikes_dataset, tmp_path / "run", max_iter=20, save_iter=1000))
    sample = trainer.samples[0]
    latents = encode_video(trainer.vae, sample["video"][None])
    text = sample["t5_text_embeddings"][None]
    before = _loss_on_fixed_draws(trainer._unwrapped(), latents, text)
    losses = trainer.train()
    assert len(losses) == 20 and all(np.isfinite(losses))
    # The same draws before and after, so a trainer that does not learn stays at 1.0 of `before`. Measured on the
    # shipped base (trained on cartoon footage, meeting real footage here): 7.0% lower after 20 steps (9.2% after
    # 40, which `make test` no longer waits for).
    assert _loss_on_fixed_draws(trainer._unwrapped(), latents, text) < 0.95 * before


def test_checkpoint_layout_and_round_trip(bikes_dataset, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(bikes_dataset, out, max_iter=2, save_iter=1))
    trainer.train()
    root = out / "checkpoints"
    assert (root / "latest_checkpoint.txt").read_text() == "iter_000000002.pt\n"
    for part in ("model", "optim", "scheduler", "trainer"):
        assert (root / part / "iter_000000001.pt").is_file() and (root / part / "iter_000000002.pt").is_file()
    model = torch.load(root / "model" / "iter_000000002.pt", weights_only=True)
    assert torch.load(root / "trainer" / "iter_000000002.pt", weights_only=True)["iteration"] == 2
    assert {k.split(".")[0] for k in model} == {"net", "net_ema"}
    assert model["net.blocks.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert model["net_ema.blocks.0.self_attn.q_proj.weight"].dtype == torch.float32
    assert "net.pos_embedder.dim_spatial_range" in model and "net.x_embedder.proj.1.weight" in model

    # diffusers' own single-file converter maps our net.* keys exactly onto the transformer's state dict.
    live = trainer._unwrapped().state_dict()
    converted = convert_cosmos_transformer_checkpoint_to_diffusers(
        {k: v for k, v in model.items() if k.startswith("net.")}
    )
    assert set(converted) == set(live)
    assert all(torch.equal(converted[k], live[k].to(torch.bfloat16)) for k in live)
    # ... and diffusers' from_single_file recognises and loads the file as a Cosmos-Predict2 model.
    from cosmos_v2w_diffusers.models.components import tiny_pretrained_path

    single = CosmosTransformer3DModel.from_single_file(
        str(root / "model" / "iter_000000002.pt"),
        config=str(tiny_pretrained_path()),
        subfolder="transformer",
        dtype=torch.bfloat16,
    )
    assert all(torch.equal(single.state_dict()[k], live[k].to(torch.bfloat16)) for k in live)

    # Restoring it: tests/test_setup.py (the checkpointer and the train state alone), and a whole run resumed:
    # test_interrupted_run_resumes_exactly.


class _Crash(Exception):
    pass


def test_interrupted_run_resumes_exactly(bikes_dataset, tmp_path, monkeypatch):
    settings = dict(max_iter=4, save_iter=2, gradient_accumulation_steps=2)
    straight = Trainer(tiny_config(bikes_dataset, tmp_path / "straight", **settings))
    expected = straight.train()

    crashing = Trainer(tiny_config(bikes_dataset, tmp_path / "crashed", **settings))

    def crash(forward):
        if forward == 2 * 3:  # in step 4, after step 3: mid-way between the checkpoint at 2 and the next at 4
            raise _Crash

    with monkeypatch.context() as patch:
        before_each_forward(patch, crash)
        with pytest.raises(_Crash):
            crashing.train()
    assert CheckpointDir(tmp_path / "crashed").latest_iteration() == 2

    resumed = Trainer(tiny_config(bikes_dataset, tmp_path / "crashed", **settings))
    assert resumed.start_iter == 2
    assert resumed.train() == expected[2:]
    for name, p in resumed.trainable.items():
        assert torch.equal(p, straight.trainable[name]), name
    for part in ("model", "optim"):
        a = torch.load(tmp_path / "straight" / "checkpoints" / part / "iter_000000004.pt", weights_only=True)
        b = torch.load(tmp_path / "crashed" / "checkpoints" / part / "iter_000000004.pt", weights_only=True)
        if part == "optim":
            a, b = a["master_weights"], b["master_weights"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_save_keeps_the_previous_checkpoint(bikes_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(bikes_dataset, out, max_iter=2, save_iter=1))
    real_save = torch.save
    calls = []

    def flaky_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # the second checkpoint's optimizer file: as if the disk filled up
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="No space"):
        trainer.train()
    root = out / "checkpoints"
    assert (root / "latest_checkpoint.txt").read_text() == "iter_000000001.pt\n"
    assert CheckpointDir(out).latest_iteration() == 1
    assert not list(root.rglob("*.tmp")), "temp files are cleaned up"
    assert not (root / "optim" / "iter_000000002.pt").exists()


def test_lora_trains_only_the_adapter(bikes_dataset, tmp_path):
    base = load_transformer(get_preset("tiny")).state_dict()
    trainer = Trainer(
        tiny_config(bikes_dataset, tmp_path / "lora", train_architecture="lora", max_iter=3, save_iter=3)
    )
    targets = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
    expected = 0
    for name, module in load_transformer(get_preset("tiny")).named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(targets) and name.startswith("transformer_blocks"):
            expected += 4 * (module.in_features + module.out_features)  # rank 4 (tiny preset)
    assert sum(p.numel() for p in trainer.trainable.values()) == expected
    assert all("lora_" in n for n in trainer.trainable)
    before = {n: p.detach().clone() for n, p in trainer.trainable.items()}
    trainer.train()
    state = trainer._unwrapped().state_dict()
    for key, value in base.items():
        peft_key = key if key in state else key.replace(".weight", ".base_layer.weight")
        assert torch.equal(state[peft_key], value), key
    assert any(not torch.equal(p, before[n]) for n, p in trainer.trainable.items())
    # The adapter export is diffusers' LoRA format; the native checkpoint uses PEFT names under net.*.
    assert (tmp_path / "lora" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    model = torch.load(tmp_path / "lora" / "checkpoints" / "model" / "iter_000000003.pt", weights_only=True)
    assert "net.blocks.0.self_attn.q_proj.lora_A.default.weight" in model
    assert "net.blocks.0.self_attn.q_proj.base_layer.weight" in model
    # The adapter's fp32 EMA (NVIDIA's LoRA recipe keeps one) is saved as net_ema.* and exported beside it.
    assert model["net_ema.blocks.0.self_attn.q_proj.lora_A.default.weight"].dtype == torch.float32
    assert not any(k.startswith("net_ema.") and "base_layer" in k for k in model)
    assert (tmp_path / "lora" / "lora" / "pytorch_lora_weights_ema.safetensors").is_file()


def test_the_initial_lora_adapter_depends_on_the_seed_alone():
    """PEFT draws each pair's random half from the global RNG; the trainer seeds it from --seed, so two runs
    (or engines) with one seed start from one adapter, and the caller's random state is left as it was."""

    def adapter(seed: int) -> dict[str, torch.Tensor]:
        transformer = load_transformer(get_preset("tiny"))
        apply_lora(transformer, 4, 4, ["to_q"], seed)
        return {n: p.detach().clone() for n, p in transformer.named_parameters() if "lora_A" in n}

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = adapter(0)
    torch.rand(5)  # a different global state
    again, other = adapter(0), adapter(1)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in first)
    torch.manual_seed(123)
    adapter(0)
    assert torch.equal(torch.rand(3), expected_next)


def test_dit_path_initialises_from_a_native_checkpoint(bikes_dataset, tmp_path):
    first = Trainer(tiny_config(bikes_dataset, tmp_path / "a", max_iter=2, save_iter=2))
    first.train()
    native = tmp_path / "a" / "checkpoints" / "model" / "iter_000000002.pt"
    for use_ema in (False, True):
        second = Trainer(
            tiny_config(bikes_dataset, tmp_path / f"b{use_ema}", dit_path=str(native), load_ema=use_ema, max_iter=1)
        )
        source = first.ema.shadow if use_ema else {n: p.to(torch.bfloat16).float() for n, p in first.trainable.items()}
        for name, p in second.trainable.items():
            torch.testing.assert_close(p, source[name].float(), rtol=0, atol=0 if use_ema else 1e-2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer(tiny_config(bikes_dataset, tmp_path / "c", dit_path=str(tmp_path / "missing.pt")))


def test_push_to_hub_uploads_in_the_background_at_every_save_and_survives_failures(
    bikes_dataset, tmp_path, monkeypatch
):
    """The real huggingface_hub client builds the commits; only the two network calls are replaced."""
    from huggingface_hub import HfApi, RepoUrl

    commits, repos, failures = [], [], {1}

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        repos.append((repo_id, private))
        return RepoUrl(f"https://huggingface.co/someone/{repo_id}")

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        commits.append((repo_id, commit_message, sorted(op.path_in_repo for op in operations)))
        if len(commits) in failures:
            raise OSError("503 Service Unavailable")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    trainer = Trainer(
        tiny_config(
            bikes_dataset,
            tmp_path / "tiny_run",
            max_iter=3,
            save_iter=1,
            push_to_hub=True,
            hub_private=True,
            train_architecture="lora",
        )
    )
    trainer.uploader.busy = lambda: trainer.uploader.wait() or False  # deterministic order for the test
    losses = trainer.train()  # the first upload fails: training goes on, and the next save uploads again
    assert len(losses) == 3
    assert repos[0] == ("tiny_run", True)
    assert [message for _, message, _ in commits] == [f"Post-training: iteration {i}" for i in (1, 2, 3)]
    assert all(repo == "someone/tiny_run" for repo, _, _ in commits)
    assert commits[-1][2] == ["README.md", "pytorch_lora_weights.safetensors", "pytorch_lora_weights_ema.safetensors"]
    card = (tmp_path / "tiny_run" / "lora" / "README.md").read_text()
    assert "base_model" not in card.split("---")[1] or "tiny" in card  # the tiny preset has no Hub base
    assert all(tag in card for tag in ("cosmos", "video2world", "lora"))
    assert "| `learning_rate` |" in card and "## Command" in card


def test_a_failed_final_upload_fails_the_run_and_names_the_folder(bikes_dataset, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, RepoUrl

    from cosmos_v2w_diffusers.training.hub import HubUploadError

    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/someone/{repo_id}")
    )

    def failing_commit(self, repo_id, operations, commit_message, **kwargs):
        raise OSError("503 Service Unavailable")

    monkeypatch.setattr(HfApi, "create_commit", failing_commit)
    trainer = Trainer(
        tiny_config(bikes_dataset, tmp_path / "run", max_iter=1, push_to_hub=True, train_architecture="lora")
    )
    with pytest.raises(HubUploadError, match=f"hf upload someone/run {tmp_path / 'run' / 'lora'} ."):
        trainer.train()
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_a_slow_upload_never_blocks_a_step(bikes_dataset, tmp_path, monkeypatch):
    import threading

    from huggingface_hub import HfApi, RepoUrl

    release, commits = threading.Event(), []
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/someone/{repo_id}")
    )

    def stuck_commit(self, repo_id, operations, commit_message, **kwargs):
        assert release.wait(timeout=120), "the upload was never released"
        commits.append(commit_message)

    monkeypatch.setattr(HfApi, "create_commit", stuck_commit)
    trainer = Trainer(tiny_config(bikes_dataset, tmp_path / "run", max_iter=3, save_iter=1, push_to_hub=True))
    steps_started = []
    # Every step runs while the first upload is stuck; the last one lets it go.
    before_each_forward(monkeypatch, lambda step: (steps_started.append(step), step == 2 and release.set()))
    trainer.train()
    assert steps_started == [0, 1, 2]
    # Iteration 1 was being uploaded during iteration 2's save, which was skipped; the final one went up.
    assert commits == ["Post-training: iteration 1", "Post-training: iteration 3"]


@pytest.mark.slow  # two processes also train in the default run (tests/test_context_parallel.py)
def test_two_process_data_parallel_run_resumes_exactly(prepared_dataset, tmp_path):
    """Two CPU processes under DDP (torchrun starts the ranks; accelerate joins them with gloo): a run
    stopped at step 3 and continued to 6 by the same command ends with the straight run's exact weights."""
    import os

    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}

    def run(output_dir, max_iter, port):
        cmd = torchrun(
            "2",
            str(port),
            str(REPO / "train_video2world.py"),
            *tiny_run_flags(str(prepared_dataset), str(output_dir)),
            "--max_iter",
            str(max_iter),
            "--lr_decay_steps",
            "6",
            "--save_iter",
            "3",
            "--dataloader_num_workers",
            "0",
        )
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr

    run(tmp_path / "straight", 6, 29531)
    run(tmp_path / "stopped", 3, 29532)
    log = run(tmp_path / "stopped", 6, 29533)
    assert log.count("Resumed from") == 2, "both ranks resume"
    assert log.count("Saved checkpoint") == 1, "only the main process writes"
    assert log.count("Transformer tiny (full)") == 1, "the trainer logs on the main process only"

    def masters(folder, iteration):
        path = folder / "checkpoints" / "optim" / f"iter_{iteration:09d}.pt"
        return torch.load(path, weights_only=True)["master_weights"]

    straight, resumed = masters(tmp_path / "straight", 6), masters(tmp_path / "stopped", 6)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert any(not torch.equal(straight[k], masters(tmp_path / "stopped", 3)[k]) for k in straight)


def test_flags_a_diffusers_user_guesses_and_a_fast_help():
    aliased = parse_train_flags(
        [
            "--model",
            "tiny",
            "--max_train_steps",
            "7",
            "--checkpointing_steps",
            "3",
            "--rank",
            "2",
            "--train_architecture",
            "lora",
            "--train_batch_size",
            "2",
            "--gradient_checkpointing",
            "--checkpoints_total_limit",
            "2",
            "--mixed_precision",
            "no",
            "--resume_from_checkpoint",
            "iter_3",
        ]
    )
    assert (aliased.max_iter, aliased.save_iter, aliased.lora_rank, aliased.batch_size) == (7, 3, 2, 2)
    assert (aliased.activation_checkpointing, aliased.checkpoints_total_limit, aliased.mixed_precision) == (
        "full",
        2,
        "no",
    )
    assert aliased.resume_from_checkpoint == "iter_3"
    assert parse_train_flags(["--gradient_checkpointing", "selective"]).activation_checkpointing == "selective"
    # --help lists every default and answers without importing torch, diffusers or transformers.
    probe = (
        "import sys, runpy; sys.argv = ['train_video2world.py', '--help']\ntry:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("[]"), result.stdout[-500:] + result.stderr[-500:]
    text = " ".join(result.stdout.split())
    assert "--seed SEED seed of data order, frame windows, noise and dropout (default: 0)" in text
    assert "--max_iter MAX_ITER, --max_train_steps MAX_ITER" in text


def test_checkpoints_total_limit_keeps_the_newest(bikes_dataset, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(bikes_dataset, out, max_iter=4, save_iter=1, checkpoints_total_limit=2)).train()
    assert CheckpointDir(out).complete_iterations() == [3, 4]
    assert sorted(p.name for p in (out / "checkpoints" / "optim").iterdir()) == [
        "iter_000000003.pt",
        "iter_000000004.pt",
    ]


def test_a_lora_run_resumes_its_ema_and_the_ema_adapter_loads_into_the_pipeline(bikes_dataset, tmp_path):
    from cosmos_v2w_diffusers import CosmosVideo2WorldPipeline
    from cosmos_v2w_diffusers.models.components import tiny_pretrained_path

    out = tmp_path / "lora"
    first = Trainer(
        tiny_config(bikes_dataset, out, train_architecture="lora", max_iter=2, save_iter=2, lr_decay_steps=3)
    )
    first.train()
    resumed = Trainer(tiny_config(bikes_dataset, out, train_architecture="lora", max_iter=3, save_iter=3))
    assert resumed.start_iter == 2
    for name, shadow in first.ema.state_dict().items():
        assert torch.equal(resumed.ema.state_dict()[name], shadow), name
    pipe = CosmosVideo2WorldPipeline.from_pretrained(str(tiny_pretrained_path()), disable_guardrail=True)
    pipe.load_lora_weights(str(out / "lora"), weight_name="pytorch_lora_weights_ema.safetensors", adapter_name="ema")
    loaded = {n: p for n, p in pipe.transformer.named_parameters() if "lora_A.ema" in n}
    expected = first.ema.state_dict()["transformer_blocks.0.attn1.to_q.lora_A.default.weight"]
    torch.testing.assert_close(loaded["transformer_blocks.0.attn1.to_q.lora_A.ema.weight"].float(), expected)


def test_validation_writes_a_video_and_scores_it_against_a_held_out_clip(bikes_dataset, video_paths, tmp_path):
    import decord

    out = tmp_path / "run"
    config = parse_train_flags(
        [
            *tiny_run_flags(str(bikes_dataset), str(out)),
            "--dataloader_num_workers",
            "0",
            "--validation_prompt",
            "A video of sks teal robot.",
            "--validation_steps",
            "2",
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "2",
            "--validation_video",
            str(video_paths["bigbuckbunny"]),
            "--validation_live",
            "--validation_num_inference_steps",
            "2",
            "--report_to",
            "tensorboard",
        ]
    )
    trainer = Trainer(config)
    assert [step for step in range(1, 7) if trainer.validator.should_validate(step)] == [2, 4, 6]
    trainer.train()
    video = decord.VideoReader(str(out / "validation" / "step_000000002.mp4"))
    assert len(video) == 17 and video[0].shape == (64, 112, 3)
    assert (out / "validation" / "step_000000002_live.mp4").is_file()
    assert set(trainer.validator.last) == {"video", "validation/live/psnr", "validation/live/ssim"}
    assert (
        0 < trainer.validator.last["validation/live/psnr"] < 60
        and -1 <= trainer.validator.last["validation/live/ssim"] <= 1
    )
    # The second transformer waits on the CPU: validation holds no accelerator memory between runs.
    assert trainer.validator.pipe.transformer.device.type == "cpu"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents*")).parent))
    events.Reload()
    assert {"validation/live/psnr", "validation/live/ssim"} <= set(events.Tags()["scalars"])
    assert {"validation/ema", "validation/live"} <= set(events.Tags()["images"])  # the frames, as images
    assert [e.step for e in events.Images("validation/ema")] == [2]


def test_psnr_and_ssim():
    from cosmos_v2w_diffusers.generation.video_metrics import psnr, ssim

    frames = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ssim(frames, frames) == pytest.approx(1.0) and psnr(frames, frames) == float("inf")
    assert psnr(frames, (frames + 0.1).clamp(0, 1)) == pytest.approx(20.0, abs=0.6)
    assert ssim(frames, torch.rand(3, 3, 32, 32)) < 0.2


def test_a_tracker_that_is_not_installed_is_refused_before_any_work(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a)
    )
    with pytest.raises(ValueError, match="--report_to wandb needs the wandb package"):
        resolve(TrainConfig.from_flags(model="tiny", report_to="wandb"))
    assert resolve(TrainConfig.from_flags(model="tiny", report_to="all")).report_to == "all"


def test_the_model_size_comes_from_the_weights_and_a_contradicting_one_is_refused():
    from cosmos_v2w_diffusers.models.components import tiny_pretrained_path

    base = str(tiny_pretrained_path())
    assert resolve(TrainConfig.from_flags(pretrained_model_name_or_path=base)).model == "tiny"
    assert resolve(TrainConfig()).model == "2B"  # no weights named: NVIDIA's 2B
    with pytest.raises(ValueError, match="--model 2B contradicts .* the tiny architecture: pass --model tiny"):
        resolve(TrainConfig.from_flags(model="2B", pretrained_model_name_or_path=base))


def test_diffusers_flags_parse_and_refuse_what_cannot_apply():
    from cosmos_v2w_diffusers.training.optim import build_lr_scheduler

    parsed = resolve(
        parse_train_flags(
            ["--model", "tiny", "--resolution", "64x112", "--adam_weight_decay", "0.03", "--lr_scheduler", "cosine"]
            + ["--lr_warmup_steps", "2", "--lora_dropout", "0.1", "--allow_tf32", "--logging_dir", "tb"]
            + ["--revision", "main", "--variant", "fp16", "--cache_dir", "hub", "--num_train_epochs", "3"]
            + ["--validation_epochs", "1", "--num_validation_videos", "2", "--dataset_name", "me/clips"]
        )
    )
    assert (parsed.height, parsed.width, parsed.weight_decay, parsed.lora_dropout) == (64, 112, 0.03, 0.1)
    assert parsed.allow_tf32 and parsed.logging_dir == "tb" and parsed.output_dir.endswith("tiny_clips")
    assert parsed.hub_kwargs() == {"revision": "main", "variant": "fp16", "cache_dir": "hub"}
    assert resolve(TrainConfig.from_flags(model="tiny", resolution="64")).width == 64
    assert resolve(TrainConfig.from_flags(model="tiny", num_train_epochs=3), steps_per_epoch=5).max_iter == 15
    assert (
        resolve(TrainConfig.from_flags(model="tiny", num_train_epochs=3, max_iter=4), steps_per_epoch=5).max_iter == 4
    )
    # diffusers' schedules by name: a linear warm-up to --learning_rate, then the cosine.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=parsed.learning_rate)
    scheduler = build_lr_scheduler(optimizer, dataclasses.replace(parsed.optim, lr_decay_steps=10))
    lrs = []
    for _ in range(4):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0 and lrs[2] == pytest.approx(parsed.learning_rate) and lrs[3] < lrs[2]
    if importlib.util.find_spec("bitsandbytes") is None:  # (other refusals: the table below)
        with pytest.raises(ValueError, match="needs the bitsandbytes package"):
            resolve(TrainConfig.from_flags(model="tiny", use_8bit_adam=True))


@pytest.mark.slow  # 12 s; `make test` resolves epochs into steps without training (test_diffusers_flags...)
def test_a_run_in_epochs_from_a_hub_dataset_validates_per_epoch_and_logs_where_asked(
    prepared_dataset, video_paths, tmp_path, monkeypatch
):
    """--dataset_name, --num_train_epochs, --validation_epochs, --num_validation_videos, --logging_dir,
    --lr_scheduler and --lora_dropout in one LoRA run on the tiny model (2 clips: 2 steps an epoch)."""
    import huggingface_hub

    fetched = []

    def snapshot_download(repo_id, repo_type=None, cache_dir=None, **kwargs):  # the Hub, offline
        fetched.append((repo_id, repo_type, cache_dir))
        return str(prepared_dataset)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    out, logs = tmp_path / "run", tmp_path / "tb"
    config = tiny_config(None, out, dataset_path=None, dataset_name="me/robot-clips", cache_dir=str(tmp_path / "hub"))
    config = config.replace(
        train_architecture="lora",
        num_train_epochs=2,
        validation_epochs=1,
        num_validation_videos=2,
        validation_prompt="A video of sks teal robot.",
        validation_num_inference_steps=2,
        logging_dir=str(logs),
        report_to="tensorboard",
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=1,
        lora_dropout=0.1,
    )
    trainer = Trainer(config)
    assert fetched == [("me/robot-clips", "dataset", str(tmp_path / "hub"))]
    assert (trainer.config.max_iter, trainer.config.validation_steps) == (4, 2)
    dropouts = {m.p for n, m in trainer.transformer.named_modules() if n.endswith("lora_dropout.default")}
    assert dropouts == {0.1}
    losses = trainer.train()
    assert len(losses) == 4
    videos = sorted(p.name for p in (out / "validation").glob("*.mp4"))
    assert videos == [f"step_00000000{s}{i}.mp4" for s in (2, 4) for i in ("", "_1")]
    assert list(logs.rglob("events.out.tfevents*")) and not (out / "logs").exists()


def test_variant_weights_of_a_local_base_load_with_variant(tmp_path):
    import shutil

    from cosmos_v2w_diffusers.models.components import load_vae, tiny_pretrained_path

    base = tmp_path / "base"
    shutil.copytree(tiny_pretrained_path(), base)
    for name in ("transformer", "vae"):
        weights = next((base / name).glob("*.safetensors"))
        weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    config = resolve(TrainConfig.from_flags(model="tiny", pretrained_model_name_or_path=str(base), variant="fp16"))
    tiny = get_preset("tiny")
    assert load_transformer(tiny, str(base), **config.hub_kwargs()).config.num_layers == 4
    assert load_vae(tiny, str(base), **config.hub_kwargs()) is not None
    with pytest.raises(OSError):  # without --variant the plain weights file is looked for
        load_transformer(tiny, str(base))


def test_flags_are_declared_by_section_and_a_run_holds_its_sections_resolved():
    """Every flag is declared in one section (`training/sections/`), with its bounds; the flags as given and the
    resolved run hold the same section classes, each built once and frozen; `--help` lists the flags by section."""
    from cosmos_v2w_diffusers.training.run_config import RunConfig
    from cosmos_v2w_diffusers.training.sections import SECTION_OF_FIELD, SECTIONS

    declared = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(declared) == len(set(declared)) == len(SECTION_OF_FIELD) > 70  # one section each
    flags = TrainConfig.from_flags(model="tiny", max_iter=7)
    assert flags.optim.max_iter == 7 and flags.optim.lr_decay_steps is None  # as given
    with pytest.raises(TypeError, match="no such training flag: max_iters"):
        TrainConfig.from_flags(max_iters=7)
    run = resolve(flags)
    assert isinstance(run, RunConfig) and run.flags is flags
    for name, cls in SECTIONS.items():
        assert type(getattr(run, name)) is cls is type(getattr(flags, name))
    assert run.optim is run.optim and run.optim.max_iter == 7 and run.optim.lr_decay_steps == 7  # built once
    assert run.max_iter == 7 and run.values()["lr_decay_steps"] == 7  # flat reads answered by the section
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.optim.max_iter = 8  # type: ignore[misc]
    assert "hub_token" not in repr(resolve(TrainConfig.from_flags(hub_token="hf_" + "x" * 30)).hub)
    # a section checks its own fields, as declared, given in Python as on the command line
    with pytest.raises(ValueError, match="--max_iter must be at least 1"):
        dataclasses.replace(run.optim, max_iter=0).check()
    with pytest.raises(ValueError, match="--export_dtype 'fp16': pick one of bf16, fp32"):
        TrainConfig.from_flags(export_dtype="fp16").check()
    help_text = train_parser().format_help()
    assert help_text.index("\noptim:") < help_text.index("\n  --learning_rate") < help_text.index("\ncheckpoint:")


# Every refusal that needs no weights, one row each: (flags, layout, device, message). Without a layout or a
# device, the flags themselves or their resolved values are refused (`resolve`: `TrainConfig.check`, then
# `validate`); with one, the run resolves, runs on one process (and on no particular device), and `validate`
# refuses it for that layout (engine, processes[, context-parallel size]) or that device. A new flag's bad values
# are one more row.
REFUSALS = [
    # flag values, as given (`TrainConfig.check`: each section's, then across sections; before torch is imported)
    (dict(max_iter=0), None, None, "--max_iter must be at least 1"),
    (dict(save_iter=-1), None, None, "--save_iter must be at least"),
    (dict(batch_size=0), None, None, "--batch_size must be at least 1"),
    (dict(learning_rate=0.0), None, None, "--learning_rate must be more than 0"),
    (dict(learning_rate=-1.0), None, None, "--learning_rate must be more than 0"),
    (dict(lora_rank=0), None, None, "--lora_rank must be at least 1"),
    (dict(lora_dropout=1.0), None, None, "--lora_dropout must be at least 0 and at most 1"),
    (dict(export_max_shard_size="big"), None, None, "give a size such as 10GB"),
    (dict(max_sequence_length=513), None, None, "T5 reads 1 to 512 tokens"),
    (dict(resolution="64", height=64), None, None, "--resolution sets --height and --width"),
    (dict(resolution="64xx"), None, None, "one size"),
    (dict(validation_epochs=1, validation_steps=2), None, None, "both say when"),
    (dict(dataset_config_name="x"), None, None, "pass --dataset_name too"),
    (dict(dataset_name="me/clips", dataset_path="clips"), None, None, "pass one of them"),
    (dict(lr_warmup_steps=5), None, None, "has no warm-up"),
    (dict(lora_path="lora"), None, None, "the teacher of a distillation"),
    (dict(distill_steps=4, base_precision="fp8"), None, None, "with --distill_steps: the base is the teacher"),
    (dict(block_swap=True), None, None, "it is for --train_architecture lora"),
    (dict(base_precision="fp8"), None, None, "stores a frozen base"),
    (dict(load_ema=True), None, None, "--load_ema picks the EMA weights of --dit_path"),
    (dict(activation_checkpointing="full", selective_checkpointing_blocks=2), None, None, "needs --activation"),
    # resolved values (`run_config.resolve`)
    (dict(lr_warmup_steps=5, lr_scheduler="constant_with_warmup", max_iter=5), None, None, "never reach its peak"),
    (dict(lr_decay_steps=3, lr_scheduler="cosine", max_iter=5), None, None, "would train at learning rate 0"),
    (dict(train_architecture="lora", block_swap=True, activation_checkpointing="none"), None, None, "recompute"),
    (dict(checkpoint_block_parts=True), None, None, "goes with --low_vram"),
    (dict(low_vram=True, activation_checkpointing="selective"), None, None, "offloads what full recompute keeps"),
    (dict(validation_num_frames=10), None, None, "must be 4k\\+1"),
    (dict(distill_steps=4, compile=True), None, None, "--compile with --distill_steps and activation checkpointing"),
    (dict(validation_image="a.png"), None, None, "need a --validation_prompt"),
    (dict(num_frames=18), None, None, "--num_frames"),
    (dict(train_architecture="lora", lora_target_modules="attn9.to_x"), None, None, "names no linear layer"),
    # what the layout rules out (`validate(run, dims)`)
    (dict(train_architecture="lora", base_precision="fp8"), ("ddp", 2), None, "runs on one GPU for now"),
    (dict(train_architecture="lora", block_swap=True), ("ddp", 2), None, "--block_swap is for one GPU"),
    (dict(low_vram=True), ("fsdp", 2), None, "--low_vram is for one GPU"),
    (dict(context_parallel_size=2), ("deepspeed", 2, 2), None, "not DeepSpeed: use accelerate_configs/fsdp_8gpu"),
    (dict(context_parallel_size=4), ("fsdp", 6, 4), None, "must divide the number of processes \\(6\\)"),
    (dict(context_parallel_size=3), ("ddp", 3, 3), None, "must divide the 140 latent tokens of a sample"),
    (dict(context_parallel_size=5), ("fsdp", 5, 5), None, "must divide the model's 4 attention heads"),
    (dict(distill_steps=4), ("deepspeed", 2), None, "DeepSpeed's ZeRO does not take"),
    (dict(use_8bit_adam=True), ("fsdp", 2), None, "does not run under fsdp"),
    # what the process's device cannot run (`validate(run, device=...)`)
    (dict(attention_backend="cudnn"), None, "cpu", "--attention_backend cudnn needs a CUDA GPU"),
    (dict(use_8bit_adam=True), None, "cpu", "runs on CUDA GPUs only, not the cpu"),
]


@pytest.mark.parametrize("flags,layout,device,message", REFUSALS)
def test_every_refusal_that_needs_no_weights_is_one_row(flags, layout, device, message, monkeypatch):
    import importlib.machinery
    import sys
    import types

    from cosmos_v2w_diffusers.parallel.parallel_dims import ParallelDims
    from cosmos_v2w_diffusers.training.run_config import validate

    if flags.get("use_8bit_adam") and importlib.util.find_spec("bitsandbytes") is None:  # installed, as far as
        bitsandbytes = types.ModuleType("bitsandbytes")  # the flag check looks
        bitsandbytes.__spec__ = importlib.machinery.ModuleSpec("bitsandbytes", None)
        monkeypatch.setitem(sys.modules, "bitsandbytes", bitsandbytes)
    config = TrainConfig.from_flags(model="tiny", **flags)
    if layout is None and device is None:
        with pytest.raises(ValueError, match=message):
            resolve(config)
        return
    run = resolve(config)
    validate(run, ParallelDims(1, 0, 1, "single"))  # one process runs it
    with pytest.raises(ValueError, match=message):
        if layout is not None:
            validate(run, ParallelDims(layout[1], 0, layout[2] if len(layout) > 2 else 1, layout[0]))
        else:
            validate(run, device=torch.device(device))

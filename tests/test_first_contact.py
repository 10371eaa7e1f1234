"""What a newcomer meets first (issue 37): offline preparation fails fast, messages name the real fix, the CLIs'
help renders, and the README keeps to its size and its links."""

import re
import time
from pathlib import Path

import huggingface_hub
import pytest
from conftest import PROMPT, make_dataset_folder

from cosmos_v2w_diffusers.cli import prepare_data as prepare_data_cli
from cosmos_v2w_diffusers.training.run_config import resolve

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("how", ["unreachable", "HF_HUB_OFFLINE"])
def test_prepare_data_offline_fails_at_once_naming_the_model_and_the_way_out(how, tmp_path, video_paths, monkeypatch):
    folder = make_dataset_folder(tmp_path / "data", {"bikes": video_paths["bikes"]}, prepare=False)
    if how == "unreachable":

        def no_network(*args, **kwargs):
            raise ConnectionError("Name or service not known")

        monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    else:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))  # nothing cached
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    errors = []
    monkeypatch.setattr(prepare_data_cli.logger, "error", lambda fmt, *args: errors.append(fmt % args))
    start = time.monotonic()
    assert prepare_data_cli.main(["--dataset_path", str(folder), "--prompt", PROMPT]) == 1
    assert time.monotonic() - start < 20
    (message,) = errors
    assert (
        "--text_encoder google-t5/t5-11b" in message
        and "HF_HUB_OFFLINE" in message
        and "--text_encoder tiny" in message
    )
    assert "dataset folder" not in message and "\n" not in message


def test_readme_is_short_has_contents_and_its_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    anchors = re.findall(r"\]\(#([a-z0-9-]+)\)", text)
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, flags=re.M)
    }
    assert len(anchors) >= 8 and set(anchors) <= headings, set(anchors) - headings
    for link in re.findall(r"\]\(([^)#]+\.md)", text):
        assert (REPO / link).is_file(), link
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert (REPO / "CHANGELOG.md").is_file()


def test_a_misspelled_flag_is_one_line_naming_the_closest_and_no_value(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    for script, flags, says in (
        (
            "train_video2world.py",
            ["--max_iters", "5", "--hub_tok", "hf_SECRET"],
            "--max_iters (did you mean --max_iter?)",
        ),
        ("infer_video2world.py", ["--guidanc", "3"], "--guidanc (did you mean --guidance?)"),
    ):
        result = subprocess.run([sys.executable, str(REPO / script), *flags], capture_output=True, text=True)
        assert result.returncode == 2 and says in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "hf_SECRET" not in result.stderr


def test_a_transformer_folder_is_a_dit_path_and_as_a_base_pipeline_is_one_line(tmp_path, monkeypatch):
    """README: `--dit_path` takes a diffusers folder; a transformer folder given as the base pipeline is refused
    in one line that names --dit_path, before anything loads (it used to be read as the VAE, a traceback)."""
    import shutil

    from conftest import cli_error, tiny_generation_flags

    from cosmos_v2w_diffusers.models.components import tiny_pretrained_path
    from cosmos_v2w_diffusers.training.model import post_trained_weights

    folder = tmp_path / "transformer"
    shutil.copytree(tiny_pretrained_path() / "transformer", folder)
    assert post_trained_weights(str(folder), load_ema=False)  # training's --dit_path reads it
    assert post_trained_weights(str(tiny_pretrained_path()), load_ema=False)  # and a pipeline folder's transformer/
    infer = tiny_generation_flags(tmp_path)
    for script, flags in (("train_video2world.py", ["--model", "tiny"]), ("infer_video2world.py", infer)):
        message = cli_error(monkeypatch, script, *flags, "--pretrained_model_name_or_path", str(folder))
        assert "is a transformer folder, not a whole pipeline: pass it as --dit_path" in message


def test_generation_without_the_guardrail_installed_is_refused_before_anything_loads(tmp_path, monkeypatch):
    import importlib.util
    import time

    from conftest import cli_error, tiny_generation_flags

    flags = tiny_generation_flags(tmp_path, disable_guardrail=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "cosmos_guardrail" else real(n, *a))
    start = time.perf_counter()
    message = cli_error(monkeypatch, "infer_video2world.py", *flags)
    assert "pip install cosmos_guardrail" in message and "--disable_guardrail" in message
    assert time.perf_counter() - start < 3 and not (tmp_path / "o.mp4").exists()


def test_a_local_run_writes_a_complete_card_into_its_export(prepared_dataset, tmp_path):
    """`hf upload <repo> <output_dir>/lora .` (README's route) publishes a card too: a run without --push_to_hub
    writes it; no TODO sections; LoRA flags only on a LoRA's card; an install line and the guardrail named."""
    from conftest import tiny_config, train_to_the_end

    for architecture, folder in (("lora", "lora"), ("full", "pipeline")):
        out = tmp_path / architecture
        train_to_the_end(tiny_config(prepared_dataset, out, max_iter=1, train_architecture=architecture, ema=False))
        card = (out / folder / "README.md").read_text()
        assert "TODO" not in card and "not on PyPI" in card and "disable_guardrail=True" in card
        assert ("| `lora_rank` |" in card) == (architecture == "lora")
        assert str(tmp_path) not in card


@pytest.mark.parametrize("target", ["norm1", "transformer_blocks", "to_qq"])
def test_lora_targets_that_name_no_linear_layer_are_one_line(monkeypatch, target):
    from conftest import cli_error

    flags = ["--model", "tiny", "--train_architecture", "lora", "--lora_target_modules", f"to_q,{target}"]
    message = cli_error(monkeypatch, "train_video2world.py", *flags)
    assert f"--lora_target_modules '{target}' names no linear layer" in message and "attn1.to_q" in message


def test_a_unet_as_the_transformer_and_two_offloads_are_one_line(tmp_path, monkeypatch):
    import json
    import shutil

    from conftest import cli_error

    from cosmos_v2w_diffusers.models.components import tiny_pretrained_path

    base = tmp_path / "base"
    shutil.copytree(tiny_pretrained_path(), base)
    config = json.loads((base / "transformer" / "config.json").read_text())
    (base / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    message = cli_error(monkeypatch, "train_video2world.py", "--pretrained_model_name_or_path", str(base))
    assert "its transformer is a UNet2DConditionModel, not the CosmosTransformer3DModel" in message
    from cosmos_v2w_diffusers.cli.infer_flags import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--offload_model", "--group_offload"])


def test_diffusers_checkpoint_names_resume(tmp_path):
    from cosmos_v2w_diffusers.training.checkpoint import PARTS, CheckpointDir

    folder = CheckpointDir(tmp_path)
    for part in PARTS:
        folder.path(part, 2).parent.mkdir(parents=True, exist_ok=True)
        folder.path(part, 2).write_bytes(b"x")
    assert folder.resolve("checkpoint-2") == folder.resolve("iter_2") == 2
    with pytest.raises(FileNotFoundError, match="complete checkpoints"):
        folder.resolve("checkpoint-3")


def test_diffusers_schedule_flags_reach_get_scheduler():
    import torch

    from cosmos_v2w_diffusers.training.config import TrainConfig
    from cosmos_v2w_diffusers.training.optim import build_lr_scheduler

    def lr_at(step: int, **flags) -> float:
        optim = resolve(TrainConfig.from_flags(model="tiny", max_iter=10, learning_rate=1.0, **flags)).optim
        scheduler = build_lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), optim)
        for _ in range(step):
            scheduler.step()
        return scheduler.get_last_lr()[0]

    assert lr_at(5, lr_scheduler="cosine_with_restarts", lr_num_cycles=2) == pytest.approx(1.0)  # restarted
    assert lr_at(5, lr_scheduler="cosine_with_restarts") == pytest.approx(0.5)
    assert lr_at(5, lr_scheduler="polynomial", lr_power=2.0) == pytest.approx(0.25, abs=1e-6)


def test_an_uncached_hub_dataset_offline_is_one_line_naming_it(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from conftest import cli_error

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    flags = ("--model", "tiny", "--dataset_name", "me/clips", "--output_dir", str(tmp_path / "out"))
    message = cli_error(monkeypatch, "train_video2world.py", *flags, "--cache_dir", str(tmp_path / "hub"))
    assert (
        "--dataset_name me/clips: the Hub cannot be reached (or HF_HUB_OFFLINE is set) and "
        f"--cache_dir {tmp_path / 'hub'}" in message
    )
    assert "the output folder or a cache" not in message

"""Faults a long run must survive: a clip corrupted mid-file, NaN losses, SIGTERM, poisoned embeddings."""

import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import before_each_forward, endless_run_flags, make_dataset_folder, tiny_config, tiny_run_flags, torchrun

from cosmos_v2w_diffusers import load_video2world_dataset
from cosmos_v2w_diffusers.cli.train import parse_train_flags
from cosmos_v2w_diffusers.data.folder import probe_video
from cosmos_v2w_diffusers.data.samples import (
    ClipDecodeError,
    Video2WorldTrainDataset,
    read_frames,
)
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.models.text_encoding import InvalidEmbeddingError, read_t5_pickle
from cosmos_v2w_diffusers.training import trainer as trainer_module
from cosmos_v2w_diffusers.training.checkpoint import CheckpointDir
from cosmos_v2w_diffusers.training.guards import EXIT_PREEMPTED
from cosmos_v2w_diffusers.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def corrupted_dataset(video_paths, tmp_path_factory):
    """bigbuckbunny intact; bikes with 64 KiB zeroed half-way: it probes fine, frames ~119-186 fail to decode."""
    root = tmp_path_factory.mktemp("corrupted")
    data = bytearray(video_paths["bikes"].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 65536] = bytes(65536)
    broken = root / "bikes_corrupted.mp4"
    broken.write_bytes(data)
    return make_dataset_folder(root / "data", {"bigbuckbunny": video_paths["bigbuckbunny"], "bikes": broken})


def _failing_draw(samples: Video2WorldTrainDataset, bad_path: str) -> int:
    for index in range(400):
        row, start = samples.draw(index)
        if samples.table[row]["video_path"] == bad_path:
            try:
                read_frames(bad_path, start, samples.num_frames)
            except ClipDecodeError:
                return index
    raise AssertionError("no draw reaches the corrupted part")


def test_a_clip_corrupted_mid_file_is_reported_and_replaced_deterministically(corrupted_dataset, caplog):
    bad = str(corrupted_dataset / "videos" / "bikes.mp4")
    probe_video(Path(bad), 17)  # it passes the scan: only decoding the middle fails
    table = load_video2world_dataset(corrupted_dataset, num_frames=17, embed_dim=TINY.text_embed_dim)
    samples = Video2WorldTrainDataset(table, 17, 64, 112, seed=0)
    index = _failing_draw(samples, bad)
    item = samples[index]
    assert item["skipped_clips"] == bad and item["video"].shape == (3, 17, 64, 112)
    assert bad in caplog.text
    again = samples[index]  # a pure function of (seed, draw): resume replays it exactly
    assert torch.equal(item["video"], again["video"]) and item["video_path"] == again["video_path"]


def test_training_skips_the_bad_clip_lists_it_and_stops_when_too_many_fail(corrupted_dataset, tmp_path):
    bad = str(corrupted_dataset / "videos" / "bikes.mp4")
    table = load_video2world_dataset(corrupted_dataset, num_frames=TINY.num_frames, embed_dim=TINY.text_embed_dim)
    samples = Video2WorldTrainDataset(table, TINY.num_frames, TINY.height, TINY.width, seed=0)  # the run's draws
    steps = _failing_draw(samples, bad) + 1
    trainer = Trainer(tiny_config(corrupted_dataset, tmp_path / "run", max_iter=steps, save_iter=1000))
    losses = trainer.train()
    assert len(losses) == steps and all(np.isfinite(losses))
    assert (tmp_path / "run" / "skipped_clips.txt").read_text() == bad + "\n"

    strict = Trainer(tiny_config(corrupted_dataset, tmp_path / "strict", max_iter=steps, max_skipped_clips=0))
    with pytest.raises(RuntimeError, match="skipped_clips.txt"):
        strict.train()


def test_a_nan_loss_skips_the_update_and_repeated_nans_stop_the_run(prepared_dataset, tmp_path, monkeypatch):
    real_loss = trainer_module.video2world_loss
    poisoned_calls = {1}
    calls = []

    def loss_with_nans(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) - 1 in poisoned_calls else loss

    monkeypatch.setattr(trainer_module, "video2world_loss", loss_with_nans)
    trainer = Trainer(tiny_config(prepared_dataset, tmp_path / "run", max_iter=3, save_iter=2))
    weights_before = {}  # the weights each step starts from
    before_each_forward(
        monkeypatch,
        lambda step: weights_before.setdefault(step, {n: p.detach().clone() for n, p in trainer.trainable.items()}),
    )
    losses = trainer.train()
    assert np.isnan(losses[1]) and np.isfinite(losses[0]) and np.isfinite(losses[2])
    for name in trainer.trainable:  # step 1 changed nothing, step 0 did
        assert torch.equal(weights_before[1][name], weights_before[2][name]), name
    assert any(not torch.equal(weights_before[0][n], weights_before[1][n]) for n in trainer.trainable)
    # Checkpoint 2 falls right after the NaN step, so it waits for a finite one: the end of the run.
    assert not (tmp_path / "run" / "checkpoints" / "model" / "iter_000000002.pt").exists()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "model" / "iter_000000003.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in saved.values())

    poisoned_calls.update(range(100))
    calls.clear()
    stopping = Trainer(tiny_config(prepared_dataset, tmp_path / "diverged", max_iter=10, max_nonfinite_steps=2))
    with pytest.raises(FloatingPointError, match="2 consecutive steps"):
        stopping.train()
    assert CheckpointDir(tmp_path / "diverged").latest_iteration() is None


def test_a_t5_pickle_with_nan_is_refused(tmp_path):
    path = tmp_path / "x.pickle"
    array = np.ones((4, TINY.text_embed_dim), dtype=np.float16)
    array[2, 3] = np.inf
    with open(path, "wb") as f:
        pickle.dump([array], f)
    with pytest.raises(InvalidEmbeddingError, match="NaN or Inf"):
        read_t5_pickle(path, TINY.text_embed_dim)


def _train_process(dataset: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, str(REPO / "train_video2world.py"), *endless_run_flags(dataset, out)]
    return subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def _wait_for_steps(process: subprocess.Popen, log: list[str]) -> None:
    def read():
        for line in iter(lambda: process.stderr.read(200), ""):
            log.append(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 240
    while "s_per_step" not in "".join(log):
        assert process.poll() is None and time.time() < deadline, "".join(log)[-2000:]
        time.sleep(0.2)


@pytest.mark.slow  # 28 s; `make test` keeps the signal to the launcher (test_trust.py)
def test_sigterm_saves_a_checkpoint_and_exits_with_the_documented_code(prepared_dataset, tmp_path):
    out = tmp_path / "run"
    process, log = _train_process(prepared_dataset, out), []
    _wait_for_steps(process, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == EXIT_PREEMPTED, "".join(log)[-2000:]
    saved = CheckpointDir(out).latest_iteration()
    assert saved is not None and saved >= 1

    # A second signal stops at once, without waiting for the step.
    out2 = tmp_path / "impatient"
    process, log = _train_process(prepared_dataset, out2), []
    _wait_for_steps(process, log)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) in (-signal.SIGINT, 128 + signal.SIGINT, EXIT_PREEMPTED)


class _RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("part", ["model", "optim", "scheduler", "trainer"])
def test_a_hostile_pickle_in_any_checkpoint_part_is_refused_with_its_name(prepared_dataset, tmp_path, part, capsys):
    out = tmp_path / "run"
    Trainer(tiny_config(prepared_dataset, out, max_iter=1, save_iter=1, lr_decay_steps=2)).train()  # lr left
    target = out / "checkpoints" / part / "iter_000000001.pt"
    torch.save({"payload": _RunsCode()}, target)
    capsys.readouterr()
    with pytest.raises(ValueError, match=f"{part}/iter_000000001.pt cannot be read"):
        Trainer(tiny_config(prepared_dataset, out, max_iter=2))
    assert "pwned" not in capsys.readouterr().out


def test_resume_restores_rng_states_from_plain_tensors(prepared_dataset, tmp_path):
    import random

    out = tmp_path / "run"
    Trainer(tiny_config(prepared_dataset, out, max_iter=1, save_iter=1, lr_decay_steps=2)).train()  # lr left
    saved = torch.load(out / "checkpoints" / "trainer" / "iter_000000001.pt", weights_only=True)["rng"]
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    Trainer(tiny_config(prepared_dataset, out, max_iter=2))
    assert torch.equal(torch.get_rng_state(), saved["torch"])
    assert list(random.getstate()[1]) == saved["python"]["state"]
    assert np.array_equal(np.random.get_state()[1], saved["numpy"]["keys"].numpy())


def test_a_hostile_or_truncated_dit_path_is_refused_with_its_name(tmp_path, capsys):
    from cosmos_v2w_diffusers.models.checkpoint_format import load_native_checkpoint

    hostile = tmp_path / "hostile.pt"
    torch.save({"net.x": _RunsCode()}, hostile)
    with pytest.raises(ValueError, match="hostile.pt cannot be read"):
        load_native_checkpoint(hostile)
    assert "pwned" not in capsys.readouterr().out
    truncated = tmp_path / "truncated.pt"
    torch.save({"net.x": torch.ones(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.pt cannot be read"):
        load_native_checkpoint(truncated)


# ---------------------------------------------------------------- output folder, disk, run config


def test_a_second_run_on_the_same_output_dir_is_refused_and_a_dead_holder_is_taken_over(
    prepared_dataset, tmp_path, caplog
):
    import socket

    from cosmos_v2w_diffusers.training.run_lock import OutputDirInUseError

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from cosmos_v2w_diffusers.training.run_lock import RunLock; "
            "lock = RunLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputDirInUseError, match=f"PID {holder.pid} on host {socket.gethostname()}"):
        Trainer(tiny_config(prepared_dataset, out, max_iter=1))
    holder.kill()  # kill -9: the kernel drops its lock, its owner file stays behind
    holder.wait()
    trainer = Trainer(tiny_config(prepared_dataset, out, max_iter=1))
    assert f"no longer running (PID {holder.pid}" in caplog.text
    trainer.train()


def test_a_kill_during_saving_leaves_the_last_checkpoint_whole_and_temp_files_are_cleaned(
    prepared_dataset, tmp_path, caplog
):
    out = tmp_path / "run"
    command = [
        sys.executable,
        str(REPO / "train_video2world.py"),
        *tiny_run_flags(str(prepared_dataset), str(out)),
        "--max_iter",
        "100000",
        "--save_iter",
        "1",
        "--dataloader_num_workers",
        "0",
    ]
    process, log = (
        subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True),
        [],
    )
    _wait_for_steps(process, log)
    time.sleep(1.0)  # it saves after every step: the kill lands in or near a save
    process.kill()
    process.wait()
    checkpoints = CheckpointDir(out)
    latest = checkpoints.latest_iteration()
    assert latest is not None and checkpoints.load_part("trainer", latest)["iteration"] == latest
    stale = out / "checkpoints" / "optim" / ".iter_000000999.pt.abcd.tmp"  # as a kill mid-write leaves one
    stale.write_bytes(b"x" * 1000)
    resumed = Trainer(tiny_config(prepared_dataset, out, max_iter=latest + 1))
    assert not stale.exists() and "temp files left by an interrupted save" in caplog.text
    assert not list((out / "checkpoints").rglob("*.tmp"))
    assert resumed.start_iter == latest


def test_too_little_disk_space_is_one_line_naming_the_folder_and_leaves_no_file(
    prepared_dataset, tmp_path, monkeypatch
):
    import shutil as shutil_module

    from cosmos_v2w_diffusers.training.checkpoint import CheckpointSpaceError

    out = tmp_path / "run"
    trainer = Trainer(tiny_config(prepared_dataset, out, max_iter=2, save_iter=1))
    real_usage = shutil_module.disk_usage
    calls = []

    def nearly_full(path):
        calls.append(path)
        usage = real_usage(path)
        return usage._replace(free=1000 if len(calls) > 1 else usage.free)  # room for the first checkpoint only

    monkeypatch.setattr(shutil_module, "disk_usage", nearly_full)
    with pytest.raises(CheckpointSpaceError) as error:
        trainer.train()
    message = str(error.value)
    assert "\n" not in message and str(out / "checkpoints") in message and "needs about" in message
    assert CheckpointDir(out).latest_iteration() == 1
    assert not (out / "checkpoints" / "model" / "iter_000000002.pt").exists()
    assert not list((out / "checkpoints").rglob("*.tmp"))


def test_a_resume_with_other_run_defining_flags_is_refused_before_any_model_loads(
    prepared_dataset, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    Trainer(
        tiny_config(
            prepared_dataset, out, max_iter=1, save_iter=1, lr_decay_steps=2, train_architecture="lora", lora_rank=4
        )
    ).train()

    def no_model_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the run was checked")

    from cosmos_v2w_diffusers.training import model

    monkeypatch.setattr(model, "load_transformer", no_model_loading)
    with pytest.raises(ValueError, match="--lora_rank 4 -> 8") as error:
        Trainer(tiny_config(prepared_dataset, out, max_iter=2, train_architecture="lora", lora_rank=8, num_frames=9))
    assert "--num_frames 17 -> 9" in str(error.value)
    monkeypatch.undo()
    # Flags that do not define the run may change.
    resumed = Trainer(
        tiny_config(prepared_dataset, out, max_iter=2, train_architecture="lora", lora_rank=4, learning_rate=1e-4)
    )
    assert resumed.start_iter == 1


def test_resume_from_a_named_checkpoint_and_a_truncated_one_names_the_earlier(prepared_dataset, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(prepared_dataset, out, max_iter=3, save_iter=1)).train()
    earlier = Trainer(tiny_config(prepared_dataset, out, max_iter=3, resume_from_checkpoint="iter_2"))
    assert earlier.start_iter == 2
    earlier._release_lock()
    by_path = Trainer(
        tiny_config(
            prepared_dataset,
            out,
            max_iter=3,
            resume_from_checkpoint=str(out / "checkpoints" / "model" / "iter_000000001.pt"),
        )
    )
    assert by_path.start_iter == 1
    by_path._release_lock()
    model = out / "checkpoints" / "model" / "iter_000000003.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(ValueError, match="model/iter_000000003.pt cannot be read.*--resume_from_checkpoint iter_2"):
        Trainer(tiny_config(prepared_dataset, out, max_iter=4))


# ---------------------------------------------------------------- other inputs


def test_a_symlinked_clip_keeps_its_own_name(video_paths, tmp_path):
    from cosmos_v2w_diffusers.data.prepare_data import prepare_dataset

    elsewhere = tmp_path / "store" / "original_name.mp4"
    elsewhere.parent.mkdir()
    shutil.copy(video_paths["bikes"], elsewhere)
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "robot.mp4").symlink_to(elsewhere)
    prepare_dataset(root, prompt="a robot", text_encoder="tiny", num_frames=17)
    assert (root / "t5_xxl" / "robot.pickle").is_file()
    table = load_video2world_dataset(root, num_frames=17, embed_dim=TINY.text_embed_dim)
    assert table["video_path"] == [str((root / "videos" / "robot.mp4").absolute())]


def test_prepare_data_warns_about_short_clips_but_prepares_them_and_reports_bad_pickles(
    prepared_dataset, tmp_path, caplog
):
    from cosmos_v2w_diffusers.data.prepare_data import prepare_dataset

    root = tmp_path / "data"
    shutil.copytree(prepared_dataset, root)
    shutil.rmtree(root / "t5_xxl")
    usable, written = prepare_dataset(root, text_encoder="tiny")  # the recipe's 93 frames: both clips are longer
    assert (usable, written) == (2, 2) and "fewer than the" not in caplog.text
    (root / "t5_xxl" / "bikes.pickle").unlink()
    usable, written = prepare_dataset(root, text_encoder="tiny", num_frames=200)  # bigbuckbunny has 132
    assert written == 1 and "bigbuckbunny.mp4 has 132 frames, fewer than the 200" in caplog.text
    array = np.ones((3, TINY.text_embed_dim), dtype=np.float16)
    array[0, 0] = np.nan
    with open(root / "t5_xxl" / "bikes.pickle", "wb") as f:
        pickle.dump([array], f)
    prepare_dataset(root, text_encoder="tiny")
    assert "bikes.pickle: embedding holds NaN or Inf" in caplog.text


def test_prepare_data_on_a_read_only_folder_says_so(prepared_dataset, tmp_path, monkeypatch, caplog):
    from cosmos_v2w_diffusers.cli import prepare_data as prepare_data_cli
    from cosmos_v2w_diffusers.data import prepare_data

    root = tmp_path / "data"
    shutil.copytree(prepared_dataset, root)
    (root / "t5_xxl" / "bikes.pickle").unlink()

    def read_only(path, *args):  # root ignores file modes, so the refusal is raised as the OS would
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(prepare_data, "write_t5_pickle", read_only)
    assert prepare_data_cli.main(["--dataset_path", str(root), "--text_encoder", "tiny"]) == 1
    assert "the dataset folder is read-only" in caplog.text and "bikes.pickle" in caplog.text


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F"]
)
def test_images_of_every_mode_reach_the_model_with_their_values(mode):
    import PIL.Image

    from cosmos_v2w_diffusers.generation.inputs import to_rgb

    gray = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (8, 1))  # a ramp, black to white
    base = PIL.Image.fromarray(gray, "L")
    if mode == "I;16":
        image = PIL.Image.fromarray(gray.astype(np.uint16) * 257)  # Pillow picks I;16 for uint16
    elif mode == "I":
        image = PIL.Image.fromarray(gray.astype(np.int32) * 257)  # "I": how PIL opens many 16-bit PNGs
    elif mode == "F":
        image = PIL.Image.fromarray(gray.astype(np.float32) / 255)  # "F"
    elif mode == "1":
        gray = np.where(gray > 127, 255, 0).astype(np.uint8)
        image = PIL.Image.fromarray(gray, "L").convert("1")
    elif mode in ("La", "RGBa"):
        image = base.convert("LA" if mode == "La" else "RGBA").convert(mode)
    else:
        image = base.convert(mode)
    assert image.mode == mode
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (8, 32, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - gray[..., None]).max() <= 3, mode


def test_a_conditioning_video_shorter_than_num_conditional_frames_is_refused():
    import PIL.Image

    from cosmos_v2w_diffusers.generation.pipeline import CosmosVideo2WorldPipeline

    frames = [PIL.Image.new("RGB", (32, 32))] * 3
    with pytest.raises(ValueError, match="3 frames, fewer than num_conditional_frames=5"):
        CosmosVideo2WorldPipeline.check_inputs(64, 112, 17, None, frames, 5)


def test_a_dit_path_folder_without_config_is_named(tmp_path):
    from cosmos_v2w_diffusers.generation.post_trained import load_post_trained_weights
    from cosmos_v2w_diffusers.models.checkpoint_format import load_native_checkpoint

    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(ValueError, match="folder without config.json"):
        load_post_trained_weights(str(folder), False, "tiny")
    with pytest.raises(ValueError, match="folder without config.json"):
        load_native_checkpoint(folder)


def test_resume_from_checkpoint_rebuilds_the_run_from_its_storedtiny_config(prepared_dataset, tmp_path):
    out = tmp_path / "run"
    Trainer(
        tiny_config(
            prepared_dataset,
            out,
            max_iter=2,
            save_iter=1,
            train_architecture="lora",
            lora_rank=4,
            num_frames=9,
            learning_rate=5e-4,
        )
    ).train()
    model_file = out / "checkpoints" / "model" / "iter_000000001.pt"
    config = parse_train_flags(
        ["--resume_from_checkpoint", str(model_file), "--max_iter", "3", "--dataset_path", str(prepared_dataset)]
    )
    assert (config.model, config.train_architecture, config.lora_rank, config.num_frames) == ("tiny", "lora", 4, 9)
    assert (config.learning_rate, config.max_iter, config.output_dir) == (5e-4, 3, str(out.absolute()))
    assert config.dataset_path == str(prepared_dataset)
    resumed = Trainer(config.replace(dataloader_num_workers=0))
    assert resumed.start_iter == 1 and len(resumed.train()) == 2


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (read from /proc: no extra dependency)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.slow  # 18 s; the 4-process signal test is in the slow set too, the launcher's in `make test`
def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(prepared_dataset, tmp_path):
    import os

    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = torchrun(
        "2",
        "29541",
        str(REPO / "train_video2world.py"),
        *endless_run_flags(prepared_dataset, out),
    )
    process, log = (
        subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True),
        [],
    )
    _wait_for_steps(process, log)
    workers = _children(process.pid)
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGTERM)  # one rank only, as a scheduler preempting one node would
    process.wait(timeout=120)
    text = "".join(log)
    stops = re.findall(r"Stopped by a signal after step (\d+);", text)  # ranks' lines may run together
    assert len(stops) == 2 and stops[0] == stops[1], text[-3000:]
    assert CheckpointDir(out).latest_iteration() == int(stops[0])
    assert text.count("Saved checkpoint") == 1


def test_a_disk_that_fills_up_during_the_write_gives_the_same_one_line_error(tmp_path, monkeypatch):
    """On a real 1 MiB filesystem (where this machine lets the test mount one): torch.save's own failure
    is recognised as a full disk, and nothing partial is left."""
    import shutil as shutil_module

    from cosmos_v2w_diffusers.training import checkpoint as checkpoint_module
    from cosmos_v2w_diffusers.training.checkpoint import CheckpointSpaceError

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs is not permitted here")
    try:
        checkpoints = CheckpointDir(small / "run")
        checkpoints.save(1, {part: {"x": torch.zeros(10)} for part in ("model", "optim", "scheduler", "trainer")})
        real_usage = shutil_module.disk_usage
        answers = iter([10**12])  # the check before writing is told there is room; the write finds out otherwise
        monkeypatch.setattr(
            checkpoint_module.shutil,
            "disk_usage",
            lambda p: real_usage(p)._replace(free=next(answers, real_usage(p).free)),
        )
        with pytest.raises(CheckpointSpaceError, match="No space left for checkpoint 2"):
            checkpoints.save(
                2, {part: {"x": torch.zeros(400_000)} for part in ("model", "optim", "scheduler", "trainer")}
            )
        assert checkpoints.latest_iteration() == 1
        assert sorted(p.name for p in (small / "run" / "checkpoints").rglob("*")) == sorted(
            ["model", "optim", "scheduler", "trainer", "latest_checkpoint.txt"] + ["iter_000000001.pt"] * 4
        )
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)

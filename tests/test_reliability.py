"""Faults a long run must survive: a clip corrupted mid-file, NaN losses, SIGTERM, poisoned embeddings."""

import pickle

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset_folder

from cosmos_v2w_diffusers import load_video2world_dataset
from cosmos_v2w_diffusers.data.folder import probe_video
from cosmos_v2w_diffusers.data.samples import ClipDecodeError, Video2WorldTrainDataset, read_frames
from cosmos_v2w_diffusers.presets import get_preset
from cosmos_v2w_diffusers.text_encoding import InvalidEmbeddingError, read_t5_pickle
from cosmos_v2w_diffusers.training import trainer as trainer_module
from cosmos_v2w_diffusers.training.checkpoint import CheckpointDir
from cosmos_v2w_diffusers.training.config import TrainConfig
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


def _config(dataset, output_dir, **overrides) -> TrainConfig:
    base = dict(model="tiny", dataset_path=str(dataset), output_dir=str(output_dir), dataloader_num_workers=0)
    return TrainConfig(**{**base, **overrides})


def test_training_skips_the_bad_clip_lists_it_and_stops_when_too_many_fail(corrupted_dataset, tmp_path):
    bad = str(corrupted_dataset / "videos" / "bikes.mp4")
    probe = Trainer(_config(corrupted_dataset, tmp_path / "probe", max_iter=1))
    steps = _failing_draw(probe.samples, bad) + 1
    trainer = Trainer(_config(corrupted_dataset, tmp_path / "run", max_iter=steps, save_iter=1000))
    losses = trainer.train()
    assert len(losses) == steps and all(np.isfinite(losses))
    assert (tmp_path / "run" / "skipped_clips.txt").read_text() == bad + "\n"

    strict = Trainer(_config(corrupted_dataset, tmp_path / "strict", max_iter=steps, max_skipped_clips=0))
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
    trainer = Trainer(_config(prepared_dataset, tmp_path / "run", max_iter=3, save_iter=2))
    before = {}
    trainer.after_step = lambda step: before.setdefault(step, {n: p.detach().clone() for n, p in trainer.trainable.items()})
    losses = trainer.train()
    assert np.isnan(losses[1]) and np.isfinite(losses[0]) and np.isfinite(losses[2])
    for name in trainer.trainable:  # step 1 changed nothing
        assert torch.equal(before[0][name], before[1][name]), name
    saved = torch.load(tmp_path / "run" / "checkpoints" / "model" / "iter_000000002.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in saved.values())

    poisoned_calls.update(range(100))
    calls.clear()
    stopping = Trainer(_config(prepared_dataset, tmp_path / "diverged", max_iter=10, max_nonfinite_steps=2))
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
    command = [sys.executable, str(REPO / "train_video2world.py"), "--model", "tiny", "--dataset_path", str(dataset),
               "--output_dir", str(out), "--max_iter", "100000", "--save_iter", "100000", "--dataloader_num_workers", "0"]
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
    Trainer(_config(prepared_dataset, out, max_iter=1, save_iter=1)).train()
    target = out / "checkpoints" / part / "iter_000000001.pt"
    torch.save({"payload": _RunsCode()}, target)
    capsys.readouterr()
    with pytest.raises(ValueError, match=f"{part}/iter_000000001.pt cannot be read"):
        Trainer(_config(prepared_dataset, out, max_iter=2))
    assert "pwned" not in capsys.readouterr().out


def test_resume_restores_rng_states_from_plain_tensors(prepared_dataset, tmp_path):
    import random

    out = tmp_path / "run"
    Trainer(_config(prepared_dataset, out, max_iter=1, save_iter=1)).train()
    saved = torch.load(out / "checkpoints" / "trainer" / "iter_000000001.pt", weights_only=True)["rng"]
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    Trainer(_config(prepared_dataset, out, max_iter=2))
    assert torch.equal(torch.get_rng_state(), saved["torch"])
    assert list(random.getstate()[1]) == saved["python"]["state"]
    assert np.array_equal(np.random.get_state()[1], saved["numpy"]["keys"].numpy())


def test_a_hostile_or_truncated_dit_path_is_refused_with_its_name(tmp_path, capsys):
    from cosmos_v2w_diffusers.checkpoint_format import load_native_checkpoint

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

import logging
import shutil
import sys

import decord
import numpy as np
import pytest
import torch
from conftest import PROMPT, make_dataset_folder

from cosmos_v2w_diffusers import Video2WorldTrainDataset, load_video2world_dataset
from cosmos_v2w_diffusers.data.demo_clips import export_clip
from cosmos_v2w_diffusers.data.folder import NoUsableVideosError
from cosmos_v2w_diffusers.data.hf_dataset import CaptionEncoder
from cosmos_v2w_diffusers.data.samples import resize_frames
from cosmos_v2w_diffusers.models.components import load_text_encoder
from cosmos_v2w_diffusers.models.latents import to_model_range
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.models.text_encoding import read_t5_pickle, write_t5_pickle

TINY = get_preset("tiny")
TINY_DIM = TINY.text_embed_dim


def test_prepare_data_cli_writes_nvidia_layout(tmp_path, video_paths):
    from cosmos_v2w_diffusers.cli.prepare_data import main as prepare_data

    # In this process (the `python -m` entry point runs in the next test, as a subprocess).
    root = make_dataset_folder(tmp_path / "D", video_paths, prepare=False)
    flags = ["--dataset_path", str(root), "--text_encoder", "tiny"]
    assert prepare_data([*flags, "--prompt", PROMPT]) == 0
    for name in video_paths:
        assert (root / "metas" / f"{name}.txt").read_text() == PROMPT
        embedding = read_t5_pickle(root / "t5_xxl" / f"{name}.pickle", TINY_DIM)
        assert embedding.dtype == np.float16 and embedding.ndim == 2
    # Existing captions and pickles are kept, as NVIDIA's script does; no --prompt reads metas/.
    (root / "metas" / "bikes.txt").write_text("Bikes riding by.")
    (root / "t5_xxl" / "bikes.pickle").unlink()
    before = (root / "t5_xxl" / "bigbuckbunny.pickle").stat().st_mtime_ns
    assert prepare_data(flags) == 0
    assert (root / "t5_xxl" / "bigbuckbunny.pickle").stat().st_mtime_ns == before
    tokenizer, encoder = load_text_encoder("tiny")
    assert read_t5_pickle(root / "t5_xxl" / "bikes.pickle", TINY_DIM).shape[0] == len(
        tokenizer("Bikes riding by.").input_ids
    )


def test_prepare_data_cli_fails_when_nothing_is_usable(tmp_path, monkeypatch, caplog):
    """`python -m cosmos_v2w_diffusers.prepare_data` (its module run as `-m` runs it, in this process) exits non-zero
    and names the bad file."""
    import runpy

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"")
    argv = ["prepare_data", "--dataset_path", str(tmp_path), "--prompt", "x", "--text_encoder", "tiny"]
    monkeypatch.setattr(sys, "argv", argv)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        runpy.run_module("cosmos_v2w_diffusers.prepare_data", run_name="__main__")
    assert exit_info.value.code != 0
    assert any("broken.mp4" in r.getMessage() and "0 bytes" in r.getMessage() for r in caplog.records)


def test_dataset_rows(prepared_dataset):
    table = load_video2world_dataset(prepared_dataset, embed_dim=TINY_DIM)
    rows = {r["video_path"].split("/")[-1]: r for r in table}
    assert rows["bigbuckbunny.mp4"]["num_frames"] == 132 and rows["bigbuckbunny.mp4"]["fps"] == 25
    assert (rows["bigbuckbunny.mp4"]["width"], rows["bigbuckbunny.mp4"]["height"]) == (1280, 720)
    assert rows["bikes.mp4"]["num_frames"] == 250
    assert (rows["bikes.mp4"]["width"], rows["bikes.mp4"]["height"]) == (640, 272)
    assert all(r["caption"] == PROMPT for r in table)
    # Embeddings come from the NVIDIA pickles.
    pickled = read_t5_pickle(prepared_dataset / "t5_xxl" / "bikes.pickle", TINY_DIM)
    np.testing.assert_array_equal(np.asarray(rows["bikes.mp4"]["t5_xxl"], dtype=np.float16), pickled)


def test_full_size_sample(prepared_dataset):
    samples = Video2WorldTrainDataset(load_video2world_dataset(prepared_dataset, embed_dim=TINY_DIM))
    sample = samples[0]
    assert sample["video"].shape == (3, 93, 704, 1280)
    assert sample["t5_text_embeddings"].shape == (512, TINY_DIM)


def test_frame_sampling_count_range_values_and_determinism(prepared_dataset):
    table = load_video2world_dataset(prepared_dataset, num_frames=17, embed_dim=TINY_DIM)
    make = lambda seed: Video2WorldTrainDataset(table, num_frames=17, height=64, width=112, seed=seed)  # noqa: E731
    samples = make(0)
    draws = [samples.draw(i) for i in range(40)]
    # Each epoch visits every clip once; starts stay inside {0 .. total-17}.
    assert sorted(r for r, _ in draws[:2]) == [0, 1]
    for row, start in draws:
        assert 0 <= start <= table[row]["num_frames"] - 17
    assert len({s for _, s in draws}) > 10  # random starts, not a constant

    item = samples[3]
    # Samples stay uint8 until the GPU: a quarter of float32's bytes through the DataLoader.
    assert item["video"].shape == (3, 17, 64, 112) and item["video"].dtype == torch.uint8
    assert item["video"].float().std() > 10
    scaled = to_model_range(item["video"])
    assert scaled.min() >= -1 and scaled.max() <= 1 and scaled[0, 0, 0, 0] == item["video"][0, 0, 0, 0] / 127.5 - 1
    # The frames are the consecutive ones the draw names, resized from the decoded video.
    reader = decord.VideoReader(item["video_path"])
    first = torch.from_numpy(reader[item["frame_start"]].asnumpy()).permute(2, 0, 1)[None]
    assert torch.equal(item["video"][:, 0], resize_frames(first, 64, 112)[:, 0])
    assert item["skipped_clips"] == ""

    again = make(0)[3]
    assert torch.equal(item["video"], again["video"]) and item["frame_start"] == again["frame_start"]
    assert [make(1).draw(i) for i in range(40)] != draws


def test_dataloader_with_workers_matches_direct_indexing(prepared_dataset):
    table = load_video2world_dataset(prepared_dataset, num_frames=9, embed_dim=TINY_DIM)
    samples = Video2WorldTrainDataset(table, num_frames=9, height=32, width=48, seed=3)
    loader = torch.utils.data.DataLoader(samples, batch_size=2, sampler=range(2, 6), num_workers=2)
    batches = list(loader)
    assert [b["video"].shape for b in batches] == [(2, 3, 9, 32, 48)] * 2
    assert torch.equal(batches[1]["video"][1], samples[5]["video"])


def test_second_map_is_a_cache_hit(tmp_path, video_paths):
    root = make_dataset_folder(tmp_path / "D", video_paths, prepare=False)
    for name in video_paths:
        (root / "metas").mkdir(exist_ok=True)
        (root / "metas" / f"{name}.txt").write_text(PROMPT)
    encoder = CaptionEncoder("tiny")
    cache = tmp_path / "hf_cache"
    first = load_video2world_dataset(root, text_encoder=encoder, embed_dim=TINY_DIM, cache_dir=cache)
    assert encoder.loads == 1
    encoder.free()
    second = load_video2world_dataset(root, text_encoder=encoder, embed_dim=TINY_DIM, cache_dir=cache)
    assert encoder.loads == 1, "the second .map must read the cache and load no encoder"
    assert first.cache_files == second.cache_files
    assert np.array_equal(np.asarray(first[0]["t5_xxl"]), np.asarray(second[0]["t5_xxl"]))
    # Editing an input invalidates the cache.
    write_t5_pickle(root / "t5_xxl" / "bikes.pickle", np.ones((3, TINY_DIM), np.float16))
    third = load_video2world_dataset(root, text_encoder=encoder, embed_dim=TINY_DIM, cache_dir=cache)
    bikes = [r for r in third if r["video_path"].endswith("bikes.mp4")][0]
    assert np.asarray(bikes["t5_xxl"]).shape == (3, TINY_DIM)


def _make_bad_inputs(root, video_paths):
    """One good video plus one of each kind of bad input; returns {file name: expected reason}."""
    videos, metas, t5 = root / "videos", root / "metas", root / "t5_xxl"
    data = video_paths["bikes"].read_bytes()
    (videos / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("these are my notes, not a video")
    reader = decord.VideoReader(str(video_paths["bikes"]))
    export_clip(list(reader.get_batch(list(range(20))).asnumpy()), videos / "short.mp4", fps=25)
    for name in ("wrong_shape", "wrong_dtype", "no_caption", "empty_caption"):
        shutil.copy(video_paths["bigbuckbunny"], videos / f"{name}.mp4")
    for name in ("truncated", "empty", "notes", "short", "wrong_shape", "wrong_dtype", "empty_caption"):
        (metas / f"{name}.txt").write_text(PROMPT)
    (metas / "empty_caption.txt").write_text("  \n")
    good = t5 / "bikes.pickle"
    for name in ("truncated", "empty", "notes", "short", "no_caption", "empty_caption"):
        shutil.copy(good, t5 / f"{name}.pickle")
    write_t5_pickle(t5 / "wrong_shape.pickle", np.zeros((5, TINY_DIM + 1), np.float16))
    import pickle

    with open(t5 / "wrong_dtype.pickle", "wb") as f:
        pickle.dump([np.zeros((5, TINY_DIM), np.int32)], f)
    return {
        "truncated.mp4": "cannot be decoded",
        "empty.mp4": "0 bytes",
        "notes.mp4": "not an MP4 video",
        "short.mp4": "has 20 frames, fewer than the 93",
        "wrong_shape.mp4": "embed_dim=33",
        "wrong_dtype.mp4": "dtype is int32",
        "no_caption.mp4": "is missing",
        "empty_caption.mp4": "is empty",
    }


def test_bad_inputs_are_reported_and_skipped(tmp_path, video_paths, caplog):
    root = make_dataset_folder(tmp_path / "D", {"bikes": video_paths["bikes"]})
    expected = _make_bad_inputs(root, video_paths)
    with caplog.at_level(logging.WARNING):
        table = load_video2world_dataset(root, embed_dim=TINY_DIM)
    assert [r["video_path"].split("/")[-1] for r in table] == ["bikes.mp4"]
    for name, reason in expected.items():
        lines = [m for m in caplog.messages if f"/{name}:" in m]
        assert len(lines) == 1, f"{name} not reported: {caplog.messages}"
        assert reason in lines[0], lines[0]


def test_missing_pickle_is_reported_without_an_encoder(tmp_path, video_paths, caplog):
    root = make_dataset_folder(tmp_path / "D", video_paths)
    (root / "t5_xxl" / "bikes.pickle").unlink()
    with caplog.at_level(logging.WARNING):
        table = load_video2world_dataset(root, embed_dim=TINY_DIM)
    assert len(table) == 1
    assert any("bikes.mp4" in m and "no t5_xxl/bikes.pickle" in m for m in caplog.messages)


def test_nothing_usable_raises_with_every_reason(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")
    (tmp_path / "videos" / "b.mp4").write_text("text")
    with pytest.raises(NoUsableVideosError) as info:
        load_video2world_dataset(tmp_path)
    assert "a.mp4" in str(info.value) and "b.mp4" in str(info.value)
    with pytest.raises(FileNotFoundError, match="videos"):
        load_video2world_dataset(tmp_path / "nowhere")


def test_prepare_data_fetches_a_hub_dataset_into_videos_offline(video_paths, tmp_path, monkeypatch):
    """The real huggingface_hub client, offline, against a Hugging Face cache laid out as a download leaves it."""
    from cosmos_v2w_diffusers.cli import prepare_data as prepare_data_cli
    from cosmos_v2w_diffusers.data import prepare_data

    cache, commit = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "datasets--nvidia--Cosmos-NeMo-Assets"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit / "nemo_diffusion_example_data"
    snapshot.mkdir(parents=True)
    for name, path in video_paths.items():
        shutil.copy(path, snapshot / f"{name}.mp4")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        prepare_data,
        "download_hub_dataset",
        lambda repo_id, dataset_path, cache_dir=None, _real=prepare_data.download_hub_dataset: _real(
            repo_id, dataset_path, cache
        ),
    )
    root = tmp_path / "datasets" / "cosmos_nemo_assets"
    assert (
        prepare_data_cli.main(
            [
                "--dataset_path",
                str(root),
                "--hub_dataset",
                "nvidia/Cosmos-NeMo-Assets",
                "--prompt",
                PROMPT,
                "--text_encoder",
                "tiny",
                "--num_frames",
                "17",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (root / "videos").iterdir()) == ["bigbuckbunny.mp4", "bikes.mp4"]
    assert (root / "videos" / "bikes.mp4").read_bytes() == video_paths["bikes"].read_bytes()
    assert sorted(p.name for p in (root / "t5_xxl").glob("*.pickle")) == ["bigbuckbunny.pickle", "bikes.pickle"]


def test_a_parquet_table_holding_the_clips_is_read_through_files_written_once(tmp_path, video_paths):
    """A Hub-style parquet dataset (`data/*.parquet`) whose video column holds each clip's bytes: each clip is
    written once, by its hash, under the cache and read from there; a row without bytes or caption is left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "table"
    (folder / "data").mkdir(parents=True)
    clip = video_paths["bikes"].read_bytes()
    videos = [{"bytes": clip, "path": "a.mp4"}, {"bytes": clip, "path": "b.mp4"}, {"bytes": None, "path": None}]
    pq.write_table(
        pa.table({"clip": videos, "caption": [PROMPT, "", "no clip"]}), folder / "data" / "train-00000.parquet"
    )
    cache = tmp_path / "cache"
    for _ in range(2):  # the second read finds the clip's file written
        table = load_video2world_dataset(
            folder,
            17,
            CaptionEncoder("tiny"),
            TINY_DIM,
            cache_dir=cache,
            video_column="clip",
            caption_column="caption",
        )
        assert table["caption"] == [PROMPT] and table[0]["num_frames"] == 250
        (written,) = (cache / "cosmos_v2w_clips").iterdir()
        assert table[0]["video_path"] == str(written) and written.read_bytes() == clip


def test_a_datasets_video_folder_trains_with_its_captions_encoded_once(tmp_path, video_paths):
    """diffusers' layout: clips beside a metadata.csv (`file_name`, caption), as `--dataset_name <folder>
    --caption_column caption`; a clip without a caption and a clip that is no video are reported and left out."""
    from conftest import tiny_config, train_to_the_end

    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a", "b", "uncaptioned"):
        shutil.copy(video_paths["bikes"], folder / f"{name}.mp4")
    (folder / "broken.mp4").write_bytes(b"not a video")
    (folder / "metadata.csv").write_text(
        f'file_name,caption\na.mp4,"{PROMPT}"\nb.mp4,"A video, with a comma."\nuncaptioned.mp4,\nbroken.mp4,x\n'
    )
    table = load_video2world_dataset(
        folder, 17, CaptionEncoder("tiny"), TINY_DIM, cache_dir=tmp_path / "cache", caption_column="caption"
    )
    assert sorted(table["caption"]) == ["A video of sks teal robot.", "A video, with a comma."]
    assert {len(np.asarray(e)) > 0 for e in table["t5_xxl"]} == {True}
    with pytest.raises(ValueError, match="--caption_column text: .* its columns are video, caption"):
        load_video2world_dataset(folder, 17, CaptionEncoder("tiny"), TINY_DIM, cache_dir=tmp_path / "cache")
    config = tiny_config(
        None, tmp_path / "out", dataset_path=None, dataset_name=str(folder), caption_column="caption", max_iter=2
    )
    trainer = train_to_the_end(config)
    assert len(trainer.history) == 2 and all(np.isfinite(trainer.history))

"""The dataset folder as a Hugging Face `datasets.Dataset`, with T5 embeddings added by a cached `.map`.

Rows come from `scan_dataset_folder` (bad files are reported and left out). The table is built with
`Dataset.from_generator`, whose cache key hashes the rows, so the same folder gives the same fingerprint
on every run; `.map` then keys its cache file on that fingerprint plus the text encoder's identity, so a
second run reads the embeddings from disk and encodes nothing. A video edited, or a pickle re-written,
changes its file signature and with it the fingerprint.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import torch

from ..models.text_encoding import MAX_TEXT_TOKENS, encode_prompts, read_t5_pickle
from .folder import SkippedFile, raise_if_empty, report_skipped, scan_dataset_folder
from .video_folder import is_video_folder, scan_video_folder

logger = logging.getLogger(__name__)

T5_COLUMN = "t5_xxl"


def _yield_rows(rows: list[dict], signatures: list[str]):
    # `signatures` is not read here: datasets hashes every generator argument into the cache key, so
    # passing the files' sizes and mtimes makes an edited video or pickle invalidate the cache.
    yield from rows


def file_signature(path: str) -> str:
    """Path, size and modification time: changes when a file is edited or replaced."""
    if not path:
        return ""
    stat = os.stat(path)
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, names, shapes and dtypes included: what a cache keyed on a
    model must see, since a model changed anywhere (a new revision under the same id) computes other
    outputs. About 1 s per GB of weights, once per run."""
    digest = hashlib.sha256()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


class CaptionEncoder:
    """The text encoder for captions that have no T5 pickle, loaded only when the `.map` has one to encode: every
    process of a run asks for the table, a cache hit encodes nothing, and T5-XXL is 11B parameters. Its identity,
    part of the cache key, is read from its files (a local folder's sizes and modification times, a Hub model's
    cached commit), not from loaded weights."""

    def __init__(self, name_or_path: str, device: str | torch.device = "cpu", **hub_kwargs):
        self.name_or_path, self.device, self.hub_kwargs = name_or_path, torch.device(device), hub_kwargs
        self.loads = 0
        self._loaded: tuple | None = None

    def identity(self) -> str:
        from huggingface_hub import try_to_load_from_cache

        from ..models.components import tiny_pretrained_path

        folder = Path(str(tiny_pretrained_path()) if self.name_or_path == "tiny" else self.name_or_path)
        if folder.is_dir():
            files = sorted(
                f for sub in ("text_encoder", "tokenizer") for f in (folder / sub).rglob("*") if f.is_file()
            )
            return "|".join(file_signature(str(f)) for f in files or sorted(folder.glob("*")))
        cached = try_to_load_from_cache(  # .../snapshots/<commit>/text_encoder/config.json once downloaded
            self.name_or_path,
            "text_encoder/config.json",
            self.hub_kwargs.get("cache_dir"),
            self.hub_kwargs.get("revision"),
        )
        return str(cached) if isinstance(cached, str) else f"{self.name_or_path}@{self.hub_kwargs.get('revision')}"

    def load(self) -> tuple:
        """(tokenizer, encoder), loaded on the first call: bf16 on a GPU, float32 on the CPU (as `prepare_data`)."""
        from ..models.components import load_text_encoder

        if self._loaded is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            logger.info("Loading text encoder %s to encode the captions (once: they are cached)", self.name_or_path)
            tokenizer, encoder = load_text_encoder(self.name_or_path, dtype, **self.hub_kwargs)
            self._loaded, self.loads = (tokenizer, encoder.to(self.device)), self.loads + 1
        return self._loaded

    def free(self) -> None:
        self._loaded = None


def _add_embeddings(batch: dict, text_encoder: CaptionEncoder | None, max_length: int, embed_dim: int) -> dict:
    """Batched `.map` function: read each row's NVIDIA pickle, or encode its caption when it has none."""
    embeddings: list[np.ndarray | None] = [
        read_t5_pickle(path, embed_dim) if path else None for path in batch["t5_path"]
    ]
    missing = [i for i, e in enumerate(embeddings) if e is None]
    if missing:
        assert text_encoder is not None, "rows without a pickle are left out when there is no encoder"
        tokenizer, encoder = text_encoder.load()
        encoded = encode_prompts([batch["caption"][i] for i in missing], tokenizer, encoder, max_length)
        for i, embedding in zip(missing, encoded):
            embeddings[i] = embedding
    return {T5_COLUMN: embeddings}


class CacheFullError(ValueError):
    """datasets' cache ran out of space; the message names the folder and `HF_DATASETS_CACHE`."""


@contextlib.contextmanager
def reported_cache_space(cache_dir: str | os.PathLike | None) -> Iterator[None]:
    """Turn running out of space in datasets' cache into one line naming the folder and `HF_DATASETS_CACHE`.
    datasets wraps the `OSError` of a table it generates in its own `DatasetGenerationError`, so the cause is
    looked for down the exception's chain."""
    try:
        yield
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not (isinstance(cause, OSError) and cause.errno == errno.ENOSPC):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        where = cache_dir or datasets.config.HF_DATASETS_CACHE
        raise CacheFullError(
            f"No space left in datasets' cache {where}: free space there, or set HF_DATASETS_CACHE to a folder on a "
            f"larger disk; then run the same command again."
        ) from None


def load_video2world_dataset(
    dataset_path: str | os.PathLike,
    num_frames: int = 93,
    text_encoder: CaptionEncoder | None = None,
    embed_dim: int = 1024,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    max_text_tokens: int = MAX_TEXT_TOKENS,
    video_column: str = "video",
    caption_column: str = "text",
) -> datasets.Dataset:
    """One row per usable video of a dataset folder: path, caption, frame count, fps, size, T5 embedding.

    Args:
        dataset_path: NVIDIA's layout (`videos/`, `metas/` and, optionally, `t5_xxl/`), or a `datasets` video
            table (a `metadata.csv` naming each clip's `file_name` and its caption, or parquet files holding the
            clips; `video_folder.py`).
        num_frames: frames a training sample takes; shorter clips are skipped.
        text_encoder: encodes captions that have no `t5_xxl/<name>.pickle` (all of a video folder's). Without it
            such videos are skipped (with the reason logged): run `prepare_data` first, or pass an encoder.
        embed_dim: the text encoder's width (1024 for T5-XXL); pickles of another width are skipped.
        cache_dir: where datasets keeps its Arrow cache (default: datasets' `HF_DATASETS_CACHE`).
        video_column, caption_column: a video folder's columns (`--video_column`, `--caption_column`).

    The `t5_xxl` column holds each caption's trimmed `[n_tokens, embed_dim]` float16 embedding.
    """
    if is_video_folder(dataset_path):
        rows, skipped = scan_video_folder(dataset_path, num_frames, video_column, caption_column, cache_dir)
    else:
        rows, skipped = scan_dataset_folder(dataset_path, min_frames=num_frames, embed_dim=embed_dim)
    if text_encoder is None:
        fix = f"run `python -m cosmos_v2w_diffusers.prepare_data --dataset_path {dataset_path}` or pass a text_encoder"
        skipped += [
            SkippedFile(row["video_path"], f"no t5_xxl/{Path(row['video_path']).stem}.pickle; {fix}")
            for row in rows
            if not row["t5_path"]
        ]
        rows = [row for row in rows if row["t5_path"]]
    report_skipped(skipped)
    raise_if_empty(rows, skipped, dataset_path)

    features = datasets.Features(
        video_path=datasets.Value("string"),
        caption=datasets.Value("string"),
        num_frames=datasets.Value("int32"),
        fps=datasets.Value("float32"),
        width=datasets.Value("int32"),
        height=datasets.Value("int32"),
        t5_path=datasets.Value("string"),
    )
    signatures = [file_signature(r["video_path"]) + "|" + file_signature(r["t5_path"]) for r in rows]
    with reported_cache_space(cache_dir):  # both write Arrow files there
        table = datasets.Dataset.from_generator(
            _yield_rows,
            gen_kwargs=dict(rows=rows, signatures=signatures),
            features=features,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
        identity = json.dumps(
            [rows, signatures, text_encoder.identity() if text_encoder else None, max_text_tokens, embed_dim]
        )
        return table.map(
            _add_embeddings,
            batched=True,
            batch_size=batch_size,
            fn_kwargs=dict(text_encoder=text_encoder, max_length=max_text_tokens, embed_dim=embed_dim),
            features=datasets.Features(
                {**features, T5_COLUMN: datasets.Array2D(shape=(None, embed_dim), dtype="float16")}
            ),
            new_fingerprint=hashlib.sha256(identity.encode()).hexdigest()[:16],
            desc="T5 embeddings",
        )


def hub_dataset_folder(repo_id: str, cache_dir: str | None = None, config_name: str | None = None) -> str:
    """`--dataset_name`: a Hub dataset repo (NVIDIA's layout or a `datasets` video table) as a local folder,
    downloaded once, then read from huggingface_hub's cache by `load_video2world_dataset` like any `--dataset_path`;
    with `config_name` (`--dataset_config_name`), the repo's folder of that name. The repo's files are fetched as
    they are: datasets' `load_dataset` reads tables, not a folder of mp4s beside their captions and T5 pickles."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = [f"{config_name}/*"] if config_name else None
    try:
        folder = Path(snapshot_download(repo_id, repo_type="dataset", cache_dir=cache_dir, allow_patterns=patterns))
    except LocalEntryNotFoundError:  # an OSError, which would otherwise read as a disk's
        cache = f"--cache_dir {cache_dir}" if cache_dir else "the Hugging Face cache"
        raise ValueError(
            f"--dataset_name {repo_id}: the Hub cannot be reached (or HF_HUB_OFFLINE is set) and {cache} "
            f"does not hold it: download it where the Hub is reachable (`hf download {repo_id} --repo-type "
            f"dataset`), pass the --cache_dir that holds it, or a local folder as --dataset_name."
        ) from None
    if config_name and not (folder / config_name).is_dir():
        raise ValueError(f"--dataset_config_name {config_name}: {repo_id} has no folder of that name.")
    return str(folder / config_name) if config_name else str(folder)

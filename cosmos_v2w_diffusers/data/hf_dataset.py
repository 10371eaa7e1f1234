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

from ..text_encoding import MAX_TEXT_TOKENS, encode_prompts, read_t5_pickle
from .folder import SkippedFile, raise_if_empty, report_skipped, scan_dataset_folder

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


def _encoder_identity(tokenizer, text_encoder) -> str:
    """What a cached embedding depends on: the text encoder's config and weights, and its tokenizer."""
    if text_encoder is None:
        return "no-encoder"
    return f"{text_encoder.config.to_json_string()}|{weights_hash(text_encoder)}|{tokenizer.name_or_path}"


def _add_embeddings(batch: dict, tokenizer, text_encoder, max_length: int, embed_dim: int) -> dict:
    """Batched `.map` function: read each row's NVIDIA pickle, or encode its caption when it has none."""
    embeddings: list[np.ndarray | None] = [
        read_t5_pickle(path, embed_dim) if path else None for path in batch["t5_path"]
    ]
    missing = [i for i, e in enumerate(embeddings) if e is None]
    if missing:
        encoded = encode_prompts([batch["caption"][i] for i in missing], tokenizer, text_encoder, max_length)
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
    tokenizer=None,
    text_encoder: torch.nn.Module | None = None,
    embed_dim: int = 1024,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    max_text_tokens: int = MAX_TEXT_TOKENS,
) -> datasets.Dataset:
    """One row per usable video of an NVIDIA-layout folder: path, caption, frame count, fps, size, T5 embedding.

    Args:
        dataset_path: folder with `videos/`, `metas/` and, optionally, `t5_xxl/`.
        num_frames: frames a training sample takes; shorter clips are skipped.
        tokenizer, text_encoder: encode captions that have no `t5_xxl/<name>.pickle`. Without them such
            videos are skipped (with the reason logged): run `prepare_data` first, or pass an encoder.
        embed_dim: the text encoder's width (1024 for T5-XXL); pickles of another width are skipped.
        cache_dir: where datasets keeps its Arrow cache (default: datasets' `HF_DATASETS_CACHE`).

    The `t5_xxl` column holds each caption's trimmed `[n_tokens, embed_dim]` float16 embedding.
    """
    if text_encoder is not None:
        embed_dim = text_encoder.config.d_model
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
            [rows, signatures, _encoder_identity(tokenizer, text_encoder), max_text_tokens, embed_dim]
        )
        return table.map(
            _add_embeddings,
            batched=True,
            batch_size=batch_size,
            fn_kwargs=dict(
                tokenizer=tokenizer, text_encoder=text_encoder, max_length=max_text_tokens, embed_dim=embed_dim
            ),
            features=datasets.Features(
                {**features, T5_COLUMN: datasets.Array2D(shape=(None, embed_dim), dtype="float16")}
            ),
            new_fingerprint=hashlib.sha256(identity.encode()).hexdigest()[:16],
            desc="T5 embeddings",
        )


def hub_dataset_folder(repo_id: str, cache_dir: str | None = None, config_name: str | None = None) -> str:
    """`--dataset_name`: a Hub dataset repo in NVIDIA's layout, as a local folder (downloaded once, then read from
    huggingface_hub's cache) that `load_video2world_dataset` reads like any `--dataset_path`; with `config_name`
    (`--dataset_config_name`), the repo's folder of that name. datasets' `load_dataset` reads tables, not a folder
    of mp4s beside their captions and T5 pickles, so the repo's files are fetched as they are."""
    from huggingface_hub import snapshot_download

    patterns = [f"{config_name}/*"] if config_name else None
    folder = Path(snapshot_download(repo_id, repo_type="dataset", cache_dir=cache_dir, allow_patterns=patterns))
    if config_name and not (folder / config_name).is_dir():
        raise ValueError(f"--dataset_config_name {config_name}: {repo_id} has no folder of that name.")
    return str(folder / config_name) if config_name else str(folder)

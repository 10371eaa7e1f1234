"""Write NVIDIA's `metas/` captions and `t5_xxl/` pickles for a folder of videos.

The counterpart of cosmos-predict2's `scripts/get_t5_embeddings_from_cosmos_nemo_assets.py`; a folder
prepared by either tool works with both.

    python -m cosmos_v2w_diffusers.prepare_data --dataset_path datasets/cosmos_nemo_assets \
        --prompt "A video of sks teal robot."

Without `--prompt`, each video's caption is read from its existing `metas/<name>.txt`. Existing pickles
are kept (as NVIDIA's script does); videos that cannot be used are listed with the reason. The command
exits non-zero only when no usable video remains.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models.text_encoding import (
    MAX_TEXT_TOKENS,
    encode_prompts,
    stale_embedding_reason,
    write_t5_pickle,
)
from ..utils.io_utils import atomic_write
from .folder import (
    list_videos,
    raise_if_empty,
    report_skipped,
    scan_dataset_folder,
)

logger = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "google-t5/t5-11b"
T5_XXL_WIDTH = 1024  # what existing pickles are checked against (the tiny encoder's own width with `tiny`)


def download_hub_dataset(repo_id: str, dataset_path: str | Path, cache_dir: str | Path | None = None) -> int:
    """Fetch a Hub dataset's mp4s and lay them out as `<dataset_path>/videos/`; returns how many were placed.

    `huggingface_hub.snapshot_download` does the fetching (resumable, cached, offline-aware); what it cannot
    do is the layout NVIDIA's seed does by hand (`mv nemo_diffusion_example_data videos`): every mp4 of the
    snapshot, in any subfolder, is copied into `videos/` under its own name. Clips already there are kept.
    """
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns="*.mp4*", cache_dir=cache_dir))
    clips = sorted(p for p in snapshot.rglob("*") if p.suffix.lower() == ".mp4" and p.is_file())
    if not clips:
        raise FileNotFoundError(f"The Hub dataset {repo_id} has no .mp4 files; pass one that holds videos.")
    names = [clip.name for clip in clips]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(
            f"The Hub dataset {repo_id} has several clips named {clashes[0]}: rename them, then lay them out by hand."
        )
    videos = Path(dataset_path) / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    placed = 0
    for clip in clips:
        target = videos / clip.name
        if not target.exists():
            with atomic_write(target) as f, open(clip, "rb") as source:  # a cut copy never looks like a clip
                shutil.copyfileobj(source, f)
            placed += 1
    logger.info("Placed %d of %d clips from %s in %s", placed, len(clips), repo_id, videos)
    return placed


def write_missing_captions(dataset_path: Path, prompt: str) -> int:
    """Write `metas/<name>.txt` = prompt for every video that has none; returns how many were written."""
    written = 0
    for video in list_videos(dataset_path):
        meta = dataset_path / "metas" / f"{video.stem}.txt"
        if not meta.exists():
            with atomic_write(meta, "w") as f:
                f.write(prompt)
            written += 1
    return written


def prepare_dataset(
    dataset_path: str | Path,
    prompt: str | None = None,
    text_encoder: str = DEFAULT_TEXT_ENCODER,
    num_frames: int = 93,
    batch_size: int = 8,
    max_length: int = MAX_TEXT_TOKENS,
    text_encoder_flag: str = "--text_encoder",
) -> tuple[int, int]:
    """Caption and embed a dataset folder; returns (usable videos, pickles written).

    `num_frames` is the clip length training will ask for (the recipe's 93): shorter clips are still
    prepared, with a warning that training at that length will skip them. Existing pickles that training
    would refuse (wrong shape or dtype, NaN/Inf) are reported with the fix.
    """
    from ..models.components import hub_source, load_text_encoder
    from ..models.presets import get_preset

    dataset_path = Path(dataset_path)
    if prompt is not None:
        logger.info("Wrote %d caption files", write_missing_captions(dataset_path, prompt))
    embed_dim = get_preset("tiny").text_embed_dim if text_encoder == "tiny" else T5_XXL_WIDTH
    rows, skipped = scan_dataset_folder(dataset_path, min_frames=1, embed_dim=embed_dim, check_stale=False)
    report_skipped(skipped)
    raise_if_empty(rows, skipped, dataset_path)
    for row in rows:
        if row["num_frames"] < num_frames:
            logger.warning(
                "%s has %d frames, fewer than the %d a training sample takes: prepared, but training at %d frames "
                "will skip it (train with a --num_frames of the form 4k+1 up to %d to use it).",
                row["video_path"],
                row["num_frames"],
                num_frames,
                num_frames,
                row["num_frames"],
            )

    for row in rows:  # a pickle whose caption (or encoder) changed since we wrote it is encoded again
        stale = row["t5_path"] and stale_embedding_reason(row["t5_path"], row["caption"], text_encoder)
        if stale:
            logger.warning("Re-encoding: %s", stale.split(";")[0])
            row["t5_path"] = ""
    todo = [row for row in rows if not row["t5_path"]]
    if not todo:
        logger.info("All %d usable videos already have T5 embeddings", len(rows))
        return len(rows), 0
    source = {} if text_encoder == "tiny" else hub_source(text_encoder, text_encoder_flag)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    logger.info("Loading text encoder %s on %s (%s)", text_encoder, device, dtype)
    tokenizer, encoder = load_text_encoder(text_encoder, torch_dtype=dtype, **source)
    encoder.to(device)

    # Identical captions (the usual case: one prompt for a whole folder) are encoded once.
    captions = sorted({row["caption"] for row in todo})
    embeddings: dict = {}
    with tqdm(total=len(captions), desc="Encoding captions", unit="caption") as progress:
        for i in range(0, len(captions), batch_size):
            chunk = captions[i : i + batch_size]
            embeddings.update(zip(chunk, encode_prompts(chunk, tokenizer, encoder, max_length)))
            progress.update(len(chunk))
    for row in tqdm(todo, desc="Writing t5_xxl pickles", unit="file"):
        pickle_path = dataset_path / "t5_xxl" / f"{Path(row['video_path']).stem}.pickle"
        write_t5_pickle(pickle_path, embeddings[row["caption"]], row["caption"], text_encoder)
    return len(rows), len(todo)

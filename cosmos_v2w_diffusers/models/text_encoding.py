"""T5 text embeddings: encoding, padding, and NVIDIA's `t5_xxl/<name>.pickle` files.

One encoder path serves data preparation, the dataset's `.map` and the pipeline, so a caption embedded
for training and the same prompt embedded for sampling are bit-identical.

NVIDIA's pickle (cosmos-predict2 `scripts/get_t5_embeddings_from_cosmos_nemo_assets.py`): a Python list
holding one float16 array of shape `[n_tokens, 1024]`, trimmed to the prompt's real token count (EOS
included). Loading zero-pads it to 512 rows.

Beside each pickle we write, `<name>.json` records what it encodes: hashes of the caption and of the pickle,
and the text encoder. NVIDIA's format has no room for it, and without it a caption edited after
`prepare_data` would keep its old embedding unnoticed. Pickles without a record (NVIDIA's script's) are
taken as they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..choices import MAX_TEXT_TOKENS
from ..utils.io_utils import atomic_write, read_regular_file
from .presets import get_preset


class InvalidEmbeddingError(ValueError):
    """A T5 pickle that is not in NVIDIA's format."""


def _t5_hidden_states(
    prompts: list[str], tokenizer, text_encoder, max_length: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, max_length, d]` hidden states of the padded, attention-masked prompts, and the `[B, max_length]` mask,
    on `device` (default: the encoder's). An offloaded encoder's weights sit on the CPU or the meta device until
    its forward moves them, so a pipeline passes its execution device."""
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    device = device or next(text_encoder.parameters()).device
    mask = tokens.attention_mask.to(device)
    with torch.no_grad():
        hidden = text_encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
    return hidden, mask


def encode_prompts(
    prompts: list[str], tokenizer, text_encoder: torch.nn.Module, max_length: int = MAX_TEXT_TOKENS
) -> list[np.ndarray]:
    """One float32 `[n_tokens, d]` array per prompt, trimmed to its real length (EOS included).

    Written to NVIDIA's pickles as float16.
    """
    hidden, mask = _t5_hidden_states(prompts, tokenizer, text_encoder, max_length)
    return [hidden[i, :n].float().cpu().numpy() for i, n in enumerate(mask.sum(dim=1).tolist())]


def embed_prompts(
    prompts: list[str],
    tokenizer,
    text_encoder: torch.nn.Module,
    max_length: int = MAX_TEXT_TOKENS,
    device: torch.device | None = None,
) -> torch.Tensor:
    """`[B, max_length, d]` embeddings with zeros past each prompt's length, on `device` (default: the encoder's):
    what the transformer consumes (no attention mask reaches it)."""
    hidden, mask = _t5_hidden_states(prompts, tokenizer, text_encoder, max_length, device)
    return hidden * mask[..., None].to(hidden.device, hidden.dtype)


def pad_embedding(embedding: np.ndarray | torch.Tensor, max_length: int = MAX_TEXT_TOKENS) -> torch.Tensor:
    """Zero-pad a trimmed `[n_tokens, d]` embedding to `[max_length, d]` float32."""
    embedding = torch.as_tensor(np.asarray(embedding, dtype=np.float32))
    padded = embedding.new_zeros(max_length, embedding.shape[-1])
    n = min(embedding.shape[0], max_length)
    padded[:n] = embedding[:n]
    return padded


class _ArrayOnlyUnpickler(pickle.Unpickler):
    # An embedding pickle has no business constructing anything but numpy arrays; refusing other classes
    # keeps a malicious or corrupted file from running code when a dataset is loaded.
    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refuses to construct {module}.{name}")
        return super().find_class(module, name)


def _max_pickle_bytes(embed_dim: int) -> int:
    return MAX_TEXT_TOKENS * embed_dim * 4 + 65536  # a float32 array of the most tokens, plus pickle framing


def read_t5_pickle(path: str | os.PathLike, embed_dim: int) -> np.ndarray:
    """Read and validate an NVIDIA T5 pickle; returns the trimmed `[n_tokens, embed_dim]` array."""
    fix = "delete it and re-run `python -m cosmos_v2w_diffusers.prepare_data` to re-encode the caption"
    try:
        data = read_regular_file(path, _max_pickle_bytes(embed_dim))  # a FIFO or a huge file is refused, not read
        content = _ArrayOnlyUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # any failure to unpickle is the same problem for the user: a broken file
        raise InvalidEmbeddingError(f"{path}: cannot be read as a T5 embedding pickle ({exc}); {fix}") from exc
    if not isinstance(content, (list, tuple)) or len(content) != 1 or not isinstance(content[0], np.ndarray):
        raise InvalidEmbeddingError(
            f"{path}: expected a list holding one numpy array (NVIDIA's format), got {type(content).__name__}; {fix}"
        )
    array = content[0]
    if array.dtype not in (np.float16, np.float32):
        raise InvalidEmbeddingError(f"{path}: embedding dtype is {array.dtype}, expected float16 or float32; {fix}")
    if array.ndim == 2 and 1 <= array.shape[0] <= MAX_TEXT_TOKENS and array.shape[1] != embed_dim:
        raise InvalidEmbeddingError(
            f"{path}: embeddings {array.shape[1]} wide where {embed_dim} are expected: a folder prepared with another "
            f"text encoder (--text_encoder tiny writes {get_preset('tiny').text_embed_dim}) is read with "
            f"embed_dim={array.shape[1]} (training: the matching --model), or prepared again with the encoder you "
            "train with (`python -m cosmos_v2w_diffusers.prepare_data --text_encoder ...`)"
        )
    if array.ndim != 2 or not 1 <= array.shape[0] <= MAX_TEXT_TOKENS:
        raise InvalidEmbeddingError(
            f"{path}: embedding shape is {tuple(array.shape)}, expected [n_tokens <= {MAX_TEXT_TOKENS}, {embed_dim}]; "
            f"{fix}"
        )
    if not np.isfinite(array).all():
        raise InvalidEmbeddingError(f"{path}: embedding holds NaN or Inf values, which would poison training; {fix}")
    return array


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def embedding_record_path(pickle_path: str | os.PathLike) -> Path:
    """`t5_xxl/<name>.json`: what `t5_xxl/<name>.pickle` encodes (see the module docstring)."""
    return Path(pickle_path).with_suffix(".json")


def write_t5_pickle(
    path: str | os.PathLike, embedding: np.ndarray, caption: str | None = None, text_encoder: str | None = None
) -> None:
    """Write one trimmed embedding in NVIDIA's format, atomically; with `caption`, also its record."""
    data = pickle.dumps([np.asarray(embedding, dtype=np.float16)])
    with atomic_write(Path(path)) as f:
        f.write(data)
    if caption is not None:
        record = {
            "caption_sha256": _sha256(caption.encode()),
            "pickle_sha256": _sha256(data),
            "text_encoder": text_encoder,
        }
        with atomic_write(embedding_record_path(path), "w") as f:
            json.dump(record, f)


def stale_embedding_reason(path: str | os.PathLike, caption: str, text_encoder: str | None = None) -> str | None:
    """Why the pickle at `path` no longer encodes `caption` (with `text_encoder`: by that encoder), or None.

    Only a record that belongs to the pickle (its hash matches) is believed: a pickle replaced by another
    tool, or one that never had a record, is taken as it is. A record that is there but damaged (cut short,
    `{}`, not a file) may hide an edited caption, so its pickle is reported as stale."""
    record_path = embedding_record_path(path)
    fix = "re-run `python -m cosmos_v2w_diffusers.prepare_data` to re-encode it"
    if not record_path.exists() and not record_path.is_symlink():
        return None
    try:
        record = json.loads(read_regular_file(record_path, max_bytes=4096))
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in _RECORD_HASHES):
            raise ValueError("not a record of ours")
    except (OSError, ValueError) as exc:
        return f"{record_path} is damaged ({str(exc).splitlines()[0][:200]!r}), so {path} may be stale; {fix}"
    try:
        pickle_hash = _sha256(read_regular_file(path, max_bytes=_max_pickle_bytes(4096)))
    except (OSError, ValueError):
        return None  # the pickle itself is checked, and reported, by `read_t5_pickle`
    if record["pickle_sha256"] != pickle_hash:
        return None
    if record["caption_sha256"] != _sha256(caption.encode()):
        return f"{path} encodes an earlier caption, not the one in its metas/ file now; {fix}"
    if text_encoder is not None and record.get("text_encoder") != text_encoder:
        return f"{path} was encoded by {record.get('text_encoder')!r}, not {text_encoder}; {fix}"
    return None


_RECORD_HASHES = ("caption_sha256", "pickle_sha256")

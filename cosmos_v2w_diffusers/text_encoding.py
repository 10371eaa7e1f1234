"""T5 text embeddings: encoding, padding, and NVIDIA's `t5_xxl/<name>.pickle` files.

One encoder path serves data preparation, the dataset's `.map` and the pipeline, so a caption embedded
for training and the same prompt embedded for sampling are bit-identical.

NVIDIA's pickle (cosmos-predict2 `scripts/get_t5_embeddings_from_cosmos_nemo_assets.py`): a Python list
holding one float16 array of shape `[n_tokens, 1024]`, trimmed to the prompt's real token count (EOS
included). Loading zero-pads it to 512 rows.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .io_utils import atomic_write

MAX_TEXT_TOKENS = 512


class InvalidEmbeddingError(ValueError):
    """A T5 pickle that is not in NVIDIA's format."""


def _t5_hidden_states(prompts: list[str], tokenizer, text_encoder, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, max_length, d]` hidden states of the padded, attention-masked prompts, and the `[B, max_length]` mask."""
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
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
    prompts: list[str], tokenizer, text_encoder: torch.nn.Module, max_length: int = MAX_TEXT_TOKENS
) -> torch.Tensor:
    """`[B, max_length, d]` embeddings with zeros past each prompt's length: what the transformer consumes
    (no attention mask reaches it)."""
    hidden, mask = _t5_hidden_states(prompts, tokenizer, text_encoder, max_length)
    return hidden * mask[..., None].to(hidden.dtype)


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


def read_t5_pickle(path: str | os.PathLike, embed_dim: int) -> np.ndarray:
    """Read and validate an NVIDIA T5 pickle; returns the trimmed `[n_tokens, embed_dim]` array."""
    fix = "delete it and re-run `python -m cosmos_v2w_diffusers.prepare_data` to re-encode the caption"
    try:
        with open(path, "rb") as f:
            content = _ArrayOnlyUnpickler(f).load()
    except Exception as exc:  # any failure to unpickle is the same problem for the user: a broken file
        raise InvalidEmbeddingError(f"{path}: cannot be read as a T5 embedding pickle ({exc}); {fix}") from exc
    if not isinstance(content, (list, tuple)) or len(content) != 1 or not isinstance(content[0], np.ndarray):
        raise InvalidEmbeddingError(
            f"{path}: expected a list holding one numpy array (NVIDIA's format), got {type(content).__name__}; {fix}"
        )
    array = content[0]
    if array.dtype not in (np.float16, np.float32):
        raise InvalidEmbeddingError(f"{path}: embedding dtype is {array.dtype}, expected float16 or float32; {fix}")
    if array.ndim != 2 or array.shape[1] != embed_dim or not 1 <= array.shape[0] <= MAX_TEXT_TOKENS:
        raise InvalidEmbeddingError(
            f"{path}: embedding shape is {tuple(array.shape)}, expected [n_tokens <= {MAX_TEXT_TOKENS}, {embed_dim}] "
            f"(is it from a different text encoder?); {fix}"
        )
    if not np.isfinite(array).all():
        raise InvalidEmbeddingError(f"{path}: embedding holds NaN or Inf values, which would poison training; {fix}")
    return array


def write_t5_pickle(path: str | os.PathLike, embedding: np.ndarray) -> None:
    """Write one trimmed embedding in NVIDIA's format, atomically."""
    with atomic_write(Path(path)) as f:
        pickle.dump([np.asarray(embedding, dtype=np.float16)], f)

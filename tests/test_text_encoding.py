import pickle

import numpy as np
import pytest
import torch

from cosmos_v2w_diffusers.models.components import load_text_encoder
from cosmos_v2w_diffusers.models.text_encoding import (
    InvalidEmbeddingError,
    embed_prompts,
    encode_prompts,
    pad_embedding,
    read_t5_pickle,
    write_t5_pickle,
)


@pytest.fixture(scope="module")
def tiny_encoder():
    return load_text_encoder("tiny")


def test_encoding_is_trimmed_to_the_real_token_count(tiny_encoder):
    tokenizer, encoder = tiny_encoder
    prompts = ["A video of sks teal robot.", "hi"]
    encoded = encode_prompts(prompts, tokenizer, encoder)
    lengths = [len(tokenizer(p).input_ids) for p in prompts]  # EOS included
    assert [e.shape for e in encoded] == [(n, encoder.config.d_model) for n in lengths]
    # Same numbers as one full, masked forward pass; the padded form is zero past each length.
    tokens = tokenizer(prompts, padding="max_length", max_length=512, return_tensors="pt")
    with torch.no_grad():
        full = encoder(**tokens).last_hidden_state
    np.testing.assert_array_equal(encoded[0], full[0, : lengths[0]].numpy())
    padded = embed_prompts(prompts, tokenizer, encoder)
    assert padded.shape == (2, 512, encoder.config.d_model)
    for row, n in zip(range(2), lengths):
        assert torch.equal(padded[row, :n], full[row, :n]) and not padded[row, n:].any()
        assert torch.equal(pad_embedding(encoded[row]), padded[row])


def test_pickle_round_trip_and_nvidia_format(tmp_path, tiny_encoder):
    tokenizer, encoder = tiny_encoder
    (embedding,) = encode_prompts(["A video of sks teal robot."], tokenizer, encoder)
    path = tmp_path / "ours.pickle"
    write_t5_pickle(path, embedding)
    # What NVIDIA's training code reads: a plain pickle of a list with one float16 [n_tokens, d] array.
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert isinstance(raw, list) and len(raw) == 1
    assert raw[0].dtype == np.float16 and raw[0].shape == embedding.shape
    np.testing.assert_array_equal(read_t5_pickle(path, encoder.config.d_model), embedding.astype(np.float16))

    # A pickle written the way NVIDIA's script writes it (float32 output cast to float16, list of arrays).
    nvidia = [np.random.default_rng(0).standard_normal((12, 1024)).astype(np.float16)]
    with open(tmp_path / "nvidia.pickle", "wb") as f:
        pickle.dump(nvidia, f)
    loaded = read_t5_pickle(tmp_path / "nvidia.pickle", 1024)
    np.testing.assert_array_equal(loaded, nvidia[0])
    padded = pad_embedding(loaded)
    assert padded.shape == (512, 1024) and padded.dtype == torch.float32
    assert torch.equal(padded[12:], torch.zeros(500, 1024))
    assert torch.equal(padded[:12], torch.from_numpy(nvidia[0].astype(np.float32)))


@pytest.mark.parametrize(
    "content, match",
    [
        ([np.zeros((12, 16), np.float16)], "embed_dim=16"),
        ([np.zeros((600, 1024), np.float16)], "shape"),
        ([np.zeros((12, 1024), np.int64)], "dtype"),
        (np.zeros((12, 1024), np.float16), "list holding one numpy array"),
        ({"emb": 1}, "list holding one numpy array"),
    ],
)
def test_malformed_pickles_are_refused(tmp_path, content, match):
    path = tmp_path / "bad.pickle"
    with open(path, "wb") as f:
        pickle.dump(content, f)
    with pytest.raises(InvalidEmbeddingError, match=match) as info:
        read_t5_pickle(path, 1024)
    assert str(path) in str(info.value) and "prepare_data" in str(info.value)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pickle"
    with open(path, "wb") as f:
        pickle.dump([Evil()], f)
    with pytest.raises(InvalidEmbeddingError, match="cannot be read"):
        read_t5_pickle(path, 1024)

import inspect

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from cosmos_v2w_diffusers.models.components import (
    build_transformer,
    load_text_encoder,
    load_transformer,
    load_vae,
    save_tiny_pretrained,
    tiny_pretrained_path,
)
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.models.sample_shape import latent_shape, latent_tokens, vae_space_stride


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_2b_parameter_count_on_meta_device():
    model = build_transformer(get_preset("2B"), device="meta")
    assert next(model.parameters()).is_meta
    assert _count(model) == 1_956_413_440


def test_14b_parameter_count_on_meta_device():
    model = build_transformer(get_preset("14B"), device="meta")
    assert _count(model) == 14_265_285_632  # "about 14.27 B"
    assert model.config.rope_scale == (20 / 24, 2.0, 2.0)


def test_real_presets_point_at_nvidia_hub_ids():
    assert get_preset("2b").hub_id == "nvidia/Cosmos-Predict2-2B-Video2World"
    assert get_preset("14B").hub_id == "nvidia/Cosmos-Predict2-14B-Video2World"
    with pytest.raises(ValueError, match="Unknown model preset"):
        get_preset("7B")


def test_tiny_is_deterministic(tmp_path):
    a = save_tiny_pretrained(tmp_path / "a")
    b = save_tiny_pretrained(tmp_path / "b")
    for sub in ("transformer", "vae"):
        sa = load_file(next((a / sub).glob("*.safetensors")))
        sb = load_file(next((b / sub).glob("*.safetensors")))
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = save_tiny_pretrained(tmp_path / "c", seed=1)
    sc = load_file(next((c / "transformer").glob("*.safetensors")))
    sa = load_file(next((a / "transformer").glob("*.safetensors")))
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_latent_shape_follows_the_vae_and_tokens_stay_16_pixels_wide():
    """The Wan 2.1 VAE (diffusers' defaults) halves space three times, the tiny one twice; with the tiny
    transformer's 4x4 patches both make a token of 16x16 pixels."""
    defaults = {k: p.default for k, p in inspect.signature(AutoencoderKLWan.__init__).parameters.items()}
    assert latent_shape(defaults, 93, 704, 1280) == (16, 24, 88, 160)
    tiny = get_preset("tiny")
    tiny_vae = load_vae(tiny).config
    channels, frames, height, width = latent_shape(tiny_vae, tiny.num_frames, tiny.height, tiny.width)
    _, patch_h, patch_w = tiny.transformer_config["patch_size"]
    assert frames * (height // patch_h) * (width // patch_w) == latent_tokens(tiny.num_frames, tiny.height, tiny.width)
    assert vae_space_stride(defaults) * get_preset("2B").transformer_config["patch_size"][1] == 16


def test_tiny_loads_through_from_pretrained_and_runs():
    preset = get_preset("tiny")
    folder = tiny_pretrained_path()
    assert (folder / "model_index.json").exists() and (folder / "transformer" / "config.json").exists()
    transformer = load_transformer(preset)
    vae = load_vae(preset)
    tokenizer, encoder = load_text_encoder("tiny")
    ids = tokenizer(["A video of sks teal robot."], return_tensors="pt")
    text = encoder(**ids).last_hidden_state
    assert text.shape[-1] == transformer.config.text_embed_dim
    video = torch.rand(1, 3, preset.num_frames, preset.height, preset.width) * 2 - 1
    latents = vae.encode(video).latent_dist.mode()
    assert latents.shape == (1, *latent_shape(vae.config, preset.num_frames, preset.height, preset.width))
    assert latents.shape == (1, 16, 5, preset.height // 4, preset.width // 4)  # the tiny VAE: 4x in space
    b, c, t, h, w = latents.shape
    out = transformer(
        hidden_states=latents,
        timestep=torch.full((b, 1, t, 1, 1), 0.5),
        encoder_hidden_states=text,
        condition_mask=torch.zeros(b, 1, t, h, w),
        padding_mask=torch.zeros(1, 1, h, w),
    ).sample
    assert out.shape == latents.shape and torch.isfinite(out).all()


def test_wrong_size_checkpoint_is_refused(tmp_path):
    folder = save_tiny_pretrained(tmp_path / "tiny")
    with pytest.raises(ValueError, match="2B preset expects"):
        load_transformer(get_preset("2B"), str(folder))

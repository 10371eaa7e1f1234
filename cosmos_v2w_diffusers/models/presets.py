"""Model presets: the 2B and 14B Cosmos-Predict2 Video2World models, and a tiny one for CPU tests.

A preset is a plain record of numbers (architecture, sample size, training defaults); `models/components.py`
turns it into diffusers/transformers modules and loads their weights. No torch here: the CLIs' `--help`
reads these numbers.

Numbers: NVIDIA's recipe (its network and optimisation settings, listed in the README); configs are diffusers'
`scripts/convert_cosmos_to_diffusers.py` entries `Cosmos-2.0-Diffusion-{2B,14B}-Video2World`.
"""

from __future__ import annotations

from dataclasses import dataclass

_SHARED_TRANSFORMER_CONFIG = dict(
    in_channels=16 + 1,  # 16 latent channels + the condition-mask channel
    out_channels=16,
    attention_head_dim=128,
    mlp_ratio=4.0,
    text_embed_dim=1024,
    adaln_lora_dim=256,
    max_size=(128, 240, 240),
    patch_size=(1, 2, 2),
    concat_padding_mask=True,
    extra_pos_embed_type=None,
)


@dataclass(frozen=True)
class ModelPreset:
    """Everything that differs between model sizes: architecture, sample size and training defaults."""

    name: str
    transformer_config: dict
    hub_id: str | None
    # Sample size: 93 frames at 704x1280 (720p 16:9) for the real models.
    num_frames: int = 93
    height: int = 704
    width: int = 1280
    # Optimisation defaults (docs/recipe.md, `cosmos_nemo_assets` experiments).
    learning_rate: float = 2**-14.5
    weight_decay: float = 0.1
    lr_f_max: float = 0.6
    lora_rank: int = 16
    lora_alpha: int = 16
    max_iter: int = 1000
    save_iter: int = 500
    save_iter_lora: int = 200
    text_embed_dim: int = 1024

    @property
    def short_name(self) -> str:
        """`2b`, `14b`, `tiny`: NVIDIA's experiment names use the lower-case size."""
        return self.name.lower()


PRESETS: dict[str, ModelPreset] = {}


def _register(preset: ModelPreset) -> ModelPreset:
    PRESETS[preset.name] = preset
    return preset


_register(
    ModelPreset(
        name="2B",
        transformer_config=dict(
            _SHARED_TRANSFORMER_CONFIG, num_attention_heads=16, num_layers=28, rope_scale=(1.0, 3.0, 3.0)
        ),
        hub_id="nvidia/Cosmos-Predict2-2B-Video2World",
        weight_decay=0.1,
        lr_f_max=0.6,
        lora_rank=16,
        lora_alpha=16,
    )
)
_register(
    ModelPreset(
        name="14B",
        transformer_config=dict(
            _SHARED_TRANSFORMER_CONFIG, num_attention_heads=40, num_layers=36, rope_scale=(20 / 24, 2.0, 2.0)
        ),
        hub_id="nvidia/Cosmos-Predict2-14B-Video2World",
        weight_decay=0.2,
        lr_f_max=0.25,
        lora_rank=32,
        lora_alpha=32,
    )
)

# The tiny preset keeps the structural traits of the real one (17 input channels, 16 latent channels, the
# Wan VAE's 4x temporal compression, a token per 16x16 pixels, a T5 encoder) at sizes that run on a CPU in
# seconds. Its VAE compresses 4x in space where the real one does 8x, so its transformer takes 4x4 patches.
_TINY_TEXT_DIM = 32
_register(
    ModelPreset(
        name="tiny",
        transformer_config=dict(
            _SHARED_TRANSFORMER_CONFIG,
            num_attention_heads=4,
            attention_head_dim=32,
            num_layers=4,
            text_embed_dim=_TINY_TEXT_DIM,
            adaln_lora_dim=32,
            rope_scale=(1.0, 3.0, 3.0),
            patch_size=(1, 4, 4),
        ),
        hub_id=None,
        num_frames=17,
        height=64,
        width=112,
        # The tiny base model is far from converged: fine-tuning it takes a larger step than the real ones. On
        # the demo's clips, 1,500 steps at 1e-3 left the square fading away (PSNR 28.1 dB); 2,000 at 2e-3 kept
        # it within 3 pixels of the real one to the last frame (32.5 dB; with today's VAE: 0.8 pixels, 32.7 dB).
        learning_rate=2e-3,
        weight_decay=0.1,
        lr_f_max=0.6,
        lora_rank=4,
        lora_alpha=4,
        # The CPU demo: 2,000 steps on cached latents (about 2.5 minutes on 2 cores).
        max_iter=2000,
        save_iter=500,
        save_iter_lora=500,
        text_embed_dim=_TINY_TEXT_DIM,
    )
)


def get_preset(name: str) -> ModelPreset:
    """Look a preset up by name (`2B`, `14B` or `tiny`, case-insensitive)."""
    for key, preset in PRESETS.items():
        if key.lower() == name.lower():
            return preset
    raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}.")


# The tiny VAE: the Wan 2.1 VAE's structure (4x temporal compression, 16 latent channels) at 1/6 of its
# width, with one spatial halving fewer: 4x spatial compression, not 8x. At 64x112 pixels a latent of
# 8x14 carried too little of real footage: with 8x, the VAE reconstructed an unseen real clip at 19.8 dB
# after 1,900 steps; with 4x, 24.2 dB after 7,300 (tiny_vae_report.json). With 32 latent channels it reached
# 24.1 dB sooner, but the tiny transformer could not generate those latents (BENCHMARKS.md). 1.9 M parameters: 4 MB
# in float16; a 17x64x112 clip encodes and decodes in about a second on one CPU core. The shipped one is trained
# (`cli/tiny_model.py`); `components.save_tiny_pretrained` builds it random.
TINY_VAE_CONFIG = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[True, True])

"""NVIDIA's Video2World training objective (docs/recipe.md, "Objective").

Per sample: a noise level `sigma = exp(N(0, 1)) * sqrt(T_latent)`, or with probability 0.05
`exp(U(log 200, log 1e5))`; 1 or 2 conditioning latent frames; the whole T5 embedding zeroed with
probability 0.2 (for classifier-free guidance). The loss is

    10 * mean((x0 - x0_pred)^2 * (1 + sigma)^2 / sigma^2)      over ALL elements,

which on the generated frames is `10 * mean((F - (eps - x0))^2)`: a velocity target. The random draws
are separate from the loss so the loss is a pure function a test can check against the formula.
Source: cosmos-predict2 `cosmos_predict2/models/text2image_model.py` (`draw_training_sigma_and_epsilon`,
`get_per_sigma_loss_weights`) and `video2world_model.py` (conditioning frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.preconditioning import conditioning_mask, denoise

HIGH_SIGMA_PROBABILITY = 0.05
HIGH_SIGMA_RANGE = (200.0, 100000.0)
TEXT_DROPOUT_PROBABILITY = 0.2
LOSS_SCALE = 10.0
MAX_CONDITIONING_FRAMES = 2


@dataclass
class TrainingDraws:
    """The random choices of one training step, all of batch size B."""

    noise: torch.Tensor  # [B, C, T, H, W] standard normal
    sigma: torch.Tensor  # [B]
    num_cond_frames: torch.Tensor  # [B] in {1, 2}
    drop_text: torch.Tensor  # [B] bool


def draw_training_randomness(latent_shape: tuple[int, ...], generator: torch.Generator) -> TrainingDraws:
    """Draw noise, sigma, conditioning-frame count and text dropout on the CPU from `generator`.

    Drawing on the CPU keeps a run's randomness identical on any device and any resume point.
    """
    batch, _, num_latent_frames = latent_shape[:3]
    noise = torch.randn(latent_shape, generator=generator)
    log_normal = torch.exp(torch.randn(batch, generator=generator, dtype=torch.float64)) * math.sqrt(num_latent_frames)
    low, high = math.log(HIGH_SIGMA_RANGE[0]), math.log(HIGH_SIGMA_RANGE[1])
    log_uniform = torch.exp(low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64))
    use_high = torch.rand(batch, generator=generator) < HIGH_SIGMA_PROBABILITY
    sigma = torch.where(use_high, log_uniform, log_normal).float()
    num_cond_frames = torch.randint(1, MAX_CONDITIONING_FRAMES + 1, (batch,), generator=generator)
    drop_text = torch.rand(batch, generator=generator) < TEXT_DROPOUT_PROBABILITY
    return TrainingDraws(noise, sigma, num_cond_frames, drop_text)


def video2world_loss(
    transformer: torch.nn.Module,
    clean_latents: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    num_cond_frames: torch.Tensor,
    text_embeddings: torch.Tensor,
    drop_text: torch.Tensor,
) -> torch.Tensor:
    """The scalar training loss.

    Args:
        clean_latents: normalised VAE latents `(batch_size, 16, latent_frames, height, width)`, float32.
        noise: standard normal, same shape.
        sigma: `(batch_size,)` noise levels.
        num_cond_frames: `(batch_size,)` conditioning latent frames per sample (1 or 2).
        text_embeddings: `(batch_size, 512, d)` T5 embeddings.
        drop_text: `(batch_size,)` bool; True zeroes that sample's whole text embedding.
    """
    batch = clean_latents.shape[0]
    text = torch.where(drop_text.view(batch, 1, 1).to(text_embeddings.device), 0.0, text_embeddings)
    sigma_b = sigma.view(batch, 1, 1, 1, 1)
    noisy = clean_latents + sigma_b * noise
    cond_mask = conditioning_mask(num_cond_frames.to(clean_latents.device), clean_latents.shape[2])
    x0_pred = denoise(transformer, noisy, sigma, clean_latents, cond_mask, text, fps=None)
    weight = (1 + sigma_b) ** 2 / sigma_b**2
    return ((clean_latents - x0_pred) ** 2 * weight).mean() * LOSS_SCALE

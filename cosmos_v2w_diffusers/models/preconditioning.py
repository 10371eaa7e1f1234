"""EDM-form preconditioning of the Video2World transformer: the one denoiser training and sampling share.

Cosmos-Predict2 trains a rectified-flow network but wraps it in EDM's preconditioning (docs/recipe.md,
"Objective"), with `t = sigma / (1 + sigma)`:

    c_in = 1 - t,   c_skip = 1 - t,   c_out = -t,   network timestep = t
    x0_pred = c_skip * x_t + c_out * F(c_in * x_t, t)

Conditioning frames (the first 1 or 2 latent frames) enter the network as the clean latents themselves,
with timestep `t_cond = 1e-4 / (1 + 1e-4)` and a 1 in the condition-mask channel, and their x0 prediction
is replaced by the clean latents.
Source: cosmos-predict2 `cosmos_predict2/models/video2world_model.py` (`denoise`) and its text2image parent.
"""

from __future__ import annotations

import torch

# Sigma of the conditioning frames: clean, but given a tiny timestep as NVIDIA does.
SIGMA_CONDITIONING = 1e-4


def edm_scalings(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, t) for noise level `sigma` (any shape)."""
    t = sigma / (1 + sigma)
    return 1 - t, -t, 1 - t, t


def conditioning_mask(num_cond_frames: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
    """`[B, 1, T, 1, 1]` float mask, 1 on each sample's first `num_cond_frames[b]` latent frames."""
    frames = torch.arange(num_latent_frames, device=num_cond_frames.device)
    return (frames[None, :] < num_cond_frames[:, None]).float()[:, None, :, None, None]


def denoise(
    transformer: torch.nn.Module,
    noisy_latents: torch.Tensor,
    sigma: torch.Tensor,
    clean_latents: torch.Tensor,
    cond_mask: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    fps: float | None = None,
    sigma_conditioning: float = SIGMA_CONDITIONING,
    round_to: torch.dtype | None = None,
) -> torch.Tensor:
    """Predict x0 from `x_t = x0 + sigma * eps`.

    Args:
        noisy_latents: `x_t` of shape `(batch_size, 16, latent_frames, height, width)`, float32.
        sigma: noise level of shape `(batch_size,)` (one sigma for all frames of a sample).
        clean_latents: the clean latents; only their conditioning frames are read.
        cond_mask: `(batch_size, 1, latent_frames, 1, 1)` from `conditioning_mask`.
        encoder_hidden_states: T5 embeddings `(batch_size, 512, d)`, zeros past each prompt's length.
        fps: `None` as NVIDIA trained (plain frame-index RoPE); a number reproduces diffusers' pipeline,
            which scales temporal RoPE positions by 24/fps.
        sigma_conditioning: the noise level the conditioning frames are presented at (NVIDIA's 1e-4; diffusers'
            pipeline takes it as an argument).
        round_to: round the EDM output to this dtype before the conditioning frames are put back, as diffusers'
            pipeline does in the model's dtype (None: kept in float32, as NVIDIA and training do).

    Returns:
        x0 prediction, float32, same shape as `noisy_latents`, equal to `clean_latents` on conditioning frames.
    """
    batch, _, frames, height, width = noisy_latents.shape
    sigma = sigma.float().view(batch, 1, 1, 1, 1)
    c_skip, c_out, c_in, t = edm_scalings(sigma)
    # Computed in float32 tensor arithmetic, as diffusers' pipeline does, so both agree to the last bit.
    sigma_cond = torch.tensor(sigma_conditioning, dtype=torch.float32, device=t.device)
    t_cond = sigma_cond / (sigma_cond + 1)

    # 1. Network input: scaled noisy latents; conditioning frames are the clean latents.
    net_input = cond_mask * clean_latents + (1 - cond_mask) * (c_in * noisy_latents)  # [B, C, T, H, W]
    timestep = cond_mask * t_cond + (1 - cond_mask) * t  # [B, 1, T, 1, 1]

    # 2. Network call. The condition-mask channel marks the conditioning frames; the padding mask is
    # all zeros (no padded pixels) and must have batch size 1.
    dtype = next(transformer.parameters()).dtype  # works through DDP/FSDP wrappers too
    output = transformer(
        hidden_states=net_input.to(dtype),
        timestep=timestep.to(dtype),
        encoder_hidden_states=encoder_hidden_states.to(dtype),
        fps=fps,
        condition_mask=cond_mask.expand(batch, 1, frames, height, width).to(dtype),
        padding_mask=noisy_latents.new_zeros(1, 1, height, width, dtype=dtype),
        return_dict=False,
    )[0]

    # 3. EDM output; conditioning frames are known exactly.
    x0_pred = c_skip * noisy_latents + c_out * output.float()
    if round_to is not None:
        x0_pred = x0_pred.to(round_to).float()
    return cond_mask * clean_latents + (1 - cond_mask) * x0_pred

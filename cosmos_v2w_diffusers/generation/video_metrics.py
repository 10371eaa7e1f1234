"""How close generated frames are to real ones: PSNR and SSIM, for validation, the demo and the tiny model."""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF


def psnr(generated: torch.Tensor, real: torch.Tensor) -> float:
    """PSNR in dB of frames in [0, 1] (any shape)."""
    mse = float(((generated.double() - real.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5) of frames `[T, C, H, W]` in [0, 1].

    Written here because neither torchmetrics nor scikit-image is a dependency; torchvision's Gaussian blur
    gives the local statistics.
    """
    c1, c2 = 0.01**2, 0.03**2
    x, y = generated.double(), real.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return TF.gaussian_blur(t, kernel_size=[11, 11], sigma=[1.5, 1.5])

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(score.mean())

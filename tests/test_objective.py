"""The objective against docs/recipe.md's formulas, written out here independently of the package."""

import math

import pytest
import torch

from cosmos_v2w_diffusers.models.components import load_transformer
from cosmos_v2w_diffusers.models.presets import get_preset
from cosmos_v2w_diffusers.training.objective import draw_training_randomness, video2world_loss


@pytest.fixture(scope="module")
def transformer():
    torch.manual_seed(0)
    model = load_transformer(get_preset("tiny"))
    # Random (not zero-initialised) output weights so F is far from 0 and the check is not trivial.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _recipe_loss(transformer, x0, eps, sigma, n_cond, text, drop):
    """docs/recipe.md, spelled out with plain tensors, one sample at a time."""
    losses = []
    for b in range(x0.shape[0]):
        s = float(sigma[b])
        t = s / (1 + s)
        xt = x0[b : b + 1] + s * eps[b : b + 1]
        frames = x0.shape[2]
        is_cond = torch.zeros(1, 1, frames, 1, 1)
        is_cond[:, :, : int(n_cond[b])] = 1
        net_in = torch.where(is_cond.bool(), x0[b : b + 1], (1 - t) * xt)
        t_cond = 1e-4 / (1 + 1e-4)
        timestep = torch.where(is_cond.bool(), torch.tensor(t_cond), torch.tensor(t))
        emb = torch.zeros_like(text[b : b + 1]) if drop[b] else text[b : b + 1]
        h, w = x0.shape[-2:]
        F = transformer(
            hidden_states=net_in,
            timestep=timestep,
            encoder_hidden_states=emb,
            condition_mask=is_cond.expand(1, 1, frames, h, w),
            padding_mask=torch.zeros(1, 1, h, w),
        ).sample
        x0_pred = (1 - t) * xt + (-t) * F
        x0_pred = torch.where(is_cond.bool(), x0[b : b + 1], x0_pred)
        losses.append(((x0[b : b + 1] - x0_pred) ** 2 * (1 + s) ** 2 / s**2).flatten())
        # The velocity form: on generated frames the weighted error is (F - (eps - x0))^2.
        gen = ~is_cond.bool().expand_as(F)
        velocity_err = (F - (eps[b : b + 1] - x0[b : b + 1])) ** 2
        torch.testing.assert_close(losses[-1].view_as(F)[gen], velocity_err[gen], rtol=2e-4, atol=1e-4)
    return torch.cat(losses).mean() * 10


def test_loss_equals_recipe_formula(transformer):
    g = torch.Generator().manual_seed(1)
    shape = (3, 16, 5, 16, 28)
    x0 = torch.randn(shape, generator=g)
    eps = torch.randn(shape, generator=g)
    sigma = torch.tensor([0.3, 4.0, 350.0])
    n_cond = torch.tensor([1, 2, 1])
    text = torch.randn(3, 512, 32, generator=g)
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        ours = video2world_loss(transformer, x0, eps, sigma, n_cond, text, drop)
        expected = _recipe_loss(transformer, x0, eps, sigma, n_cond, text, drop)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # Text dropout matters: the same draw without it gives another loss.
    with torch.no_grad():
        assert not torch.isclose(
            ours, video2world_loss(transformer, x0, eps, sigma, n_cond, text, torch.zeros(3, dtype=torch.bool))
        )


def test_training_draw_distribution():
    g = torch.Generator().manual_seed(0)
    draws = draw_training_randomness((20000, 1, 24, 1, 1), g)
    high = draws.sigma > 199.9
    # 5% high-sigma branch; its values are log-uniform in [200, 1e5].
    assert abs(high.float().mean() - 0.05) < 0.01
    log_high = draws.sigma[high].log()
    assert log_high.min() >= math.log(200) - 1e-4 and log_high.max() <= math.log(1e5) + 1e-4
    assert abs(log_high.mean() - (math.log(200) + math.log(1e5)) / 2) < 0.2
    # Otherwise log-normal around sqrt(T): log(sigma / sqrt(24)) ~ N(0, 1) (a few of its tail values
    # exceed 200 and are counted with the high branch, hence the loose bounds).
    z = (draws.sigma[~high] / math.sqrt(24)).log()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    assert set(draws.num_cond_frames.tolist()) == {1, 2}
    assert abs(draws.num_cond_frames.float().mean() - 1.5) < 0.02
    assert abs(draws.drop_text.float().mean() - 0.2) < 0.015
    assert draws.noise.shape == (20000, 1, 24, 1, 1)

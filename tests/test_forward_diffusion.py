import pytest
import torch

import illustrated_sd as isd


def test_forward_diffusion_follows_the_closed_form(pipe, trace):
    fd = isd.forward_diffusion(pipe, trace.image, timesteps=[0, 500, 999], seed=3)
    assert fd.noised.shape == (3, *fd.latent.shape) and len(fd.images) == 3
    torch.testing.assert_close(fd.alpha_bars, pipe.scheduler.alphas_cumprod[[0, 500, 999]].float())
    expected = fd.alpha_bars[1].sqrt() * fd.latent + (1 - fd.alpha_bars[1]).sqrt() * fd.noise
    torch.testing.assert_close(fd.noised[1], expected)
    # at t = 0 the latent is nearly clean, at t = 999 nearly pure noise
    assert (fd.noised[0] - fd.latent).abs().mean() < 0.1
    assert torch.corrcoef(torch.stack([fd.noised[2].flatten(), fd.noise.flatten()]))[0, 1] > 0.99
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        isd.forward_diffusion(pipe, trace.image, timesteps=[1000])


def test_training_step_measures_the_noise_prediction(pipe, trace):
    step = isd.training_step(pipe, trace.image, "a red circle on the left", t=500, seed=0)
    assert step["prediction"].shape == step["target"].shape == step["noised"].shape
    torch.testing.assert_close(torch.tensor(step["loss"]), ((step["prediction"] - step["target"]) ** 2).mean(), rtol=1e-4, atol=1e-6)
    # the trained model names the noise far better than guessing zero (whose loss is E[ε²] ≈ 1)
    assert step["loss"] < 0.5 * step["target"].pow(2).mean()

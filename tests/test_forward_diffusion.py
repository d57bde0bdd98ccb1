import numpy as np
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
    with pytest.raises(ValueError, match="between 0 and 999"):
        isd.forward_diffusion(pipe, trace.image, timesteps=[1000])


def test_training_step_measures_the_noise_prediction(pipe, trace):
    step = isd.training_step(pipe, trace.image, "a red circle on the left", t=500, seed=0)
    assert step["prediction"].shape == step["target"].shape == step["noised"].shape
    torch.testing.assert_close(torch.tensor(step["loss"]), ((step["prediction"] - step["target"]) ** 2).mean(), rtol=1e-4, atol=1e-6)
    # the trained model names the noise far better than guessing zero (whose loss is E[ε²] ≈ 1)
    assert step["loss"] < 0.5 * step["target"].pow(2).mean()


def test_diffusion_loss_trains_a_unet(pipe):
    from illustrated_sd.world import render, sample_scenes
    scenes = sample_scenes(3, 4)
    images, _ = render(scenes)
    latents, context = isd.encode_examples(pipe, images, [s.caption for s in scenes])
    assert latents.shape == (4, 4, 16, 16) and context.shape == (4, 77, pipe.text_encoder.config.hidden_size)
    alphas = pipe.scheduler.alphas_cumprod
    fixed = lambda unet: isd.diffusion_loss(unet, latents, context, alphas, torch.Generator().manual_seed(0)).item()
    with torch.no_grad():
        trained = fixed(pipe.unet)
        fresh_unet = isd.build_random_pipeline("tiny-sd", seed=5).unet
        untrained = fixed(fresh_unet)
    assert trained < 0.5 * untrained, "the shipped UNet must name the noise far better than a random one"
    opt = torch.optim.AdamW(fresh_unet.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        loss = isd.diffusion_loss(fresh_unet, latents, context, alphas, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert fixed(fresh_unet) < untrained, "a few optimizer steps lower the loss on the same examples"
    with pytest.raises(ValueError, match="one caption per image"):
        isd.encode_examples(pipe, images, ["a red circle"])


@pytest.mark.parametrize("call, error, message", [
    (lambda p, img: isd.forward_diffusion(p, img, [2.7]), TypeError, "timestep must be a whole number \\(got 2.7\\)"),
    (lambda p, img: isd.forward_diffusion(p, img, []), ValueError, "timesteps is empty.*e.g."),
    (lambda p, img: isd.forward_diffusion(p, img, [-1]), ValueError, "between 0 and 999.*trained on timesteps 0–999"),
    (lambda p, img: isd.forward_diffusion(p, img, ["late"]), TypeError, "whole number"),
    (lambda p, img: isd.forward_diffusion(p, img, [10], seed=0.5), TypeError, "seed must be a whole number"),
    (lambda p, img: isd.forward_diffusion(p, "image.png", [10]), TypeError, "PIL.Image.*PIL.Image.open"),
    (lambda p, img: isd.training_step(p, img, "a red circle", t=500.7), TypeError, "whole number \\(got 500.7\\)"),
    (lambda p, img: isd.training_step(p, img, "a red circle", t=[1, 2]), TypeError, "one training timestep.*forward_diffusion"),
    (lambda p, img: isd.training_step(p, img, "a red circle", t=1000), ValueError, "between 0 and 999"),
    (lambda p, img: isd.training_step(p, img, None, t=10), TypeError, "caption must be a string"),
])
def test_bad_requests_are_refused_not_rounded(pipe, trace, call, error, message):
    with pytest.raises(error, match=message):
        call(pipe, trace.image)


def test_numpy_timesteps_are_welcome(pipe, trace):
    plain = isd.training_step(pipe, trace.image, "a red circle", t=500)
    assert isd.training_step(pipe, trace.image, "a red circle", t=np.int64(500))["loss"] == plain["loss"]
    fd = isd.forward_diffusion(pipe, trace.image, np.array([0, 500]))
    assert fd.timesteps.tolist() == [0, 500]


def test_cpu_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with isd.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), isd.cpu_threads(1):  # restored after an error in the block too
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n must be ≥ 1"), isd.cpu_threads(0):
        pass

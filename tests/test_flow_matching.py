"""The flow-matching lesson (illustrated_sd.lessons.flow_matching, notebook 11): the straight path, the velocity a
generation step asks for, and the σ schedule, each against what the generation loop itself does."""

import numpy as np
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.lessons.flow_matching import encode_picture, predict_velocity, sigma_schedule, straight_path

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def pipe():
    return isd.IllustratedPipeline(isd.build_random_pipeline("tiny-flux", seed=1))


def test_the_straight_path_runs_from_the_picture_to_the_noise_with_one_velocity():
    x0, noise = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    path = straight_path(x0, noise, [0.0, 0.25, 0.5, 1.0])
    assert path.shape == (4, 4, 8, 8)
    assert torch.equal(path[0], x0) and torch.equal(path[-1], noise)
    assert torch.allclose(path[2], (x0 + noise) / 2)
    # between any two points the path moves by (σ_b − σ_a)·(ε − x₀): one direction, one speed
    assert torch.allclose(path[2] - path[1], 0.25 * (noise - x0), atol=1e-6)


@pytest.mark.parametrize("sigmas, message", [([1.5], r"each σ must lie in \[0, 1\]"), ([-0.1, 0.5], r"\[0, 1\]"), ([], r"\[0, 1\]")])
def test_the_straight_path_refuses_a_sigma_off_the_path(sigmas, message):
    with pytest.raises(ValueError, match=message):
        straight_path(torch.zeros(4, 2, 2), torch.zeros(4, 2, 2), sigmas)
    with pytest.raises(ValueError, match="must have the same shape"):
        straight_path(torch.zeros(4, 2, 2), torch.zeros(4, 4, 4), [0.5])


def test_predict_velocity_is_what_the_loop_asks_the_transformer_at_each_step(pipe):
    trace = pipe(PROMPT, num_inference_steps=3, max_sequence_length=16, true_cfg_scale=1.0, progress=False)
    for step in range(3):
        v = predict_velocity(pipe, trace.latents[step:step + 1], trace.sigmas[step], PROMPT, max_sequence_length=16)
        assert v.shape == (1, *trace.latents.shape[1:])
        torch.testing.assert_close(v[0], trace.velocity_text[step], atol=1e-5, rtol=1e-5)
        # and one Euler step with it is the scheduler's step
        torch.testing.assert_close(trace.latents[step] + (trace.sigmas[step + 1] - trace.sigmas[step]) * v[0], trace.latents[step + 1],
                                   atol=1e-5, rtol=1e-5)


def test_predict_velocity_reads_each_prompt_and_lets_gradients_through_a_transformer_being_trained(pipe):
    latents = torch.randn(2, pipe.transformer.config.in_channels // 4, 16, 16)
    two = predict_velocity(pipe, latents, torch.tensor([0.3, 0.8]), [PROMPT, "a blue square"], max_sequence_length=16)
    one = predict_velocity(pipe, latents[1:], 0.8, "a blue square", max_sequence_length=16)
    torch.testing.assert_close(two[1:], one, atol=1e-5, rtol=1e-5)
    loss = predict_velocity(pipe, latents, 0.5, PROMPT, transformer=pipe.transformer, max_sequence_length=16).square().mean()
    loss.backward()
    grads = [p.grad for p in pipe.transformer.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    pipe.transformer.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="2 prompts for 1 latents"):
        predict_velocity(pipe, latents[:1], 0.5, [PROMPT, PROMPT])
    with pytest.raises(ValueError, match=r"must be \[B, C, h, w\]"):
        predict_velocity(pipe, latents[0], 0.5, PROMPT)


def test_the_sigma_schedule_is_the_one_a_generation_walks_and_bends_further_for_bigger_pictures(pipe):
    trace = pipe(PROMPT, num_inference_steps=6, max_sequence_length=16, progress=False)
    before = pipe.scheduler.sigmas.clone()
    small = sigma_schedule(pipe, 6, trace.height)
    np.testing.assert_allclose(small, trace.sigmas.numpy(), atol=1e-6)
    assert torch.equal(pipe.scheduler.sigmas, before)  # the pipeline's scheduler was not touched
    big = sigma_schedule(pipe, 6, 1024)
    assert big[0] == small[0] == 1 and big[-1] == small[-1] == 0
    assert np.all(big[1:-1] > small[1:-1])  # more tokens, bent further toward the noise
    with pytest.raises(ValueError, match="multiple of 16 pixels"):
        sigma_schedule(pipe, 6, 100)


def test_encode_picture_gives_the_centre_of_the_vaes_gaussian(pipe):
    picture = pipe(PROMPT, num_inference_steps=1, max_sequence_length=16, progress=False).image
    x0 = encode_picture(pipe, picture)
    assert x0.shape == (pipe.transformer.config.in_channels // 4, picture.height // 8, picture.width // 8)
    assert torch.equal(x0, encode_picture(pipe, picture))  # no sample drawn: the same every time
    vae = pipe.vae
    pixels = pipe.pipeline.image_processor.preprocess(picture)
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mean[0]
    torch.testing.assert_close(x0, (mean - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor)


def test_the_lesson_refuses_a_unet_pipeline_with_the_fix():
    unet = isd.IllustratedPipeline(isd.build_random_pipeline("tiny-sd", seed=0))
    with pytest.raises(TypeError, match=r"load_pipeline\('tiny-flux'\)"):
        sigma_schedule(unet, 4, 128)


def test_shifted_sigma_bends_toward_the_noise_and_keeps_the_ends_and_mu_grows_with_the_picture(pipe):
    from illustrated_sd.lessons.flow_matching import mu_at, shifted

    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    out = shifted(sigma, mu=0.5)
    assert out[0] == 0 and out[-1] == 1 and torch.all(out[1:3] > sigma[1:3])
    assert torch.allclose(shifted(sigma, mu=0.0), sigma)
    assert mu_at(pipe, 128) < mu_at(pipe, 512) < mu_at(pipe, 1024)
    # the schedule is evenly spaced σ bent by that μ
    np.testing.assert_allclose(sigma_schedule(pipe, 4, 512)[:-1], shifted(np.linspace(1, 0.25, 4), mu_at(pipe, 512)), atol=1e-6)


def test_a_straight_path_measures_one_and_lies_flat_and_a_bent_one_strays_to_the_drawn_side():
    from illustrated_sd.lessons.flow_matching import path_in_a_plane, straightness

    start, end = torch.randn(4, 4, 4), torch.randn(4, 4, 4)
    line = torch.stack([start + t * (end - start) for t in torch.linspace(0, 1, 6)])  # [6, 4, 4, 4]
    assert straightness(line) == pytest.approx(1.0)
    flat = path_in_a_plane(line)
    assert flat.shape == (6, 2) and np.allclose(flat[:, 1], 0, atol=1e-5)
    assert flat[-1, 0] == pytest.approx(float((end - start).norm()), rel=1e-5)
    corner = torch.zeros(3, 2)
    corner[1] = torch.tensor([1.0, 0.0])
    corner[2] = torch.tensor([1.0, 1.0])  # two sides of a unit square: √2 straight over 2 walked
    assert straightness(corner) == pytest.approx(2 ** 0.5 / 2)
    assert path_in_a_plane(corner)[1, 1] == pytest.approx(2 ** 0.5 / 2)  # the corner, √2/2 off the chord, drawn up
    with pytest.raises(ValueError, match="never move"):
        straightness(torch.zeros(3, 4))

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline

PROMPT = "a blue square on the right"


@pytest.fixture(scope="module")
def start(trace):
    return trace.image


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++", "pndm"])
def test_img2img_equals_diffusers(pipe, start, scheduler):
    original = pipe.pipeline.scheduler
    pipe.set_scheduler(scheduler)
    try:
        trace = pipe.img2img(PROMPT, start, strength=0.6, num_inference_steps=10, seed=1, progress=False)
        plain = StableDiffusionImg2ImgPipeline(**pipe.pipeline.components)
        plain.set_progress_bar_config(disable=True)
        reference = plain(PROMPT, image=start, strength=0.6, num_inference_steps=10, guidance_scale=7.5,
                          generator=torch.Generator().manual_seed(1)).images[0]
    finally:
        pipe.pipeline.scheduler = original
    assert np.abs(np.asarray(reference, dtype=int) - np.asarray(trace.image, dtype=int)).max() == 0


def test_img2img_is_the_call_with_an_image(pipe, start):
    """One loop: ``pipe.img2img`` is ``pipe(prompt, image=…, strength=…)``, and strength defaults to 0.6."""
    named = pipe.img2img(PROMPT, start, num_inference_steps=4, seed=2, progress=False)
    called = pipe(PROMPT, num_inference_steps=4, seed=2, progress=False, image=start)
    assert called.mode == named.mode == "img2img" and called.strength == 0.6
    assert torch.equal(called.latents, named.latents) and torch.equal(called.init_latents, named.init_latents)


def test_img2img_trace_records_the_start(pipe, start):
    trace = pipe.img2img(PROMPT, start, strength=0.5, num_inference_steps=10, seed=0, progress=False)
    assert trace.mode == "img2img" and trace.strength == 0.5
    assert len(trace.timesteps) == 5 and len(trace.skipped_timesteps) == 5
    assert trace.skipped_timesteps.min() > trace.timesteps.max()  # the noisiest timesteps were skipped
    assert trace.init_latents.shape == trace.latents.shape[1:]
    # the start is the encoded image noised to the first visited timestep: closer to it than pure noise is
    a = trace.alpha_bars[0]
    assert (trace.latents[0] - a.sqrt() * trace.init_latents).std() < 1.0
    assert trace.cross_attention("square").shape == trace.latent_hw


def test_img2img_trace_round_trips(pipe, start, tmp_path):
    import illustrated_sd as isd

    trace = pipe.img2img(PROMPT, start, strength=0.4, num_inference_steps=5, seed=0, progress=False)
    loaded = isd.Trace.load(trace.save(tmp_path / "i2i.safetensors"))
    assert loaded.mode == "img2img" and loaded.strength == 0.4
    assert torch.equal(loaded.init_latents, trace.init_latents) and torch.equal(loaded.skipped_timesteps, trace.skipped_timesteps)


@pytest.mark.parametrize("strength, message", [(0, r"\(0, 1\]"), (1.5, r"\(0, 1\]"), (0.05, "leaves no step")])
def test_bad_strength(pipe, start, strength, message):
    with pytest.raises(ValueError, match=message):
        pipe.img2img(PROMPT, start, strength=strength, num_inference_steps=10, progress=False)


def test_bad_images(pipe, start):
    with pytest.raises(ValueError, match="multiples of 8.*resize"):
        pipe.img2img(PROMPT, start.resize((100, 128)), progress=False)
    with pytest.raises(TypeError, match="PIL.Image"):
        pipe.img2img(PROMPT, np.asarray(start), progress=False)
    with pytest.warns(UserWarning, match="converting it to RGB"):
        trace = pipe.img2img(PROMPT, start.convert("L"), num_inference_steps=4, progress=False)
    assert trace.image.mode == "RGB"

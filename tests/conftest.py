"""Shared, session-scoped objects: real (tiny) pipelines and a real trace, built once."""

import matplotlib
import pytest
import torch

import illustrated_sd as isd

matplotlib.use("Agg")

PROMPT = "a red circle on the left"


@pytest.fixture(scope="session")
def pipe():
    """The embedded default pipeline, as a student gets it from isd.load_pipeline()."""
    return isd.load_pipeline()


@pytest.fixture(scope="session")
def sd2_pipe():
    """A tiny pipeline in the SD 2.x layout: v-prediction, linear projections, per-block head counts."""
    return isd.IllustratedPipeline(isd.build_random_pipeline("tiny-sd2", seed=1))


@pytest.fixture(scope="session")
def trace(pipe):
    return pipe(PROMPT, num_inference_steps=6, guidance_scale=7.5, seed=0, progress=False)


@pytest.fixture(scope="session")
def head_trace(pipe):
    return pipe(PROMPT, num_inference_steps=3, seed=0, progress=False,
                record=isd.RecordOptions(per_head=True, self_attention_resolutions=(8,)))


def plain_image(illustrated, prompt, steps, guidance, seed, **kwargs):
    """What plain diffusers makes with the same components and settings."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return illustrated.pipeline(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator, **kwargs).images[0]

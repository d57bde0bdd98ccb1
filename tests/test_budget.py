import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.recording.budget import TraceBudgetError, estimate_trace

from .conftest import PROMPT


def _estimate(pipe, record, steps, guided=True):
    latent = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    return estimate_trace(pipe.unet, pipe.text_encoder, record, latent, steps, guided)


@pytest.mark.parametrize("record, guidance", [
    (isd.RecordOptions(), 7.5),
    (isd.RecordOptions(), 1.0),
    (isd.RecordOptions(per_head=True, self_attention_resolutions=(8,)), 7.5),
    (isd.RecordOptions(map_dtype=torch.float16, layers=None), 7.5),
])
def test_estimate_matches_the_finished_trace(pipe, record, guidance):
    trace = pipe(PROMPT, num_inference_steps=3, guidance_scale=guidance, progress=False, record=record)
    estimate = _estimate(pipe, record, 3, guided=guidance > 1)
    # all but token ids, timesteps and ᾱ (a few hundred bytes) are counted
    assert 0 <= trace.nbytes - estimate.total < 1024
    assert set(estimate.cross_attention) == set(trace.attention_maps)
    assert set(estimate.self_attention) == set(trace.self_attention_maps)


def test_over_budget_is_refused_before_generating_with_advice(pipe):
    calls = []
    handle = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    record = isd.RecordOptions(per_head=True, self_attention_resolutions=(8,), memory_budget_gib=0.001)
    try:
        with pytest.raises(TraceBudgetError) as info:
            pipe(PROMPT, num_inference_steps=20, progress=False, record=record)
    finally:
        handle.remove()
    assert calls == [], "the UNet must not run when the recording cannot fit"
    message = str(info.value)
    for advice in ("per_head=False", "self_attention_resolutions=()", "RecordOptions(layers=", "fewer steps", "memory_budget_gib", "0.001 GiB"):
        assert advice in message, advice


def test_a_batch_over_budget_says_to_draw_fewer_prompts_at_once(pipe):
    one = pipe(PROMPT, num_inference_steps=2, progress=False)
    budget = 2.5 * one.nbytes / 2**30  # room for two traces, not for three
    record = isd.RecordOptions(memory_budget_gib=budget)
    assert len(pipe([PROMPT] * 2, num_inference_steps=2, seed=[0, 1], progress=False, record=record)) == 2
    with pytest.raises(TraceBudgetError, match="draw fewer prompts at once \\(these 3 traces take .* each; illustrated-sd batch: --batch-size\\)"):
        pipe([PROMPT] * 3, num_inference_steps=2, seed=[0, 1, 2], progress=False, record=record)


def test_no_budget_means_no_limit(pipe):
    trace = pipe(PROMPT, num_inference_steps=2, progress=False, record=isd.RecordOptions(memory_budget_gib=None))
    assert trace.attention_maps


def test_sd15_default_trace_fits_half_a_gib():
    """The issue's goal, on SD 1.5's real architecture: 512 px, 50 steps, float16, default recording."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    from illustrated_sd.models.unet import LAYOUTS
    with torch.device("meta"):  # the real architecture, without spending time or memory on weights
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **LAYOUTS["sd15"]["unet"]).half()
    sd = SimpleNamespace(unet=unet, text_encoder=SimpleNamespace(config=CLIPTextConfig(**LAYOUTS["sd15"]["text"])))
    estimate = estimate_trace(sd.unet, sd.text_encoder, isd.RecordOptions(), (4, 64, 64), 50, guided=True)
    assert len(estimate.cross_attention) == 16
    assert estimate.total < 0.5 * 2**30
    per_head = estimate_trace(sd.unet, sd.text_encoder, isd.RecordOptions(per_head=True), (4, 64, 64), 50, guided=True)
    assert 7 * estimate.total < per_head.total < 8 * estimate.total  # 8 heads per layer instead of their mean
    with pytest.raises(TraceBudgetError, match="per_head=False"):
        isd.budget.check_budget(per_head, isd.RecordOptions(per_head=True, memory_budget_gib=1.0))

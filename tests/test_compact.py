"""Compact traces (RecordOptions(compact=True)): a few steps and the heatmaps averaged as the loop goes —
the same image, the same answers to the questions a compact trace can answer, and a clear refusal of the rest."""

import numpy as np
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.recording.budget import estimate_trace
from illustrated_sd.trace.unet import spread_steps

from .conftest import PROMPT


@pytest.fixture(scope="module")
def pair(pipe):
    full = pipe(PROMPT, num_inference_steps=6, seed=0, progress=False)
    compact = pipe(PROMPT, num_inference_steps=6, seed=0, progress=False, record=isd.RecordOptions(compact=True))  # 3 steps kept
    return full, compact


def test_spread_steps_keeps_the_first_and_the_last():
    assert spread_steps(6, 3) == [0, 2, 5] and spread_steps(50, 5) == [0, 12, 24, 37, 49]
    assert spread_steps(4, 10) == [0, 1, 2, 3] and spread_steps(25, 1) == [24] and spread_steps(7, None) == list(range(7))


def test_a_compact_trace_is_the_full_trace_in_less(pipe, pair):
    full, compact = pair
    np.testing.assert_array_equal(np.asarray(compact.image), np.asarray(full.image))  # recording never changes the picture
    kept = compact.kept_steps
    assert kept == [0, 2, 5] and compact.is_compact and not full.is_compact and full.lacks == []
    h, w = full.latent_hw
    assert compact.latents.shape == (4, 4, h, w) and compact.pred_x0.shape == (3, 4, h, w)
    torch.testing.assert_close(compact.latents[0], full.latents[0])
    torch.testing.assert_close(compact.latents[1:], full.latents[1:][kept])
    for name in ("noise_pred", "noise_pred_text", "noise_pred_uncond", "pred_x0"):
        torch.testing.assert_close(getattr(compact, name), getattr(full, name)[kept])
    assert compact.text_hidden_states.shape == (1, 77, full.text_embeddings.shape[-1])
    torch.testing.assert_close(compact.text_hidden_states[0], full.text_hidden_states[-1])
    # one map per grid, the prompt's slots and the padding summed: [1, 1, H, W, tokens + 1]
    grids = sorted({m.shape[2] for m in full.attention_maps.values()}, reverse=True)
    assert list(compact.attention_maps) == [f"{g}×{g}" for g in grids]
    assert all(m.shape == (1, 1, g, g, len(full.tokens) + 1) for m, g in zip(compact.attention_maps.values(), grids))
    assert compact.grid_layers == {f"{g}×{g}": len(full.layers_at(g)) for g in grids}
    assert compact.nbytes < full.nbytes / 10
    bill = estimate_trace(pipe.unet, pipe.text_encoder, isd.RecordOptions(compact=True), (4, h, w), 6, guided=True,
                          prompt_tokens=len(full.tokens))
    assert abs(bill.total - compact.nbytes) < 1000  # the budget's bill is what the trace holds


def test_it_answers_what_it_keeps_as_the_full_trace_does(pair):
    full, compact = pair
    for layer in (None, *sorted({m.shape[2] for m in full.attention_maps.values()})):
        torch.testing.assert_close(compact.cross_attention("circle", layer=layer), full.cross_attention("circle", layer=layer),
                                   atol=1e-6, rtol=1e-4)
    shares, full_shares = compact.attention_shares(), full.attention_shares()
    assert shares.keys() == full_shares.keys()
    assert max(abs(shares[k] - full_shares[k]) for k in shares) < 1e-6
    isd.plot.token_heatmaps(compact)  # the mean over the steps is what token_heatmaps shows by default


def test_what_it_lacks_is_said_where_it_is_asked_for(pair):
    _, compact = pair
    with pytest.raises(ValueError, match="averaged over all 6 steps, not step 2; pass step=None"):
        compact.cross_attention("circle", step=2)
    for plot in (isd.plot.denoising_filmstrip, isd.plot.latent_channels, isd.plot.guidance_map):
        with pytest.raises(ValueError, match="needs every step, and this is a compact trace: it lacks latents"):
            plot(compact)
    with pytest.raises(ValueError, match="compact trace"):
        isd.plot.attention_grid(compact, "circle")
    with pytest.raises(ValueError, match="compact trace"):
        isd.edits.Swap(compact)


def test_it_saves_and_loads(pair, tmp_path):
    _, compact = pair
    back = isd.Trace.load(compact.save(tmp_path / "c.safetensors"))
    assert back.kept_steps == compact.kept_steps and back.grid_layers == compact.grid_layers
    torch.testing.assert_close(back.cross_attention("red"), compact.cross_attention("red"))
    assert (tmp_path / "c.safetensors").stat().st_size < 300_000


@pytest.mark.parametrize("options, message", [
    (dict(compact=True, per_head=True), "a compact trace keeps one head-averaged map"),
    (dict(compact=True, self_attention_resolutions=(8,)), "a compact trace keeps one head-averaged map"),
    (dict(compact=True, keep_steps=0), "keep_steps must be ≥ 1"),
    (dict(compact="yes"), "compact must be True or False"),
])
def test_bad_compact_options(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        isd.RecordOptions(**options)


def test_the_budget_knows_a_compact_trace_is_small():
    """SD 1.5's architecture at 512², 50 steps, guided (built on the meta device: only the configs are read)."""
    with torch.device("meta"):
        sd15 = isd.build_random_pipeline("sd15", dtype=torch.float16)
    args = (sd15.unet, sd15.text_encoder)
    full = estimate_trace(*args, isd.RecordOptions(), (4, 64, 64), 50, guided=True)
    # a prompt of 10 words: 12 tokens with the markers
    compact = estimate_trace(*args, isd.RecordOptions(compact=True), (4, 64, 64), 50, guided=True, prompt_tokens=12)
    assert full.total / 2**20 > 200
    assert (compact.total + 512 * 512 * 3) / 2**20 < 2.0  # with the 512² image beside it in the file

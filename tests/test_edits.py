"""Interventions: edits change the attention for one call, are recorded, and leave the pipeline as it was."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import illustrated_sd as isd
from illustrated_sd.attention_layers import attention_layers
from illustrated_sd.edits import Remove, Reweight, Swap
from illustrated_sd.evaluate import detect

from .conftest import PROMPT

STEPS = 6


def generate(pipe, prompt=PROMPT, **kwargs):
    return pipe(prompt, num_inference_steps=STEPS, seed=0, progress=False, **kwargs)


def processors(pipe):
    return {name: attn.processor for name, attn in attention_layers(pipe.unet)["cross"].items()}


def test_a_factor_of_one_changes_nothing_bit_for_bit(pipe, trace):
    before = processors(pipe)
    edited = generate(pipe, edits=[Reweight("red", 1.0)])
    assert np.array_equal(np.asarray(edited.image), np.asarray(trace.image))
    assert torch.equal(edited.latents, trace.latents)
    assert processors(pipe) == before
    assert edited.edits[0]["kind"] == "reweight" and edited.edits[0]["factor"] == 1.0


def test_the_recorded_maps_are_the_attention_the_model_used(pipe, trace):
    """At step 0 both runs see the same latent, so the edited maps are the plain ones times f, renormalised."""
    factor = 3.0
    edited = generate(pipe, edits=[Reweight("circle", factor, steps=[0, 1])])
    slot = trace.token_index("circle")[0]
    layer = pipe.cross_attention_layers[0]
    plain, used = trace.attention_maps[layer][0, 0], edited.attention_maps[layer][0, 0]  # [H, W, 77]
    expected = plain.clone()
    expected[..., slot] *= factor
    expected /= expected.sum(-1, keepdim=True)
    torch.testing.assert_close(used, expected, atol=2e-5, rtol=1e-4)
    assert not torch.equal(edited.noise_pred[0], trace.noise_pred[0])  # the UNet's output changed with it
    assert torch.allclose(edited.attention_maps[layer].sum(-1), torch.ones(1))


def test_a_factor_of_zero_silences_the_slot_but_later_tokens_still_carry_the_word(pipe, trace):
    edited = generate(pipe, edits=[Reweight("red", 0.0)])
    assert edited.cross_attention("red").abs().max() == 0
    assert torch.equal(edited.text_embeddings, trace.text_embeddings)  # the text encoder was not touched


def test_remove_hides_the_word_from_later_tokens_too(pipe, trace):
    edited = generate(pipe, edits=[Remove("red")])
    slot = trace.token_index("red")[0]
    # CLIP's text encoder is causal: the tokens before "red" never saw it, those after did until now
    assert torch.equal(edited.text_embeddings[:slot], trace.text_embeddings[:slot])
    assert not torch.allclose(edited.text_embeddings[slot + 1 :], trace.text_embeddings[slot + 1 :])
    assert edited.cross_attention("red").abs().max() == 0
    assert edited.edits == [{"kind": "remove", "word": "red", "slots": [slot], "factor": 0.0, "steps": list(range(STEPS)),
                             "layers": pipe.cross_attention_layers}]


def test_removing_words_changes_what_is_drawn(pipe):
    """The embedded model, 25 steps: without "red" the circle takes another colour; without "left" it moves."""
    base = pipe(PROMPT, seed=0, progress=False)
    assert [(d.color, d.shape, d.position) for d in detect(base.image, version=2)] == [("red", "circle", "left")]
    no_colour = detect(pipe(PROMPT, seed=0, progress=False, edits=[Remove("red")]).image, version=2)
    no_place = detect(pipe(PROMPT, seed=0, progress=False, edits=[Remove("left")]).image, version=2)
    assert no_colour[0].color != "red" and no_colour[0].shape == "circle"
    assert no_place[0].position != "left" and no_place[0].color == "red"


def test_a_swap_keeps_the_source_layout(pipe):
    source = pipe(PROMPT, seed=0, progress=False, record=isd.RecordOptions(per_head=True))
    swapped = pipe("a red square on the left", seed=0, progress=False, edits=[Swap(source)])
    layer = pipe.cross_attention_layers[3]
    injected = source.attention_maps[layer].mean(1, keepdim=True)  # the swapped trace keeps the heads' mean, as recorded
    torch.testing.assert_close(swapped.attention_maps[layer][:12], injected[:12])  # half of 25 steps, rounded
    assert not torch.allclose(swapped.attention_maps[layer][12], injected[12])
    found_source, found = detect(source.image, version=2)[0], detect(swapped.image, version=2)[0]
    assert found.shape == "square" and found.color == "red"
    latent_pixel = 8 / 128
    assert np.hypot(*np.subtract(found.center, found_source.center)) <= latent_pixel
    assert swapped.edits[0]["kind"] == "swap" and swapped.edits[0]["source_prompt"] == PROMPT and swapped.edits[0]["steps"] == list(range(12))


def test_edits_are_saved_and_loaded(pipe, tmp_path):
    edited = generate(pipe, edits=[Reweight("left", 2.0, steps=2, layers=pipe.cross_attention_layers[:2]), Remove("red")])
    loaded = isd.Trace.load(edited.save(tmp_path / "edited.safetensors"))
    assert loaded.edits == edited.edits
    assert loaded.edits[0] == {"kind": "reweight", "word": "left", "slots": edited.token_index("left"), "factor": 2.0,
                               "steps": [0, 1], "layers": pipe.cross_attention_layers[:2]}


def test_processors_come_back_after_an_error_in_the_loop(pipe, monkeypatch):
    before = processors(pipe)
    calls = []

    def failing_step(*args, **kwargs):
        calls.append(1)
        assert any(type(p).__name__ == "EditedAttention" for p in processors(pipe).values())  # installed while it runs
        raise RuntimeError("boom")

    monkeypatch.setattr(pipe.scheduler, "step", failing_step)
    with pytest.raises(RuntimeError, match="boom"):
        generate(pipe, edits=[Reweight("red", 0.5)])
    monkeypatch.undo()
    assert calls and processors(pipe) == before


def test_edits_work_in_img2img_and_inpainting(pipe, trace):
    start = trace.image
    mask = Image.new("L", start.size, 0)
    mask.paste(255, (0, 0, 64, 128))
    for edited in (pipe.img2img(PROMPT, start, strength=0.6, num_inference_steps=STEPS, progress=False, edits=[Remove("red")]),
                   pipe.inpaint(PROMPT, start, mask, num_inference_steps=STEPS, progress=False, edits=[Reweight("red", 0.0)])):
        assert edited.edits[0]["slots"] == [2] and edited.cross_attention("red").abs().max() == 0


@pytest.mark.parametrize("edits, error, message", [
    ([Reweight("purple", 0)], ValueError, r"'purple' is not a word of the prompt .*its words are \['a', 'red', 'circle'"),
    ([Remove("square")], ValueError, "is not a word of the prompt"),
    ([Reweight("red", 0, steps=0)], ValueError, "out of range: this generation has 6 steps"),
    ([Reweight("red", 0, steps=[2, 6])], ValueError, r"steps \[6\] are out of range: this generation's steps are 0–5"),
    ([Reweight("red", 0, layers=["mid_block"])], ValueError, r"unknown layers \['mid_block'\]"),
    (Reweight("red", 0), TypeError, "edits must be a list of edits"),
    (["red"], TypeError, "Reweight, Remove or Swap"),
])
def test_bad_edits_are_refused_with_the_fix(pipe, edits, error, message):
    before = processors(pipe)
    with pytest.raises(error, match=message):
        generate(pipe, edits=edits)
    assert processors(pipe) == before


@pytest.mark.parametrize("factor, message", [(-1, "factor must be ≥ 0"), (math.nan, "NaN"), (math.inf, "finite"), ("2", "a number")])
def test_bad_factors_are_refused_when_the_edit_is_made(factor, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Reweight("red", factor)


def test_a_swap_needs_prompts_of_the_same_token_count(pipe, trace):
    with pytest.raises(ValueError, match=r"same token count.*has 6 tokens.*has 7.*swap one single-token word for another"):
        generate(pipe, "a big red circle on the left", edits=[Swap(trace)])
    with pytest.raises(ValueError, match="made with 6 steps"):
        pipe("a red square on the left", num_inference_steps=4, seed=0, progress=False, edits=[Swap(trace)])
    with pytest.raises(TypeError, match="edits.Swap takes a Trace"):
        Swap("a red circle")


def test_causal_map_measures_the_effect_and_its_agreement_with_the_heatmap(pipe, trace):
    kwargs = dict(num_inference_steps=STEPS, seed=0)
    result = isd.causal_map(pipe, PROMPT, "red", base=trace, **kwargs)
    assert result.edited.edits[0]["kind"] == "remove" and result.base is trace
    edited = np.asarray(result.edited.image, dtype=np.float32)
    expected = np.abs(edited - np.asarray(trace.image, dtype=np.float32)).mean(-1) / 255
    np.testing.assert_allclose(result.effect.numpy(), expected, atol=1e-6)
    assert result.effect.shape == (128, 128) and result.heatmap.shape == (128, 128) and result.x0_effect.shape == (STEPS, 16, 16)
    correlation = np.corrcoef(result.effect.flatten().numpy(), result.heatmap.flatten().numpy())[0, 1]
    assert result.correlation == pytest.approx(correlation, abs=1e-6)
    assert result.effect.max() > 0.2  # the circle changed colour


def test_agreement_of_two_maps():
    a = torch.zeros(10, 10)
    a[:2] = 1  # the top 20% of pixels
    b = torch.zeros(10, 10)
    b[1:3] = 1
    correlation, iou = isd.causal.agreement(a, b, top=0.2)
    assert iou == pytest.approx(10 / 30) and correlation == pytest.approx(np.corrcoef(a.flatten(), b.flatten())[0, 1])
    assert isd.causal.agreement(a, a, top=0.2) == (pytest.approx(1.0), 1.0)
    assert isd.causal.agreement(torch.zeros(4, 4), a[:4, :4], top=0.25)[0] == 0.0  # a flat map correlates with nothing


@pytest.mark.parametrize("kwargs, message", [(dict(word="blue"), "not a word of the prompt"), (dict(how="swap"), "how must be"),
                                             (dict(top=1.0), "between 0 and 1")])
def test_causal_map_refuses_bad_input(pipe, trace, kwargs, message):
    with pytest.raises(ValueError, match=message):
        isd.causal_map(pipe, PROMPT, **{"word": "red", "base": trace, **kwargs})


def test_plot_intervention_shows_four_panels(pipe, trace):
    edited = generate(pipe, edits=[Remove("red")])
    fig = isd.plot.intervention(trace, edited)
    titles = [ax.get_title() for ax in fig.axes]
    assert "remove 'red'" in titles[1] and titles[2].startswith("|difference|") and "'red' looked" in titles[3]
    with pytest.raises(TypeError, match="takes a Trace"):
        isd.plot.intervention(trace, "a red circle")

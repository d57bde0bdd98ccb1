"""Interventions: edits change the attention for one call, are recorded, and leave the pipeline as it was."""

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

import illustrated_sd as isd
from illustrated_sd.recording.attention_layers import attention_layers
from illustrated_sd.recording.edits import EditPlan, Remove, Reweight, Swap
from illustrated_sd.evaluate import detect

from .conftest import PROMPT

STEPS = 6


def generate(pipe, prompt=PROMPT, **kwargs):
    return pipe(prompt, num_inference_steps=STEPS, seed=0, progress=False, **kwargs)


def processors(pipe):
    return {name: attn.processor for name, attn in attention_layers(pipe.unet)["cross"].items()}


@contextmanager
def unet_calls(pipe):
    """A list that gets one entry per UNet call made inside the block: empty when nothing was generated."""
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


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


EVERY_SLOT = range(77)


@pytest.mark.parametrize("edits, error, message", [
    ([Reweight("purple", 0)], ValueError, r"'purple' is not a word of the prompt .*its words are \['a', 'red', 'circle'"),
    ([Remove("square")], ValueError, "is not a word of the prompt"),
    ([Reweight("red", 0, steps=0)], ValueError, "out of range: this generation has 6 steps"),
    ([Reweight("red", 0, steps=[2, 6])], ValueError, r"steps \[6\] are out of range: this generation's steps are 0–5"),
    ([Reweight("red", 0, layers=["mid_block"])], ValueError, r"unknown layers \['mid_block'\]"),
    (Reweight("red", 0), TypeError, "edits must be a list of edits"),
    (["red"], TypeError, "Reweight, Remove or Swap"),
    # a softmax row that is −∞ at all 77 keys is 0/0: the words, the markers and the padding are all slots
    ([Reweight(i, 0) for i in EVERY_SLOT], ValueError,
     "silence all 77 text slots at step 0 of down_blocks.0.attentions.0.*leave at least one slot at a factor > 0, e.g. the start marker"),
    ([Remove(PROMPT), Reweight("<|startoftext|>", 0), *[Reweight(i, 0) for i in range(7, 77)]], ValueError, "silence all 77 text slots"),
    ([Reweight(i, 0, steps=[3], layers=["up_blocks.2.attentions.2.transformer_blocks.0.attn2"]) for i in EVERY_SLOT], ValueError,
     "silence all 77 text slots at step 3 of up_blocks.2.attentions.2"),
])
def test_bad_edits_are_refused_with_the_fix(pipe, edits, error, message):
    before = processors(pipe)
    with unet_calls(pipe) as calls, pytest.raises(error, match=message):
        generate(pipe, edits=edits)
    assert calls == [] and processors(pipe) == before


def test_every_slot_but_one_silenced_leaves_all_the_attention_on_it(pipe):
    edited = generate(pipe, edits=[Reweight(i, 0) for i in range(1, 77)])
    for maps in edited.attention_maps.values():
        assert torch.equal(maps[..., 0], torch.ones_like(maps[..., 0])) and maps[..., 1:].abs().max() == 0


@pytest.mark.parametrize("edits, scale", [([Reweight("red", 1e39)], 1e39),  # e^b overflows float32 from 3.4e38 on
                                          ([Reweight("red", 1e20), Reweight("red", 1e20)], 1e40),  # factors multiply
                                          ([Reweight("red", 1e-30), Reweight("red", 1e-30)], 1e-60)])  # e^b underflows
def test_huge_and_tiny_factors_keep_the_maps_finite_and_exact(pipe, trace, edits, scale):
    """The recorded maps are p·f renormalised, computed here in float64: finite however far f is from 1."""
    edited = generate(pipe, edits=edits)
    slot = trace.token_index("red")[0]
    layer = pipe.cross_attention_layers[0]  # the first layer at step 0 sees what the plain run saw; later ones see the edit
    expected = trace.attention_maps[layer][0, 0].double()
    expected[..., slot] *= scale
    expected /= expected.sum(-1, keepdim=True)
    torch.testing.assert_close(edited.attention_maps[layer][0, 0], expected.float(), atol=2e-5, rtol=1e-4)
    assert all(torch.isfinite(m).all() for m in edited.attention_maps.values()) and torch.isfinite(edited.latents).all()


def test_one_tiny_factor_on_every_slot_changes_nothing(pipe, trace):
    """softmax(x + b) = softmax(x) when b is the same at every key: the maps are the plain ones, not 0/0."""
    edited = generate(pipe, edits=[Reweight(i, 1e-50) for i in EVERY_SLOT])
    layer = pipe.cross_attention_layers[0]
    torch.testing.assert_close(edited.attention_maps[layer][0], trace.attention_maps[layer][0], atol=2e-5, rtol=1e-4)


def test_factors_whose_logit_bias_does_not_fit_a_float16_model_are_refused(trace):
    layers = {name: (8, 16, 16) for name in trace.attention_maps}
    edits = [Reweight("red", 1e300)] * 100  # log(1e300) · 100 = 69078 > 65504, float16's largest number
    with pytest.raises(ValueError, match=r"Reweights of slot 2 \('red'\) multiply to e\^69078.*does not fit this torch.float16 model"):
        EditPlan(edits, PROMPT, trace.tokens, trace.words, 77, STEPS, (16, 16), layers, dtype=torch.float16)
    plan = EditPlan(edits, PROMPT, trace.tokens, trace.words, 77, STEPS, (16, 16), layers, dtype=torch.float32)
    expected = torch.zeros(77)
    expected[2] = 1  # e^(b − max b): 1 at "red", e^−69078 = 0 elsewhere
    assert torch.equal(plan.scale[(next(iter(layers)), 0)], expected)


@pytest.mark.parametrize("factor, message", [(-1, "factor must be ≥ 0"), (math.nan, "NaN"), (math.inf, "finite"), ("2", "a number")])
def test_bad_factors_are_refused_when_the_edit_is_made(factor, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Reweight("red", factor)


def test_a_swap_needs_prompts_of_the_same_token_count(pipe, trace):
    with unet_calls(pipe) as calls:
        with pytest.raises(ValueError, match=r"same token count.*has 6 tokens.*has 7.*swap one single-token word for another"):
            generate(pipe, "a big red circle on the left", edits=[Swap(trace)])
        with pytest.raises(ValueError, match="made with 6 steps"):
            pipe("a red square on the left", num_inference_steps=4, seed=0, progress=False, edits=[Swap(trace)])
        with pytest.raises(ValueError, match=r"made with 6 steps at latent \[16, 16\], this call has 6 at \[12, 16\]"):
            generate(pipe, "a red square on the left", height=96, edits=[Swap(trace)])
    assert calls == []
    with pytest.raises(TypeError, match="edits.Swap takes a Trace"):
        Swap("a red circle")


def test_a_swap_from_another_model_is_refused_before_generating(pipe, sd2_pipe):
    """Both UNets have a layer named down_blocks.0.attentions.0…attn2, with 2 heads in one and 8 in the other."""
    source = sd2_pipe(PROMPT, num_inference_steps=STEPS, seed=0, progress=False, record=isd.RecordOptions(per_head=True))
    message = (r"source has maps \[heads, H, W, slots\] = \[2, 16, 16, 77\] in down_blocks.0.attentions.0.transformer_blocks.0.attn2, "
               r"where this model's layer needs \[1 or 8, 16, 16, 77\]: the source was made by another model")
    with unet_calls(pipe) as calls, pytest.raises(ValueError, match=message):
        generate(pipe, "a red square on the left", edits=[Swap(source)])
    assert calls == []


def test_a_swap_whose_maps_the_reweights_leave_empty_is_refused(pipe):
    """The source gave "red" no attention; this call silences every other slot: nothing would be left to attend to."""
    source = generate(pipe, edits=[Reweight("red", 0)])
    with unet_calls(pipe) as calls, pytest.raises(ValueError, match="source maps are 0 at every slot these Reweights leave open"):
        generate(pipe, "a red square on the left", edits=[Swap(source), *[Reweight(i, 0) for i in EVERY_SLOT if i != 2]])
    assert calls == []


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
    correlation, iou = isd.lessons.causal.agreement(a, b, top=0.2)
    assert iou == pytest.approx(10 / 30) and correlation == pytest.approx(np.corrcoef(a.flatten(), b.flatten())[0, 1])
    assert isd.lessons.causal.agreement(a, a, top=0.2) == (pytest.approx(1.0), 1.0)
    assert isd.lessons.causal.agreement(torch.zeros(4, 4), a[:4, :4], top=0.25)[0] == 0.0  # a flat map correlates with nothing


BASES = {  # made before the UNet calls are counted
    "compact": lambda pipe: generate(pipe, record=isd.RecordOptions(compact=True)),
    "other prompt": lambda pipe: generate(pipe, "a red square on the left"),
    "edited": lambda pipe: generate(pipe, edits=[Reweight("left", 2.0)]),
    "no maps": lambda pipe: generate(pipe, record=isd.RecordOptions(cross_attention=False)),
}


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(word="blue"), ValueError, r"'blue' is not a word of the prompt .*its words are \['a', 'red'"),
    (dict(word="blue", base=None), ValueError, "'blue' is not a word of the prompt"),  # refused before the base is made
    (dict(word=""), ValueError, "token is empty"),
    (dict(prompt=[PROMPT]), TypeError, "causal_map takes one prompt, a string .*call it once per prompt"),
    (dict(how="swap"), ValueError, "how must be 'remove' or 'reweight'"),
    (dict(top=1.0), ValueError, "between 0 and 1"),
    (dict(pipe="the diffusers pipeline"), TypeError, r"takes an IllustratedPipeline .*isd.load_pipeline\(\)"),
    (dict(base="a red circle"), TypeError, "causal_map's base takes a Trace, got str"),
    (dict(base="compact"), ValueError, "causal_map's base needs every step, and this is a compact trace"),
    (dict(base="other prompt"), ValueError, "base is the generation of 'a red square on the left', not of 'a red circle on the left'"),
    (dict(base="edited"), ValueError, r"base was made with edits \(reweight\).*pass one made without edits"),
    (dict(base="no maps"), ValueError, "base has no cross-attention maps"),
    (dict(seed=1), ValueError, r"other settings: seed 0 \(here 1\)\. Pass the settings base was made with"),
    (dict(num_inference_steps=4), ValueError, r"UNet calls 6 \(here 4\)"),
    (dict(guidance_scale=3, height=96), ValueError, r"guidance_scale 7.5 \(here 3.0\); height 128 \(here 96\)"),
    (dict(negative_prompt="blue"), ValueError, r"negative_prompt None \(here 'blue'\)"),
    (dict(image="image"), ValueError, "base must be a text-to-image generation.*leave base out"),
    (dict(seeed=0), TypeError, r"passes \['seeed'\] on to pipe\(...\), which takes no such setting"),
    (dict(generator=torch.Generator().manual_seed(0)), TypeError, "does not take generator=.*pass seed= instead"),
    (dict(edits=[Remove("left")]), TypeError, "does not take edits=: causal_map makes its own edit"),
    (dict(num_images_per_prompt=2), TypeError, "does not take num_images_per_prompt="),
    (dict(num_inference_steps=0, base=None), ValueError, r"num_inference_steps must be .*\(got 0\)"),
    (dict(record=isd.RecordOptions(cross_attention=False), base=None), ValueError, "records cross-attention; drop record="),
])
def test_causal_map_refuses_bad_input_before_generating(pipe, trace, kwargs, error, message):
    arguments = {"pipe": pipe, "prompt": PROMPT, "word": "red", "base": trace, "num_inference_steps": STEPS, "seed": 0, **kwargs}
    if arguments["base"] in BASES:
        arguments["base"] = BASES[arguments["base"]](pipe)
    if arguments.get("image") == "image":
        arguments["image"] = trace.image
    if arguments["pipe"] == "the diffusers pipeline":
        arguments["pipe"] = pipe.pipeline
    with unet_calls(pipe) as calls, pytest.raises(error, match=message):
        isd.causal_map(**arguments)
    assert calls == []


def test_plot_intervention_shows_four_panels(pipe, trace):
    edited = generate(pipe, edits=[Remove("red")])
    fig = isd.plot.intervention(trace, edited)
    titles = [ax.get_title() for ax in fig.axes]
    assert "remove 'red'" in titles[1] and titles[2].startswith("|difference|") and "'red' looked" in titles[3]
    with pytest.raises(TypeError, match="takes a Trace"):
        isd.plot.intervention(trace, "a red circle")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

import illustrated_sd as isd
from illustrated_sd.loops.sampling import pred_x0

from .conftest import PROMPT, plain_image


def max_pixel_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.mark.parametrize("layout", ["pipe", "sd2_pipe"])
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++", "pndm"])
def test_image_equals_plain_diffusers(layout, scheduler, request):
    illustrated = request.getfixturevalue(layout)
    original = illustrated.pipeline.scheduler
    illustrated.set_scheduler(scheduler)
    try:
        trace = illustrated(PROMPT, num_inference_steps=5, guidance_scale=7.5, seed=3, progress=False)
        plain = plain_image(illustrated, PROMPT, 5, 7.5, 3)
        latents = illustrated.pipeline(PROMPT, num_inference_steps=5, guidance_scale=7.5, output_type="latent",
                                       generator=torch.Generator().manual_seed(3)).images
    finally:
        illustrated.pipeline.scheduler = original
    assert max_pixel_diff(trace.image, plain) == 0
    assert torch.equal(trace.latents[-1], latents[0])


def test_image_equals_plain_diffusers_without_guidance_and_with_negative_prompt(pipe):
    trace = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, seed=5, progress=False)
    assert max_pixel_diff(trace.image, plain_image(pipe, PROMPT, 4, 1.0, 5)) == 0
    assert trace.noise_pred_uncond is None and trace.uncond_embeddings is None
    assert torch.equal(trace.noise_pred, trace.noise_pred_text)
    negative = pipe(PROMPT, num_inference_steps=4, guidance_scale=5.0, seed=5, negative_prompt="a blue square", progress=False)
    assert max_pixel_diff(negative.image, plain_image(pipe, PROMPT, 4, 5.0, 5, negative_prompt="a blue square")) == 0


def test_generator_argument_equals_seed(pipe, trace):
    again = pipe(PROMPT, num_inference_steps=6, generator=torch.Generator().manual_seed(0), progress=False)
    assert max_pixel_diff(again.image, trace.image) == 0
    assert again.seed is None and trace.seed == 0


def test_trace_shapes(pipe, trace):
    S, C, (h, w) = 6, 4, trace.latent_hw
    D = pipe.text_encoder.config.hidden_size
    assert trace.tokens == ["<|startoftext|>", "a", "red", "circle", "on", "the", "left", "<|endoftext|>"]
    assert trace.token_ids.shape == (77,) and trace.token_ids[:8].tolist() == [49406, 320, 736, 7117, 525, 518, 1823, 49407]
    assert trace.text_embeddings.shape == trace.uncond_embeddings.shape == (77, D)
    assert trace.text_hidden_states.shape == (pipe.text_encoder.config.num_hidden_layers + 1, 77, D)
    assert trace.timesteps.shape == trace.alpha_bars.shape == (S,)
    assert trace.latents.shape == (S + 1, C, h, w)
    for name in ("noise_pred", "noise_pred_text", "noise_pred_uncond", "pred_x0"):
        assert getattr(trace, name).shape == (S, C, h, w), name
    assert (h, w) == (trace.height // 8, trace.width // 8) == (pipe.default_size // 8,) * 2
    assert set(trace.attention_maps) == set(pipe.cross_attention_layers)
    assert trace.image.size == (trace.width, trace.height)


def test_every_guidance_scale_means_what_the_formula_says(pipe):
    # s = 0 is the unconditional model alone: its first noise prediction is the empty prompt's
    uncond = pipe(PROMPT, num_inference_steps=2, guidance_scale=0.0, seed=5, progress=False)
    torch.testing.assert_close(uncond.noise_pred, uncond.noise_pred_uncond)
    empty_row = pipe("a", num_inference_steps=2, guidance_scale=0.0, seed=5, progress=False)
    torch.testing.assert_close(uncond.noise_pred[0], empty_row.noise_pred[0])  # the same first latent, the same ε_u
    # 0 < s < 1 blends, s < 0 pushes away; neither is the s = 1 picture (diffusers would silently give that one)
    for s in (0.5, -2.0):
        trace = pipe(PROMPT, num_inference_steps=2, guidance_scale=s, seed=5, progress=False)
        torch.testing.assert_close(trace.noise_pred, trace.noise_pred_uncond + s * (trace.noise_pred_text - trace.noise_pred_uncond))
    assert pipe(PROMPT, num_inference_steps=2, guidance_scale=1.0, seed=5, progress=False).noise_pred_uncond is None


def test_recorded_values_are_what_the_loop_used(pipe, trace):
    # guidance: ε̂ = ε_u + s (ε_c − ε_u)
    guided = trace.noise_pred_uncond + 7.5 * (trace.noise_pred_text - trace.noise_pred_uncond)
    torch.testing.assert_close(trace.noise_pred, guided)
    # the first latent is the seeded noise itself (DDIM starts at σ = 1)
    assert torch.equal(trace.latents[0], torch.randn((1, 4, *trace.latent_hw), generator=torch.Generator().manual_seed(0))[0])
    # pred_x0 at each step follows from that step's latent and noise prediction
    for i in range(trace.num_steps):
        expected = pred_x0(trace.latents[i], trace.noise_pred[i], trace.alpha_bars[i], "epsilon")
        torch.testing.assert_close(trace.pred_x0[i], expected)
    # the final layer of text_hidden_states, after CLIP's final LayerNorm, is the embedding
    clip = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)  # transformers 4 nests it one level deeper
    final = clip.final_layer_norm(trace.text_hidden_states[-1])
    torch.testing.assert_close(final, trace.text_embeddings)


def test_pred_x0_approaches_the_final_latent(trace):
    errors = [(x0 - trace.latents[-1]).pow(2).mean().item() for x0 in trace.pred_x0]
    assert errors[-1] < errors[0]


def test_v_prediction_trace(sd2_pipe):
    trace = sd2_pipe(PROMPT, num_inference_steps=4, seed=0, progress=False)
    assert trace.prediction_type == "v_prediction"
    assert trace.tokens[-1] == "<|endoftext|>"  # SD 2.x pads with "!", the end marker is still there
    expected = pred_x0(trace.latents[1], trace.noise_pred[1], trace.alpha_bars[1], "v_prediction")
    torch.testing.assert_close(trace.pred_x0[1], expected)


def test_recorders_are_removed_and_processors_untouched(pipe):
    processors = dict(pipe.unet.attn_processors)
    assert all(isinstance(p, AttnProcessor2_0) for p in processors.values())
    pipe(PROMPT, num_inference_steps=2, seed=0, progress=False)
    assert pipe.unet.attn_processors == processors
    assert all(not m._forward_hooks for m in pipe.unet.modules())


def test_recorders_are_removed_when_the_call_fails(pipe, monkeypatch):
    def broken_step(*args, **kwargs):
        raise RuntimeError("scheduler exploded")

    monkeypatch.setattr(pipe.scheduler, "step", broken_step)
    with pytest.raises(RuntimeError, match="exploded"):
        pipe(PROMPT, num_inference_steps=2, seed=0, progress=False)
    assert all(not m._forward_hooks for m in pipe.unet.modules())


def test_every_attention_output_still_comes_from_sdpa(pipe, monkeypatch):
    """Recording must not force the slow attention path: every UNet attention layer still calls SDPA."""
    calls, inside_unet = [], [False]
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(inside_unet[0])
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    enter = pipe.unet.register_forward_pre_hook(lambda *_: inside_unet.__setitem__(0, True))
    leave = pipe.unet.register_forward_hook(lambda *_: inside_unet.__setitem__(0, False))
    try:
        pipe(PROMPT, num_inference_steps=3, seed=0, progress=False)
    finally:
        enter.remove(), leave.remove()
    assert sum(calls) == len(pipe.unet.attn_processors) * 3


def test_progress_bar_over_steps(pipe, capsys):
    pipe(PROMPT, num_inference_steps=3, seed=0, progress=True)
    assert "denoising" in capsys.readouterr().err


# Every row: what a user might pass, the error it must raise, and words of the fix the message must name.
BAD_CALLS = [
    (dict(prompt=""), ValueError, "prompt is empty.*e.g."),
    (dict(prompt="   "), ValueError, "prompt is empty"),
    (dict(prompt=None), TypeError, "prompt must be a string"),
    (dict(prompt=3), TypeError, "prompt must be a string or a non-empty list of strings"),
    (dict(prompt=[]), TypeError, "prompt must be a string or a non-empty list of strings"),
    (dict(prompt=["a red circle", 3]), TypeError, "prompt must be a string.*a list of strings for a batch"),
    (dict(prompt=["a red circle", "a blue square"], seed=[1, 2, 3]), ValueError, "2 prompts need 2 seeds"),
    (dict(prompt=["a red circle", "a blue square"], generator=torch.Generator()), ValueError, "pass seed=\\[...\\], not generator="),
    (dict(prompt=["a red circle", "a blue square"], edits=[isd.edits.Reweight("red", 0)]), NotImplementedError,
     "generate one picture at a time"),
    (dict(negative_prompt=3), TypeError, "negative_prompt must be a string"),
    (dict(num_inference_steps=0), ValueError, "between 1 and 1000.*try 20–50"),
    (dict(num_inference_steps=-3), ValueError, "between 1 and 1000"),
    (dict(num_inference_steps=5000), ValueError, "between 1 and 1000 \\(got 5000\\); the scheduler has 1000 timesteps"),
    (dict(num_inference_steps=2.5), TypeError, "whole number"),
    (dict(num_inference_steps="5"), TypeError, "whole number"),
    (dict(num_inference_steps=True), TypeError, "whole number"),
    (dict(height=100), ValueError, "multiple of 8.*96 or 104"),
    (dict(width=4), ValueError, "multiple of 8"),
    (dict(height=0, width=0), ValueError, "height must be a multiple of 8, at least 8 \\(got 0\\)"),
    (dict(height=-16), ValueError, "at least 8"),
    (dict(height=128.5), ValueError, "multiple of 8.*try 128 or 136"),
    (dict(guidance_scale=float("nan")), ValueError, "finite"),
    (dict(guidance_scale=float("inf")), ValueError, "finite"),
    (dict(guidance_scale="7.5"), TypeError, "guidance_scale must be a number"),
    (dict(eta=float("nan")), ValueError, "eta must be a finite number"),
    (dict(eta=-0.5), ValueError, "eta must be ≥ 0.*deterministic"),
    (dict(eta="0"), TypeError, "eta must be a number"),
    (dict(seed=1, generator=torch.Generator()), ValueError, "either seed= or generator="),
    (dict(seed="zero"), TypeError, "seed must be a whole number.*generator="),
    (dict(seed=1.5), TypeError, "seed must be a whole number"),
    (dict(seed=None), ValueError, "seed is None.*seed=0"),
    (dict(seed=2**70), ValueError, "seed must be between"),
    (dict(seed=None, generator="cpu"), TypeError, "generator must be a torch.Generator"),
    (dict(record="yes"), TypeError, "record must be a RecordOptions.*RecordOptions\\("),
    (dict(record=True), TypeError, "record must be a RecordOptions"),
    (dict(progress="no"), TypeError, "progress must be True or False"),
    (dict(mask=Image.new("L", (128, 128), 255)), ValueError, "mask and strength belong to an input image: pass image="),
    (dict(strength=0.5), ValueError, "mask and strength belong to an input image"),
    (dict(image=Image.new("RGB", (128, 128)), height=128), ValueError, "height and width come from the input image"),
    (dict(image=Image.new("RGB", (128, 128)), mask=Image.new("L", (64, 64))), ValueError, "mask is 64×64 but image is 128×128"),
]


def count_unet_calls(unet):
    """A forward pre-hook that counts UNet calls: a refusal must come before any of them."""
    calls = []
    return calls, unet.register_forward_pre_hook(lambda *args: calls.append(1))


@pytest.mark.parametrize("kwargs, error, message", BAD_CALLS, ids=[str(row[0]) for row in BAD_CALLS])
def test_bad_input_is_refused_before_any_work_naming_the_fix(pipe, kwargs, error, message):
    args = dict(prompt=PROMPT, num_inference_steps=2, progress=False) | kwargs
    calls, hook = count_unet_calls(pipe.unet)
    try:
        with pytest.raises(error, match=message) as caught:
            pipe(**args)
    finally:
        hook.remove()
    assert calls == [] and "\n" not in str(caught.value)


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(eta=float("nan")), ValueError, "eta must be a finite"),
    (dict(strength=float("nan")), ValueError, "strength must be in \\(0, 1\\]"),
    (dict(record="yes"), TypeError, "record must be a RecordOptions"),
    (dict(seed=np.float64(2.5)), TypeError, "seed must be a whole number"),
])
def test_img2img_and_inpaint_refuse_the_same_mistakes(pipe, trace, mode, kwargs, error, message):
    extra = dict(mask=Image.new("L", trace.image.size, 255)) if mode == "inpaint" else {}
    with pytest.raises(error, match=message):
        getattr(pipe, mode)(PROMPT, trace.image, num_inference_steps=2, progress=False, **extra, **kwargs)


def test_numpy_numbers_are_as_good_as_pythons(pipe, tmp_path):
    plain = pipe(PROMPT, num_inference_steps=2, guidance_scale=7.5, seed=5, height=128, progress=False)
    numpy = pipe(PROMPT, num_inference_steps=np.int64(2), guidance_scale=np.float32(7.5), seed=np.int64(5),
                 height=np.int64(128), eta=np.float64(0), progress=False)
    assert torch.equal(plain.latents, numpy.latents)
    assert type(numpy.seed) is int and type(numpy.height) is int and type(numpy.guidance_scale) is float
    loaded = isd.Trace.load(numpy.save(tmp_path / "numpy.safetensors"))
    assert loaded.seed == 5 and loaded.height == 128


def test_pndm_with_too_few_steps_is_refused_with_the_fix(pipe):
    before = pipe.scheduler
    try:
        pipe.set_scheduler("pndm")
        with pytest.raises(ValueError, match="PNDM needs at least 4 steps.*set_scheduler\\('ddim'\\)"):
            pipe(PROMPT, num_inference_steps=3, progress=False)
        assert pipe(PROMPT, num_inference_steps=4, progress=False).num_steps > 0
    finally:
        pipe.pipeline.scheduler = before


def test_wrapping_something_else_is_refused():
    with pytest.raises(TypeError, match="StableDiffusionPipeline"):
        isd.IllustratedPipeline(object())


def test_unknown_scheduler_lists_the_known_ones(pipe):
    with pytest.raises(ValueError, match="dpm\\+\\+"):
        pipe.set_scheduler("warp-drive")


# ---- several prompts in one call: batched UNet calls ---------------------------------------------------------

def test_a_batch_equals_diffusers_batched_call_and_each_trace_its_own_generation(pipe):
    prompts, seeds = ["a red circle on the left", "a blue square at the top", "a green star on the right"], [0, 5, 9]
    traces = pipe(prompts, num_inference_steps=4, seed=seeds, negative_prompt="blurry", progress=False)
    assert [t.prompt for t in traces] == prompts and [t.seed for t in traces] == seeds
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    plain = pipe.pipeline(prompts, num_inference_steps=4, guidance_scale=7.5, negative_prompt=["blurry"] * 3,
                          generator=generators).images
    for trace, image in zip(traces, plain):
        np.testing.assert_array_equal(np.asarray(trace.image), np.asarray(image))  # bit for bit, as diffusers batches it
    # each trace holds what a one-prompt call records, up to the rounding of a bigger batch
    one = pipe(prompts[1], num_inference_steps=4, seed=5, negative_prompt="blurry", progress=False)
    for name in ("latents", "noise_pred", "noise_pred_text", "noise_pred_uncond", "pred_x0", "text_embeddings", "uncond_embeddings",
                 "text_hidden_states"):
        torch.testing.assert_close(getattr(traces[1], name), getattr(one, name), atol=1e-3, rtol=1e-3)
    assert traces[1].attention_maps.keys() == one.attention_maps.keys()
    for layer, maps in one.attention_maps.items():
        torch.testing.assert_close(traces[1].attention_maps[layer], maps, atol=1e-4, rtol=1e-3)
    assert traces[1].tokens == one.tokens and traces[0].tokens != one.tokens


def test_several_pictures_of_each_prompt_equal_diffusers_num_images_per_prompt(pipe):
    prompts = ["a red circle on the left", "a blue square at the top"]
    traces = pipe(prompts, num_inference_steps=3, seed=[0, 5], num_images_per_prompt=2, progress=False)
    assert [(t.prompt, t.seed) for t in traces] == [(prompts[0], 0), (prompts[0], 1), (prompts[1], 5), (prompts[1], 6)]
    generators = [torch.Generator("cpu").manual_seed(s) for s in (0, 1, 5, 6)]
    plain = pipe.pipeline(prompts, num_inference_steps=3, guidance_scale=7.5, num_images_per_prompt=2, generator=generators).images
    for trace, image in zip(traces, plain):
        np.testing.assert_array_equal(np.asarray(trace.image), np.asarray(image))
    assert not np.array_equal(np.asarray(traces[0].image), np.asarray(traces[1].image))  # two seeds, two pictures
    one = pipe(prompts[0], num_inference_steps=3, seed=3, num_images_per_prompt=3, progress=False)  # one prompt: a list too
    assert [t.seed for t in one] == [3, 4, 5]
    with pytest.raises(ValueError, match="num_images_per_prompt must be ≥ 1"):
        pipe(prompts[0], num_images_per_prompt=0)


def test_a_batch_of_compact_traces_and_one_seed_for_all(pipe):
    traces = pipe(["a red circle on the left", "a red circle on the left"], num_inference_steps=3, seed=4, progress=False,
                  record=isd.RecordOptions(compact=True))
    assert [t.seed for t in traces] == [4, 4]
    np.testing.assert_array_equal(np.asarray(traces[0].image), np.asarray(traces[1].image))  # the same prompt and seed
    one = pipe("a red circle on the left", num_inference_steps=3, seed=4, progress=False, record=isd.RecordOptions(compact=True))
    torch.testing.assert_close(traces[0].cross_attention("circle"), one.cross_attention("circle"), atol=1e-6, rtol=1e-4)


def test_warnings_name_the_callers_line_however_deep_they_arise(pipe):
    for prompt in ("a red sun", ["a red sun", "a moon"], ["a red sun"], "a red circle " * 40):
        with pytest.warns(UserWarning) as caught:
            pipe(prompt, num_inference_steps=1, progress=False)
        assert {w.filename for w in caught} == {__file__}, [(w.filename, str(w.message)[:40]) for w in caught]

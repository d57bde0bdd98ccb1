"""SDXL through the same loop: equal to diffusers' SDXL pipelines, with the trace's SDXL fields, on a tiny random SDXL."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
from PIL import Image

import illustrated_sd as isd
from illustrated_sd.models.unet import LAYOUTS
from illustrated_sd.recording.budget import TraceBudgetError, estimate_trace
from illustrated_sd.models.loading import ModelLoadError
from illustrated_sd.loops.sdxl import AESTHETIC_TIME_ID_NAMES, TIME_ID_NAMES

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def xl():
    return isd.IllustratedPipeline(isd.build_random_pipeline("tiny-sdxl", seed=0))


@pytest.fixture(scope="module")
def xl_trace(xl):
    return xl(PROMPT, num_inference_steps=4, guidance_scale=5.0, seed=0, progress=False)


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))


def same_image(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def plain(pipeline, seed, **kwargs):
    return pipeline(PROMPT, generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images[0]


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
@pytest.mark.parametrize("negative, rescale", [(None, 0.0), ("blurry, dark", 0.7)])
def test_sdxl_equals_diffusers(xl, scheduler, negative, rescale):
    original = xl.pipeline.scheduler
    xl.set_scheduler(scheduler)
    try:
        settings = dict(num_inference_steps=5, guidance_scale=5.0, negative_prompt=negative, guidance_rescale=rescale)
        trace = xl(PROMPT, seed=3, progress=False, **settings)
        assert same_image(trace.image, plain(xl.pipeline, 3, **settings))
    finally:
        xl.pipeline.scheduler = original
    assert trace.guidance_rescale == rescale and trace.negative_prompt == negative


def test_sdxl_without_guidance_runs_one_row_and_equals_diffusers(xl):
    trace = xl(PROMPT, num_inference_steps=3, guidance_scale=1.0, seed=1, progress=False)
    assert trace.noise_pred_uncond is None and trace.uncond_pooled_text_embeds is None
    assert same_image(trace.image, plain(xl.pipeline, 1, num_inference_steps=3, guidance_scale=1.0))


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_sdxl_img2img_equals_diffusers(xl, picture, scheduler):
    original = xl.pipeline.scheduler
    xl.set_scheduler(scheduler)
    try:
        trace = xl.img2img(PROMPT, picture, strength=0.6, num_inference_steps=10, guidance_scale=5.0, seed=2, progress=False)
        img2img = StableDiffusionXLImg2ImgPipeline(**xl.pipeline.components)
        img2img.set_progress_bar_config(disable=True)
        reference = plain(img2img, 2, image=picture, strength=0.6, num_inference_steps=10, guidance_scale=5.0)
    finally:
        xl.pipeline.scheduler = original
    assert same_image(trace.image, reference)
    assert trace.mode == "img2img" and len(trace.timesteps) == 6 and trace.init_latents.shape == (4, 16, 16)


def test_a_refiner_is_traced_with_its_one_encoder_and_aesthetic_score(xl, picture):
    """The refiner's path: only the second text encoder, and an aesthetic score instead of the target size."""
    components = xl.pipeline.components
    with torch.random.fork_rng():
        torch.manual_seed(5)
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **{**LAYOUTS["tiny-sdxl"]["unet"], "cross_attention_dim": 32,
                                                                      "projection_class_embeddings_input_dim": 5 * 8 + 32})
    refiner = StableDiffusionXLImg2ImgPipeline(vae=components["vae"], text_encoder=None, text_encoder_2=components["text_encoder_2"],
                                               tokenizer=None, tokenizer_2=components["tokenizer_2"], unet=unet,
                                               scheduler=components["scheduler"], requires_aesthetics_score=True)
    refiner.set_progress_bar_config(disable=True)
    trace = isd.IllustratedPipeline(refiner).img2img(PROMPT, picture, strength=0.3, num_inference_steps=10, guidance_scale=5.0,
                                                     seed=4, progress=False)
    assert same_image(trace.image, plain(refiner, 4, image=picture, strength=0.3, num_inference_steps=10, guidance_scale=5.0))
    assert trace.add_time_id_names == list(AESTHETIC_TIME_ID_NAMES) and trace.micro_conditioning()["aesthetic score"] == 6.0
    assert trace.context_split is None and trace.text_embeddings.shape == (77, 32)  # one encoder: no split


def test_sdxl_trace_shows_both_encoders_the_pooled_vector_and_the_time_ids(xl, xl_trace):
    t = xl_trace
    assert t.is_sdxl and t.context_split == 32 and t.text_embeddings.shape == (77, 64)
    # each half of the context is its encoder's penultimate layer
    assert torch.equal(t.text_embeddings[:, :32], t.text_hidden_states[-2])
    assert torch.equal(t.text_embeddings[:, 32:], t.text_hidden_states_2[-2])
    assert t.text_hidden_states.shape == (3, 77, 32) and t.text_hidden_states_2.shape == (3, 77, 32)
    assert t.pooled_text_embeds.shape == (32,)
    # no negative prompt: SDXL-base sends zeros as the unconditional row (force_zeros_for_empty_prompt)
    assert not t.uncond_embeddings.any() and not t.uncond_pooled_text_embeds.any()
    assert t.micro_conditioning() == dict(zip(TIME_ID_NAMES, [128.0, 128.0, 0.0, 0.0, 128.0, 128.0]))
    # the two tokenizers read the same pieces and pad differently: CLIP's end marker, OpenCLIP's "!"
    n = len(t.tokens)
    assert torch.equal(t.token_ids[:n], t.token_ids_2[:n])
    assert set(t.token_ids[n:].tolist()) == {49407} and set(t.token_ids_2[n:].tolist()) == {0}
    assert t.cross_attention("circle").shape == t.latent_hw
    negative = xl(PROMPT, num_inference_steps=2, guidance_scale=5.0, negative_prompt="blurry", seed=0, progress=False)
    assert negative.uncond_embeddings.abs().sum() > 0 and negative.uncond_pooled_text_embeds.abs().sum() > 0


def test_sdxl_trace_round_trips(xl_trace, tmp_path):
    loaded = isd.Trace.load(xl_trace.save(tmp_path / "xl.safetensors"))
    for name in ("token_ids_2", "text_hidden_states_2", "pooled_text_embeds", "uncond_pooled_text_embeds", "add_time_ids"):
        assert torch.equal(getattr(loaded, name), getattr(xl_trace, name)), name
    assert loaded.context_split == 32 and loaded.micro_conditioning() == xl_trace.micro_conditioning()
    assert same_image(loaded.image, xl_trace.image)


def test_an_sd_trace_has_no_micro_conditioning(trace):
    assert not trace.is_sdxl and trace.context_split is None
    with pytest.raises(ValueError, match="only SDXL"):
        trace.micro_conditioning()


def test_an_edited_sdxl_header_is_refused(xl_trace, tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = xl_trace.save(tmp_path / "xl.safetensors")
    with safe_open(path, framework="pt") as f:
        header = f.metadata()
    meta = json.loads(header["trace"])
    meta["context_split"] = 40  # the first encoder's layers are 32 wide
    save_file(load_file(path), tmp_path / "edited.safetensors", metadata={**header, "trace": json.dumps(meta)})
    with pytest.raises(ValueError, match="text_hidden_states must be"):
        isd.Trace.load(tmp_path / "edited.safetensors")


def test_load_pipeline_recognizes_an_sdxl_folder(xl, xl_trace, tmp_path):
    folder = tmp_path / "tiny-sdxl"
    xl.pipeline.save_pretrained(folder)
    loaded = isd.load_pipeline(folder)
    assert loaded.is_sdxl and len(loaded.text_encoders) == 2
    again = loaded(PROMPT, num_inference_steps=4, guidance_scale=5.0, seed=0, progress=False)
    assert same_image(again.image, xl_trace.image)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "PixArtAlphaPipeline"}))
    with pytest.raises(ModelLoadError, match="a PixArtAlphaPipeline, which illustrated_sd does not trace; it traces .*StableDiffusion3Pipeline, FluxPipeline"):
        isd.load_pipeline(folder)


def test_sdxl_refuses_inpainting_and_a_bad_rescale(xl, picture):
    with pytest.raises(ValueError, match="img2img"):
        xl.inpaint(PROMPT, picture, Image.new("L", picture.size, 255), num_inference_steps=2, progress=False)
    for bad, error in ((1.5, ValueError), (-0.1, ValueError), ("0.7", TypeError)):
        with pytest.raises(error, match="guidance_rescale"):
            xl(PROMPT, num_inference_steps=2, guidance_rescale=bad, progress=False)


def test_sdxl_estimate_matches_the_trace(xl, xl_trace):
    estimate = estimate_trace(xl.unet, xl.text_encoders, isd.RecordOptions(), (4, 16, 16), 4, guided=True)
    assert abs(estimate.total - xl_trace.nbytes) < 1024


def test_sdxl_base_default_trace_fits_the_budget():
    """The issue's bar, on SDXL-base's real architecture (on the meta device: no weights): 1024², 30 steps, float16."""
    with torch.device("meta"):
        sdxl = isd.build_random_pipeline("sdxl-base")
    unet = sdxl.unet.half()
    encoders = [sdxl.text_encoder, sdxl.text_encoder_2]
    estimate = estimate_trace(unet, encoders, isd.RecordOptions(), (4, 128, 128), 30, guided=True)
    assert len(estimate.cross_attention) == 70
    assert estimate.total < 0.5 * 2**30  # 0.47 GiB: fits the default 2 GiB four times over
    per_head = estimate_trace(unet, encoders, isd.RecordOptions(per_head=True), (4, 128, 128), 30, guided=True)
    with pytest.raises(TraceBudgetError, match="per_head=False.*RecordOptions\\(layers="):
        isd.budget.check_budget(per_head, isd.RecordOptions(per_head=True))


def test_plots_widgets_and_report_read_an_sdxl_trace(xl, xl_trace, tmp_path):
    import matplotlib.pyplot as plt

    from illustrated_sd import plot
    from illustrated_sd.plot.report import write_report
    from illustrated_sd.plot.widgets import TraceExplorer

    t = xl_trace
    figures = [plot.token_heatmaps(t), plot.attention_grid(t, "circle"), plot.denoising_filmstrip(t, decode=xl.decode_latents),
               plot.latent_channels(t), plot.text_embeddings(t), plot.attention_shares(t), plot.guidance_map(t),
               plot.noise_schedule(xl.scheduler, t)]
    assert all(f is not None for f in figures)
    plt.close("all")
    assert plot.animate(t, tmp_path / "a.gif", decode=xl.decode_latents).stat().st_size > 0
    assert all(view.value for view in TraceExplorer(t, decode=xl.decode_latents).views.values())
    page = write_report(t, tmp_path / "report", scheduler=xl.scheduler, decode=xl.decode_latents).read_text()
    assert "circle" in page and page.count("<img") >= 5
    assert "two text encoders" in page and "original height 128" in page


def test_the_cli_explains_with_an_sdxl_folder(xl, tmp_path):
    from illustrated_sd.cli import main

    folder = tmp_path / "tiny-sdxl"
    xl.pipeline.save_pretrained(folder)
    out = tmp_path / "run"
    assert main(["explain", PROMPT, "--model", str(folder), "--steps", "2", "--out", str(out)]) == 0
    loaded = isd.Trace.load(out / "trace.safetensors")
    assert loaded.is_sdxl and (out / "report.html").is_file()


def test_edits_work_on_sdxl(xl, xl_trace):
    """Both text encoders hide a removed word; the UNet's many cross-attention layers take the bias."""
    kwargs = dict(num_inference_steps=4, guidance_scale=5.0, seed=0, progress=False)
    same = xl(PROMPT, edits=[isd.edits.Reweight("red", 1.0)], **kwargs)
    assert same_image(same.image, xl_trace.image)
    removed = xl(PROMPT, edits=[isd.edits.Remove("red")], **kwargs)
    slot = xl_trace.token_index("red")[0]
    assert torch.equal(removed.text_embeddings[:slot], xl_trace.text_embeddings[:slot])
    assert not torch.equal(removed.text_embeddings[slot + 1 :], xl_trace.text_embeddings[slot + 1 :])
    assert removed.cross_attention("red").abs().max() == 0 and len(removed.edits[0]["layers"]) == len(xl.cross_attention_layers)


def test_a_compact_sdxl_trace_keeps_both_encoders_last_layers(xl, xl_trace, tmp_path):
    compact = xl(PROMPT, num_inference_steps=4, guidance_scale=5.0, seed=0, progress=False, record=isd.RecordOptions(compact=True))
    assert np.array_equal(np.asarray(compact.image), np.asarray(xl_trace.image))
    assert compact.text_hidden_states.shape[0] == 1 and compact.text_hidden_states_2.shape[0] == 1
    torch.testing.assert_close(compact.text_hidden_states_2[0], xl_trace.text_hidden_states_2[-1])
    torch.testing.assert_close(compact.cross_attention("circle"), xl_trace.cross_attention("circle"), atol=1e-6, rtol=1e-4)
    back = isd.Trace.load(compact.save(tmp_path / "xl.safetensors"))
    assert back.kept_steps == [0, 2, 3] and back.micro_conditioning() == xl_trace.micro_conditioning()

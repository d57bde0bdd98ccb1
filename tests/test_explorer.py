"""The explorer's data (illustrated_sd.plot.explorer): what the page is given is the trace's own numbers."""

import base64
import io
import json
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

import illustrated_sd as isd
from illustrated_sd.plot.explorer import explorer_data, explorer_html, explorer_size
from illustrated_sd.trace.unet import spread_steps
from illustrated_sd.plot.report import write_report


def halves(b64: str, shape) -> np.ndarray:
    """What the page's `halves` reads: base64 of little-endian float16."""
    return np.frombuffer(base64.b64decode(b64), dtype="<f2").astype(np.float32).reshape(shape)


def test_the_data_is_the_traces_numbers(trace, pipe):
    data = explorer_data(trace, decode=pipe.decode_latents)
    s, (h, w), T = trace.num_steps, trace.latent_hw, len(trace.tokens)
    assert data["steps"] == list(range(s)) and len(data["x0"]) == s and data["tokens"] == trace.tokens
    latents = halves(data["latents"]["data"], (s, 4, h, w))
    np.testing.assert_allclose(latents, trace.latents[1:].numpy(), atol=2e-3, rtol=1e-3)
    push = halves(data["guidance"]["data"], (s, h, w))
    np.testing.assert_allclose(push, (trace.noise_pred_text - trace.noise_pred_uncond).norm(dim=1).numpy(), atol=2e-3, rtol=1e-3)
    everything = data["groups"][0]
    assert everything["name"].startswith(f"all {len(trace.attention_maps)} layers")
    maps = halves(everything["data"], (s, h, w, T))
    # summed over a heatmap's slots, the all-layer group matches the trace's own heatmap of that word
    circle = trace.tokens.index("circle")
    np.testing.assert_allclose(maps[-1, ..., circle], trace.cross_attention("circle", step=-1).numpy(), atol=1e-3)
    resolutions = sorted({m.shape[2] for m in trace.attention_maps.values()}, reverse=True)
    assert [g["h"] for g in data["groups"][1:]] == resolutions
    with Image.open(io.BytesIO(base64.b64decode(data["x0"][-1].split(",", 1)[1]))) as x0:
        assert x0.size == trace.image.size


def test_auto_is_full_for_small_pictures_and_light_for_big_ones(trace):
    from dataclasses import replace

    from illustrated_sd.plot.explorer import resolve_preset
    assert resolve_preset(trace, "auto") == "full" and explorer_data(trace)["preset"] == "full"  # 128²
    assert resolve_preset(replace(trace, height=512, width=512), "auto") == "light"


def test_light_keeps_ten_steps_and_small_pictures(trace):
    assert spread_steps(50, 10) == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49] and spread_steps(6, 10) == list(range(6))
    data = explorer_data(trace, preset="light")
    assert data["x0"][0].startswith("data:image/jpeg;base64,") and data["preset"] == "light"
    sizes = explorer_size(trace)
    assert 0 < sizes["light"] <= sizes["full"]


def test_without_guidance_or_maps_the_page_says_so(pipe):
    bare = pipe("a red circle on the left", num_inference_steps=2, guidance_scale=1.0, seed=0, progress=False,
                record=isd.RecordOptions(cross_attention=False))
    data = explorer_data(bare)
    assert data["guidance"] is None and data["groups"] == []
    assert "no guidance in this generation" in explorer_html(bare)  # the script's own words for it


# Prompts that would end the data block early ("</script>", any case), put the HTML parser in a state where the
# page's own "</script>" no longer ends it ("<!--<script>"), or break out of a quoted attribute.
HOSTILE_PROMPTS = [
    "a red circle </script><script>alert(1)</script> on the left",
    "a red circle <!--<script> on the left",
    "a \"quoted\" 'circle' & <b>bold</b> on the left",
    "a red circle </ScRiPt >\u2028on the left",
]


@pytest.mark.filterwarnings("ignore:the model never saw")
@pytest.mark.parametrize("prompt", HOSTILE_PROMPTS)
def test_a_prompt_cannot_end_or_start_a_script_or_a_comment(pipe, prompt):
    trace = pipe(prompt, num_inference_steps=2, seed=0, progress=False)
    page = explorer_html(trace)
    assert page.lower().count("<script") == 2 and page.lower().count("</script") == 2  # the explorer's own two, no more
    assert "<!--" not in page
    block = page.split("<script type='application/json' id='isd-data'>", 1)[1].split("</script>", 1)[0]
    assert not set(block) & set("<>&\u2028\u2029")  # written as \\u escapes, which the HTML parser does not read
    data = json.loads(block)
    assert data["prompt"] == trace.prompt == prompt and data["tokens"] == trace.tokens
    assert any(set(token) & set("<>&\"'") for token in data["tokens"])  # the tokens carry the hostile characters too


def test_the_page_script_writes_text_never_markup():
    """Tokens and names reach the page only as text (textContent, new Option): nothing the script writes is parsed as HTML."""
    script = (resources.files("illustrated_sd") / "assets" / "explorer" / "explorer.js").read_text(encoding="utf-8")
    for parses_html in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "createContextualFragment"):
        assert parses_html not in script


def test_bad_presets_are_refused_with_the_choices(trace, tmp_path):
    with pytest.raises(ValueError, match=r"unknown explorer preset 'tiny'; choose from \['auto', 'full', 'light'\]"):
        explorer_data(trace, preset="tiny")
    with pytest.raises(ValueError, match="unknown explorer preset 'everything'"):
        write_report(trace, tmp_path / "r", explorer="everything")
    assert not (tmp_path / "r").exists()  # refused before anything was written
    with pytest.raises(TypeError, match=r"the explorer takes a Trace \(SD 1/2/XL\) or a FlowTrace \(SD3, Flux\), got Tensor"):
        explorer_data(torch.zeros(3))


def test_a_report_without_the_explorer(trace, tmp_path):
    page = write_report(trace, tmp_path, explorer=None).read_text()
    assert "isd-explorer" not in page and "From words to tokens" in page


# ---- a diffusion transformer's trace (SD3, Flux): the quadrant view's data ------------------------------------

FLOW_PROMPT = "a red circle on the left and a red square"  # "red" twice: a word's map sums all its places


@pytest.fixture(scope="module")
def flow_pipes():
    return {layout: isd.IllustratedPipeline(isd.build_random_pipeline(layout, seed=1)) for layout in ("tiny-flux", "tiny-sd3")}


@pytest.fixture(scope="module")
def flux_trace(flow_pipes):
    """Flux with true CFG (two passes per step, so the page has a guidance view), every quadrant but image→image."""
    return flow_pipes["tiny-flux"](FLOW_PROMPT, num_inference_steps=4, seed=0, max_sequence_length=16, true_cfg_scale=3.0,
                                   negative_prompt="a blue star", progress=False)


def test_the_flow_data_is_the_traces_numbers(flux_trace, flow_pipes):
    from illustrated_sd.plot.joint import word_choices

    trace = flux_trace
    data = explorer_data(trace, decode=flow_pipes["tiny-flux"].decode_latents)
    s, (gh, gw), (h, w) = trace.num_steps, trace.grid_hw, trace.latent_hw
    keys = [key for _, key in word_choices(trace)]
    assert data["kind"] == "flow" and data["family"] == "flux" and data["steps"] == list(range(s)) and data["grid"] == [gh, gw]
    # each word once ("red" and "a" twice in the prompt), then T5's end marker, named by its encoder
    assert data["words"] == ["a", "red", "circle", "on", "the", "left", "and", "square", "</s> (t5)"] and data["markers"] == [8]
    assert keys[-1] == trace.tokens.index("</s>") and data["padding_slots"] == 16 - len(trace.tokens)
    assert [g["name"] for g in data["joint"]] == ["all 4 layers", "double-stream blocks (2)", "single-stream blocks (2)"]
    W = len(keys)
    for group, layers in zip(data["joint"], [None, ("double.0", "double.1"), ("single.0", "single.1")]):
        reads = halves(group["image_to_text"], (s, W, gh, gw))
        read_from = halves(group["text_to_image"], (s, W, gh, gw))
        padding = halves(group["padding"], (s, gh, gw))
        for k in range(s):
            for j, key in enumerate(keys):
                np.testing.assert_allclose(reads[k, j], trace.cross_attention(key, k, layers).numpy(), rtol=2e-3, atol=1e-5)
                np.testing.assert_allclose(read_from[k, j], trace.text_to_image(key, k, layers).numpy(), rtol=2e-3, atol=1e-5)
            np.testing.assert_allclose(padding[k] + reads[k].sum(0), trace.text_share(k, layers).numpy(), rtol=3e-3, atol=1e-4)
    # by hand from the recorded tensor: "red" is tokens 1 and 8, summed; the padding is the last column
    i2t = trace.attention["image_to_text"][:, :2].float().mean(dim=(1, 2))  # [S, N, n + 1] over the double-stream blocks
    double = data["joint"][1]
    np.testing.assert_allclose(halves(double["image_to_text"], (s, W, gh, gw))[:, 1].reshape(s, -1), (i2t[..., 1] + i2t[..., 8]).numpy(),
                               rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(halves(double["padding"], (s, gh, gw)).reshape(s, -1), i2t[..., -1].numpy(), rtol=3e-3, atol=1e-4)
    np.testing.assert_allclose(halves(data["velocity"]["data"], (s, 4, h, w)), trace.velocity.numpy(), atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(halves(data["guidance"]["data"], (s, h, w)), (trace.velocity_text - trace.velocity_uncond).norm(dim=1).numpy(),
                               atol=2e-3, rtol=1e-3)
    assert data["sigmas"] == [round(float(x), 4) for x in trace.sigmas[:-1]] and len(data["x0"]) == s and data["x0_decoded"]


def test_sd3s_words_are_in_both_encoders_and_its_markers_are_entries(flow_pipes):
    trace = flow_pipes["tiny-sd3"]("a red circle", num_inference_steps=2, seed=0, max_sequence_length=16, guidance_scale=1.0,
                                   progress=False)
    data = explorer_data(trace)
    assert data["family"] == "sd3" and [g["name"] for g in data["joint"]] == ["all 2 layers"]  # one kind of block: no groups
    assert data["words"] == ["<|startoftext|> (clip)", "a", "red", "circle", "<|endoftext|> (clip)", "</s> (t5)"]
    assert data["markers"] == [0, 4, 5] and data["guidance"] is None  # guidance 1: one pass, nothing to compare
    reads = halves(data["joint"][0]["image_to_text"], (2, 6, *trace.grid_hw))
    attention = trace.attention["image_to_text"][-1].float().mean(dim=(0, 1))  # [N, n + 1], the last step
    red = trace.token_index("red")
    assert len(red) == 2  # CLIP's "red" and T5's
    np.testing.assert_allclose(reads[-1, 2].flatten(), attention[:, red].sum(-1).numpy(), rtol=2e-3, atol=1e-5)


def test_a_flow_trace_without_the_quadrant_the_page_needs_is_refused(flux_trace):
    from dataclasses import replace

    from illustrated_sd.plot.explorer import flow_explorer_data
    with pytest.raises(ValueError, match=r"needs image_to_text attention, and this trace recorded \['text_to_image'\]; generate with"):
        explorer_data(replace(flux_trace, attention={"text_to_image": flux_trace.attention["text_to_image"]}))
    with pytest.raises(TypeError, match="flow_explorer_data takes a FlowTrace .*for SD 1/2/XL use explorer_data"):
        flow_explorer_data(torch.zeros(3))
    with pytest.raises(ValueError, match="the explorer needs every step, and this is a compact trace: it lacks latents, velocities"):
        explorer_data(replace(flux_trace, kept_steps=[3]))
    without = explorer_data(replace(flux_trace, attention={"image_to_text": flux_trace.attention["image_to_text"]}))
    assert all(g["text_to_image"] is None for g in without["joint"])  # the page says so (the script's own words below)
    assert "no text→image attention in this trace" in explorer_html(flux_trace)


@pytest.mark.parametrize("prompt", HOSTILE_PROMPTS[:2])
def test_a_flow_prompt_cannot_end_or_start_a_script(flow_pipes, prompt):
    trace = flow_pipes["tiny-flux"](prompt, num_inference_steps=1, seed=0, max_sequence_length=64, progress=False)
    page = explorer_html(trace)
    assert page.lower().count("<script") == 2 and page.lower().count("</script") == 2 and "<!--" not in page
    data = json.loads(page.split("<script type='application/json' id='isd-data'>", 1)[1].split("</script>", 1)[0])
    assert data["prompt"] == prompt and any(set(word) & set("<>") for word in data["words"])

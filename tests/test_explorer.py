"""The explorer's data (illustrated_sd.explorer): what the page is given is the trace's own numbers."""

import base64
import io
import json
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

import illustrated_sd as isd
from illustrated_sd.explorer import explorer_data, explorer_html, explorer_size
from illustrated_sd.trace import spread_steps
from illustrated_sd.report import write_report


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

    from illustrated_sd.explorer import resolve_preset
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
    with pytest.raises(TypeError, match="the explorer takes a Trace, got Tensor"):
        explorer_data(torch.zeros(3))


def test_a_report_without_the_explorer(trace, tmp_path):
    page = write_report(trace, tmp_path, explorer=None).read_text()
    assert "isd-explorer" not in page and "From words to tokens" in page

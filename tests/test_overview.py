"""plot.pipeline_diagram: the numbers drawn are the model's, a highlight lights its part, bad calls say how to call it."""

import matplotlib.colors as mcolors
import pytest
import torch
from matplotlib.patches import FancyBboxPatch
from matplotlib.text import Text

import illustrated_sd as isd
from illustrated_sd.plot.overview import PARTS


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def boxes(fig) -> dict[str, FancyBboxPatch]:
    return {p.get_gid(): p for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch) and p.get_gid()}


def face(fig, key) -> tuple:
    return mcolors.to_hex(boxes(fig)[key].get_facecolor())


def overflowing(fig) -> list[tuple[str, str]]:
    """(box, text) of every text drawn past the edge of its box."""
    renderer = fig.canvas.get_renderer()
    patches = boxes(fig)
    out = []
    for t in fig.findobj(Text):
        if t.get_gid() in patches:
            inside, box = t.get_window_extent(renderer), patches[t.get_gid()].get_window_extent(renderer)
            if not (box.x0 <= inside.x0 and inside.x1 <= box.x1 and box.y0 <= inside.y0 and inside.y1 <= box.y1):
                out.append((t.get_gid(), t.get_text()))
    return out


def millions(*modules) -> str:
    """A parameter count written as the diagram should write it: three digits, in millions."""
    return f"{sum(p.numel() for m in modules for p in m.parameters()) / 1e6:.3g}M"


@pytest.fixture(scope="module")
def sdxl():
    return isd.IllustratedPipeline(isd.build_random_pipeline("tiny-sdxl"))


def test_numbers_are_the_embedded_models(pipe):
    drawn = texts(isd.plot.pipeline_diagram(pipe))
    assert f"UNet · {millions(pipe.unet)}" in drawn
    assert "UNet · 12.6M" in drawn  # the embedded model's UNet, counted by hand once
    assert f"text encoder · {millions(pipe.text_encoder)}" in drawn
    assert f"VAE decoder · {millions(pipe.vae.decoder, pipe.vae.post_quant_conv)}" in drawn
    assert f"VAE encoder · {millions(pipe.vae.encoder, pipe.vae.quant_conv)}" in drawn
    assert "cross-attention × 11" in drawn and len(pipe.cross_attention_layers) == 11
    assert "77 token slots" in drawn
    assert "CLIPTextModel\n[77, 128]" in drawn  # the text encoder's output: 77 slots × its hidden size
    assert "[4, 16, 16]" in drawn  # the latent at the default 128 px
    assert "[4, 16, 16] →\n[3, 128, 128]" in drawn and "128 × 128 px" in drawn
    assert "DDIMScheduler\nx_t → x_t−1" in drawn
    assert "predicts ε (the noise)" in drawn


def test_numbers_follow_the_model(sd2_pipe):
    """Another model draws other numbers: SD 2's tiny layout has fewer attention layers, a 64-wide context and v-prediction."""
    drawn = texts(isd.plot.pipeline_diagram(sd2_pipe))
    assert f"cross-attention × {len(sd2_pipe.cross_attention_layers)}" in drawn
    assert "cross-attention × 11" not in drawn
    assert f"UNet · {sum(p.numel() for p in sd2_pipe.unet.parameters()) / 1e3:.3g}K" in drawn  # under a million: in thousands
    assert "[77, 64]" in drawn and "predicts v = α·ε − σ·x₀" in drawn


def test_a_diffusers_pipeline_draws_as_its_wrapper(pipe):
    def untitled(fig):  # the title names the model as each knows it (its path, or its name)
        return [t for t in texts(fig) if t != fig.axes[0].get_title(loc="left")]
    assert untitled(isd.plot.pipeline_diagram(pipe.pipeline)) == untitled(isd.plot.pipeline_diagram(pipe)) != []


def test_sdxl_shows_two_encoders(sdxl, pipe):
    fig = isd.plot.pipeline_diagram(sdxl)
    drawn = texts(fig)
    first, second = sdxl.text_encoders
    assert {"text_encoder", "text_encoder_2"} <= set(boxes(fig))
    assert f"text encoder 1 · {sum(p.numel() for p in first.parameters()) / 1e6:.3g}M" in drawn
    assert f"text encoder 2 · {sum(p.numel() for p in second.parameters()) / 1e6:.3g}M" in drawn
    assert "CLIPTextModel\n[77, 32]\n+ pooled [32]" in drawn  # the second encoder's pooled vector
    assert "[77, 64]" in drawn  # both encoders' features side by side: the context the UNet reads
    assert "EulerDiscreteScheduler\nx_t → x_t−1" in drawn and "tokenizers" in drawn
    assert "text_encoder_2" not in boxes(isd.plot.pipeline_diagram(pipe))


def test_highlight_lights_its_boxes_and_mutes_the_rest(pipe):
    plain = isd.plot.pipeline_diagram(pipe)
    lit = isd.plot.pipeline_diagram(pipe, highlight="text")
    assert lit.axes[0].get_title(loc="left") == "where this notebook sits: the text encoder"
    strong = {face(lit, k) for k in ("prompt", "tokenizer", "text_encoder")}
    assert len(strong) == 1  # one strong colour
    assert strong != {face(plain, "text_encoder")}  # which the plain drawing does not use
    muted = {face(lit, k) for k in boxes(lit) if k not in ("prompt", "tokenizer", "text_encoder")}
    assert len(muted) == 1 and muted != strong
    assert face(lit, "denoiser") != face(plain, "denoiser")  # the rest is muted, not left as it was


def test_attention_lights_the_layers_not_the_whole_unet(pipe):
    fig = isd.plot.pipeline_diagram(pipe, highlight="attention")
    assert face(fig, "attention") != face(fig, "denoiser")
    assert face(fig, "denoiser") == face(fig, "decoder")  # muted with the rest


@pytest.mark.parametrize("name", sorted(PARTS))
def test_each_part_has_a_title_and_a_lit_box(pipe, name):
    fig = isd.plot.pipeline_diagram(pipe, highlight=name)
    assert fig.axes[0].get_title(loc="left") == f"where this notebook sits: {PARTS[name][0]}"
    colours = {k: face(fig, k) for k in boxes(fig)}
    lit = {k for k, c in colours.items() if c != colours["image" if name != "decoder" else "prompt"]}
    assert lit == set(PARTS[name][1]) - {"text_encoder_2"}


def test_two_parts_at_once(pipe):
    fig = isd.plot.pipeline_diagram(pipe, highlight=["decoder", "latent"])
    assert face(fig, "decoder") == face(fig, "latent") != face(fig, "denoiser")
    assert fig.axes[0].get_title(loc="left") == "where this notebook sits: the VAE decoder and the latent space"


def test_bad_calls_say_what_works(pipe, trace):
    with pytest.raises(ValueError, match="unknown part 'unet'.*'attention'.*'decoder'.*'text'"):
        isd.plot.pipeline_diagram(pipe, highlight="unet")
    with pytest.raises(TypeError, match="highlight must be a part name"):
        isd.plot.pipeline_diagram(pipe, highlight=3)
    with pytest.raises(TypeError, match="IllustratedPipeline.*FlowPipeline.*got Trace"):
        isd.plot.pipeline_diagram(trace)
    with pytest.raises(TypeError, match="got AutoencoderKL"):
        isd.plot.pipeline_diagram(pipe.vae)


def test_flux_draws_a_joint_transformer():
    flux = isd.IllustratedPipeline(isd.build_random_pipeline("tiny-flux"))
    drawn = texts(isd.plot.pipeline_diagram(flux))
    tokens = (flux.default_size // 8 // 2) ** 2  # 2×2 latent pixels per token
    assert f"joint attention × {len(flux.attention_layers)}" in drawn
    assert f"2 double + 2 single\n512 text + {tokens} image" in drawn
    assert f"T5 · {sum(p.numel() for p in flux.pipeline.text_encoder_2.parameters()) / 1e3:.3g}K" in drawn
    assert "FlowMatchEuler\nDiscreteScheduler\nx ← x + (σ_next − σ)·v" in drawn and "velocity v = ε − x₀" in drawn
    assert "latent x_σ" in drawn and "latent x_t" not in drawn  # a flow model walks σ, not t


def test_sd3_reads_clip_and_t5_slots():
    sd3 = isd.IllustratedPipeline(isd.build_random_pipeline("tiny-sd3"))
    drawn = texts(isd.plot.pipeline_diagram(sd3, highlight="guidance"))
    assert "[333, 32]" in drawn  # 77 CLIP slots, then T5's 256
    assert "v̂ = v_u + s·(v_c − v_u)\n2 rows: no prompt, prompt" in drawn


def test_legible_every_text_inside_its_box_and_at_least_8_points(pipe, sdxl):
    for model in (pipe, sdxl):
        fig = isd.plot.pipeline_diagram(model)
        assert min(t.get_fontsize() for t in fig.findobj(Text) if t.get_text()) >= 8
        assert fig.get_size_inches()[0] == 9  # ~900 px in a notebook
        assert overflowing(fig) == []


def test_real_sizes_fit_their_boxes():
    """SDXL's real numbers are the longest the diagram draws; built on the meta device, without the memory."""
    with torch.device("meta"):
        big = isd.IllustratedPipeline(isd.build_random_pipeline("sdxl-base"))
    fig = isd.plot.pipeline_diagram(big)
    drawn = texts(fig)
    assert "UNet · 2.57B" in drawn and "[4, 128, 128] →\n[3, 1024, 1024]" in drawn and "cross-attention × 70" in drawn
    assert overflowing(fig) == []

"""Every plot renders to PNG from a real trace, with the panels, titles and contents it promises."""

import io

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import illustrated_sd as isd


def png(fig) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    return np.asarray(Image.open(buffer).convert("RGB"))


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def test_token_heatmaps_one_panel_per_token(trace):
    fig = isd.plot.token_heatmaps(trace)
    panels = image_axes(fig)
    assert len(panels) == len(trace.tokens) - 2 + 1  # the image, then each token between the markers
    assert [ax.get_title().split("\n")[0] for ax in panels[1:]] == trace.tokens[1:-1]
    heat = panels[2].images[-1].get_array()
    assert float(heat.max()) > float(heat.min())  # not constant
    assert png(fig).std() > 10
    assert len(image_axes(isd.plot.token_heatmaps(trace, ["red", "circle"], normalize=False))) == 3


def test_attention_grid_layers_by_steps(trace):
    fig = isd.plot.attention_grid(trace, "circle", steps=3)
    panels = image_axes(fig)
    assert len(panels) == len(trace.attention_maps) * 3
    assert all(len(ax.images) == 2 for ax in panels)  # the grey picture, and the map over it
    first_row = [np.ma.filled(ax.images[1].get_array(), 0) for ax in panels[:3]]
    assert max(float(m.max()) for m in first_row) == pytest.approx(1)  # each row on its own scale
    assert "max " in panels[0].get_ylabel() and any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    assert "circle" in fig._suptitle.get_text()
    assert png(fig).std() > 10


@pytest.mark.parametrize("what", ["latents", "pred_x0", "noise"])
def test_denoising_filmstrip(trace, what):
    fig = isd.plot.denoising_filmstrip(trace, what, n=4)
    panels = image_axes(fig)
    assert len(panels) == 4 and "latent channels 0–2 as RGB" in fig._suptitle.get_text()
    first, last = (np.asarray(ax.images[0].get_array()) for ax in (panels[0], panels[-1]))
    assert not np.allclose(first, last)
    if what == "latents":  # the start, then x_t after each shown step
        assert panels[0].get_title() == "start\npure noise"
        assert panels[-1].get_title() == f"after step {trace.num_steps - 1}\nfrom t = {trace.timesteps[-1].item():.0f}"
    else:
        assert panels[0].get_title() == f"step 0\nt = {trace.timesteps[0].item():.0f}"


def test_an_img2img_filmstrip_starts_from_the_noised_picture(pipe, trace):
    edited = pipe.img2img("a blue square on the right", trace.image, strength=0.5, num_inference_steps=4, progress=False)
    first = image_axes(isd.plot.denoising_filmstrip(edited, "latents", n=3))[0]
    assert first.get_title() == f"start: picture\nnoised to t = {edited.timesteps[0].item():.0f}"


def test_filmstrip_decoded_by_the_vae(pipe, trace):
    fig = isd.plot.denoising_filmstrip(trace, "latents", n=3, decode=pipe.decode_latents)
    assert "decoded by the VAE" in fig._suptitle.get_text()
    last = np.asarray(image_axes(fig)[-1].images[0].get_array())
    # the last latent decodes to the trace's image (decoded in a batch of 3, so float rounding may move a level)
    assert np.abs(last.astype(int) - np.asarray(trace.image, dtype=int)).max() <= 1
    with pytest.raises(ValueError, match="latents"):
        isd.plot.denoising_filmstrip(trace, "x1")


def test_latent_channels_and_noise_schedule(pipe, trace):
    fig = isd.plot.latent_channels(trace, step=-1)
    assert len(image_axes(fig)) == trace.latents.shape[1]
    assert "4 channels × 16×16 = 1024 numbers" in fig._suptitle.get_text()
    assert isd.plot.latent_channels(trace, step=0, what="noise_pred")._suptitle.get_text().startswith("noise_pred[0]")
    with pytest.raises(ValueError, match="choose one of"):
        isd.plot.latent_channels(trace, what="noise_pred_text")
    fig = isd.plot.noise_schedule(pipe, trace)
    assert len(fig.axes) == 3 and all(ax.get_xlabel() == "timestep t" and ax.get_ylabel() for ax in fig.axes)
    assert fig.axes[0].get_ylabel() == "β_t (variance of the noise added at step t)"  # a variance, not "noise added"
    assert len(fig.axes[1].lines[1].get_xdata()) == trace.num_steps


def test_text_embeddings_plot(trace):
    fig = isd.plot.text_embeddings(trace)
    tokens, padding, similarity = image_axes(fig)
    n = len(trace.tokens)
    # all 77 slots are shown, split so that each token's label has room
    assert torch.equal(torch.from_numpy(np.asarray(tokens.images[0].get_array())), trace.text_embeddings[:n].float())
    assert torch.equal(torch.from_numpy(np.asarray(padding.images[0].get_array())), trace.text_embeddings[n:].float())
    assert [t.get_text() for t in tokens.get_yticklabels()] == trace.tokens
    assert [t.get_text() for t in similarity.get_xticklabels()] == trace.tokens
    unit = torch.nn.functional.normalize(trace.text_embeddings[:n].float(), dim=-1)
    assert f"lowest here {float((unit @ unit.T).min()):.2f}" in similarity.get_title()


def test_generating_figures(pipe, trace, tmp_path):
    fig, traces = isd.plot.guidance_sweep(pipe, "a red circle", scales=(1.0, 7.5), steps=3)
    assert [ax.get_title() for ax in image_axes(fig)] == ["guidance 1 (off)", "guidance 7.5"]
    assert [t.guidance_scale for t in traces] == [1.0, 7.5]
    fig = isd.plot.vae_roundtrip(pipe, trace.image)
    assert len(image_axes(fig)) == 4 and "48×" in fig._suptitle.get_text() and "PSNR" in image_axes(fig)[3].get_title()
    assert any(ax.get_ylabel() == "|error| (grey levels, 0–255)" for ax in fig.axes)  # the course's unit for pixels
    fig = isd.plot.prompt_similarity(pipe, ["a red circle", "a red circle", "a blue square"])
    sim = image_axes(fig)[0].images[0].get_array()
    assert sim.shape == (3, 3) and abs(sim[0, 1] - 1) < 1e-5 and sim[0, 2] < 1
    assert image_axes(fig)[0].images[0].get_clim() == (-1, 1)  # a cosine's whole range: colours compare across figures


def test_animate_writes_a_gif_with_one_frame_per_step(pipe, trace, tmp_path):
    path = isd.plot.animate(trace, tmp_path / "walk.gif", token="circle", size=64)
    with Image.open(path) as gif:
        assert gif.n_frames == trace.num_steps and gif.size == (128, 64)
    decoded = isd.plot.animate(trace, tmp_path / "decoded.gif", decode=pipe.decode_latents, size=64)
    with Image.open(decoded) as gif:
        assert gif.n_frames == trace.num_steps
    assert not list(tmp_path.glob("*.tmp"))


def test_attention_shares_sum_to_one_and_show_the_markers(trace):
    shares = trace.attention_shares()
    assert list(shares) == [trace.tokens[0], *[w for w, _, _ in trace.words], trace.tokens[-1], "padding"]
    assert sum(shares.values()) == pytest.approx(1, abs=1e-4)  # each pixel's attention sums to 1 over the 77 slots
    mean = torch.stack([m.float().mean(dim=(0, 1, 2, 3)) for m in trace.attention_maps.values()]).mean(0)  # [77]
    assert shares[trace.tokens[0]] == pytest.approx(float(mean[0]))
    assert shares["padding"] == pytest.approx(float(mean[len(trace.tokens):].sum()))
    assert trace.attention_shares(step=-1) != shares  # one step differs from the mean of all
    fig = isd.plot.attention_shares(trace)
    bars = fig.axes[0].patches
    assert len(bars) == len(shares) and bars[0].get_height() == pytest.approx(100 * shares[trace.tokens[0]])
    assert png(fig).std() > 10


def test_guidance_map_shows_the_prompts_pull_on_one_scale(trace):
    fig = isd.plot.guidance_map(trace, n=3)
    panels = image_axes(fig)
    assert len(panels) == 4 and [ax.get_title().split("\n")[0] for ax in panels[1:]] == ["step 0", "step 2", "step 5"]
    pull = (trace.noise_pred_text - trace.noise_pred_uncond).norm(dim=1)  # [S, h, w]
    shown = [ax.images[-1] for ax in panels[1:]]
    assert [im.get_clim() for im in shown] == [(0, pytest.approx(float(pull[[0, 2, 5]].max())))] * 3  # one shared scale
    # the panel of step 0 is ‖ε_text − ε_uncond‖ of step 0, upsampled
    from illustrated_sd.plot.attention import upsample
    np.testing.assert_allclose(shown[0].get_array(), upsample(pull[0], trace.image.size[::-1]), rtol=1e-5)
    assert png(fig).std() > 10


def test_guidance_map_needs_a_guided_trace_and_self_attention_points_in_the_image(pipe, head_trace):
    unguided = pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, progress=False)
    with pytest.raises(ValueError, match="guidance_scale = 1.*guidance_scale=7.5"):
        isd.plot.guidance_map(unguided)
    for points in ([], [(1.5, 0.5)], [(0.5,)]):
        with pytest.raises(ValueError, match="fractions of the image in \\[0, 1\\]"):
            isd.plot.self_attention(head_trace, points=points)
    with pytest.raises(ValueError, match="has no recorded self-attention; recorded: \\['"):
        isd.plot.self_attention(head_trace, layer="nope")


def test_self_attention_one_panel_per_point_each_a_distribution(head_trace):
    fig = isd.plot.self_attention(head_trace, points=[(0.1, 0.1), (0.9, 0.9)])
    panels = image_axes(fig)
    assert len(panels) == 3 and panels[1].get_title().startswith("pixel (0.1, 0.1)")
    # the mean over steps, heads and the recorded layers (all 8×8 here)
    probs = torch.stack([m.float().mean(dim=(0, 1)) for m in head_trace.self_attention_maps.values()]).mean(0)  # [8, 8, 64]
    torch.testing.assert_close(probs.sum(-1), torch.ones(8, 8))  # each pixel's row sums to 1 over the grid
    top_left, bottom_right = (64 * float(probs[r, c].max()) for r, c in ((0, 0), (7, 7)))  # × uniform (1/64)
    assert [ax.get_title().split("peak ")[1] for ax in panels[1:]] == [f"{top_left:.2g}× uniform)", f"{bottom_right:.2g}× uniform)"]
    # one shared scale, up to the highest peak, and a colour bar that says what the numbers are
    assert [ax.images[1].get_clim() for ax in panels[1:]] == [(0, pytest.approx(max(top_left, bottom_right)))] * 2
    assert any(ax.get_ylabel() == "× uniform attention" for ax in fig.axes)
    assert png(fig).std() > 10


def test_heatmaps_against_masks_one_row_per_picture_titled_with_iou_and_pointing(trace):
    from illustrated_sd.plot.heatmaps import heatmap_iou
    h, w = trace.image.height, trace.image.width
    left = np.zeros((h, w), bool)
    left[h // 4: 3 * h // 4, : w // 2] = True  # the left half's middle: where "a red circle on the left" is
    fig = isd.plot.heatmaps_against_masks([trace, trace], [left, ~left], ["red", "circle"])
    panels = image_axes(fig)
    assert len(panels) == 2 * 3  # per row: the picture, then one panel per word
    titles = [ax.get_title() for ax in panels]
    assert titles[0] == trace.prompt and titles[1].startswith("red: IoU ")
    assert f"IoU {heatmap_iou(trace.cross_attention('red'), left):.2f}" in titles[1]
    assert f"IoU {heatmap_iou(trace.cross_attention('red'), ~left):.2f}" in titles[4]
    assert titles[1].endswith(("peak on it", "peak off it")) and png(fig).std() > 10
    one = isd.plot.heatmaps_against_masks(trace, left, ["red"])  # one trace, one mask
    assert len(image_axes(one)) == 2
    with pytest.raises(ValueError, match="one mask and one list of words per trace"):
        isd.plot.heatmaps_against_masks([trace, trace], [left], ["red"])
    with pytest.raises(ValueError, match="the picture's size"):
        isd.plot.heatmaps_against_masks(trace, left[::2], ["red"])
    plt.close("all")


def test_image_row_takes_pil_and_tensors(trace):
    from illustrated_sd.world import render, sample_scenes
    images, _ = render(sample_scenes(0, 2))
    fig = isd.plot.image_row([trace.image, *images], titles=["generated", "world 0", "world 1"])
    assert len(fig.axes) == 3 and fig.axes[1].get_title() == "world 0"
    plt.close(fig)
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        isd.plot.image_row(images, titles=["one"])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        isd.plot.image_row([images[0, 0]])


@pytest.fixture(scope="module")
def mapless(pipe):
    return pipe("a red circle on the left", num_inference_steps=2, progress=False, record=isd.RecordOptions(cross_attention=False))


BAD_PLOTS = [
    (lambda t, m, p: isd.plot.attention_grid(m, "red"), ValueError, "no cross-attention maps.*RecordOptions\\(cross_attention=True\\)"),
    (lambda t, m, p: isd.plot.token_heatmaps(m), ValueError, "no cross-attention maps"),
    (lambda t, m, p: isd.plot.token_heatmaps(t, tokens=[]), ValueError, "tokens is empty.*None for all"),
    (lambda t, m, p: isd.plot.token_heatmaps(t, ["dog"]), ValueError, "'dog' is not a word of the prompt"),
    (lambda t, m, p: isd.plot.token_heatmaps(t, step=100), ValueError, "step 100 does not exist"),
    (lambda t, m, p: isd.plot.attention_grid(t, "red", steps=0), ValueError, "steps must be ≥ 1"),
    (lambda t, m, p: isd.plot.latent_channels(t, step=100), ValueError, "step 100 does not exist.*7 steps"),
    (lambda t, m, p: isd.plot.latent_channels(t, step=1.5), TypeError, "step must be a whole number"),
    (lambda t, m, p: isd.plot.latent_channels(t, what="x"), ValueError, "choose one of"),
    (lambda t, m, p: isd.plot.denoising_filmstrip(t, n=0), ValueError, "n must be ≥ 1"),
    (lambda t, m, p: isd.plot.denoising_filmstrip(t, what="x"), ValueError, "what must be one of"),
    (lambda t, m, p: isd.plot.animate(t, p, what="noise"), ValueError, "what must be one of"),
    (lambda t, m, p: isd.plot.animate(t, p, token="dog"), ValueError, "'dog' is not a word"),
    (lambda t, m, p: isd.plot.animate(t, p, size=0), ValueError, "size must be ≥ 8"),
    (lambda t, m, p: isd.plot.animate(t, p.parent), ValueError, "is a folder"),
    (lambda t, m, p: isd.plot.image_row([]), ValueError, "no images to show"),
    (lambda t, m, p: isd.plot.similarity_matrix(torch.zeros(2, 3), ["a", "b"]), ValueError, "\\[2, 3\\] but there are 2 captions"),
    (lambda t, m, p: isd.plot.attention_shares(m), ValueError, "no cross-attention maps"),
    (lambda t, m, p: isd.plot.attention_shares(t, step=100), ValueError, "step 100 does not exist"),
    (lambda t, m, p: isd.plot.self_attention(t), ValueError, "no self-attention maps.*self_attention_resolutions=\\(16,\\)"),
    (lambda t, m, p: isd.plot.guidance_map(t, n=0), ValueError, "n must be ≥ 1"),
]


@pytest.mark.parametrize("call, error, message", BAD_PLOTS)
def test_plots_refuse_bad_requests_naming_the_fix(trace, mapless, tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(trace, mapless, tmp_path / "a.gif")
    assert not (tmp_path / "a.gif").exists()


@pytest.mark.parametrize("call, message", [
    (lambda p: isd.plot.guidance_sweep(p, "a red circle", scales=[]), "scales is empty"),
    (lambda p: isd.plot.prompt_similarity(p, ["a red circle"]), "at least two prompts"),
])
def test_generating_plots_refuse_before_generating(pipe, call, message):
    with pytest.raises(ValueError, match=message):
        call(pipe)


def test_animate_makes_missing_folders(trace, tmp_path):
    path = isd.plot.animate(trace, tmp_path / "no" / "dir" / "a.gif", size=32)
    with Image.open(path) as gif:
        assert gif.n_frames == trace.num_steps


@pytest.mark.filterwarnings("ignore:the model never saw")
@pytest.mark.parametrize("prompt", ["$5 and $6", "a red circle $\\frac$"])
def test_prompts_are_printed_letter_for_letter_never_as_maths(pipe, prompt):
    trace = pipe(prompt, num_inference_steps=1, progress=False)
    for fig in (isd.plot.token_heatmaps(trace), isd.plot.text_embeddings(trace), isd.plot.image_row([trace.image], [prompt])):
        png(fig)  # mathtext would fail here on "\frac", or eat the "$"s
        texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
        shown = (prompt.replace("$", "\\$"), repr(prompt).replace("$", "\\$"))  # as a caption, or quoted in a title
        assert any(form in t for t in texts for form in shown)
        assert all(t.count("$") == t.count("\\$") for t in texts)  # every $ escaped
        plt.close(fig)


@pytest.mark.parametrize("call", [
    lambda: isd.plot.token_heatmaps("a red circle"), lambda: isd.plot.attention_grid("a red circle", "red"),
    lambda: isd.plot.denoising_filmstrip(None), lambda: isd.plot.latent_channels([1, 2]),
    lambda: isd.plot.text_embeddings("a red circle"), lambda: isd.plot.animate("a red circle", "a.gif"),
    lambda: isd.plot.attention_shares("a red circle"), lambda: isd.plot.guidance_map("a red circle"),
    lambda: isd.plot.self_attention("a red circle"),
])
def test_plots_given_a_prompt_instead_of_a_trace_say_where_a_trace_comes_from(call):
    with pytest.raises(TypeError, match="takes a Trace.*trace = pipe\\(prompt\\) or isd.Trace.load"):
        call()


def test_detour_is_one_for_a_straight_road_and_root_two_for_an_l():
    from illustrated_sd.lessons.paths import detour

    assert detour(torch.linspace(0, 1, 5)[:, None] * torch.ones(1, 4)) == pytest.approx(1)
    assert detour(torch.tensor([[0.0, 0], [1, 0], [1, 1]])) == pytest.approx(2**0.5)
    with pytest.raises(ValueError, match="ends where it starts"):
        detour(torch.zeros(3, 2))


def test_latent_roads_draws_each_road_in_one_plane_from_a_shared_start(pipe, trace):
    from illustrated_sd.lessons.paths import detour, project_roads

    short = pipe(trace.prompt, num_inference_steps=3, guidance_scale=7.5, seed=0, progress=False)  # the same noise, fewer steps
    flat = project_roads([trace.latents, short.latents])
    assert [p.shape for p in flat] == [(len(trace.latents), 2), (len(short.latents), 2)]
    np.testing.assert_allclose(flat[0][0], flat[1][0], atol=1e-9)  # one seed, one start
    assert detour(trace.latents) > 1
    fig = isd.plot.latent_roads([trace, short], labels=["6 steps", "3 steps"])
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == [f"6 steps: detour {detour(trace.latents):.2f}", f"3 steps: detour {detour(short.latents):.2f}"]
    assert png(fig).shape[0] > 100
    plt.close(fig)
    # a flow model's trace is drawn too; the random test layout's latents [4, 8, 8] cannot share a plane with [4, 16, 16]
    flow = isd.IllustratedPipeline(isd.build_random_pipeline("tiny-flux"))("a red circle", num_inference_steps=2, progress=False)
    plt.close(isd.plot.latent_roads([flow]))
    with pytest.raises(ValueError, match="differ in size"):
        isd.plot.latent_roads([trace, flow])
    with pytest.raises(ValueError, match="2 labels for 1 traces"):
        isd.plot.latent_roads([trace], labels=["a", "b"])
    with pytest.raises(TypeError, match="takes a Trace"):
        isd.plot.latent_roads(["a red circle"])

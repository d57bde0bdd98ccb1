"""Diffusion transformers traced (illustrated_sd.loops.flux, .sd3 and the recording of their joint attention): SD3, SD3.5 and Flux on tiny random configs built offline.

The image equals diffusers' own pipeline's for the same seed; the recorded joint attention equals an explicit
softmax over the whole sequence, quadrant by quadrant, in every block.
"""

import warnings

import numpy as np
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.recording import joint_attention
from illustrated_sd.models.transformers import t5_style_tokenizer

PROMPT = "a red circle on the left"
ALL = isd.RecordOptions(quadrants=("image_to_text", "text_to_image", "text_to_text", "image_to_image"))
CASES = {  # name → (layout, generation settings)
    "flux-dev, distilled guidance": ("tiny-flux", dict(guidance_scale=3.5)),
    "flux-dev, true CFG": ("tiny-flux", dict(guidance_scale=3.5, true_cfg_scale=4.0, negative_prompt="a blue square")),
    "flux-schnell": ("tiny-flux-schnell", dict()),
    "sd3, CFG and a negative prompt": ("tiny-sd3", dict(guidance_scale=7.0, negative_prompt="a blue square")),
    "sd3.5, dual attention and RMS-norm": ("tiny-sd35", dict(guidance_scale=4.5)),
    "sd3, no guidance": ("tiny-sd3", dict(guidance_scale=1.0)),
}


@pytest.fixture(scope="module")
def pipes():
    return {layout: isd.IllustratedPipeline(isd.build_random_pipeline(layout, seed=1)) for layout in
            ("tiny-flux", "tiny-flux-schnell", "tiny-sd3", "tiny-sd35")}


def plain(pipe, steps=3, seed=0, **kwargs):
    """What diffusers' own pipeline makes with the same components and settings."""
    return pipe.pipeline(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), max_sequence_length=16,
                         **kwargs).images[0]


def refused_before_the_transformer_runs(pipe, error, message, **kwargs):
    """Call ``pipe`` with ``kwargs`` (2 steps, 16 T5 slots unless given), expecting ``error`` matching ``message`` and
    no transformer call."""
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(error, match=message):
            pipe(PROMPT, **{"num_inference_steps": 2, "max_sequence_length": 16, "progress": False, **kwargs})
    finally:
        hook.remove()
    assert calls == []


@pytest.mark.parametrize("road", ["small", "by layer", "GPU kernels"])
@pytest.mark.parametrize("case", CASES)
def test_the_image_equals_diffusers_and_the_maps_equal_an_explicit_softmax(pipes, monkeypatch, request, case, road):
    """Every road of the recording: the small one (every map made at the end, in one batch), the one real models take
    (each layer's maps as it runs, the padding's share from the fused kernel over the text alone), and that one with
    the maps made by the GPU kernels (:mod:`~illustrated_sd.recording.joint_kernels`, here through Triton's interpreter)."""
    layout, settings = CASES[case]
    pipe = pipes[layout]
    seen = []  # every attention call's q and k: [B, heads, L, d]

    def watched(q, k, v, mask=None):
        seen.append((q.clone(), k.clone()))
        return fused(q, k, v, mask)

    fused = joint_attention.fused_attention
    monkeypatch.setattr(joint_attention, "fused_attention", watched)
    if road != "small":
        monkeypatch.setattr(joint_attention, "SMALL_ROAD_LIMIT", 0)
    if road == "GPU kernels":
        kernels = request.getfixturevalue("interpreted_kernels")
        monkeypatch.setattr(joint_attention, "fused_kernels", lambda *args: kernels)
    trace = pipe(PROMPT, num_inference_steps=3, seed=0, max_sequence_length=16, record=ALL, progress=False, **settings)
    monkeypatch.undo()
    text_only = [k for _, k in seen if k.shape[2] == trace.text_length]  # the fused kernel over the text keys alone
    assert bool(text_only) == (road == "by layer")
    assert isinstance(pipe, isd.FlowPipeline) and isinstance(trace, isd.FlowTrace)
    np.testing.assert_array_equal(np.asarray(trace.image), np.asarray(plain(pipe, **settings)))

    # The reference: softmax(q·kᵀ/√d) over the whole joint sequence, then cut into quadrants by hand
    flux, layers = pipe.family == "flux", len(trace.layers)
    T, kept = trace.text_length, trace.kept_slots
    seen = [(q, k) for q, k in seen if k.shape[2] == T + trace.grid_hw[0] * trace.grid_hw[1]]  # the joint calls (not the text-only one)
    padding = torch.ones(T, dtype=torch.bool)
    padding[kept] = False
    for step in range(3):
        for layer in range(layers):
            q, k = seen[step * layers + layer]  # (true CFG's negative pass, not recorded, runs plain SDPA)
            p = torch.softmax((q[-1].double() @ k[-1].double().transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1).mean(0)  # [L, L]
            text, image = (slice(0, T), slice(T, None)) if flux else (slice(p.shape[0] - T, None), slice(0, p.shape[0] - T))
            text_cols = lambda rows: torch.cat([rows[:, kept], rows[:, padding].sum(-1, keepdim=True)], -1)  # noqa: E731
            expected = {"image_to_text": text_cols(p[image, text]), "text_to_image": p[text, image][kept],
                        "text_to_text": text_cols(p[text, text][kept]), "image_to_image": p[image, image]}
            for quadrant, ref in expected.items():
                got = trace.attention[quadrant][step, layer, 0].double()
                assert got.shape == ref.shape
                assert (got - ref).abs().max() <= 1e-5, (quadrant, step, layer)
    # every row of the whole softmax sums to 1 over all keys: the quadrants of a query share it
    shares = trace.attention["image_to_text"].sum(-1) + trace.attention["image_to_image"].sum(-1)
    torch.testing.assert_close(shares, torch.ones_like(shares), atol=1e-5, rtol=0)


def test_the_trace_of_a_flow_model(pipes, tmp_path):
    pipe = pipes["tiny-flux"]
    trace = pipe(PROMPT, num_inference_steps=4, seed=2, max_sequence_length=16, progress=False)
    S, (h, w) = 4, trace.latent_hw
    assert trace.latents.shape == (S + 1, 4, h, w) and trace.velocity.shape == (S, 4, h, w) and trace.grid_hw == (h // 2, w // 2)
    assert trace.tokens == ["a", "red", "circle", "on", "the", "left", "</s>"] and trace.padding_slots == 16 - 7
    assert trace.sigmas[0] == 1 and trace.sigmas[-1] == 0 and (trace.sigmas.diff() < 0).all()
    # Euler on the straight path: x_next = x + (σ_next − σ)·v̂, and x̂₀ = x_σ − σ·v̂
    step = trace.latents[:-1] + trace.sigmas.diff()[:, None, None, None] * trace.velocity
    torch.testing.assert_close(step, trace.latents[1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trace.pred_x0, trace.latents[:-1] - trace.sigmas[:-1, None, None, None] * trace.velocity)
    # packed latents are the transformer's own tokens: Flux's _pack_latents of the same tensor
    packed = pipe.pipeline._pack_latents(trace.latents[:1], 1, 4, h, w)
    torch.testing.assert_close(trace.packed()[:1], packed)
    heat = trace.cross_attention("red")
    torch.testing.assert_close(heat.flatten(), trace.attention["image_to_text"][..., 1].float().mean(dim=(0, 1, 2)))
    assert 0 < trace.padding_share() < 1 and trace.text_share().shape == trace.grid_hw
    trace.save(tmp_path / "t.safetensors")
    again = isd.Trace.load(tmp_path / "t.safetensors")  # the one loader reads either family
    assert isinstance(again, isd.FlowTrace) and again.words == trace.words
    for name in ("latents", "velocity", "pred_x0", "sigmas"):
        torch.testing.assert_close(getattr(again, name), getattr(trace, name), atol=0, rtol=0)
    np.testing.assert_array_equal(np.asarray(again.image), np.asarray(trace.image))


def test_sd3_keeps_each_encoders_tokens_and_sums_the_padding(pipes):
    trace = pipes["tiny-sd3"](PROMPT, num_inference_steps=2, max_sequence_length=16, progress=False)
    assert trace.text_length == 77 + 16 and trace.encoders == {"clip": [0, 77], "t5": [77, 93]}
    assert trace.token_sources == ["clip"] * 8 + ["t5"] * 7 and trace.kept_slots.tolist() == list(range(8)) + list(range(77, 84))
    assert trace.token_index("red") == [2, 9] and trace.token_index("red", encoder="t5") == [9]
    with pytest.raises(ValueError, match="'moon' is not a word of the prompt in t5's tokens; its words are"):
        trace.token_index("moon", encoder="t5")
    with pytest.raises(ValueError, match="encoder 'clip-g' is not in this trace; its text comes from \\['clip', 't5'\\]"):
        trace.cross_attention("red", encoder="clip-g")


def test_a_few_words_side_by_side_name_all_their_tokens(pipes):
    trace = pipes["tiny-flux"](PROMPT, num_inference_steps=1, max_sequence_length=16, progress=False)
    assert trace.token_index("the left") == sorted(trace.token_index("the") + trace.token_index("left"))
    assert trace.cross_attention("the left").shape == trace.grid_hw
    with pytest.raises(ValueError, match="'left the' is not a word of the prompt"):
        trace.token_index("left the")  # not side by side in this order


def test_t5_style_tokens_end_with_their_marker():
    tokenizer = t5_style_tokenizer()
    assert tokenizer.tokenize("a red circle") == ["▁a", "▁red", "▁circle"]
    assert tokenizer("a red circle").input_ids[-1] == tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0


def test_a_prompt_longer_than_t5s_slots_warns_naming_what_was_dropped(pipes):
    with pytest.warns(UserWarning, match=r"longer than T5's 8 tokens; these words were dropped: \['the', 'top'\]"):
        trace = pipes["tiny-flux"](PROMPT + " at the top", num_inference_steps=1, max_sequence_length=8, progress=False)
    assert trace.truncated == {"t5": "the top"} and trace.tokens[-2:] == ["at", "</s>"]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(height=72), ValueError, "height must be a multiple of 16 .*try 64 or 80"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps must be between 1 and 1000"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale must be a finite number"),
    (dict(max_sequence_length=600), ValueError, "max_sequence_length must be between 1 and 512"),
    (dict(record=isd.RecordOptions(layers=["up_blocks.0"])), ValueError, r"unknown layers \['up_blocks.0'\]; this transformer's .*double.0"),
    (dict(record=isd.RecordOptions(memory_budget_gib=1e-9)), ValueError, "over memory_budget_gib.*quadrants=\\('image_to_text',\\)"),
    (dict(guidance_rescale=0.7), TypeError, "guidance_rescale is an option of SD 1/2 and SDXL"),
    (dict(eta=0.5), TypeError, "eta is an option of SD 1/2 and SDXL"),
])
def test_bad_input_to_a_flow_model_is_refused_before_any_work(pipes, kwargs, error, message):
    refused_before_the_transformer_runs(pipes["tiny-flux"], error, message, **kwargs)


def test_true_cfg_is_flux_only(pipes):
    with pytest.raises(ValueError, match="true_cfg_scale is Flux's option.*pass guidance_scale= instead"):
        pipes["tiny-sd3"](PROMPT, true_cfg_scale=4.0, progress=False)


def test_a_saved_flow_pipeline_loads_by_name(pipes, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipes["tiny-sd35"].pipeline.save_pretrained(tmp_path / "sd35")
    loaded = isd.load_pipeline(tmp_path / "sd35")
    assert isinstance(loaded, isd.FlowPipeline) and loaded.family == "sd3"
    a = loaded(PROMPT, num_inference_steps=2, height=64, width=64, max_sequence_length=16, progress=False)
    b = pipes["tiny-sd35"](PROMPT, num_inference_steps=2, height=64, width=64, max_sequence_length=16, progress=False)
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))


def test_the_joint_attention_figure_shows_the_quadrants_of_one_word(pipes, trace):
    import matplotlib.pyplot as plt

    flow = pipes["tiny-sd3"](PROMPT, num_inference_steps=2, max_sequence_length=16, progress=False)
    fig = isd.plot.joint_attention(flow, "circle")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == [PROMPT, "image→text\nwhere the picture looks for 'circle'", "text→image\nwhat 'circle' reads from the picture",
                          "text share\neach patch's attention to all text (the rest is to the picture)",
                          "text→text (each token's attention to the text;\nthe rest of its row goes to the picture)"]
    assert len(fig.axes) == 9  # and a colour bar beside each of the four maps
    shown = fig.axes[1].images[1].get_array()  # the image→text heat, upsampled to the picture
    assert shown.shape == (128, 128) and np.isclose(shown.max(), float(flow.cross_attention("circle").max()), rtol=1e-6)
    assert fig._suptitle.get_text() == "mean of 2 steps × 2 layers, 8×8 tokens"
    plt.close(fig)
    with pytest.raises(TypeError, match="takes a FlowTrace .*for SD 1/2 use plot.token_heatmaps"):
        isd.plot.joint_attention(trace, "circle")


def test_decoding_a_traced_latent_gives_the_picture(pipes):
    pipe = pipes["tiny-flux"]
    trace = pipe(PROMPT, num_inference_steps=2, max_sequence_length=16, progress=False)
    np.testing.assert_array_equal(np.asarray(pipe.decode_latents(trace.latents[-1:])[0]), np.asarray(trace.image))


@pytest.mark.parametrize("layout, settings", [("tiny-flux", dict(guidance_scale=3.5)), ("tiny-sd3", dict(negative_prompt="a blue square"))])
def test_img2img_equals_diffusers_img2img(pipes, layout, settings):
    from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline

    pipe = pipes[layout]
    start = pipe(PROMPT, num_inference_steps=3, height=64, width=64, max_sequence_length=16, progress=False).image
    trace = pipe.img2img("a blue square at the top", start, strength=0.6, num_inference_steps=5, seed=3, max_sequence_length=16,
                         progress=False, **settings)
    img2img = (FluxImg2ImgPipeline if pipe.family == "flux" else StableDiffusion3Img2ImgPipeline)(**pipe.pipeline.components)
    plain_image = img2img("a blue square at the top", image=start, strength=0.6, num_inference_steps=5, height=64, width=64,
                          generator=torch.Generator().manual_seed(3), max_sequence_length=16, **settings).images[0]
    np.testing.assert_array_equal(np.asarray(trace.image), np.asarray(plain_image))
    assert trace.mode == "img2img" and trace.strength == 0.6 and trace.num_steps == 3  # int(5 × 0.6) visited
    assert trace.init_latents.shape == trace.latents.shape[1:] and len(trace.sigmas) == 4 and trace.sigmas[-1] == 0
    # the start lies on the straight path between the picture and the noise: x_σ = (1 − σ)·x₀ + σ·ε, so x − (1 − σ)·x₀
    # is σ·ε, noise of standard deviation σ
    sigma = float(trace.sigmas[0])
    noise = (trace.latents[0] - (1 - sigma) * trace.init_latents) / sigma
    assert 0.6 < float(noise.std()) < 1.4


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(strength=0.5), ValueError, "strength belongs to an input image"),
    (dict(image="start.png"), TypeError, "image must be a PIL.Image"),
    (dict(image="square-72", strength=0.5), ValueError, "image is 72×72; both sides must be multiples of 16"),
    (dict(image="square-64", strength=0.1), ValueError, "leaves no step to take"),
    (dict(image="square-64", height=64), ValueError, "height and width come from the input image"),
])
def test_bad_img2img_input_is_refused_before_any_work(pipes, kwargs, error, message):
    from PIL import Image

    if isinstance(kwargs.get("image"), str) and kwargs["image"].startswith("square-"):
        side = int(kwargs["image"].split("-")[1])
        kwargs["image"] = Image.new("RGB", (side, side), "white")
    refused_before_the_transformer_runs(pipes["tiny-flux"], error, message, **{"num_inference_steps": 4, **kwargs})


def test_concept_attention_leaves_the_picture_and_is_the_text_stream_when_the_concepts_are_the_prompt(pipes, monkeypatch, tmp_path):
    from illustrated_sd.recording.concepts import ConceptStream
    from illustrated_sd.recording.joint_attention import recording_joint_attention

    pipe = pipes["tiny-flux"]
    plain_trace = pipe(PROMPT, num_inference_steps=3, max_sequence_length=16, progress=False)
    trace = pipe(PROMPT, num_inference_steps=3, max_sequence_length=16, progress=False, concepts=["circle", "left", "sky"])
    np.testing.assert_array_equal(np.asarray(trace.image), np.asarray(plain_trace.image))  # the concepts only read
    shares = trace.concept_maps.sum(-1)
    torch.testing.assert_close(shares, torch.ones_like(shares))  # each patch's softmax over the concepts
    assert trace.concept_map("circle").shape == trace.grid_hw and trace.concept_layers == ["double.0", "double.1"]
    trace.save(tmp_path / "concepts.safetensors")
    again = isd.Trace.load(tmp_path / "concepts.safetensors")
    assert again.concepts == ["circle", "left", "sky"] and torch.equal(again.concept_map("sky"), trace.concept_map("sky"))

    # With the prompt's own tokens as the concepts (and no padding), the concept stream must be the text stream, block
    # after block, and a concept's map the softmax of o_patch · o_token over the prompt's tokens: both computed here by hand.
    flux, transformer = pipe.pipeline, pipe.transformer
    embeds, pooled, text_ids = flux.encode_prompt(prompt="red circle", prompt_2=None, device="cpu", max_sequence_length=3)
    latents, image_ids = flux.prepare_latents(1, 4, 64, 64, embeds.dtype, "cpu", torch.Generator().manual_seed(0))
    states, text_out, outs = [], [], []

    class Watched(ConceptStream):
        def attend(self, *args):
            super().attend(*args)
            states.append(self.state)

    fused = joint_attention.fused_attention
    monkeypatch.setattr(joint_attention, "fused_attention", lambda q, k, v, mask=None: outs.append(fused(q, k, v, mask)) or outs[-1])
    blocks = list(transformer.transformer_blocks)
    stream = Watched(["red", "circle", "end"], transformer.context_embedder(embeds), blocks, 1, [0, 1], latents.shape[1])
    hooks = [b.register_forward_hook(lambda module, args, out: text_out.append(out[0])) for b in blocks]
    try:
        with torch.no_grad(), recording_joint_attention(transformer, None, stream):
            transformer(hidden_states=latents, timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]), pooled_projections=pooled,
                        encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids, return_dict=False)
    finally:
        for hook in hooks:
            hook.remove()
    for block in range(2):
        torch.testing.assert_close(states[block], text_out[block], atol=1e-5, rtol=1e-5)
        out = outs[block][0][0]  # [heads, 3 + N, d], the text first
        flat = lambda x: x.permute(1, 0, 2).flatten(1)  # noqa: E731
        expected = torch.softmax(flat(out[:, 3:]) @ flat(out[:, :3]).T, dim=-1)
        torch.testing.assert_close(stream.maps[0, block], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout, kwargs, error, message", [
    ("tiny-flux", dict(concepts="circle"), TypeError, "concepts must be a non-empty list of words"),
    ("tiny-flux", dict(concepts=[]), TypeError, "concepts must be a non-empty list"),
    ("tiny-flux", dict(concepts=["circle", "circle"]), ValueError, "holds a word twice"),
    ("tiny-flux", dict(concepts=["circle", " "]), ValueError, "each concept is a word"),
    ("tiny-flux", dict(concepts=["circle"], concept_layers=[5]), ValueError, r"concept_layers \[5\] do not exist: .* 2 double-stream blocks"),
])
def test_bad_concepts_are_refused_before_any_work(pipes, layout, kwargs, error, message):
    refused_before_the_transformer_runs(pipes[layout], error, message, **kwargs)


def test_the_concept_maps_figure(pipes):
    import matplotlib.pyplot as plt

    trace = pipes["tiny-flux"](PROMPT, num_inference_steps=2, max_sequence_length=16, progress=False, concepts=["circle", "sky"])
    fig = isd.plot.concept_maps(trace)
    assert [ax.get_title() for ax in fig.axes[:3]] == [PROMPT, "'circle'", "'sky'"]
    shown = fig.axes[1].images[1].get_array()
    assert shown.shape == (64, 64) and np.isclose(float(shown.mean()), float(trace.concept_map("circle").mean()), atol=0.02)
    plt.close(fig)
    with pytest.raises(ValueError, match="needs a FlowTrace made with concepts="):
        isd.plot.concept_maps(pipes["tiny-flux"](PROMPT, num_inference_steps=1, max_sequence_length=16, progress=False))


@pytest.mark.parametrize("road", ["PyTorch", "GPU kernels"])
@pytest.mark.parametrize("layout", ["tiny-flux", "tiny-sd3"])
def test_a_reweight_biases_the_pictures_reading_of_a_word_and_the_maps_show_it(pipes, monkeypatch, request, layout, road):
    pipe = pipes[layout]
    seen = []
    fused = joint_attention.fused_attention

    def watched(q, k, v, mask=None):
        seen.append((q.clone(), k.clone(), mask))
        return fused(q, k, v, mask)

    monkeypatch.setattr(joint_attention, "fused_attention", watched)
    if road == "GPU kernels":  # the edit's bias added inside the kernel, as on a GPU
        kernels = request.getfixturevalue("interpreted_kernels")
        monkeypatch.setattr(joint_attention, "fused_kernels", lambda *args: kernels)
    edits = [isd.edits.Reweight("red", 3.0, steps=[1], layers=pipe.attention_layers[:1])]
    trace = pipe(PROMPT, num_inference_steps=2, max_sequence_length=16, progress=False, edits=edits)
    monkeypatch.undo()
    T, N = trace.text_length, trace.grid_hw[0] * trace.grid_hw[1]
    joint = [(q, k, m) for q, k, m in seen if k.shape[2] == T + N]
    layers = len(trace.layers)
    for step in range(2):
        q, k, mask = joint[step * layers]  # the first layer, the only one edited
        assert (mask is not None) == (step == 1)
        logits = (q[-1].double() @ k[-1].double().transpose(-1, -2)) * q.shape[-1] ** -0.5
        p = torch.softmax(logits + (0 if mask is None else mask[-1].double()), dim=-1).mean(0)
        image = slice(T, None) if pipe.family == "flux" else slice(0, N)
        text = slice(0, T) if pipe.family == "flux" else slice(N, None)
        padding = torch.ones(T, dtype=torch.bool)
        padding[trace.kept_slots] = False
        expected = torch.cat([p[image, text][:, trace.kept_slots], p[image, text][:, padding].sum(-1, keepdim=True)], -1)
        torch.testing.assert_close(trace.attention["image_to_text"][step, 0, 0].double(), expected, atol=1e-5, rtol=0)
    plain = pipe(PROMPT, num_inference_steps=2, max_sequence_length=16, progress=False)
    red = trace.token_index("red")
    edited, before = trace.attention["image_to_text"][1, 0, 0][:, red].sum(), plain.attention["image_to_text"][1, 0, 0][:, red].sum()
    assert edited > 2 * before  # ×3 before renormalising over every key
    assert trace.edits == [{"kind": "reweight", "word": "red", "slots": trace.kept_slots[red].tolist(), "factor": 3.0, "steps": [1],
                            "layers": pipe.attention_layers[:1]}]


@pytest.mark.parametrize("edits, error, message", [
    ([isd.edits.Reweight("moon", 0)], ValueError, "'moon' is not a word of the prompt; its words are"),
    ([isd.edits.Reweight("red", 0, layers=["up_blocks.0"])], ValueError, r"unknown layers \['up_blocks.0'\]; the transformer's joint-attention"),
    ([isd.edits.Reweight("red", 0, steps=[7])], ValueError, r"steps \[7\] are out of range"),
    (isd.edits.Reweight("red", 0), TypeError, "edits must be a list of edits"),
])
def test_bad_edits_on_a_flow_model_are_refused_before_the_transformer_runs(pipes, edits, error, message):
    refused_before_the_transformer_runs(pipes["tiny-flux"], error, message, edits=edits)


@pytest.mark.parametrize("fails_from_call", [0, 5])
def test_the_gpu_kernels_apply_only_where_they_can_and_a_failing_one_falls_back_to_pytorch(pipes, monkeypatch, request, fails_from_call):
    half = lambda *shape, device="cpu": torch.zeros(*shape, dtype=torch.bfloat16, device=device)  # noqa: E731
    assert joint_attention.fused_kernels(half(1, 24, 4608, 128), kept=33) is False  # a CPU tensor
    if torch.cuda.is_available():
        assert joint_attention.fused_kernels(half(1, 24, 4608, 128, device="cuda"), kept=33)
        assert joint_attention.fused_kernels(half(1, 24, 4608, 128, device="cuda"), kept=200) is False
        assert joint_attention.fused_kernels(half(1, 24, 4608, 96, device="cuda"), kept=33) is False

    class Broken:  # as a Triton that cannot compile the kernels would behave: at once, or for a variant needed later
        calls = 0

        def __getattr__(self, name):
            def kernel(*args, **kwargs):
                Broken.calls += 1
                if Broken.calls > fails_from_call:
                    raise RuntimeError("PassManager::run failed\nmore lines")
                return getattr(request.getfixturevalue("interpreted_kernels"), name)(*args, **kwargs)
            return kernel

    pipe = pipes["tiny-flux"]
    kwargs = dict(num_inference_steps=2, seed=0, max_sequence_length=16, progress=False)
    monkeypatch.setattr(joint_attention, "SMALL_ROAD_LIMIT", 0)
    expected = pipe(PROMPT, **kwargs)
    monkeypatch.setattr(joint_attention, "fused_kernels", lambda *args: Broken())
    with pytest.warns(UserWarning, match=r"GPU kernels failed \(RuntimeError: PassManager::run failed\); recording with PyTorch"):
        trace = pipe(PROMPT, **kwargs)
    for quadrant, maps in expected.attention.items():
        torch.testing.assert_close(trace.attention[quadrant], maps)


@pytest.mark.parametrize("layout", ["tiny-flux", "tiny-sd3"])
def test_per_head_maps_are_the_same_on_the_gpu_kernels_road(pipes, monkeypatch, interpreted_kernels, layout):
    """Every head kept (RecordOptions(per_head=True)): the kernels' maps, head by head, are PyTorch's."""
    pipe, record = pipes[layout], isd.RecordOptions(per_head=True)
    kwargs = dict(num_inference_steps=2, seed=0, max_sequence_length=16, progress=False, record=record)
    monkeypatch.setattr(joint_attention, "SMALL_ROAD_LIMIT", 0)
    expected = pipe(PROMPT, **kwargs)
    monkeypatch.setattr(joint_attention, "fused_kernels", lambda *args: interpreted_kernels)
    trace = pipe(PROMPT, **kwargs)
    heads = pipe.transformer.config.num_attention_heads
    for quadrant, maps in expected.attention.items():
        assert maps.shape[2] == heads
        torch.testing.assert_close(trace.attention[quadrant], maps, atol=1e-6, rtol=0)

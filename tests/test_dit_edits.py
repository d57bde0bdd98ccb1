"""ConceptAttention on SD3 / SD3.5, and prompt-to-prompt's Swap on SD3 and Flux (illustrated_sd.recording.concepts, .recording.flow_edits).

Tiny random models built offline. The concepts only read: the picture equals a plain call's and diffusers'. A Swap's
rows equal an explicit softmax with the source's image→text probabilities put in, and a Swap onto a source whose maps
differ from the call's own (the same prompt with a Reweight) reproduces the source's latents for the swapped steps.
"""

import numpy as np
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.recording import joint_attention

PROMPT = "a red circle on the left"
SETTINGS = {"tiny-sd3": dict(guidance_scale=7.0, negative_prompt="a blue square"), "tiny-sd35": dict(guidance_scale=4.5),
            "tiny-flux": dict(guidance_scale=3.5)}
PER_HEAD = isd.RecordOptions(per_head=True)


@pytest.fixture(scope="module")
def pipes():
    return {layout: isd.IllustratedPipeline(isd.build_random_pipeline(layout, seed=1)) for layout in SETTINGS}


def call(pipe, prompt=PROMPT, steps=3, **kwargs):
    return pipe(prompt, num_inference_steps=steps, **{"seed": 0, "max_sequence_length": 16, "progress": False, **kwargs})


def refused_before_the_transformer_runs(pipe, error, message, **kwargs):
    """Call ``pipe`` with ``kwargs`` expecting ``error`` matching ``message``, and no transformer call."""
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(error, match=message):
            call(pipe, **{"steps": 2, **kwargs})
    finally:
        hook.remove()
    assert calls == []


# ---- ConceptAttention on SD3 and SD3.5 ------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["tiny-sd3", "tiny-sd35"])
def test_sd3_concepts_leave_the_picture_and_share_each_patch_among_the_concepts(pipes, layout, tmp_path):
    pipe, settings = pipes[layout], SETTINGS[layout]
    trace = call(pipe, concepts=["circle", "left", "sky"], **settings)
    plain = call(pipe, **settings)
    np.testing.assert_array_equal(np.asarray(trace.image), np.asarray(plain.image))  # the concepts only read
    diffusers = pipe.pipeline(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(0), max_sequence_length=16,
                              **settings).images[0]
    np.testing.assert_array_equal(np.asarray(trace.image), np.asarray(diffusers))
    N = trace.grid_hw[0] * trace.grid_hw[1]
    assert trace.concept_maps.shape == (3, 2, N, 3) and trace.concept_layers == ["joint.0", "joint.1"]
    shares = trace.concept_maps.sum(-1)
    torch.testing.assert_close(shares, torch.ones_like(shares))  # each patch's softmax over the concepts
    assert trace.concept_map("sky", layer="joint.1").shape == trace.grid_hw
    assert not torch.allclose(trace.concept_maps[:, 0], trace.concept_maps[:, 1])  # two blocks, two readings
    # keeping one block keeps that block's maps, the same as when all are kept
    one = call(pipe, concepts=["circle", "left", "sky"], concept_layers=[1], **settings)
    assert one.concept_layers == ["joint.1"]
    torch.testing.assert_close(one.concept_maps[:, 0], trace.concept_maps[:, 1], atol=1e-6, rtol=0)
    trace.save(tmp_path / "concepts.safetensors")
    again = isd.Trace.load(tmp_path / "concepts.safetensors")
    assert again.concepts == ["circle", "left", "sky"] and torch.equal(again.concept_map("left"), trace.concept_map("left"))


@pytest.mark.parametrize("layout", ["tiny-sd3", "tiny-sd35"])
def test_the_sd3_concept_stream_is_the_text_stream_when_the_concepts_are_the_text(pipes, monkeypatch, layout):
    """Concepts that *are* the text tokens (no padding): block after block the stream equals the text stream, and a
    concept's map is the softmax over the tokens of o_patch · o_token, computed here by hand from the joint attention.
    The last block (context_pre_only) carries no text on, but still gives a map; SD3.5's first block also runs attn2.
    The batch has two rows, as with guidance: the concepts follow the last (the prompt's), its own timestep embedding."""
    from illustrated_sd.recording.concepts import ConceptStream
    from illustrated_sd.recording.joint_attention import recording_joint_attention

    transformer = pipes[layout].transformer
    generator = torch.Generator().manual_seed(3)
    text = torch.randn(2, 3, transformer.config.joint_attention_dim, generator=generator)  # 3 tokens as SD3 reads them
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    pooled = torch.randn(2, transformer.config.pooled_projection_dim, generator=generator)
    N, states, text_out, outs = 64, [], [], []

    class Watched(ConceptStream):
        def attend(self, *args):
            super().attend(*args)
            states.append(self.state)

    fused = joint_attention.fused_attention
    monkeypatch.setattr(joint_attention, "fused_attention", lambda q, k, v, mask=None: outs.append(fused(q, k, v, mask)) or outs[-1])
    blocks = list(transformer.transformer_blocks)
    assert blocks[-1].context_pre_only and (layout == "tiny-sd3" or blocks[0].attn2 is not None)
    stream = Watched(["a", "b", "c"], transformer.context_embedder(text[-1:]), blocks, 1, [0, 1], N, prefix="joint")
    hooks = [b.register_forward_hook(lambda module, args, out: text_out.append(out[0])) for b in blocks]
    try:
        with torch.no_grad(), recording_joint_attention(transformer, None, stream):
            transformer(hidden_states=latents, timestep=torch.tensor([500.0, 500.0]), encoder_hidden_states=text,
                        pooled_projections=pooled, return_dict=False)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(states[0], text_out[0][-1:], atol=1e-5, rtol=1e-5)  # block 0 carries the text on
    assert text_out[1] is None and states[1] is states[0]  # the last block: read, not carried
    flat = lambda x: x.permute(1, 0, 2).flatten(1)  # noqa: E731
    for block in range(2):
        out = outs[block][0][-1]  # [heads, N + 3, d], the image first
        expected = torch.softmax(flat(out[:, :N]) @ flat(out[:, N:]).T, dim=-1)
        torch.testing.assert_close(stream.maps[0, block], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout, kwargs, error, message", [
    ("tiny-sd3", dict(concepts=["circle"], concept_layers=[5]), ValueError, r"concept_layers \[5\] do not exist: .* 2 joint blocks, 0–1"),
    ("tiny-sd35", dict(concepts="circle"), TypeError, "concepts must be a non-empty list of words"),
    ("tiny-sd3", dict(concepts=["sky"], concept_layers="joint.0"), TypeError, "concept_layers must be a list of joint block indices"),
])
def test_bad_sd3_concepts_are_refused_before_any_work(pipes, layout, kwargs, error, message):
    refused_before_the_transformer_runs(pipes[layout], error, message, **kwargs)


# ---- Swap on SD3 and Flux --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["tiny-sd3", "tiny-flux"])
@pytest.mark.parametrize("reweight", [False, True])
def test_a_swapped_row_is_the_source_maps_put_into_the_joint_softmax(pipes, monkeypatch, layout, reweight):
    """At the swapped step and layer, each patch of the prompt's row attends with the source's probabilities for the
    kept tokens, the source's padding share spread as its own padding softmax, and its own image softmax scaled to
    what the text leaves; a Reweight on top multiplies its tokens and renormalises the row. All by hand, in float64."""
    pipe, settings = pipes[layout], SETTINGS[layout]
    source = call(pipe, steps=2, record=PER_HEAD, **settings)
    first = pipe.attention_layers[0]
    edits = [isd.edits.Swap(source, steps=1, layers=[first])] + ([isd.edits.Reweight("blue", 3.0, steps=[0], layers=[first])] if reweight else [])
    seen, inputs = [], []
    fused = joint_attention.fused_attention

    def watched(q, k, v, mask=None):
        seen.append((q.clone(), k.clone(), v.clone(), mask))
        return fused(q, k, v, mask)

    monkeypatch.setattr(joint_attention, "fused_attention", watched)
    to_out = joint_attention.joint_layers(pipe.transformer)[first].to_out[0]
    hook = to_out.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))  # the image rows, before to_out
    try:
        trace = call(pipe, "a blue circle on the left", steps=2, record=PER_HEAD, edits=edits, **settings)
    finally:
        hook.remove()
    monkeypatch.undo()
    T, N, n = trace.text_length, trace.grid_hw[0] * trace.grid_hw[1], len(trace.tokens)
    q, k, v, mask = next(x for x in seen if x[1].shape[2] == T + N)  # step 0, the first layer
    assert (mask is not None) == reweight
    flux = pipe.family == "flux"
    text, image = (slice(0, T), slice(T, None)) if flux else (slice(N, None), slice(0, N))
    q, k, v = (x[-1].double() for x in (q, k, v))  # the prompt's row: [heads, T + N, d]
    p_own = torch.softmax((q[:, image] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)  # [heads, N, T + N]
    p_text, p_image = p_own[..., text], p_own[..., image]
    padding = torch.ones(T, dtype=torch.bool)
    padding[trace.kept_slots] = False
    src = source.attention["image_to_text"][0, 0].double()  # [heads, N, n + 1]
    swapped = torch.zeros_like(p_text)
    swapped[..., trace.kept_slots] = src[..., :n]
    swapped[..., padding] = p_text[..., padding] / p_text[..., padding].sum(-1, keepdim=True) * src[..., n:]
    row_image = p_image / p_image.sum(-1, keepdim=True) * (1 - src.sum(-1, keepdim=True))
    if reweight:
        blue = trace.kept_slots[trace.token_index("blue")]
        swapped[..., blue] *= 3.0
    total = swapped.sum(-1, keepdim=True) + row_image.sum(-1, keepdim=True)
    swapped, row_image = swapped / total, row_image / total
    expected = swapped @ v[:, text] + row_image @ v[:, image]  # [heads, N, d]
    got = inputs[0][-1].double().unflatten(-1, (q.shape[0], -1)).transpose(0, 1)  # [N, heads·d] → [heads, N, d]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the trace shows the maps the model used there: the kept tokens' probabilities, then the padding's share
    used = torch.cat([swapped[..., trace.kept_slots], swapped[..., padding].sum(-1, keepdim=True)], -1)
    torch.testing.assert_close(trace.attention["image_to_text"][0, 0].double(), used, atol=1e-6, rtol=0)
    own = torch.cat([p_text[..., trace.kept_slots], p_text[..., padding].sum(-1, keepdim=True)], -1)
    assert (used - own).abs().max() > 1e-3  # the swap changed them
    assert trace.edits[0] == {"kind": "swap", "source_prompt": PROMPT, "source_seed": 0, "steps": [0], "layers": [first]}


@pytest.mark.parametrize("layout", ["tiny-sd3", "tiny-sd35", "tiny-flux"])
def test_a_swap_onto_a_reweighted_source_follows_it_for_the_swapped_steps(pipes, layout):
    """The source is this prompt with "red" reweighted ×30, so its maps are not the call's own. Swapping every step
    (every layer, Flux's single-stream blocks too) must give the source's latents; swapping the first two of four keeps
    the source's start, and the end stays nearer the source than a call without the swap."""
    pipe, settings = pipes[layout], SETTINGS[layout]
    source = call(pipe, steps=4, record=PER_HEAD, edits=[isd.edits.Reweight("red", 30.0)], **settings)
    plain = call(pipe, steps=4, record=PER_HEAD, **settings)
    distance = lambda a, b: (a.latents - b.latents).abs().flatten(1).mean(1)  # noqa: E731  [S + 1], one per step

    every = call(pipe, steps=4, record=PER_HEAD, edits=[isd.edits.Swap(source, steps=4)], **settings)
    assert distance(every, source).max() < 1e-5 < 1e-3 < distance(plain, source)[1:].min()
    assert every.edits[0]["layers"] == pipe.attention_layers and every.edits[0]["steps"] == [0, 1, 2, 3]

    first = call(pipe, steps=4, record=PER_HEAD, edits=[isd.edits.Swap(source)], **settings)  # default: half the steps
    assert first.edits[0]["steps"] == [0, 1]
    assert distance(first, source)[:3].max() < 1e-5  # the start, and the latents after the two swapped steps
    assert distance(first, source)[-1] < 0.8 * distance(plain, source)[-1]  # the layout the source set stays
    torch.testing.assert_close(first.attention["image_to_text"][:2], source.attention["image_to_text"][:2], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def sources(pipes):
    return {layout: call(pipe, steps=2, record=PER_HEAD, **SETTINGS[layout]) for layout, pipe in pipes.items()}


def test_bad_swaps_are_refused_before_the_transformer_runs(pipes, sources, trace, pipe):
    sd3, flux, source = pipes["tiny-sd3"], pipes["tiny-flux"], sources["tiny-sd3"]  # (pipe, trace: SD 1/2's)
    swap = lambda s=source, **kwargs: dict(edits=[isd.edits.Swap(s, **kwargs)])  # noqa: E731
    refused = refused_before_the_transformer_runs
    refused(sd3, ValueError, r"text layouts match token for token: the source 'a red circle on the left' keeps .* swap a word for "
            r"one of as many tokens", prompt="a red circle", **swap())
    refused(sd3, ValueError, "text layouts match token for token", max_sequence_length=32, **swap())
    refused(sd3, ValueError, "the Swap's source is a flux FlowTrace, and this is a sd3 pipeline: make the source with this pipeline",
            **swap(sources["tiny-flux"]))
    refused(flux, ValueError, "the Swap's source is a Trace of SD 1/2's UNet, and this is a flux pipeline", **swap(trace))
    refused(sd3, ValueError, r"unknown layers \['joint.9'\]; the layers the source trace recorded are", **swap(layers=["joint.9"]))
    refused(sd3, ValueError, r"steps=3 first steps is out of range: this generation has 2 steps", **swap(steps=3))
    refused(sd3, ValueError, r"image_to_text maps \[steps, layers, heads, N, n \+ 1\] = \[2, .* needs \[3,", steps=3, **swap())
    refused(sd3, ValueError, "generate both at the same size", height=64, **swap())
    with pytest.raises(TypeError, match="edits.Swap on an SD 1/2 or SDXL pipeline takes a Trace, got FlowTrace"):
        pipe(PROMPT, num_inference_steps=2, progress=False, edits=[isd.edits.Swap(source)])  # and back: SD refuses a FlowTrace
    no_maps = call(sd3, steps=2, record=isd.RecordOptions(quadrants=("text_to_image",)))
    refused(sd3, ValueError, "recorded no image_to_text attention; make it with the default recording", **swap(no_maps))

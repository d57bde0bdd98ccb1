"""Widgets are built from real objects and driven by setting their values, as a notebook user would."""

import html

import numpy as np
import pytest

import illustrated_sd as isd
from illustrated_sd import IllustratedPipeline
from illustrated_sd.plot.widgets import GuidanceSlider, PromptPlayground, TraceExplorer

from .test_explorer import HOSTILE_PROMPTS, flow_pipes, flux_trace  # noqa: F401 (the flow fixtures)


def test_trace_explorer_views_follow_the_controls(trace, head_trace):
    explorer = TraceExplorer(trace)
    before = {name: view.value for name, view in explorer.views.items()}
    assert all(before.values())
    explorer.step.value = 0
    assert explorer.views["latent"].value != before["latent"]
    assert explorer.views["pred_x0"].value != before["pred_x0"]
    assert explorer.views["image"].value == before["image"]  # the final image does not depend on the step
    assert trace.tokens[explorer.token.value] in ("red", "circle", "left")  # it opens on a word that found its place
    heat = explorer.views["heatmap"].value
    explorer.token.value = 1 if explorer.token.value != 1 else 2
    assert explorer.views["heatmap"].value != heat
    heat = explorer.views["heatmap"].value
    explorer.layer.value = explorer.layer.options[-1][1]
    assert explorer.views["heatmap"].value != heat
    assert "step 0 of steps 0–5" in explorer.caption.value
    per_head = TraceExplorer(head_trace)
    heat = per_head.views["heatmap"].value
    per_head.head.value = 1
    assert per_head.views["heatmap"].value != heat
    assert [v for _, v in TraceExplorer(trace).head.options] == [None]  # head-averaged trace: only the mean
    assert len(repr(explorer)) <= 110  # ipywidgets cuts a longer text/plain: a page without a kernel shows all of it


def test_prompt_playground_generates_and_reports_errors(pipe):
    playground = PromptPlayground(pipe, prompt="a blue star at the top")
    playground.steps.value, playground.seed.value = 3, 4
    playground.button.click()
    assert playground.trace is not None and playground.trace.seed == 4 and playground.trace.num_steps == 3
    assert isinstance(playground.explorer_box.children[0], TraceExplorer)
    playground.prompt.value = ""
    playground.button.click()
    assert "prompt is empty" in playground.status.value and "Traceback" not in playground.status.value
    assert playground.trace.prompt == "a blue star at the top" and not playground.button.disabled


def test_guidance_slider_generates_each_scale_once(pipe):
    slider = GuidanceSlider(pipe, "a red circle", scales=(1.0, 5.0, 9.0), steps=2)
    shown = slider.view.value
    slider.scale.value = 9.0
    assert slider.view.value != shown and sorted(slider.traces) == [1.0, 5.0, 9.0]
    slider.scale.value = 5.0
    assert slider.view.value == shown


@pytest.mark.filterwarnings("ignore:the model never saw")
def test_prompts_and_errors_are_shown_as_text_not_html(pipe):
    playground = PromptPlayground(pipe, prompt="a <b>red</b> circle")
    playground.steps.value = 1
    playground.button.click()
    assert "&lt;b&gt;red&lt;/b&gt;" in playground.status.value and "<b>red</b>" not in playground.status.value
    slider = GuidanceSlider(pipe, "a <i>circle</i>", scales=(1.0,), steps=1)
    assert "&lt;i&gt;circle&lt;/i&gt;" in slider.children[0].value


def test_the_explorer_needs_a_trace():
    with pytest.raises(TypeError, match=r"TraceExplorer takes a Trace \(SD 1/2/XL\) or a FlowTrace \(SD3, Flux\), got str 'a red circle"):
        TraceExplorer("a red circle on the left")


# ---- a diffusion transformer's trace: the joint attention's views ------------------------------------------------

def test_the_explorer_of_a_flow_trace_follows_the_step_the_word_and_the_layer(flux_trace, flow_pipes):
    from illustrated_sd.plot.joint import telling_word, tokens_to_pixels, word_choices
    from illustrated_sd.plot.widgets import SIZE, _heat_image, _png

    trace = flux_trace
    explorer = TraceExplorer(trace, decode=flow_pipes["tiny-flux"].decode_latents)
    assert list(explorer.views) == ["image", "latent", "pred_x0", "image→text", "text→image", "text share"]
    assert list(explorer.word.options) == word_choices(trace) and explorer.word.value == telling_word(trace)
    assert [label for label, _ in explorer.layer.options] == ["all 4 layers", "double-stream blocks (2)", "single-stream blocks (2)", *trace.layers]
    shown = lambda: {name: view.value for name, view in explorer.views.items()}  # noqa: E731
    drawn = lambda heat: _png(_heat_image(tokens_to_pixels(heat, (SIZE, SIZE)), trace.image))  # noqa: E731

    before = shown()
    explorer.step.value = 0
    after = shown()
    assert [name for name in after if after[name] != before[name]] == ["latent", "pred_x0", "image→text", "text→image", "text share"]
    assert after["image→text"] == drawn(trace.cross_attention(telling_word(trace), step=0))
    assert explorer.caption.value.startswith("step 0 of steps 0–3, σ = 1.000 → ")

    explorer.word.value = "square"
    now = shown()
    assert now["image→text"] == drawn(trace.cross_attention("square", step=0)) != after["image→text"]
    assert now["text→image"] == drawn(trace.text_to_image("square", step=0)) != after["text→image"]
    assert now["text share"] == after["text share"]  # not the word's: every patch's share of attention to all text
    assert f"{100 * float(trace.cross_attention('square', step=0).mean()):.2f}% to “square”" in explorer.caption.value

    single = ("single.0", "single.1")
    explorer.layer.value = single
    assert explorer.views["image→text"].value == drawn(trace.cross_attention("square", 0, single))
    assert explorer.views["text share"].value == drawn(trace.text_share(0, single)) != now["text share"]
    explorer.layer.value = "double.1"
    assert explorer.views["text→image"].value == drawn(trace.text_to_image("square", 0, "double.1"))
    assert f"the padding takes {100 * trace.padding_share(0, 'double.1'):.1f}% of the attention to the text" in explorer.caption.value
    explorer.word.value = trace.tokens.index("</s>")  # a marker token, picked by its place
    assert explorer.views["image→text"].value == drawn(trace.cross_attention(trace.tokens.index("</s>"), 0, "double.1"))
    assert "to “&lt;/s&gt; (t5)”" in explorer.caption.value  # escaped: the caption is HTML
    assert len(repr(explorer)) <= 110


def test_a_flow_trace_without_a_quadrant_says_what_is_missing(flux_trace, flow_pipes):
    from dataclasses import replace

    quadrant = lambda *names: replace(flux_trace, attention={n: flux_trace.attention[n] for n in names})  # noqa: E731
    with pytest.raises(ValueError, match=r"TraceExplorer shows image→text attention, and this trace recorded \['text_to_image'\]; "
                                         r"generate with the default isd.RecordOptions\(\)"):
        TraceExplorer(quadrant("text_to_image"))
    explorer = TraceExplorer(quadrant("image_to_text"))
    assert explorer.views["text→image"].value == b"" and explorer.views["image→text"].value != b""
    assert "no text→image view: record it with RecordOptions(quadrants=(..., \"text_to_image\"))" in explorer.caption.value
    with pytest.raises(TypeError, match=r"decode must be pipe.decode_latents \(latents in, pictures out\) or None, got FlowPipeline"):
        TraceExplorer(flux_trace, decode=flow_pipes["tiny-flux"])
    compact = flow_pipes["tiny-flux"]("a red circle", num_inference_steps=3, max_sequence_length=16, progress=False,
                                      record=isd.RecordOptions(compact=True))
    with pytest.raises(ValueError, match=r"TraceExplorer needs every step, and this is a compact trace: it lacks latents, velocities"):
        TraceExplorer(compact)


# ---- bad input is refused when a widget is made, before anything is generated ----------------------------------

class CountingPipeline(IllustratedPipeline):
    """The session's model, counting generations (a refused widget must have made none); ``fail`` makes the next
    ones raise it, as a GPU out of memory would."""

    calls, fail = 0, None

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return super().__call__(*args, **kwargs)


@pytest.fixture
def counting(pipe):
    return CountingPipeline(pipe.pipeline, record=isd.RecordOptions(), name=pipe.name, known_words=pipe.known_words, world=pipe.world)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("change, error, words", [
    ({"pipe": "a red circle"}, TypeError, "GuidanceSlider takes an IllustratedPipeline, got str; make one with pipe = isd.load_pipeline()"),
    ({"pipe": None}, TypeError, "GuidanceSlider takes an IllustratedPipeline, got NoneType"),
    ({"prompt": None}, TypeError, "prompt must be a string (got NoneType)"),
    ({"prompt": ["a red circle", "a blue star"]}, TypeError, "prompt must be a string (got list); GuidanceSlider draws one prompt"),
    ({"prompt": "  "}, ValueError, "the prompt is empty; give GuidanceSlider one to draw, e.g. 'a red circle on the left'"),
    ({"scales": []}, ValueError, "scales is empty; give the slider at least one guidance scale, e.g. scales=(1.0, 4.0, 7.5)"),
    ({"scales": np.array([])}, ValueError, "scales is empty"),
    ({"scales": 7.5}, TypeError, "scales must be a list of guidance scales, e.g. scales=(1.0, 4.0, 7.5) (got 7.5)"),
    ({"scales": "1, 7.5"}, TypeError, "scales must be a list of guidance scales"),
    ({"scales": (1.0, NAN)}, ValueError, "each guidance scale must be a finite number (got nan); e.g. scales=(1.0, 4.0, 7.5)"),
    ({"scales": (1.0, -INF)}, ValueError, "each guidance scale must be a finite number (got -inf)"),
    ({"scales": (1.0, "7.5")}, TypeError, "each guidance scale must be a number (got '7.5')"),
    ({"scales": (1.0, True)}, TypeError, "each guidance scale must be a number (got True)"),
    ({"scales": (7.5, 1, 1.0)}, ValueError, "scales holds 1 more than once; give each guidance scale once, e.g. scales=(1.0, 7.5)"),
    ({"seed": None}, TypeError, "seed must be a whole number (got None); any integer, e.g. seed=0"),
    ({"seed": 1.5}, TypeError, "seed must be a whole number (got 1.5)"),
    ({"seed": 2**64}, ValueError, f"seed must be between {-(2**63)} and {2**64 - 1} (got {2**64})"),
    ({"steps": 0}, ValueError, "steps must be ≥ 1 (got 0); denoising steps of each picture, e.g. 25"),
    ({"steps": "25"}, TypeError, "steps must be a whole number (got '25')"),
])
def test_guidance_slider_refuses_bad_input_before_generating(counting, change, error, words):
    arguments = {"pipe": counting, "prompt": "a red circle", "scales": (1.0, 7.5), "seed": 0, "steps": 2, **change}
    with pytest.raises(error) as refused:
        GuidanceSlider(**arguments)
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert counting.calls == 0


def test_guidance_slider_shows_the_scales_in_order_and_says_what_failed(counting):
    slider = GuidanceSlider(counting, "a red circle", scales=np.array([7.5, 1.0, 4.0]), steps=2)
    assert slider.scale.options == (1.0, 4.0, 7.5) and slider.scale.value == 4.0
    assert counting.calls == 2 and sorted(slider.traces) == [1.0, 4.0]  # the baseline (the smallest) and the middle one
    assert slider.children[2].children[0].children[0].value == "guidance 1"
    shown = slider.view.value
    counting.fail = RuntimeError("CUDA out of memory")  # a generation that fails inside the slider's callback
    slider.scale.value = 7.5
    assert slider.caption.value == "<span style='color:#d33'>⚠ RuntimeError: CUDA out of memory</span>"
    assert slider.view.value == shown and 7.5 not in slider.traces
    counting.fail = None
    slider.scale.value = 4.0  # cached: no generation
    slider.scale.value = 7.5
    assert slider.caption.value == "guidance 7.5" and slider.view.value != shown and counting.calls == 4


@pytest.mark.parametrize("change, error, words", [
    ({"pipe": "a red circle"}, TypeError, "PromptPlayground takes an IllustratedPipeline, got str"),
    ({"prompt": 5}, TypeError, "prompt must be a string (got int); PromptPlayground draws one prompt"),
    ({"prompt": ""}, ValueError, "the prompt is empty; give PromptPlayground one to draw"),
    ({"record": isd.RecordOptions(compact=True)}, ValueError,
     "PromptPlayground shows every step of what it generates, and this pipe records compact traces (pipe.record.compact is "
     "True); set pipe.record = isd.RecordOptions() first"),
])
def test_prompt_playground_refuses_bad_input_when_made(counting, change, error, words):
    change = dict(change)
    counting.record = change.pop("record", counting.record)
    with pytest.raises(error) as refused:
        PromptPlayground(**{"pipe": counting, **change})
    assert words in str(refused.value)
    assert counting.calls == 0


def test_a_failure_inside_the_playground_shows_in_its_status_line(counting):
    playground = PromptPlayground(counting)
    playground.steps.value = 2
    counting.record = isd.RecordOptions(compact=True)  # changed after the playground was made: the explorer refuses the trace
    playground.button.click()
    assert playground.status.value.startswith("<span style='color:#d33'>⚠ TraceExplorer needs every step, and this is a compact trace")
    assert playground.trace is None and playground.explorer_box.children == () and not playground.button.disabled
    counting.record, counting.fail = isd.RecordOptions(), RuntimeError("CUDA out of memory")
    playground.button.click()
    assert playground.status.value == "<span style='color:#d33'>⚠ RuntimeError: CUDA out of memory</span>"


def test_the_playground_without_cross_attention_says_why_there_is_no_heatmap(counting):
    counting.record = isd.RecordOptions(cross_attention=False)
    playground = PromptPlayground(counting)
    playground.steps.value = 1
    playground.button.click()
    explorer = playground.explorer_box.children[0]
    assert playground.trace.attention_maps == {} and explorer.views["heatmap"].value == b""
    assert "no heatmap: this trace has no cross-attention maps (generate with RecordOptions(cross_attention=True))" in explorer.caption.value
    explorer.token.value = 2
    assert explorer.caption.value.startswith("step 0 of steps 0–0")


@pytest.mark.parametrize("decode, words", [
    ("pipe", "decode must be pipe.decode_latents (latents in, pictures out) or None, got IllustratedPipeline"),
    ("yes", "decode must be pipe.decode_latents (latents in, pictures out) or None, got str"),
])
def test_the_explorer_refuses_a_decode_that_is_not_the_decoder(trace, pipe, decode, words):
    with pytest.raises(TypeError) as refused:
        TraceExplorer(trace, decode=pipe if decode == "pipe" else decode)
    assert str(refused.value) == words


def test_the_explorer_refuses_a_compact_trace(pipe):
    compact = pipe("a red circle on the left", num_inference_steps=2, seed=0, progress=False, record=isd.RecordOptions(compact=True))
    with pytest.raises(ValueError, match="TraceExplorer needs every step, and this is a compact trace: it lacks latents"):
        TraceExplorer(compact)


def test_a_decode_failing_inside_the_explorer_shows_in_its_caption(trace, pipe):
    decoded = []

    def decode(latents):  # the last step's two pictures decode; any other step fails, as a GPU out of memory would
        if len(decoded) == 2:
            raise RuntimeError("CUDA out of memory")
        decoded.append(latents)
        return pipe.decode_latents(latents)
    explorer = TraceExplorer(trace, decode=decode)
    explorer.step.value = 0
    assert explorer.caption.value == "<span style='color:#d33'>⚠ RuntimeError: CUDA out of memory</span>"


@pytest.mark.filterwarnings("ignore:the model never saw")
@pytest.mark.parametrize("prompt", HOSTILE_PROMPTS)
def test_hostile_prompts_are_text_in_every_widget(pipe, prompt):
    slider = GuidanceSlider(pipe, prompt, scales=(1.0,), steps=1)
    assert slider.children[0].value == f"<b>{html.escape(prompt)}</b> (seed 0)"
    playground = PromptPlayground(pipe, prompt=prompt)
    playground.steps.value = 1
    playground.button.click()
    assert playground.status.value == f"done: {html.escape(repr(playground.trace))}" and playground.trace.prompt == prompt
    for value in (slider.children[0].value, playground.status.value):
        assert "<script" not in value.lower() and "<!--" not in value and "'" not in value

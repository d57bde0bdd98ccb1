"""Widgets are built from real objects and driven by setting their values, as a notebook user would."""

import pytest

from illustrated_sd.widgets import GuidanceSlider, PromptPlayground, TraceExplorer


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
    assert "step 1 of 6" in explorer.caption.value
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
    with pytest.raises(TypeError, match="TraceExplorer takes a Trace"):
        TraceExplorer("a red circle on the left")

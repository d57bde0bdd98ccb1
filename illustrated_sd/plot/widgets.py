"""Jupyter widgets (ipywidgets) around a Trace: scrub through the steps, pick tokens and layers, generate.

TraceExplorer only reads a trace, of either family: SD 1/2/XL's cross-attention, or SD3 / Flux's joint attention. PromptPlayground and GuidanceSlider exist to generate, and say so.
Each checks what it is given when it is made: ipywidgets only logs an error raised inside a callback, out of the
user's sight, so what can go wrong there (a prompt typed in, a failed generation) is shown in the widget instead.
"""

import html
import io
from collections.abc import Iterable

import ipywidgets as W
import matplotlib
import numpy as np
from PIL import Image

from .. import checks
from ..trace.flow import FlowTrace
from .explorer import require_any_trace
from .labels import step_label
from ..loops.unet import IllustratedPipeline
from .attention import upsample
from .denoising import _as_rgb
from .joint import concentration, layer_groups, telling_word, tokens_to_pixels, word_choices

SIZE = 192  # pixels of each view


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _heat_image(heat: np.ndarray, under: Image.Image) -> Image.Image:
    """A heatmap (scaled to its maximum) over a grey copy of the image."""
    colors = matplotlib.colormaps["inferno"](heat / max(float(heat.max()), 1e-8))[..., :3]
    grey = np.asarray(under.convert("L").resize(heat.shape[::-1]), dtype=np.float32)[..., None] / 255
    return Image.fromarray(((0.35 * grey + 0.65 * colors) * 255).astype(np.uint8))


def _static_repr(widget, what: str) -> str:
    """What a page without a kernel shows instead of the widget (ipywidgets cuts text/plain at 110 characters)."""
    return f"{type(widget).__name__}: {what} (a live widget: open the notebook in JupyterLab)"


def _error_html(err: Exception) -> str:
    """An error as one red line for a widget's status (escaped: its words may quote a prompt). The package's own
    refusals (ValueError, TypeError) carry the fix in their words; anything else is named by its type too."""
    words = str(err) if isinstance(err, (ValueError, TypeError)) else f"{type(err).__name__}: {err}"
    return f"<span style='color:#d33'>⚠ {html.escape(words)}</span>"


def _shown_in(line: W.HTML, redraw):
    """``redraw`` as a widget callback whose errors appear in ``line`` (ipywidgets would only log them)."""
    def callback(_change=None):
        try:
            redraw()
        except Exception as err:  # whatever it is, this line is the only place the user will see it
            line.value = _error_html(err)
    return callback


def _require_pipe(pipe, who: str) -> IllustratedPipeline:
    if not isinstance(pipe, IllustratedPipeline):
        raise TypeError(f"{who} takes an IllustratedPipeline, got {type(pipe).__name__}; make one with pipe = isd.load_pipeline(), "
                        "or wrap a diffusers pipeline: isd.IllustratedPipeline(pipeline)")
    return pipe


def _require_prompt(prompt, who: str) -> str:
    checks.text("prompt", prompt, hint=f"{who} draws one prompt, e.g. 'a red circle on the left'")
    if not prompt.strip():
        raise ValueError(f"the prompt is empty; give {who} one to draw, e.g. 'a red circle on the left'")
    return prompt


def _guidance_scales(scales) -> list[float]:
    """``scales`` as a sorted list of distinct finite numbers (a slider reads them left to right), or a clear error."""
    if hasattr(scales, "tolist"):  # a numpy array or a tensor
        scales = scales.tolist()
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Iterable):
        raise TypeError(f"scales must be a list of guidance scales, e.g. scales=(1.0, 4.0, 7.5) (got {scales!r:.60})")
    values = [checks.real_number("each guidance scale", s, hint="e.g. scales=(1.0, 4.0, 7.5)") for s in scales]
    if not values:
        raise ValueError("scales is empty; give the slider at least one guidance scale, e.g. scales=(1.0, 4.0, 7.5)")
    repeated = sorted({s for s in values if values.count(s) > 1})
    if repeated:
        raise ValueError(f"scales holds {repeated[0]:g} more than once; give each guidance scale once, e.g. scales={tuple(sorted(set(values)))}")
    return sorted(values)


def _telling_token(trace) -> int:
    """The slot to show first: the word whose heatmap at the last step is the most concentrated
    (:func:`~illustrated_sd.plot.joint.concentration`), i.e. a word that found its place."""
    if not trace.attention_maps:
        return 1
    return max(range(1, len(trace.tokens) - 1), key=lambda slot: concentration(trace.cross_attention(slot, step=-1)))


# The joint attention's views of a FlowTrace, beside the image, x_t and x̂₀: what a view shows, in its heading.
JOINT_VIEWS = {"image→text": "where the picture reads the word", "text→image": "what the word reads from the picture",
               "text share": "each patch's attention to all text"}


class TraceExplorer(W.VBox):
    """Scrub through a trace: a step slider (with play), attention pickers, and views that update together: the final
    image, the latent x_t, the predicted x0, and the attention.

    SD 1/2/XL (a :class:`~illustrated_sd.trace.unet.Trace`): token, layer and head pickers; one view, the token's
    cross-attention heatmap ``[h, w]`` upsampled. SD3 / Flux (a :class:`~illustrated_sd.trace.flow.FlowTrace`): a word
    picker (:func:`~illustrated_sd.plot.joint.word_choices`) and a layer picker (all layers, Flux's double- or
    single-stream blocks, or one layer); three views side by side, each ``[gh, gw]`` image tokens as square blocks:
    ``image→text`` (``trace.cross_attention``), ``text→image`` (``trace.text_to_image``) and ``text share``.

    Args:
        trace: a recorded generation with every step (not a compact one), of either family.
        decode: optional ``pipe.decode_latents`` to show latents as pictures (else channels 0–2 as RGB).
    Example:
        >>> TraceExplorer(trace, decode=pipe.decode_latents)   # last line of a notebook cell
    """

    def __init__(self, trace, decode=None):
        require_any_trace(trace, "TraceExplorer")
        if decode is not None and (hasattr(decode, "decode_latents") or not callable(decode)):  # a pipeline is callable too
            raise TypeError(f"decode must be pipe.decode_latents (latents in, pictures out) or None, got {type(decode).__name__}")
        self.trace, self.decode = trace, decode
        self._decoded = {}
        last = trace.num_steps - 1
        self.step = W.IntSlider(value=last, min=0, max=last, description="step")
        self.play = W.Play(value=last, min=0, max=last, interval=300)
        W.jslink((self.play, "value"), (self.step, "value"))
        if isinstance(trace, FlowTrace):
            if "image_to_text" not in trace.attention:
                raise ValueError(f"TraceExplorer shows image→text attention, and this trace recorded {sorted(trace.attention) or 'none'}; "
                                 "generate with the default isd.RecordOptions()")
            self.word = W.Dropdown(options=word_choices(trace), value=telling_word(trace), description="word")
            self.layer = W.Dropdown(options=layer_groups(trace) + [(name, name) for name in trace.layers], description="layer")
            pickers, attention_views = [self.word, self.layer], list(JOINT_VIEWS)
        else:
            words = trace.tokens[1:-1]
            self.token = W.Dropdown(options=[(f"{i}: {w}", i) for i, w in enumerate(trace.tokens)],
                                    value=_telling_token(trace) if words else 0, description="token")
            self.layer = W.Dropdown(options=[("all layers", None)] + [(name, name) for name in trace.attention_maps], description="layer")
            heads = next(iter(trace.attention_maps.values())).shape[1] if trace.attention_maps else 1
            self.head = W.Dropdown(options=[("mean", None)] + ([(str(h), h) for h in range(heads)] if trace.per_head else []),
                                   description="head")
            pickers, attention_views = [self.token, self.layer, self.head], ["heatmap"]
        self.views = {name: W.Image(format="png", width=SIZE, height=SIZE) for name in ("image", "latent", "pred_x0", *attention_views)}
        self.caption = W.HTML()
        labelled = [W.VBox([W.HTML(f"<b>{name}</b>" + (f"<br><small>{JOINT_VIEWS[name]}</small>" if name in JOINT_VIEWS else "")), view])
                    for name, view in self.views.items()]
        super().__init__([W.HBox([self.play, self.step]), W.HBox(pickers), self.caption, W.HBox(labelled)])
        self.views["image"].value = _png(trace.image.resize((SIZE, SIZE)))
        for control in (self.step, *pickers):
            control.observe(_shown_in(self.caption, self.update), names="value")
        self.update()  # the first drawing raises here, at construction: a decode that fails says so at once

    def __repr__(self) -> str:
        prompt = self.trace.prompt if len(self.trace.prompt) <= 30 else self.trace.prompt[:29] + "…"
        return _static_repr(self, f"{self.trace.num_steps} steps of {prompt!r}")

    def _picture(self, which: str, step: int) -> Image.Image:
        latent = (self.trace.latents[step + 1] if which == "latent" else self.trace.pred_x0[step])
        if self.decode is None:
            return Image.fromarray((_as_rgb(latent) * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.NEAREST)
        if (which, step) not in self._decoded:
            self._decoded[(which, step)] = self.decode(latent[None])[0].resize((SIZE, SIZE))
        return self._decoded[(which, step)]

    def update(self) -> None:
        """Redraw the views for the current selections."""
        step = self.step.value
        self.views["latent"].value = _png(self._picture("latent", step))
        self.views["pred_x0"].value = _png(self._picture("pred_x0", step))
        self.caption.value = self._draw_joint(step) if isinstance(self.trace, FlowTrace) else self._draw_cross(step)

    def _draw_cross(self, step: int) -> str:
        """SD 1/2/XL: the token's cross-attention heatmap at this step; returns the caption."""
        trace = self.trace
        if trace.attention_maps:
            heat = upsample(trace.cross_attention(self.token.value, step=step, layer=self.layer.value, head=self.head.value), (SIZE, SIZE))
            self.views["heatmap"].value = _png(_heat_image(heat, trace.image))
        t = trace.timesteps[step].item()
        return (f"{step_label(step, trace.num_steps)}, t = {t:.0f}, ᾱ = {trace.alpha_bars[step].item():.3f}: "
                f"<i>latent</i> is x<sub>t</sub> after this step, <i>pred_x0</i> the clean picture the model "
                f"believes in here" + ("" if trace.attention_maps else "; no heatmap: this trace has no "
                                       "cross-attention maps (generate with RecordOptions(cross_attention=True))"))

    def _draw_joint(self, step: int) -> str:
        """SD3 / Flux: the word's image→text and text→image maps and the text's share, at this step; returns the caption."""
        trace, word, layer = self.trace, self.word.value, self.layer.value
        maps = {"image→text": trace.cross_attention(word, step, layer), "text share": trace.text_share(step, layer)}
        if "text_to_image" in trace.attention:
            maps["text→image"] = trace.text_to_image(word, step, layer)
        for name, heat in maps.items():  # each scaled to its own maximum, one block per image token
            self.views[name].value = _png(_heat_image(tokens_to_pixels(heat, (SIZE, SIZE)), trace.image))
        sigma, after = trace.sigmas[step].item(), trace.sigmas[step + 1].item()
        return (f"{step_label(step, trace.num_steps)}, σ = {sigma:.3f} → {after:.3f}: <i>latent</i> is x after this step, "
                f"<i>pred_x0</i> the clean picture the model believes in here (x̂₀ = x<sub>σ</sub> − σ·v̂). The picture gives "
                f"{100 * float(maps['text share'].mean()):.1f}% of its attention to the text, "
                f"{100 * float(maps['image→text'].mean()):.2f}% to “{html.escape(self.word.label)}” "
                f"(at most {100 * float(maps['image→text'].max()):.2f}% of a patch's); the padding takes "
                f"{100 * trace.padding_share(step, layer):.1f}% of the attention to the text"
                + ("" if "text→image" in maps else "; no text→image view: record it with "
                   "RecordOptions(quadrants=(..., \"text_to_image\"))"))


class PromptPlayground(W.VBox):
    """Generates: type a prompt, set steps, guidance and seed, press Generate; the explorer of the new
    trace appears below. Bad input is reported in the widget, not as a traceback.

    Args:
        pipe: an ``IllustratedPipeline`` that records every step (the explorer shows them all: not ``compact``).
        prompt: the text the playground starts with.
    """

    def __init__(self, pipe, prompt: str = "a red circle on the left"):
        self.pipe = _require_pipe(pipe, "PromptPlayground")
        if pipe.record.compact:
            raise ValueError("PromptPlayground shows every step of what it generates, and this pipe records compact traces "
                             "(pipe.record.compact is True); set pipe.record = isd.RecordOptions() first")
        _require_prompt(prompt, "PromptPlayground")
        self.prompt = W.Text(value=prompt, description="prompt", layout=W.Layout(width="420px"))
        self.steps = W.IntSlider(value=25, min=1, max=100, description="steps")
        self.guidance = W.FloatSlider(value=7.5, min=0.0, max=20.0, step=0.5, description="guidance")
        self.seed = W.IntText(value=0, description="seed")
        self.button = W.Button(description="Generate", button_style="primary")
        self.status = W.HTML()
        self.progress = W.Output()
        self.explorer_box = W.VBox()
        self.trace = None
        self.button.on_click(self.generate)
        super().__init__([self.prompt, W.HBox([self.steps, self.guidance, self.seed, self.button]), self.status, self.progress, self.explorer_box])

    def __repr__(self) -> str:
        return _static_repr(self, "type a prompt, press Generate")

    def generate(self, _button=None) -> None:
        """Run the pipeline with the current settings (the Generate button calls this)."""
        self.button.disabled = True
        self.status.value = "generating…"
        self.progress.clear_output()
        try:
            with self.progress:  # the pipeline's progress bar shows here
                trace = self.pipe(self.prompt.value, num_inference_steps=self.steps.value, seed=self.seed.value,
                                  **self.pipe.guidance_option(self.guidance.value))
            explorer = TraceExplorer(trace, decode=self.pipe.decode_latents)
        except Exception as err:  # shown, not raised: a button's callback has no one above it to catch it
            self.status.value = _error_html(err)
        else:
            self.trace = trace
            self.status.value = f"done: {html.escape(repr(trace))}"
            self.explorer_box.children = [explorer]
        finally:
            self.button.disabled = False


class GuidanceSlider(W.VBox):
    """Generates the same prompt and seed at each guidance scale (on first view, then cached) and shows
    the one the slider picks, beside the smallest scale's image (the unguided one with the default scales).

    Args:
        pipe: an ``IllustratedPipeline``.
        prompt: what to draw.
        scales: distinct finite guidance scales; the slider shows them from the smallest to the largest.
        seed, steps: the same for every picture.
    """

    def __init__(self, pipe, prompt: str, scales=(1.0, 2.0, 4.0, 7.5, 12.0), seed: int = 0, steps: int = 25):
        self.pipe, self.prompt = _require_pipe(pipe, "GuidanceSlider"), _require_prompt(prompt, "GuidanceSlider")
        scales = _guidance_scales(scales)
        self.seed = checks.seed(seed, hint="any integer, e.g. seed=0")
        self.steps = checks.whole_number("steps", steps, minimum=1, hint="denoising steps of each picture, e.g. 25")
        self.traces = {}
        self.scale = W.SelectionSlider(options=scales, value=scales[len(scales) // 2], description="guidance")
        self.baseline, self.view = W.Image(format="png", width=SIZE), W.Image(format="png", width=SIZE)
        self.caption = W.HTML()
        self.scale.observe(_shown_in(self.caption, self.update), names="value")
        super().__init__([W.HTML(f"<b>{html.escape(prompt)}</b> (seed {self.seed})"), self.scale, W.HBox([
            W.VBox([W.HTML(f"guidance {scales[0]:g}"), self.baseline]), W.VBox([self.caption, self.view])])])
        self.baseline.value = _png(self._trace(scales[0]).image.resize((SIZE, SIZE)))
        self.update()

    def __repr__(self) -> str:
        return _static_repr(self, "slide between guidance scales")

    def _trace(self, scale):
        if scale not in self.traces:
            self.traces[scale] = self.pipe(self.prompt, num_inference_steps=self.steps, guidance_scale=scale, seed=self.seed, progress=False)
        return self.traces[scale]

    def update(self) -> None:
        self.view.value = _png(self._trace(self.scale.value).image.resize((SIZE, SIZE)))
        self.caption.value = f"guidance {self.scale.value:g}"

"""The report's explorer: one generation to step through in any browser, offline, from one HTML file.

Python gathers what the page shows from a :class:`~illustrated_sd.trace.unet.Trace` (SD 1/2/XL) or a
:class:`~illustrated_sd.trace.flow.FlowTrace` (SD3, Flux) (:func:`explorer_data`, one JSON format whose ``kind``
says which); a small script (``assets/explorer/explorer.js``) draws it. Nothing is fetched: the pictures are data URIs
and the arrays are float16 numbers in base64 inside a ``<script type="application/json">`` block, so the
page works opened from disk, and its size is what the arrays weigh (:func:`explorer_size`).

What a student can do there:
    - drag (or play) the step slider: the decoded x̂₀, the latent's channels, the predicted noise and the
      guidance push at that step;
    - pick a token (every slot of the prompt, start and end markers included, each with its share of the
      attention at that step): its heatmap over the final image;
    - pick a layer group (all layers, or the layers of one resolution);
    - hover (or tap) a pixel: the tokens that pixel attends to, ranked — the heatmap read backwards.
For a FlowTrace the token views become the joint attention's quadrant view:
    - pick a word (or a marker token): where the picture reads it (image→text) and what it reads from the
      picture (text→image), side by side;
    - pick a layer group (all layers; Flux: its double- or its single-stream blocks);
    - hover (or tap) a patch: the words it attends to, ranked, the padding as one entry;
    - the velocity v̂ the Euler step used stands where SD's predicted noise does.
"""

import base64
import io
import json
from importlib import resources

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..trace.flow import FlowTrace
from .denoising import _as_rgb
from .joint import layer_groups, word_choices
from ..trace.unet import Trace, require_trace, spread_steps

# "full": every step, pictures as PNG at the image's size. "light": at most 10 steps (evenly spread, the
# last among them) and pictures as JPEG at most 256 px: for 512² SD, whose full explorer is tens of MB
# (benchmarks/explorer_size.py measures both).
# "auto" (the default) is "full" up to 256-px pictures (the embedded model's page: about 2 MB) and "light"
# above (SD 1.5 at 512²: about 6 MB instead of 55).
PRESETS = {"full": {"max_steps": None, "picture_px": None}, "light": {"max_steps": 10, "picture_px": 256}}
AUTO_FULL_UP_TO_PX = 256


def require_any_trace(value, who: str) -> Trace | FlowTrace:
    """``value`` if it is a Trace (SD 1/2/XL) or a FlowTrace (SD3, Flux) of every step; else a ``TypeError`` saying
    where one comes from, or (a compact trace) a ``ValueError`` naming what it lacks."""
    if isinstance(value, Trace):
        return require_trace(value, who, every_step=True)
    if not isinstance(value, FlowTrace):
        raise TypeError(f"{who} takes a Trace (SD 1/2/XL) or a FlowTrace (SD3, Flux), got {type(value).__name__} {value!r:.60}; "
                        "make one with trace = pipe(prompt) or isd.Trace.load(path)")
    if value.is_compact:
        raise ValueError(f"{who} needs every step, and this is a compact trace: it lacks {'; '.join(value.lacks)}. Generate with "
                         "the default RecordOptions() for it (cross_attention and attention_shares work on a compact trace)")
    return value


def resolve_preset(trace: Trace | FlowTrace, preset: str) -> str:
    """``preset``, with ``"auto"`` made ``"full"`` or ``"light"`` by the trace's picture size; unknown names refused."""
    if preset == "auto":
        return "full" if max(trace.height, trace.width) <= AUTO_FULL_UP_TO_PX else "light"
    if preset not in PRESETS:
        raise ValueError(f"unknown explorer preset {preset!r}; choose from {['auto', *sorted(PRESETS)]} ('light' keeps at most "
                         f"{PRESETS['light']['max_steps']} steps and {PRESETS['light']['picture_px']}-px pictures, for big models)")
    return preset


def _halves(x: torch.Tensor | np.ndarray) -> str:
    """An array as base64 of little-endian float16 (what the page's ``halves`` reads back)."""
    return base64.b64encode(np.ascontiguousarray(np.asarray(x, dtype="<f2")).tobytes()).decode()


def _picture_uri(picture: Image.Image, px: int | None) -> str:
    """A picture as a data URI: PNG at its own size, or JPEG at most ``px`` wide (the light preset)."""
    buffer = io.BytesIO()
    if px is None:
        picture.save(buffer, format="PNG")
        kind = "png"
    else:
        scale = min(1.0, px / max(picture.size))
        picture.convert("RGB").resize((round(picture.width * scale), round(picture.height * scale)), Image.BICUBIC).save(
            buffer, format="JPEG", quality=85)
        kind = "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


def _x0_pictures(trace: Trace | FlowTrace, steps: list[int], decode) -> list[Image.Image]:
    """The predicted clean latent x̂₀ of each step as a picture: decoded by the VAE, or (without ``decode``) its
    first three channels as red, green and blue, blown up to the image's size."""
    if decode is not None:
        pictures = []
        for start in range(0, len(steps), 8):  # a few at a time: SDXL's decoder at 1024² is heavy
            pictures += decode(trace.pred_x0[steps[start : start + 8]])
        return pictures
    return [Image.fromarray((_as_rgb(trace.pred_x0[i]) * 255).astype(np.uint8)).resize(trace.image.size, Image.NEAREST)
            for i in steps]


def _attention_groups(trace: Trace, steps: list[int]) -> list[dict]:
    """The heatmaps of every prompt slot, per layer group: ``all layers`` (each upsampled to the latent size,
    then averaged, as :meth:`Trace.cross_attention` does) and each resolution. ``data`` is ``[s, h, w, T]``
    (steps shown, grid, the ``T = len(trace.tokens)`` slots from the start marker to the end marker)."""
    slots = len(trace.tokens)
    h, w = trace.latent_hw
    layer_maps = {name: m[steps].float().mean(1)[..., :slots] for name, m in trace.attention_maps.items()}  # [s, H, W, T]
    groups = []
    if layer_maps:
        upsampled = [F.interpolate(m.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False) for m in layer_maps.values()]
        groups.append({"name": f"all {len(layer_maps)} layers", "maps": torch.stack(upsampled).mean(0).permute(0, 2, 3, 1)})
    for res in sorted({m.shape[1] for m in layer_maps.values()}, reverse=True):
        names = [n for n, m in layer_maps.items() if m.shape[1] == res]
        groups.append({"name": f"{res}×{layer_maps[names[0]].shape[2]} ({len(names)} layer{'s' * (len(names) > 1)})",
                       "maps": torch.stack([layer_maps[n] for n in names]).mean(0)})
    return [{"name": g["name"], "h": g["maps"].shape[1], "w": g["maps"].shape[2], "data": _halves(g["maps"])} for g in groups]


def _joint_groups(trace: FlowTrace, steps: list[int]) -> list[dict]:
    """The quadrant view's maps, per layer group (:func:`~illustrated_sd.plot.joint.layer_groups`), for each of the
    ``W`` entries of :func:`~illustrated_sd.plot.joint.word_choices` at each step shown (``s``), on the ``gh × gw``
    grid of image tokens, each map the trace's own accessor's at that step and group:

    ``image_to_text [s, W, gh, gw]`` = ``trace.cross_attention(key, step, layers)``, where the picture reads each entry;
    ``padding [s, gh, gw]`` = ``trace.text_share(step, layers)`` less the entries' maps: the padding slots' share;
    ``text_to_image [s, W, gh, gw]`` = ``trace.text_to_image(key, step, layers)``, what each entry reads from the
    picture (``None`` when the trace did not record that quadrant).
    """
    keys = [key for _, key in word_choices(trace)]
    has_reads = "text_to_image" in trace.attention
    groups = []
    for name, layers in layer_groups(trace):
        reads = torch.stack([torch.stack([trace.cross_attention(key, k, layers) for key in keys]) for k in steps])
        padding = torch.stack([trace.text_share(k, layers) for k in steps]) - reads.sum(1)
        group = {"name": name, "image_to_text": _halves(reads), "padding": _halves(padding.clamp_min(0)), "text_to_image": None}
        if has_reads:
            group["text_to_image"] = _halves(torch.stack([torch.stack([trace.text_to_image(key, k, layers) for key in keys]) for k in steps]))
        groups.append(group)
    return groups


def _channels(x: torch.Tensor) -> dict:
    """``[s, C, h, w]`` latents or noise for the page, with each channel's largest |value| over all steps (its colour scale)."""
    x = x.float()
    return {"c": x.shape[1], "h": x.shape[2], "w": x.shape[3], "data": _halves(x),
            "scale": [round(float(v), 4) for v in x.abs().amax(dim=(0, 2, 3)).clamp_min(1e-6)]}


def page_colormaps() -> dict[str, list[str]]:
    """The page's two colour scales as 256 hex colours each, so it paints heatmaps as the plots do: ``"heat"`` (inferno,
    for probabilities) and ``"signed"`` (RdBu_r, for differences around 0). The report and the web page share them."""
    scale = lambda name: [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps[name](np.linspace(0, 1, 256))]  # noqa: E731
    return {"heat": scale("inferno"), "signed": scale("RdBu_r")}


def explorer_data(trace: Trace | FlowTrace, decode=None, preset: str = "auto") -> dict:
    """Everything the explorer shows, as JSON-ready values.

    Args:
        trace: a recorded generation (cross-attention maps make the token views; without them the page says so), or a
            FlowTrace (SD3, Flux: see :func:`flow_explorer_data`).
        decode: ``pipe.decode_latents``, to show x̂₀ as pictures (else latent channels as colours).
        preset: ``"full"`` (every step, PNG pictures), ``"light"`` (≤ 10 steps, ≤ 256-px JPEG pictures) or
            ``"auto"``: full for pictures up to 256 px, else light.
    Returns:
        a dict: ``steps`` (indices kept, of ``num_steps``), ``timesteps``, ``alpha_bars``, ``tokens`` (labels of the
        slots start…end), ``image`` and ``x0`` (data URIs), ``groups`` (heatmaps ``[s, h, w, T]``), ``latents`` and
        ``noise`` (``[s, C, h, w]``), ``guidance`` (``‖ε_text − ε_uncond‖`` per latent pixel, ``[s, h, w]``, or
        ``None`` without guidance), arrays as base64 float16; ``kind`` is ``"unet"``.
    """
    if isinstance(require_any_trace(trace, "the explorer"), FlowTrace):
        return flow_explorer_data(trace, decode, preset)
    preset = resolve_preset(trace, preset)
    steps = spread_steps(trace.num_steps, PRESETS[preset]["max_steps"])
    return {
        **_common_data(trace, steps, decode, preset), "kind": "unet",
        "alpha_bars": [round(float(trace.alpha_bars[i]), 4) for i in steps],
        "tokens": list(trace.tokens),
        "groups": _attention_groups(trace, steps),
        "noise": _channels(trace.noise_pred[steps]),
        "guidance": _guidance_push(trace.noise_pred_text, trace.noise_pred_uncond, steps),
    }


def flow_explorer_data(trace: FlowTrace, decode=None, preset: str = "auto") -> dict:
    """What the explorer shows of a diffusion transformer's generation (SD3, Flux), in :func:`explorer_data`'s format.

    Args: as :func:`explorer_data` (``decode``: the FlowPipeline's ``pipe.decode_latents``).
    Returns:
        the fields every explorer has (``steps``, ``timesteps``, ``image``, ``x0``, ``latents [s, C, h, w]``,
        ``guidance``: here ``‖v̂_text − v̂_uncond‖`` per latent pixel, ``[s, h, w]``, or ``None`` without two passes),
        and ``kind: "flow"``, ``family`` (``"flux"`` or ``"sd3"``), ``sigmas`` (σ at each shown step's start),
        ``words`` (the picker's labels, :func:`~illustrated_sd.plot.joint.word_choices`), ``markers`` (which of
        them are marker tokens, not words), ``grid`` (``[gh, gw]``),
        ``padding_slots``, ``velocity [s, C, h, w]`` and ``joint`` (the quadrant maps per layer group, see
        :func:`_joint_groups`), arrays as base64 float16.
    Example:
        >>> data = flow_explorer_data(pipe("a red circle on the left"))
    """
    if not isinstance(trace, FlowTrace):
        raise TypeError(f"flow_explorer_data takes a FlowTrace (SD3, Flux), got {type(trace).__name__}; for SD 1/2/XL use explorer_data")
    if "image_to_text" not in trace.attention:
        raise ValueError(f"the explorer's quadrant view needs image_to_text attention, and this trace recorded "
                         f"{sorted(trace.attention) or 'none'}; generate with the default isd.RecordOptions()")
    preset = resolve_preset(trace, preset)
    steps = spread_steps(trace.num_steps, PRESETS[preset]["max_steps"])
    return {
        **_common_data(trace, steps, decode, preset), "kind": "flow", "family": trace.family,
        "sigmas": [round(float(trace.sigmas[i]), 4) for i in steps],
        "words": [label for label, _ in word_choices(trace)],
        "markers": [i for i, (_, key) in enumerate(word_choices(trace)) if not isinstance(key, str)],
        "grid": list(trace.grid_hw), "padding_slots": trace.padding_slots,
        "joint": _joint_groups(trace, steps),
        "velocity": _channels(trace.velocity[steps]),
        "guidance": _guidance_push(trace.velocity_text, trace.velocity_uncond, steps),
    }


def _common_data(trace: Trace | FlowTrace, steps: list[int], decode, preset: str) -> dict:
    """The fields an explorer of either family has: the settings, the steps shown, the pictures, the latents."""
    px = PRESETS[preset]["picture_px"]
    return {
        "prompt": trace.prompt, "num_steps": trace.num_steps, "steps": steps, "preset": preset,
        "timesteps": [round(float(trace.timesteps[i]), 1) for i in steps],
        "guidance_scale": trace.guidance_scale,
        "image": _picture_uri(trace.image, px),
        "x0": [_picture_uri(p, px) for p in _x0_pictures(trace, steps, decode)],
        "x0_decoded": decode is not None,
        "latents": _channels(trace.latents[1:][steps]),
        "colormaps": page_colormaps(),
    }


def _guidance_push(text: torch.Tensor, uncond: torch.Tensor | None, steps: list[int]) -> dict | None:
    """Where the prompt pushes: ``‖prediction_text − prediction_uncond‖`` per latent pixel, ``[s, h, w]`` (ε for SD,
    v̂ for a flow model), with its largest value over the steps shown; ``None`` without an unconditional pass."""
    if uncond is None:
        return None
    push = (text[steps].float() - uncond[steps].float()).norm(dim=1)
    return {"h": push.shape[1], "w": push.shape[2], "data": _halves(push), "max": round(float(push.max()), 4)}


# The HTML parser reads a <script> block before JSON.parse does, and "</script>" is not all that stops it: after
# "<!--" and "<script" it waits for a second "</script>", so a prompt holding them swallows the page's own closing
# tag and the explorer never runs. JSON may write any character of a string as \uXXXX, which the HTML parser does
# not read and JSON.parse turns back into the same character. (json.dumps writes every non-ASCII character so
# already, U+2028 and U+2029 among them, which old JavaScript took for line ends.)
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _script_json(value) -> str:
    """``value`` as JSON text that can sit inside ``<script type="application/json">``, whatever its strings hold."""
    return json.dumps(value, separators=(",", ":")).translate(_SCRIPT_SAFE)


def _asset(name: str) -> str:
    return resources.files("illustrated_sd").joinpath("assets", "explorer", name).read_text(encoding="utf-8")


def explorer_html(trace: Trace | FlowTrace, decode=None, preset: str = "auto") -> str:
    """The explorer as one HTML fragment (a ``<section>`` with its style, data and script inline) for a page."""
    return (f"<style>{_asset('explorer.css')}</style>{_asset('explorer.html')}"
            f"<script type='application/json' id='isd-data'>{_script_json(explorer_data(trace, decode, preset))}</script>"
            f"<script>{_asset('explorer.js')}</script>")


def explorer_size(trace: Trace | FlowTrace, decode=None) -> dict:
    """MiB of the explorer fragment for each preset, ``{"full": …, "light": …}`` (what it adds to report.html)."""
    return {name: round(len(explorer_html(trace, decode, name).encode()) / 2**20, 2) for name in PRESETS}

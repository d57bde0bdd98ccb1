"""The report's explorer: one generation to step through in any browser, offline, from one HTML file.

Python gathers what the page shows from a :class:`~illustrated_sd.trace.Trace` (:func:`explorer_data`);
a small script (``assets/explorer/explorer.js``) draws it. Nothing is fetched: the pictures are data URIs
and the arrays are float16 numbers in base64 inside a ``<script type="application/json">`` block, so the
page works opened from disk, and its size is what the arrays weigh (:func:`explorer_size`).

What a student can do there:
    - drag (or play) the step slider: the decoded x̂₀, the latent's channels, the predicted noise and the
      guidance push at that step;
    - pick a token (every slot of the prompt, start and end markers included, each with its share of the
      attention at that step): its heatmap over the final image;
    - pick a layer group (all layers, or the layers of one resolution);
    - hover (or tap) a pixel: the tokens that pixel attends to, ranked — the heatmap read backwards.
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

from .plot.denoising import _as_rgb
from .trace import Trace, require_trace, spread_steps

# "full": every step, pictures as PNG at the image's size. "light": at most 10 steps (evenly spread, the
# last among them) and pictures as JPEG at most 256 px: for 512² SD, whose full explorer is tens of MB
# (benchmarks/explorer_size.py measures both).
# "auto" (the default) is "full" up to 256-px pictures (the embedded model's page: about 2 MB) and "light"
# above (SD 1.5 at 512²: about 6 MB instead of 55).
PRESETS = {"full": {"max_steps": None, "picture_px": None}, "light": {"max_steps": 10, "picture_px": 256}}
AUTO_FULL_UP_TO_PX = 256


def resolve_preset(trace: Trace, preset: str) -> str:
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


def _x0_pictures(trace: Trace, steps: list[int], decode) -> list[Image.Image]:
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


def _channels(x: torch.Tensor) -> dict:
    """``[s, C, h, w]`` latents or noise for the page, with each channel's largest |value| over all steps (its colour scale)."""
    x = x.float()
    return {"c": x.shape[1], "h": x.shape[2], "w": x.shape[3], "data": _halves(x),
            "scale": [round(float(v), 4) for v in x.abs().amax(dim=(0, 2, 3)).clamp_min(1e-6)]}


def _colormap(name: str) -> list[str]:
    """A matplotlib colormap as 256 hex colours, so the page paints heatmaps as the plots do."""
    return [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps[name](np.linspace(0, 1, 256))]


def explorer_data(trace: Trace, decode=None, preset: str = "auto") -> dict:
    """Everything the explorer shows, as JSON-ready values.

    Args:
        trace: a recorded generation (cross-attention maps make the token views; without them the page says so).
        decode: ``pipe.decode_latents``, to show x̂₀ as pictures (else latent channels as colours).
        preset: ``"full"`` (every step, PNG pictures), ``"light"`` (≤ 10 steps, ≤ 256-px JPEG pictures) or
            ``"auto"``: full for pictures up to 256 px, else light.
    Returns:
        a dict: ``steps`` (indices kept, of ``num_steps``), ``timesteps``, ``alpha_bars``, ``tokens`` (labels of the
        slots start…end), ``image`` and ``x0`` (data URIs), ``groups`` (heatmaps ``[s, h, w, T]``), ``latents`` and
        ``noise`` (``[s, C, h, w]``), ``guidance`` (``‖ε_text − ε_uncond‖`` per latent pixel, ``[s, h, w]``, or
        ``None`` without guidance), arrays as base64 float16.
    """
    require_trace(trace, "the explorer", every_step=True)
    preset = resolve_preset(trace, preset)
    settings = PRESETS[preset]
    steps = spread_steps(trace.num_steps, settings["max_steps"])
    guidance = None
    if trace.noise_pred_uncond is not None:
        push = (trace.noise_pred_text[steps].float() - trace.noise_pred_uncond[steps].float()).norm(dim=1)  # [s, h, w]
        guidance = {"h": push.shape[1], "w": push.shape[2], "data": _halves(push), "max": round(float(push.max()), 4)}
    return {
        "prompt": trace.prompt, "num_steps": trace.num_steps, "steps": steps, "preset": preset,
        "timesteps": [round(float(trace.timesteps[i]), 1) for i in steps],
        "alpha_bars": [round(float(trace.alpha_bars[i]), 4) for i in steps],
        "guidance_scale": trace.guidance_scale, "tokens": list(trace.tokens),
        "image": _picture_uri(trace.image, settings["picture_px"]),
        "x0": [_picture_uri(p, settings["picture_px"]) for p in _x0_pictures(trace, steps, decode)],
        "x0_decoded": decode is not None,
        "groups": _attention_groups(trace, steps),
        "latents": _channels(trace.latents[1:][steps]), "noise": _channels(trace.noise_pred[steps]),
        "guidance": guidance,
        "colormaps": {"heat": _colormap("inferno"), "signed": _colormap("RdBu_r")},
    }


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


def explorer_html(trace: Trace, decode=None, preset: str = "auto") -> str:
    """The explorer as one HTML fragment (a ``<section>`` with its style, data and script inline) for a page."""
    return (f"<style>{_asset('explorer.css')}</style>{_asset('explorer.html')}"
            f"<script type='application/json' id='isd-data'>{_script_json(explorer_data(trace, decode, preset))}</script>"
            f"<script>{_asset('explorer.js')}</script>")


def explorer_size(trace: Trace, decode=None) -> dict:
    """MiB of the explorer fragment for each preset, ``{"full": …, "light": …}`` (what it adds to report.html)."""
    return {name: round(len(explorer_html(trace, decode, name).encode()) / 2**20, 2) for name in PRESETS}

"""The denoising as an animated GIF."""

from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from .. import checks
from ..trace.files import atomic_write, check_replaceable
from ..trace.unet import Trace, require_trace
from .attention import upsample
from .denoising import _as_rgb


def animate(trace: Trace, path, decode=None, token=None, what: str = "pred_x0", size: int = 256, ms_per_frame: int = 150) -> Path:
    """Write the walk from noise to image as a GIF (pillow), one frame per step.

    Args:
        decode: ``pipe.decode_latents`` for decoded pictures; without it latent channels 0–2 as RGB.
        token: optionally show that token's heatmap at each step beside the picture.
        what: ``"pred_x0"`` or ``"latents"``.
        size: the side of a frame in pixels. ms_per_frame: how long each frame shows.
    Returns:
        the path written (through ``atomic_write``: missing folders are made, a failure leaves no file).
    """
    require_trace(trace, "plot.animate", every_step=True)
    series = {"pred_x0": trace.pred_x0, "latents": trace.latents[1:]}
    if what not in series:
        raise ValueError(f"what must be one of {list(series)}, got {what!r}")
    size = checks.whole_number("size", size, minimum=8, hint="pixels per frame side, e.g. 256")
    ms_per_frame = checks.whole_number("ms_per_frame", ms_per_frame, minimum=10, hint="e.g. 150")
    path = check_replaceable(path, "GIF")
    if token is not None:
        trace.cross_attention(token)  # refuses an unknown token, or a trace without maps, before any decoding
    data = series[what]
    pictures = decode(data) if decode is not None else [Image.fromarray((_as_rgb(x) * 255).astype(np.uint8)) for x in data]
    cmap = matplotlib.colormaps["inferno"]
    frames = []
    for step, picture in enumerate(pictures):
        frame = picture.convert("RGB").resize((size, size), Image.NEAREST if decode is None else Image.BILINEAR)
        if token is not None:
            heat = upsample(trace.cross_attention(token, step=step), (size, size))
            heat = Image.fromarray((cmap(heat / max(heat.max(), 1e-8))[..., :3] * 255).astype(np.uint8))
            both = Image.new("RGB", (2 * size, size))
            both.paste(frame, (0, 0)), both.paste(heat, (size, 0))
            frame = both
        frames.append(frame)
    with atomic_write(path, "GIF") as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return path

"""An intervention side by side: the picture, the edited picture, where they differ, and where the word looked."""

import textwrap

import matplotlib.pyplot as plt
import numpy as np

from ..trace.unet import require_trace
from .attention import upsample
from .labels import quoted


def describe_edit(edit: dict) -> str:
    """One line for one of ``trace.edits``: 'remove "red"', '"red" × 2 (steps 0–9)', 'swap from "a red circle"'."""
    if edit["kind"] == "swap":
        return f"swap, maps of {quoted(edit['source_prompt'])} for {len(edit['steps'])} steps"
    name = quoted(str(edit["word"]))
    return f"remove {name}" if edit["kind"] == "remove" else f"{name} × {edit['factor']:g}"


def intervention(base, edited, word=None, cmap: str = "inferno"):
    """Four panels: ``base``'s image, ``edited``'s image, |edited − base| per pixel, and ``word``'s heatmap in ``base``.

    Args:
        base: the generation without edits. edited: the same settings with ``edits=[...]``.
        word: whose heatmap to show; ``None`` = the word of ``edited``'s first edit (a swap shows no heatmap).
    Returns:
        a Figure; the difference panel's colourbar is the mean absolute difference over RGB, in [0, 1] of full scale.
    Example:
        >>> fig = isd.plot.intervention(trace, pipe(trace.prompt, seed=0, edits=[isd.edits.Remove("red")]))
    """
    require_trace(base, "plot.intervention")
    require_trace(edited, "plot.intervention")
    if base.image.size != edited.image.size:
        raise ValueError(f"the two traces have images of {base.image.size} and {edited.image.size} pixels; compare two "
                         "generations of the same size (the same settings, one with edits)")
    if word is None and edited.edits and edited.edits[0]["kind"] != "swap":
        word = edited.edits[0]["word"]
    a = np.asarray(base.image.convert("RGB"), dtype=np.float32)
    b = np.asarray(edited.image.convert("RGB"), dtype=np.float32)
    difference = np.abs(b - a).mean(-1) / 255  # [H, W]
    panels = 4 if word is not None else 3
    fig, axes = plt.subplots(1, panels, figsize=(2.6 * panels + 0.8, 3.0), layout="constrained")
    for ax in axes:
        ax.set_axis_off()
    axes[0].imshow(a.astype(np.uint8))
    axes[0].set_title(textwrap.fill(quoted(base.prompt), 36), fontsize=8)
    axes[1].imshow(b.astype(np.uint8))
    axes[1].set_title(textwrap.fill("; ".join(describe_edit(e) for e in edited.edits) or "no edit", 36), fontsize=8)
    im = axes[2].imshow(difference, cmap="magma", vmin=0, vmax=max(float(difference.max()), 1e-6))
    axes[2].set_title(f"|difference|, 1 = full scale (mean {difference.mean():.2g})", fontsize=8)
    fig.colorbar(im, ax=axes[2], shrink=0.7)
    if word is not None:
        heat = base.cross_attention(word)
        axes[3].imshow(a.mean(-1), cmap="gray", vmin=0, vmax=255)
        axes[3].imshow(upsample(heat, a.shape[:2]) / max(float(heat.max()), 1e-12), cmap=cmap, alpha=0.65, vmin=0, vmax=1)
        axes[3].set_title(f"where {quoted(str(word))} looked (÷ max)", fontsize=8)
    fig.suptitle("what the edit changed, beside where the word's attention went", fontsize=10)
    return fig

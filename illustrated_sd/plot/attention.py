"""Where each prompt token was looked at: cross-attention heatmaps over the generated image."""

import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import checks
from .heatmaps import at_size, heatmap_iou, peak, points_inside, strong_region
from ..trace.unet import Trace, require_trace
from .labels import literal, quoted


def upsample(heat: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``[h, w]`` latent-resolution heatmap → ``[H, W]`` image-resolution array (bilinear)."""
    return at_size(heat, size).numpy()


def token_heatmaps(trace: Trace, tokens=None, step=None, layer=None, head=None, normalize: bool = True,
                   cmap: str = "inferno", cols: int = 6):
    """One panel per prompt token: its cross-attention heatmap laid over the image (DAAM style).

    Args:
        trace: a recorded generation with cross-attention maps.
        tokens: words or slot indices to show; ``None`` = every token between the start and end markers.
        step, layer, head: how to aggregate, as in :meth:`Trace.cross_attention` (``None`` = mean).
        normalize: scale each panel to its own maximum (as DAAM does), so that where a token is looked
            at shows even for tokens that get little attention overall; ``False`` shares one scale.
        cmap: a perceptual colormap. cols: panels per row.
    Returns:
        a ``matplotlib.figure.Figure`` with the image first, then one panel per token
        (each title is the token; colour = share of that pixel's attention going to the token).
    Example:
        >>> fig = token_heatmaps(trace, ["red", "circle"]); fig.savefig("heatmaps.png")
    """
    require_trace(trace, "plot.token_heatmaps")
    if tokens is None:
        tokens = list(range(1, len(trace.tokens) - 1))
    if isinstance(tokens, (str, int)):
        tokens = [tokens]
    tokens = list(tokens)
    if not tokens:
        raise ValueError("tokens is empty; pass words of the prompt, e.g. ['red', 'circle'], or None for all of them")
    heats = [trace.cross_attention(t, step=step, layer=layer, head=head) for t in tokens]  # (checks each token)
    labels = [literal(trace.tokens[t] if isinstance(t, int) and t < len(trace.tokens) else t) for t in tokens]
    image = np.asarray(trace.image.convert("RGB"))
    n = len(tokens) + 1
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_axis_off()
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("image", fontsize=10)
    shared = max(float(h.max()) for h in heats) if heats else 1.0
    for ax, label, heat in zip(axes.flat[1:], labels, heats):
        ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=255)  # grey image underneath, so the colours are the heat
        scale = float(heat.max()) if normalize else shared
        im = ax.imshow(upsample(heat, image.shape[:2]) / (scale if normalize else 1), cmap=cmap, alpha=0.65,
                       vmin=0, vmax=1 if normalize else shared)
        ax.set_title(f"{label}\n(max {float(heat.max()):.2g})" if normalize else label, fontsize=9)
    if heats:
        fig.colorbar(im, ax=axes, shrink=0.6, label="attention ÷ its maximum" if normalize else "attention probability")
    where = "all steps" if step is None else f"step {step}"
    fig.suptitle(f"Cross-attention per token — {quoted(trace.prompt)} ({where}, {'all layers' if layer is None else layer})", fontsize=11)
    return fig


def attention_grid(trace: Trace, token, steps: int = 4, cmap: str = "inferno"):
    """One token's heatmap in every recorded cross-attention layer (rows) at a few steps (columns),
    laid over the image.

    Each map keeps its own resolution (4×4 … 64×64, drawn as blocks), so the panels show what each layer
    sees. Layers differ a lot in how much attention they give a word, so each row has its own scale: 1 is
    the row's largest value, which the row label gives as a probability.
    Returns:
        a Figure with ``layers × steps`` panels and a colourbar; row labels are short layer names with
        their grid and maximum.
    """
    from ..recording.attention_layers import short_name
    from .denoising import _pick_steps

    require_trace(trace, "plot.attention_grid", every_step=True)
    if not trace.attention_maps:
        raise ValueError("this trace has no cross-attention maps; generate with RecordOptions(cross_attention=True)")
    slots = trace.token_index(token)
    steps = checks.whole_number("steps", steps, minimum=1, hint="how many steps to show as columns, e.g. 4")
    chosen = _pick_steps(trace.num_steps, steps)
    names = list(trace.attention_maps)
    grey = np.asarray(trace.image.convert("L"))
    extent = (0, grey.shape[1], grey.shape[0], 0)  # each map stretched over the whole picture
    fig, axes = plt.subplots(len(names), len(chosen), figsize=(1.6 * len(chosen) + 1.6, 1.5 * len(names)), squeeze=False,
                             layout="constrained")
    for r, name in enumerate(names):
        maps = trace.attention_maps[name].float()[..., slots].sum(-1).mean(1)  # [S, H, W]
        top = float(maps[chosen].max()) or 1.0
        for c, step in enumerate(chosen):
            ax = axes[r, c]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
            # blocks of almost no attention stay see-through, so the picture shows where the word is not looked at
            heat = np.ma.masked_less(maps[step].numpy() / top, 0.02)
            im = ax.imshow(heat, cmap=cmap, vmin=0, vmax=1, alpha=0.75, extent=extent, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {step}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{short_name(name)}\n{maps.shape[1]}×{maps.shape[2]}, max {top:.2g}", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.5, label="attention ÷ the row's maximum")
    fig.suptitle(f"attention to {quoted(token)} per layer and step", fontsize=11)
    return fig


def self_attention(trace: Trace, points=((0.25, 0.25), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.75, 0.75)), layer=None,
                   step=None, cmap: str = "inferno"):
    """Where a few pixels look in *self*-attention: the image's pixels asking each other, not the words.

    For each query point, its row of the self-attention map (``H·W`` probabilities over the grid) is
    reshaped to ``[H, W]`` and laid over the image; the point is marked. Values are shown as multiples of
    uniform attention (``H·W`` × the probability: 1 where a pixel gets what every pixel would get alike), on one
    scale for all panels, so a panel's brightness compares with the others'.

    Args:
        trace: a generation recorded with ``RecordOptions(self_attention_resolutions=(…,))``.
        points: query points as ``(x, y)`` fractions of the image width and height (``(0, 0)`` = top left).
        layer: a recorded self-attention layer name, or ``None`` for the mean of the recorded layers of
            the finest recorded grid. step: as in :meth:`Trace.cross_attention` (``None`` = mean over steps).
    Returns:
        a Figure with the image, then one panel per point (one shared scale, with a colour bar; each title notes
        the panel's peak, × uniform).
    """
    require_trace(trace, "plot.self_attention", every_step=True)
    maps = trace.self_attention_maps
    if not maps:
        raise ValueError("this trace has no self-attention maps; generate with "
                         "record=RecordOptions(self_attention_resolutions=(16,)) (the grid sizes to record)")
    if layer is None:
        finest = max(m.shape[2] for m in maps.values())
        names = [name for name, m in maps.items() if m.shape[2] == finest]
    elif layer in maps:
        names = [layer]
    else:
        raise ValueError(f"layer {layer!r} has no recorded self-attention; recorded: {list(maps)}")
    points = [tuple(p) for p in points]
    if not points or not all(len(p) == 2 and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in p) for p in points):
        raise ValueError(f"points are (x, y) fractions of the image in [0, 1], e.g. [(0.25, 0.5)] (got {points!r})")
    steps = checks.step_indices(step, trace.num_steps)
    grid = maps[names[0]].shape[2:4]  # (H, W): every chosen layer works at this grid
    probs = torch.stack([maps[name][steps].float().mean(dim=(0, 1)) for name in names]).mean(0)  # [H, W, H·W]
    image = np.asarray(trace.image.convert("RGB"))
    fig, axes = plt.subplots(1, len(points) + 1, figsize=(2.1 * (len(points) + 1), 2.5), squeeze=False, layout="constrained")
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    cells = [(min(int(y * grid[0]), grid[0] - 1), min(int(x * grid[1]), grid[1] - 1)) for x, y in points]
    heats = [probs[row, col].reshape(grid) * probs.shape[-1] for row, col in cells]  # × uniform: 1 = every pixel alike
    top = max(float(h.max()) for h in heats)
    for ax, (x, y), heat in zip(axes[1:], points, heats):
        ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=255)
        shown = ax.imshow(upsample(heat, image.shape[:2]), cmap=cmap, alpha=0.65, vmin=0, vmax=top)
        ax.plot(x * image.shape[1], y * image.shape[0], marker="+", color="cyan", markersize=12, mew=2)
        ax.set_title(f"pixel ({x:g}, {y:g})\n(peak {float(heat.max()):.2g}× uniform)", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes[1:], shrink=0.8, label="× uniform attention")
    where = "all steps" if step is None else f"step {step}"
    fig.suptitle(f"self-attention: where each marked pixel looks ({grid[0]}×{grid[1]} grid, {where})", fontsize=10)
    return fig


def attention_shares(trace: Trace, step=None):
    """A bar per word: the share of all cross-attention it takes (:meth:`Trace.attention_shares`), the
    start marker and the padding included, so the heatmaps' small maxima make sense.

    Returns:
        a Figure with one bar per label (the markers and padding in grey, the prompt's words in colour),
        each bar labelled with its percentage.
    """
    require_trace(trace, "plot.attention_shares")
    shares = trace.attention_shares(step=step)
    labels, values = list(shares), [100 * v for v in shares.values()]
    special = {trace.tokens[0], trace.tokens[-1], "padding"}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(labels) + 1.5), 3.2), layout="constrained")
    bars = ax.bar(range(len(labels)), values, color=["#999" if label in special else "#d95f02" for label in labels])
    ax.bar_label(bars, [f"{v:.1f}%" for v in values], fontsize=8)
    ax.set_xticks(range(len(labels)), [literal(label) for label in labels], rotation=45, ha="right", fontsize=9)
    ax.set_ylabel("share of all attention (%)")
    ax.set_ylim(0, max(values) * 1.15)
    where = "all steps" if step is None else f"step {step}"
    ax.set_title(f"where cross-attention goes — {quoted(trace.prompt)} ({where}, all layers)", fontsize=10)
    return fig


def heatmaps_against_masks(traces, masks, words, threshold: float = 0.4, cmap: str = "inferno"):
    """Does a word look at its object? One row per picture: the picture with the object's outline, then each
    word's heatmap with that outline, its strong region and its peak, titled with DAAM's two measures.

    Args:
        traces: ``B`` recorded generations (a compact trace will do); one :class:`Trace` for a single row.
        masks: ``B`` boolean masks ``[H, W]`` at the pictures' size, one object each (e.g. the tiny world's
            detector: ``isd.world.detect.detect(trace.image)[0].mask``).
        words: the words of each prompt to test, one list per trace (or one list for all), e.g. ``["red", "circle", "left"]``.
        threshold: the strong region is where the heatmap is ≥ ``threshold`` × its maximum (DAAM: 0.4).
    Returns:
        a Figure of ``B × (1 + words)`` panels. In each word panel: the heatmap (scaled to its maximum), the mask's
        outline in cyan, the strong region's in white (dashed), the peak as a cross; the title gives the IoU of the
        strong region with the mask and whether the peak is on the object (the pointing game, :mod:`illustrated_sd.plot.heatmaps`).
    Example:
        >>> fig = heatmaps_against_masks(trace, detect(trace.image)[0].mask, ["red", "circle", "left"])
    """
    traces = [traces] if isinstance(traces, Trace) else list(traces)
    masks = [masks] if isinstance(masks, np.ndarray) else list(masks)
    words = [list(words)] * len(traces) if words and isinstance(words[0], str) else [list(w) for w in words]
    if not traces or len(masks) != len(traces) or len(words) != len(traces):
        raise ValueError(f"one mask and one list of words per trace (got {len(traces)} traces, {len(masks)} masks, "
                         f"{len(words)} lists of words)")
    threshold = checks.real_number("threshold", threshold, minimum=0, maximum=1, hint="DAAM uses 0.4")
    cols = 1 + max(len(w) for w in words)
    fig, axes = plt.subplots(len(traces), cols, figsize=(2.3 * cols, 2.55 * len(traces)), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_axis_off()
    for row, trace, mask, row_words in zip(axes, traces, masks, words):
        image = np.asarray(trace.image.convert("RGB"))
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"a mask must have the picture's size {image.shape[:2]} (got {mask.shape})")
        row[0].imshow(image)
        row[0].contour(mask, levels=[0.5], colors="cyan", linewidths=1.2)
        row[0].set_title(literal(trace.prompt), fontsize=8)
        for ax, word in zip(row[1:], row_words):
            heat = trace.cross_attention(word)  # the mean over every step and layer (what a compact trace keeps)
            ax.imshow(upsample(heat, mask.shape) / max(float(heat.max()), 1e-12), cmap=cmap, vmin=0, vmax=1)
            ax.contour(mask, levels=[0.5], colors="cyan", linewidths=1.2)
            ax.contour(strong_region(heat, mask.shape, threshold), levels=[0.5], colors="white", linewidths=1, linestyles="--")
            y, x = peak(heat, mask.shape)
            ax.plot(x, y, marker="x", color="white", markersize=8, markeredgewidth=2)
            on = "peak on it" if points_inside(heat, mask) else "peak off it"
            ax.set_title(f"{literal(word)}: IoU {heatmap_iou(heat, mask, threshold):.2f}, {on}", fontsize=8)
    fig.suptitle(f"Each word's heatmap against its object (cyan); white dashes: ≥ {threshold:g} × the maximum", fontsize=10)
    return fig

"""A diffusion transformer's joint attention (SD3, Flux) for one word, and ConceptAttention's maps, as figures."""

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ..trace.flow import FlowTrace
from .labels import literal, quoted

SHARE = "share of the query's whole attention"


def tokens_to_pixels(heat: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``[gh, gw]`` one value per image token → ``[H, W]``, each token a square block: a 4×4 grid looks like 4×4
    (a smooth upsampling would draw detail the model never had)."""
    return F.interpolate(heat[None, None].float(), size=size, mode="nearest")[0, 0].numpy()


# What each kind of transformer block is called in words (a layer's name is "<kind>.<index>").
BLOCK_KINDS = {"double": "double-stream blocks", "single": "single-stream blocks", "joint": "joint blocks"}


def word_choices(trace: FlowTrace) -> list[tuple[str, str | int]]:
    """What a word picker offers: each word of the prompt once, then each token that belongs to no word (T5's
    ``</s>``, CLIP's start and end markers), in the order they first come in the text.

    Returns ``[(label, key)]``: ``trace.cross_attention(key)`` is the entry's map (a word's key is the word, so its
    every place, in every encoder, is summed; a marker's key is its token index). The entries' tokens are the ``n``
    kept tokens, each once, so the entries' maps plus the padding add up to ``trace.text_share()``.
    Example:
        >>> word_choices(trace)   # [('a', 'a'), ('red', 'red'), …, ('</s> (t5)', 6)]
    """
    entries = {}  # lowercased word (as token_index matches words) → (where it first comes, label, key)
    for word, places in trace.words:
        entries.setdefault(word.lower(), (min(places), word, word))
    in_words = {i for _, places in trace.words for i in places}
    markers = [(i, f"{token} ({trace.token_sources[i]})", i) for i, token in enumerate(trace.tokens) if i not in in_words]
    return [(label, key) for _, label, key in sorted([*entries.values(), *markers], key=lambda entry: entry[0])]


def concentration(heat: torch.Tensor) -> float:
    """How strong and concentrated a heatmap is: peak × peak / mean. High for a word that found its place; low for an
    article the picture attends to everywhere (a low peak over its mean) and for a sharp but tiny map (a low peak)."""
    return float(heat.max() ** 2 / heat.mean().clamp_min(1e-12))


def telling_word(trace: FlowTrace) -> str:
    """The word to show first: the one whose image→text map at the last step is the most :func:`concentrated
    <concentration>` (the explorer page chooses the same)."""
    words = [key for _, key in word_choices(trace) if isinstance(key, str)]
    return max(words, key=lambda word: concentration(trace.cross_attention(word, step=-1)))


def layer_groups(trace: FlowTrace) -> list[tuple[str, tuple[str, ...] | None]]:
    """The layer choices that average several layers: all recorded layers (``None``), then each kind of block when
    the trace has more than one (Flux: its double-stream and its single-stream blocks).

    Returns ``[(label, layers)]``; ``layers`` is what ``trace.cross_attention(word, layer=layers)`` takes.
    """
    kinds = {}
    for name in trace.layers:
        kinds.setdefault(name.split(".")[0], []).append(name)
    groups = [(f"all {len(trace.layers)} layers", None)]
    if len(kinds) > 1:
        groups += [(f"{BLOCK_KINDS.get(kind, kind)} ({len(names)})", tuple(names)) for kind, names in kinds.items()]
    return groups


def _averaged(trace: FlowTrace, step, layer) -> str:
    """What a panel averages, in words: "mean of 4 steps × 57 layers, heads averaged"."""
    steps = trace.num_steps if step is None else (len(step) if isinstance(step, (list, tuple, range)) else 1)
    layers = len(trace.layers) if layer is None else (1 if isinstance(layer, str) else len(layer))
    return f"mean of {steps} step{'s' * (steps != 1)} × {layers} layer{'s' * (layers != 1)}, {trace.grid_hw[0]}×{trace.grid_hw[1]} tokens"


def joint_attention(trace: FlowTrace, word: str, step=None, layer=None, encoder: str | None = None, cmap: str = "inferno"):
    """Where the picture looks for ``word`` (image→text), what the word reads from the picture (text→image), how much
    each patch attends to the text at all, and the text's attention among its own tokens (text→text, the padding summed
    into one column). Each map shows one value per image token, as square blocks.

    Args:
        trace: a :class:`~illustrated_sd.trace.flow.FlowTrace` (``pipe(...)`` of an SD3 or Flux pipeline).
        word: a word of the prompt; step, layer, encoder: as in ``trace.cross_attention`` (``None`` = mean / all).
    Returns:
        a ``matplotlib.figure.Figure``: the image; image→text for the word ``[gh, gw]``; text→image for the word;
        the text's share of each patch's attention; text→text ``[n, n + 1]``. Every panel has its own colour bar in
        shares of the query's whole attention (image and text keys together).
    Example:
        >>> fig = isd.plot.joint_attention(trace, "circle")
    """
    if not isinstance(trace, FlowTrace):
        raise TypeError(f"plot.joint_attention takes a FlowTrace (a trace of SD3 or Flux), got {type(trace).__name__}; for "
                        "SD 1/2 use plot.token_heatmaps(trace)")
    image = np.asarray(trace.image.convert("RGB"))
    size = image.shape[:2]
    panels = [("image→text", f"where the picture looks for {quoted(word)}", trace.cross_attention(word, step, layer, encoder)),
              ("text→image", f"what {quoted(word)} reads from the picture", trace.text_to_image(word, step, layer, encoder)),
              ("text share", "each patch's attention to all text (the rest is to the picture)", trace.text_share(step, layer))]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.9), layout="constrained", gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.5]})
    axes[0].imshow(image)
    axes[0].set_title(literal(trace.prompt if len(trace.prompt) < 40 else trace.prompt[:39] + "…"), fontsize=9)
    for ax, (title, what, heat) in zip(axes[1:4], panels):
        ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=255)
        shown = ax.imshow(tokens_to_pixels(heat, size), cmap=cmap, alpha=0.65, vmin=0, vmax=max(float(heat.max()), 1e-12))
        fig.colorbar(shown, ax=ax, shrink=0.8, format="%.3g").set_label(SHARE, fontsize=7)
        ax.set_title(f"{title}\n{what}", fontsize=8)
    text = trace._maps("text_to_text", step, layer).numpy()
    labels = [literal(f"{t} ({s})") for t, s in zip(trace.tokens, trace.token_sources)]
    shown = axes[4].imshow(text, cmap=cmap, aspect="auto", vmin=0)
    fig.colorbar(shown, ax=axes[4], shrink=0.8, format="%.3g").set_label(SHARE, fontsize=7)
    axes[4].set_yticks(range(len(labels)), labels, fontsize=6)
    axes[4].set_xticks(range(len(labels) + 1), labels + [f"padding (sum of {trace.padding_slots})"], fontsize=6, rotation=90)
    axes[4].set_title("text→text (each token's attention to the text;\nthe rest of its row goes to the picture)", fontsize=8)
    fig.suptitle(_averaged(trace, step, layer), fontsize=8)
    for ax in axes[:4]:
        ax.set_axis_off()
    return fig


def concept_maps(trace: FlowTrace, step=None, layer=None, cmap: str = "inferno"):
    """ConceptAttention's map of each concept over the picture (``pipe(prompt, concepts=[...])`` of a Flux pipeline).

    Returns a ``matplotlib.figure.Figure``: the image, then one panel per concept, each patch coloured by its share
    among the concepts (0–1, one colour bar for all: the shares of a patch add up to 1 across the panels).
    Example:
        >>> fig = isd.plot.concept_maps(pipe("a red circle on the left", concepts=["circle", "background"]))
    """
    if not isinstance(trace, FlowTrace) or not trace.concepts:
        raise ValueError("plot.concept_maps needs a FlowTrace made with concepts=[...], e.g. pipe(prompt, concepts=['circle', 'sky'])")
    image = np.asarray(trace.image.convert("RGB"))
    fig, axes = plt.subplots(1, len(trace.concepts) + 1, figsize=(3.2 * (len(trace.concepts) + 1), 3.4), layout="constrained",
                             squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title(literal(trace.prompt if len(trace.prompt) < 40 else trace.prompt[:39] + "…"), fontsize=9)
    for ax, concept in zip(axes[1:], trace.concepts):
        ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=255)
        shown = ax.imshow(tokens_to_pixels(trace.concept_map(concept, step, layer), image.shape[:2]), cmap=cmap, alpha=0.65, vmin=0, vmax=1)
        ax.set_title(quoted(concept), fontsize=9)
    fig.colorbar(shown, ax=list(axes[1:]), shrink=0.8, label="share among the concepts")
    for ax in axes:
        ax.set_axis_off()
    return fig

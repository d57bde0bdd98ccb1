"""What the text encoder produced: the 77 × D embedding, and how the tokens' vectors compare."""

import matplotlib.pyplot as plt
import torch.nn.functional as F

from ..trace.unet import Trace, require_trace
from .labels import literal, quoted


def text_embeddings(trace: Trace, cmap: str = "RdBu_r"):
    """The prompt's final hidden states as a heat map (rows = the 77 slots, columns = dimensions),
    beside the cosine similarity between the slots' vectors.

    The heat map comes in two parts on one colour scale, so that every token's label is readable: the
    prompt's ``n`` slots (start marker to end marker), then the ``77 − n`` padding slots, which the UNet
    reads too.

    For an SDXL trace a line splits the columns where the first text encoder's part ends and the
    second's begins (``trace.context_split``).

    Returns:
        a Figure with three panels: tokens ``[n, D]``, padding ``[77 − n, D]``, similarity ``[n, n]``.
    """
    require_trace(trace, "plot.text_embeddings")
    emb = trace.text_embeddings.float()  # [77, D]
    n, slots, width = len(trace.tokens), emb.shape[0], emb.shape[1]
    tokens = [literal(t) for t in trace.tokens]
    fig = plt.figure(figsize=(12, 5.5), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(1.6, 1), height_ratios=(max(n, 1), max(n, 1) * 0.6))
    top, bottom, right = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[:, 1])
    limit = float(emb.abs().quantile(0.99))
    style = dict(aspect="auto", cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    im = top.imshow(emb[:n].numpy(), **style)
    top.set_yticks(range(n), tokens, fontsize=7)
    top.set_xticks([])
    top.set_title(f"text embeddings [77, {width}]: the prompt's {n} slots…")
    if n < slots:
        bottom.imshow(emb[n:].numpy(), extent=(-0.5, width - 0.5, slots - 0.5, n - 0.5), **style)
        bottom.set_yticks([n, slots - 1], [f"slot {n}", f"slot {slots - 1}"], fontsize=7)
        bottom.set_title(f"…and {slots - n} padding slots (the UNet reads these too)", fontsize=10)
    bottom.set_xlabel(f"dimension (D = {width})")
    if trace.context_split:  # SDXL: two encoders' penultimate layers side by side
        split = trace.context_split
        for ax in (top, bottom):
            ax.axvline(split - 0.5, color="black", lw=1.5)
        bottom.set_xticks([split / 2, (split + width) / 2],
                          [f"text encoder 1: dims 0–{split - 1}", f"text encoder 2: dims {split}–{width - 1}"], fontsize=8)
    fig.colorbar(im, ax=[top, bottom], shrink=0.8)
    unit = F.normalize(emb[:n], dim=-1)
    cosine = unit @ unit.T  # [n, n]
    sim = right.imshow(cosine.numpy(), cmap="viridis", vmin=-1, vmax=1)
    right.set_xticks(range(n), tokens, rotation=90, fontsize=7)
    right.set_yticks(range(n), tokens, fontsize=7)
    # The scale runs from −1 to 1 so that 0 means "unrelated"; CLIP's vectors share a large common part,
    # so real prompts rarely reach below 0: say how low this one goes.
    right.set_title(f"cosine similarity between the tokens' vectors\n(lowest here {float(cosine.min()):.2f}; 1 = same direction)",
                    fontsize=10)
    fig.colorbar(sim, ax=right, shrink=0.8)
    fig.suptitle(quoted(trace.prompt), fontsize=11)
    return fig


def similarity_matrix(similarity, captions: list[str], images=None, title: str = "image–caption similarity"):
    """CLIP's similarity matrix: rows = images, columns = captions; a trained CLIP lights the diagonal.

    Args:
        similarity: ``[N, M]`` cosine similarities (from ``illustrated_sd.lessons.clip.clip_similarity``).
        captions: the ``M`` captions, written under the columns.
        images: optional ``[N, 3, H, W]`` in [-1, 1], drawn as thumbnails beside the rows.
    Returns:
        a Figure; each row's best caption is ringed (a correct match sits on the diagonal).
    """
    sim = similarity.float().numpy()
    if sim.ndim != 2 or sim.shape[1] != len(captions):
        raise ValueError(f"similarity is {list(sim.shape)} but there are {len(captions)} captions; it must be [images, captions]")
    n, m = sim.shape
    fig = plt.figure(figsize=(1.0 + 0.55 * m, 1.5 + 0.55 * n), layout="constrained")
    grid = fig.add_gridspec(n, 2, width_ratios=(1, m)) if images is not None else fig.add_gridspec(n, 1)
    ax = fig.add_subplot(grid[:, -1])
    im = ax.imshow(sim, cmap="viridis", vmin=-1, vmax=1)
    best = sim.argmax(1)
    ax.scatter(best, range(n), s=180, facecolors="none", edgecolors="white", linewidths=1.5)
    ax.set_xticks(range(m), [literal(c) for c in captions], rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(n), [f"image {i}" for i in range(n)], fontsize=7)
    correct = int((best == range(n)).sum()) if n == m else None
    ax.set_title(literal(title) + (f": {correct}/{n} images pick their own caption" if correct is not None else ""), fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.6)
    if images is not None:
        for i in range(n):
            thumb = fig.add_subplot(grid[i, 0])
            thumb.imshow(((images[i].permute(1, 2, 0).float() + 1) / 2).clamp(0, 1).numpy())
            thumb.axis("off")
    return fig

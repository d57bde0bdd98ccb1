"""What the text encoder produced: the 77 × D embedding, and how the tokens' vectors compare."""

import matplotlib.pyplot as plt
import torch.nn.functional as F

from ..trace import Trace, require_trace
from .labels import literal, quoted


def text_embeddings(trace: Trace, cmap: str = "RdBu_r"):
    """The prompt's final hidden states as a heat map (rows = the 77 slots, columns = dimensions),
    beside the cosine similarity between the slots' vectors.

    Returns:
        a Figure with two panels; tick labels name the prompt's tokens (the rest is padding).
    """
    require_trace(trace, "plot.text_embeddings")
    emb = trace.text_embeddings.float()  # [77, D]
    n = len(trace.tokens)
    tokens = [literal(t) for t in trace.tokens]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained", width_ratios=(1.6, 1))
    limit = float(emb.abs().quantile(0.99))
    im = left.imshow(emb.numpy(), aspect="auto", cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    left.set_yticks(range(n), tokens, fontsize=7)
    left.set_xlabel(f"dimension (D = {emb.shape[1]})")
    left.set_ylabel("slot (token; below: padding)")
    left.set_title(f"text embeddings [77, {emb.shape[1]}]")
    fig.colorbar(im, ax=left, shrink=0.8)
    unit = F.normalize(emb[:n], dim=-1)
    sim = right.imshow((unit @ unit.T).numpy(), cmap="viridis", vmin=-1, vmax=1)
    right.set_xticks(range(n), tokens, rotation=90, fontsize=7)
    right.set_yticks(range(n), tokens, fontsize=7)
    right.set_title("cosine similarity between the tokens' vectors")
    fig.colorbar(sim, ax=right, shrink=0.8)
    fig.suptitle(quoted(trace.prompt), fontsize=11)
    return fig


def similarity_matrix(similarity, captions: list[str], images=None, title: str = "image–caption similarity"):
    """CLIP's similarity matrix: rows = images, columns = captions; a trained CLIP lights the diagonal.

    Args:
        similarity: ``[N, M]`` cosine similarities (from ``illustrated_sd.clip.clip_similarity``).
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

"""What the text encoder produced: the 77 × D embedding, and how the tokens' vectors compare."""

import matplotlib.pyplot as plt
import torch.nn.functional as F

from ..trace import Trace


def text_embeddings(trace: Trace, cmap: str = "RdBu_r"):
    """The prompt's final hidden states as a heat map (rows = the 77 slots, columns = dimensions),
    beside the cosine similarity between the slots' vectors.

    Returns:
        a Figure with two panels; tick labels name the prompt's tokens (the rest is padding).
    """
    emb = trace.text_embeddings.float()  # [77, D]
    n = len(trace.tokens)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained", width_ratios=(1.6, 1))
    limit = float(emb.abs().quantile(0.99))
    im = left.imshow(emb.numpy(), aspect="auto", cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    left.set_yticks(range(n), trace.tokens, fontsize=7)
    left.set_xlabel(f"dimension (D = {emb.shape[1]})")
    left.set_ylabel("slot (token; below: padding)")
    left.set_title(f"text embeddings [77, {emb.shape[1]}]")
    fig.colorbar(im, ax=left, shrink=0.8)
    unit = F.normalize(emb[:n], dim=-1)
    sim = right.imshow((unit @ unit.T).numpy(), cmap="viridis", vmin=-1, vmax=1)
    right.set_xticks(range(n), trace.tokens, rotation=90, fontsize=7)
    right.set_yticks(range(n), trace.tokens, fontsize=7)
    right.set_title("cosine similarity between the tokens' vectors")
    fig.colorbar(sim, ax=right, shrink=0.8)
    fig.suptitle(repr(trace.prompt), fontsize=11)
    return fig

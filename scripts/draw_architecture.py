"""Draw the architecture diagram of docs/architecture.md as an SVG (the site works offline, so no mermaid).

    python scripts/draw_architecture.py      # → docs/images/architecture.svg
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "architecture.svg"
MODEL, DATA, RECORD = "#dbe9f6", "#f3f3f3", "#fde9c8"  # model parts, values, what the recorders keep

# name: (x, y, text, colour); one generation flows left to right on top, then back along the middle row
BOXES = {
    "prompt": (0.0, 3.0, "prompt", DATA),
    "tok": (2.6, 3.0, "tokenizer\n77 token ids", MODEL),
    "clip": (5.2, 3.0, "CLIP text encoder\n[77, D] embeddings", MODEL),
    "noise": (7.8, 4.8, "Gaussian noise\n[4, h, w]", DATA),
    "unet": (7.8, 3.0, "UNet\ncross-attention:\npixels ask the tokens", MODEL),
    "cfg": (10.4, 3.0, "classifier-free guidance\nε̂ = ε_u + s·(ε_t − ε_u)", MODEL),
    "step": (13.0, 3.0, "scheduler step\nx_t → x_t−1", MODEL),
    "latent": (13.0, 1.3, "final latent\n[4, h, w]", DATA),
    "vae": (10.4, 1.3, "VAE decoder\n[3, H, W]", MODEL),
    "image": (7.8, 1.3, "image", DATA),
    "trace": (5.2, -0.5, "Trace", RECORD),
    "show": (2.2, -0.5, "plot · widgets\nreport.html", DATA),
}
FLOW = [("prompt", "tok"), ("tok", "clip"), ("clip", "unet"), ("noise", "unet"), ("unet", "cfg"), ("cfg", "step"),
        ("step", "latent"), ("latent", "vae"), ("vae", "image"), ("trace", "show")]
W, H = 2.3, 1.1
ARROW = dict(arrowstyle="-|>", mutation_scale=12, color="#333", lw=1.2)
DASHED = dict(ARROW, color="#8a5a00", linestyle=(0, (3, 3)))


def edge(a, b):
    """Where the line from box ``a``'s centre to box ``b``'s centre leaves box ``a``."""
    (xa, ya, *_), (xb, yb, *_) = BOXES[a], BOXES[b]
    dx, dy = xb - xa, yb - ya
    t = min(W / 2 / abs(dx) if dx else float("inf"), H / 2 / abs(dy) if dy else float("inf"))
    return xa + t * dx, ya + t * dy


def draw():
    fig, ax = plt.subplots(figsize=(13, 6))
    for x, y, text, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x - W / 2, y - H / 2), W, H, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    fc=colour, ec="#555", lw=1))
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5)
    for a, b in FLOW:
        ax.add_patch(FancyArrowPatch(edge(a, b), edge(b, a), **ARROW))
    # the loop: each step's latent goes back into the UNet
    ax.add_patch(FancyArrowPatch((13.0, 3.5), (8.5, 3.5), connectionstyle="arc3,rad=0.3", **ARROW))
    ax.text(10.4, 4.35, "next step, S times", ha="center", fontsize=9, style="italic")
    # what the recorders keep, on the way (dashed)
    for a, label, at in (("clip", "embeddings", (5.1, 1.3)), ("unet", "AttentionRecorder (to_q, to_k hooks)", (7.3, 2.12)),
                         ("image", "", None)):
        ax.add_patch(FancyArrowPatch(edge(a, "trace"), edge("trace", a), **DASHED))
        if at:
            ax.text(*at, label, fontsize=8, color="#8a5a00", ha="right" if a == "clip" else "left", va="center")
    x_side = 13.0 + W / 2 + 0.4  # the StepRecorder's line goes round the bottom row
    ax.plot([13.0 + W / 2, x_side, x_side, 5.2 + W / 2 + 1.0], [2.8, 2.8, -0.5, -0.5], color="#8a5a00", lw=1.2,
            linestyle=(0, (3, 3)))
    ax.add_patch(FancyArrowPatch((5.2 + W / 2 + 1.0, -0.5), (5.2 + W / 2, -0.5), **DASHED))
    ax.text(10.0, -0.35, "StepRecorder: latents, ε̂, x̂₀ at every step", fontsize=8, color="#8a5a00", ha="center", va="bottom")
    ax.set_xlim(-1.2, 14.8)
    ax.set_ylim(-1.1, 5.4)
    ax.set_aspect("equal")
    ax.set_axis_off()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, bbox_inches="tight", metadata={"Date": None})  # no date: the same drawing gives the same file
    print(f"wrote {OUT}")


if __name__ == "__main__":
    draw()

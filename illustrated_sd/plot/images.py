"""A row of pictures with captions: the figure most notebook cells end with."""

import matplotlib.pyplot as plt
import numpy as np
import torch

from .labels import literal


def _to_array(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):  # [3, H, W] in [-1, 1], as the world and the VAE use
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor image must be [3, H, W] in [-1, 1], got {list(image.shape)}")
        return ((image.float().permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
    return np.asarray(image.convert("RGB"))


def image_row(images, titles=None, size: float = 2.2, suptitle: str | None = None):
    """Show images side by side.

    Args:
        images: PIL images, or ``[3, H, W]`` tensors in [-1, 1] (a ``[N, 3, H, W]`` batch works too).
        titles: one caption per image (optional).
        size: inches per panel.
    Returns:
        a Figure with one panel per image.
    """
    images = list(images)
    if not images:
        raise ValueError("no images to show; pass at least one PIL image or [3, H, W] tensor")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size + 0.4), squeeze=False, layout="constrained")
    for i, (ax, image) in enumerate(zip(axes[0], images)):
        ax.imshow(_to_array(image), interpolation="nearest")
        if titles is not None:
            ax.set_title(literal(titles[i]), fontsize=9)
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(literal(suptitle), fontsize=10)
    return fig

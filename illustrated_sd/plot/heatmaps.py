"""A word's heatmap against an object's mask: the two measures DAAM (Tang et al., 2023) made common.

A heatmap lives on the latent grid (16×16 for the tiny model, 64×64 for SD 1.5 at 512²); a mask on the
picture's pixels. Both measures first bring the heatmap to the picture's size, bilinearly, as DAAM does.

- **IoU**: scale the heatmap to its maximum, keep where it is at least ``threshold`` (0.4 in DAAM) of it: that
  region's intersection over union with the mask. 1 = the word looks exactly at the object.
- **The pointing game**: does the heatmap's single hottest pixel fall on the object?
"""

import numpy as np
import torch
import torch.nn.functional as F


def at_size(heat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``heat [h, w]`` → ``[H, W]`` (``size``), bilinear, in float32."""
    return F.interpolate(heat[None, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def strong_region(heat: torch.Tensor, size: tuple[int, int], threshold: float = 0.4) -> np.ndarray:
    """Where ``heat [h, w]``, at ``size`` and scaled to its maximum, is ≥ ``threshold``: a bool array ``[H, W]``."""
    heat = at_size(heat, size)
    return (heat / heat.max().clamp_min(1e-12) >= threshold).numpy()


def heatmap_iou(heat: torch.Tensor, mask: np.ndarray, threshold: float = 0.4) -> float:
    """DAAM's measure: the IoU of ``heat [h, w]``'s strong region (:func:`strong_region`) with ``mask [H, W]`` (bool)."""
    region = strong_region(heat, mask.shape, threshold)
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else 0.0


def peak(heat: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
    """``(row, column)`` of the hottest pixel of ``heat [h, w]`` brought to ``size``."""
    return divmod(int(at_size(heat, size).argmax()), size[1])


def points_inside(heat: torch.Tensor, mask: np.ndarray, margin: int = 2) -> bool:
    """The pointing game: does ``heat``'s peak fall on ``mask [H, W]``, or within ``margin`` pixels of it (the
    anti-aliased edge that a detector's mask leaves out)?"""
    y, x = peak(heat, mask.shape)
    grown = np.pad(mask, margin)
    return bool(grown[y : y + 2 * margin + 1, x : x + 2 * margin + 1].any())

"""Drawing scenes as images, on any torch device, a whole batch at once.

Each shape is an inside-test on coordinates (u, v) centred on the object and divided by its radius;
the picture is rendered at 2× and averaged down, so edges are anti-aliased like a real image.
"""

import math

import torch
import torch.nn.functional as F

from .scenes import Scene
from .vocabulary import BACKGROUNDS, COLORS, SHAPES, SIZES


def inside(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points (u, v) (object-centred, in units of the radius, v downwards) lie inside ``shape``."""
    if shape == "circle":
        return u**2 + v**2 <= 1
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.86
    if shape == "triangle":  # apex up, base at v = 0.75
        return (v <= 0.75) & (u.abs() <= (v + 1) * 0.58)
    if shape == "star":  # five points: the allowed radius falls from 1 at a tip to 0.45 between tips
        angle = torch.atan2(u, -v) % (2 * math.pi / 5) / (2 * math.pi / 5)
        return torch.sqrt(u**2 + v**2) <= 0.45 + 0.55 * (2 * angle - 1).abs() ** 1.6
    if shape == "heart":  # (x² + y² − 1)³ − x²y³ ≤ 0, y upwards
        x, y = u * 1.12, -v * 1.12 + 0.12
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    raise ValueError(f"unknown shape {shape!r}; the world has {SHAPES}")


def render(scenes: list[Scene], size: int = 128, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Draw scenes, all at once.

    Returns:
        ``images [B, 3, size, size]`` in [-1, 1] (the range SD's VAE expects) and
        ``masks [B, 2, size, size]`` float coverage in [0, 1] of each object (zeros for a missing one).
    """
    def tensor(values):
        return torch.tensor(values, device=device, dtype=torch.float32)

    hi = 2 * size
    coords = (torch.arange(hi, device=device, dtype=torch.float32) + 0.5) / hi
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # [hi, hi]
    strength, dx, dy = tensor([s.gradient for s in scenes]).unbind(1)  # [B] each
    norm = torch.sqrt(dx**2 + dy**2).clamp_min(1e-6)
    ramp = ((x - 0.5) * (dx / norm)[:, None, None] + (y - 0.5) * (dy / norm)[:, None, None])  # [B, hi, hi]
    background = tensor([BACKGROUNDS[s.background] for s in scenes])  # [B, 3]
    images = (background[:, :, None, None] + strength[:, None, None, None] * ramp[:, None]).clamp(0, 255)
    masks = torch.zeros(len(scenes), 2, hi, hi, device=device)
    for k in range(2):  # object slot k of every scene at once; later objects are drawn over earlier ones
        objs = [s.objects[k] if k < len(s.objects) else None for s in scenes]
        present = tensor([o is not None for o in objs])
        cx, cy, radius = tensor([(o.center[0], o.center[1], SIZES[o.size]) if o else (0.5, 0.5, 1.0) for o in objs]).unbind(1)
        u = (x - cx[:, None, None]) / radius[:, None, None]
        v = (y - cy[:, None, None]) / radius[:, None, None]
        shape_of = [o.shape if o else None for o in objs]
        for shape in SHAPES:
            chosen = torch.tensor([s == shape for s in shape_of], device=device)
            if chosen.any():
                masks[chosen, k] = inside(shape, u[chosen], v[chosen]).float()
        masks[:, k] *= present[:, None, None]
        color = tensor([COLORS[o.color] if o else (0, 0, 0) for o in objs])  # [B, 3]
        m = masks[:, k : k + 1]
        images = images * (1 - m) + color[:, :, None, None] * m
    images = F.avg_pool2d(images, 2) / 127.5 - 1
    return images, F.avg_pool2d(masks, 2)

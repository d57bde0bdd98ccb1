"""Drawing scenes as images, on any torch device, a whole batch at once.

Each shape is an inside-test on coordinates (u, v) centred on the object and divided by its radius;
the picture is rendered at 2× and averaged down, so edges are anti-aliased like a real image.
"""

import math

import torch
import torch.nn.functional as F

from .scenes import Scene
from .vocabulary import BACKGROUNDS, COLORS, SHAPES_2, SIZES, SIZES_2, UNSEEN_SHAPES


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
    # version 2's shapes
    if shape == "ring":  # a disc with a hole of half its radius
        r2 = u**2 + v**2
        return (r2 <= 1) & (r2 >= 0.55**2)
    if shape == "cross":  # a plus sign of two bars, each 0.4 wide
        return ((u.abs() <= 0.2) & (v.abs() <= 0.95)) | ((v.abs() <= 0.2) & (u.abs() <= 0.95))
    if shape == "moon":  # a disc with a disc bitten out of its right side
        return (u**2 + v**2 <= 1) & ((u - 0.55) ** 2 + (v + 0.1) ** 2 > 0.8**2)
    if shape == "diamond":  # a square standing on a corner, a little taller than wide
        return u.abs() / 0.8 + v.abs() <= 1
    # never in a training scene: a concept to learn later (textual inversion)
    if shape == "house":  # a body 1.3 wide from v = 0 to 0.8, under a roof 1.8 wide at its eaves and apex at v = −0.95
        body = (u.abs() <= 0.65) & (v >= 0) & (v <= 0.8)
        roof = (v < 0) & (v >= -0.95) & (u.abs() <= 0.9 * (v + 0.95) / 0.95)
        return body | roof
    raise ValueError(f"unknown shape {shape!r}; the world has {SHAPES_2}, and {UNSEEN_SHAPES} that no training scene holds")


def render(scenes: list[Scene], size: int = 128, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Draw scenes, all at once (version 1 and 2 alike, even mixed in one batch).

    Returns:
        ``images [B, 3, size, size]`` in [-1, 1] (the range SD's VAE expects) and
        ``masks [B, K, size, size]`` float coverage in [0, 1] of each object (zeros for a missing one),
        ``K`` = the most objects a scene of the batch holds, at least 2.
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
    patterned = [i for i, s in enumerate(scenes) if s.pattern != "plain"]
    if patterned:
        images[patterned] = (images[patterned] + _pattern([scenes[i] for i in patterned], x, y, tensor)[:, None]).clamp(0, 255)
    slots = max(2, *(len(s.objects) for s in scenes))
    masks = torch.zeros(len(scenes), slots, hi, hi, device=device)
    style = [s.style for s in scenes]
    for k in range(slots):  # object slot k of every scene at once; later objects are drawn over earlier ones
        objs = [s.objects[k] if k < len(s.objects) else None for s in scenes]
        present = tensor([o is not None for o in objs])
        radii = [(SIZES_2 if s.version == 2 else SIZES)[o.size] if o else 1.0 for s, o in zip(scenes, objs)]
        cx, cy, radius = tensor([(o.center[0], o.center[1], r) if o else (0.5, 0.5, 1.0) for o, r in zip(objs, radii)]).unbind(1)
        u = (x - cx[:, None, None]) / radius[:, None, None]
        v = (y - cy[:, None, None]) / radius[:, None, None]
        masks[:, k] = _shapes([o.shape if o else None for o in objs], u, v) * present[:, None, None]
        color = tensor([COLORS[o.color] if o else (0, 0, 0) for o in objs])[:, :, None, None]  # [B, 3, 1, 1]
        m = masks[:, k : k + 1]
        ink = m
        drawn = [i for i, (st, o) in enumerate(zip(style, objs)) if st == "drawing" and o is not None and o.shape != "ring"]
        if drawn:  # an outline a fifth of the radius thick: the shape less its erosion (a ring is drawn as it is)
            ink = m.clone()
            ink[drawn] = m[drawn] - _erode(m[drawn], [0.2 * radii[i] * hi for i in drawn])
        if "photo" in style:  # lit from the top left, with a soft shadow on the background below right
            shot = tensor([st == "photo" for st in style])[:, None, None, None]
            shadow = F.avg_pool2d(F.pad(m, (6, 0, 6, 0))[..., :hi, :hi], 9, stride=1, padding=4) * shot
            images = images * (1 - 0.35 * shadow)
            light = (1 - 0.12 * (u + v)[:, None].clamp(-1.5, 1.5) / 1.5)  # 0.88 … 1.12
            color = torch.where(shot.bool(), color * light, color)
        if "painting" in style:  # brush strokes: streaks along one direction, ±12% in brightness
            painted = tensor([st == "painting" for st in style])[:, None, None, None]
            texture = tensor([o.texture if o and o.texture else (0.0, 0.0, 0.0, 0.0) for o in objs])
            angle, p1, p2, p3 = (t[:, None, None] for t in texture.unbind(1))
            along, across = x * torch.cos(angle) + y * torch.sin(angle), -x * torch.sin(angle) + y * torch.cos(angle)
            strokes = 0.6 * torch.sin(across * 180 + p1 + 2 * torch.sin(along * 9 + p2)) + 0.4 * torch.sin(across * 97 + p3)
            color = torch.where(painted.bool(), color * (1 + 0.12 * strokes[:, None]), color)
        images = images * (1 - ink) + color * ink
    images = F.avg_pool2d(images.clamp(0, 255), 2) / 127.5 - 1
    return images, F.avg_pool2d(masks, 2)


def as_uint8(images: torch.Tensor):
    """``images [B, 3, H, W]`` in [-1, 1] (what :func:`render` and the VAE give) → ``[B, H, W, 3]`` uint8 numpy, the
    pictures the detector reads."""
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()


def _erode(m: torch.Tensor, widths: list[float]) -> torch.Tensor:
    """``m`` ``[N, 1, H, W]`` shrunk by ``widths[i]`` pixels at every edge (a min-filter, as max-pooling of 1 − m)."""
    out = torch.empty_like(m)
    for width in sorted(set(widths)):
        chosen = [i for i, w in enumerate(widths) if w == width]
        k = 2 * round(width) + 1
        out[chosen] = 1 - F.max_pool2d(1 - m[chosen], k, stride=1, padding=k // 2)
    return out


def _shapes(shapes: list[str | None], u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[B, hi, hi]`` 0/1 of each scene's shape (zeros where it has ``None``), one inside-test per shape."""
    out = torch.zeros_like(u)
    for shape in dict.fromkeys(s for s in shapes if s is not None):
        chosen = torch.tensor([s == shape for s in shapes], device=u.device)
        out[chosen] = inside(shape, u[chosen], v[chosen]).float()
    return out


def _pattern(scenes: list[Scene], x: torch.Tensor, y: torch.Tensor, tensor) -> torch.Tensor:
    """``[B, hi, hi]`` grey-level offsets of the version-2 background patterns (the same for R, G and B)."""
    params = tensor([s.pattern_params for s in scenes])  # [B, 15]
    period, angle = params[:, 0, None, None], params[:, 1, None, None]
    phases, freqs, amount = params[:, 2:8, None, None], params[:, 8:14, None, None], params[:, 14, None, None]
    along = (x * torch.cos(angle) + y * torch.sin(angle))
    stripes = torch.sign(torch.sin(2 * math.pi * along / period))
    # dots on a grid of the same period: bright discs of a quarter period's radius
    gx, gy = (x / period) % 1 - 0.5, (y / period) % 1 - 0.5
    dots = ((gx**2 + gy**2) <= 0.25**2).float() * 2 - 0.3
    # noise: six waves of random frequency and direction, summed, then folded: it looks grainy, not wavy
    directions = torch.stack([torch.cos(phases), torch.sin(phases)])
    waves = torch.sin(2 * math.pi * freqs * (x * directions[0] + y * directions[1]) + 3 * phases).sum(1)
    noise = torch.sin(waves * 2.5)
    gradient = (along - 0.5) * 2
    kinds = [s.pattern for s in scenes]
    pick = {name: torch.tensor([k == name for k in kinds], device=x.device)[:, None, None]
            for name in ("stripes", "dots", "noise", "gradient")}
    offsets = (pick["stripes"] * stripes * 0.5 + pick["dots"] * dots * 0.6 + pick["noise"] * noise * 0.5
               + pick["gradient"] * gradient * 1.2)
    return offsets * amount

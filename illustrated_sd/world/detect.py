"""A simple detector for pictures of the world: which colours, which shapes, where.

It needs no learning: the background is the colour of the border, an object is a connected patch
of one palette colour, its shape is the world shape whose outline overlaps it best (intersection
over union), its position the nearest named position. On the world's own renders it is right
(nearly) every time (see tests/test_world.py), so it can grade generated images.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .render import inside
from .vocabulary import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SHAPES_2, UNSEEN_SHAPES

PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # [7, 3]
NAMES = list(COLORS)


@dataclass
class Detection:
    """One object found in an image: its colour, shape, centre (x, y as fractions), area and mask ``[H, W]``."""

    color: str
    shape: str
    center: tuple[float, float]
    area: int
    mask: np.ndarray

    @property
    def position(self) -> str:
        """The named position nearest to the object's centre."""
        return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - self.center[0]) ** 2 + (POSITIONS[p][1] - self.center[1]) ** 2)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """Connected patches (4-neighbourhood) of a boolean mask, by flood fill."""
    seen = np.zeros_like(mask)
    parts = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, part = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            part.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        out = np.zeros_like(mask)
        ys, xs = zip(*part)
        out[list(ys), list(xs)] = True
        parts.append(out)
    return parts


def _unit_shapes(n: int = 256):
    """Area and centroid of each world shape at radius 1, measured on a fine grid."""
    c = torch.linspace(-1.5, 1.5, n)
    v, u = torch.meshgrid(c, c, indexing="ij")
    stats = {}
    for shape in SHAPES_2 + UNSEEN_SHAPES:
        m = inside(shape, u, v).float()
        cell = (3 / n) ** 2
        stats[shape] = (float(m.sum()) * cell, float((u * m).sum() / m.sum()), float((v * m).sum() / m.sum()))
    return stats


UNIT = _unit_shapes()


def classify_shape(mask: np.ndarray, shapes=SHAPES) -> str:
    """The shape of ``shapes`` whose outline, scaled to the same area and centred the same, overlaps ``mask`` best."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cy, cx, area = ys.mean() + 0.5, xs.mean() + 0.5, len(xs)
    y, x = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    target = torch.from_numpy(mask)
    best, best_iou = shapes[0], -1.0
    for shape in shapes:
        unit_area, ucx, ucy = UNIT[shape]
        r = (area / unit_area) ** 0.5
        template = inside(shape, (x - cx) / r + ucx, (y - cy) / r + ucy)
        iou = float((template & target).sum()) / float((template | target).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every enclosed hole filled: the pixels that the outside cannot reach."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask.copy()
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1  # holes lie inside the bounding box
    box = np.pad(~mask[y0:y1, x0:x1], 1, constant_values=True)
    outside = _components(box)[0]  # the padding ring (outside, True) is one connected piece, found first
    filled = mask.copy()
    filled[y0:y1, x0:x1] = ~outside[1:-1, 1:-1]
    return filled


def _border_colour(pixels: np.ndarray) -> np.ndarray:
    """The median colour of the outermost 3 pixels on every side of ``pixels [H, W, 3]``: the background's."""
    border = np.concatenate([pixels[:3].reshape(-1, 3), pixels[-3:].reshape(-1, 3), pixels[:, :3].reshape(-1, 3), pixels[:, -3:].reshape(-1, 3)])
    return np.median(border, axis=0)


def background_of(image) -> str:
    """The world's background colour (``"black"``, ``"gray"``, ``"white"`` or ``"navy"``) nearest to the picture's border:
    which background a generated picture has. ``image``: RGB PIL or ``[H, W, 3]`` uint8. (Patterns are grey-level
    offsets on the background colour, so the border's median is its colour.)"""
    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image).astype(np.float32)
    colour = _border_colour(pixels)
    return min(BACKGROUNDS, key=lambda name: float(np.linalg.norm(colour - np.asarray(BACKGROUNDS[name], dtype=np.float32))))


def detect(image, min_area: int = 40, max_objects: int | None = None, version: int = 1) -> list[Detection]:
    """Find the objects in an RGB image (PIL or ``[H, W, 3]`` uint8), largest first.

    ``version=2`` reads the richer world of tiny-sd 2: its nine shapes, up to four objects, patterned
    backgrounds and shadows (a pixel belongs to an object only when it is near a palette colour), and
    outline drawings (a shape is judged by its outline with the inside filled; a filled circle with a
    hole of 12–50% of its area is a ring). ``max_objects`` defaults to 3 (version 1) or 4.
    """
    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image).astype(np.float32)
    h, w, _ = pixels.shape
    background = _border_colour(pixels)
    foreground = np.linalg.norm(pixels - background, axis=-1) > 60
    distances = np.linalg.norm(pixels[:, :, None] - PALETTE, axis=-1)  # [H, W, colours]
    nearest = distances.argmin(-1)  # [H, W] palette index
    if version == 2:  # shadows and patterns are grey: far from every palette colour
        foreground &= distances.min(-1) <= 90
    shapes = SHAPES_2 if version == 2 else SHAPES
    found = []
    for k, name in enumerate(NAMES):
        for part in _components(foreground & (nearest == k)):
            if part.sum() >= min_area:
                ys, xs = np.nonzero(part)
                shape = classify_shape(part, shapes) if version == 1 else _classify_2(part)
                found.append(Detection(name, shape, ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h), int(part.sum()), part))
    return sorted(found, key=lambda d: -d.area)[: max_objects or (4 if version == 2 else 3)]


def stray_marks(image, threshold: float = 8.0, min_area: int = 10, clearance: int = 4, version: int = 2) -> list[tuple[int, tuple[float, float]]]:
    """Faint coloured marks away from every object (the "ghost smudges" of tiny-sd 2): ``[(area, (x, y)), …]``.

    A smudge is too faint for :func:`detect` (it is a patch of mottled colour a few grey levels off the background,
    not a palette colour), and the world's patterns and shadows are grey-level offsets. So each pixel's difference
    from the background has its grey part (the same offset in R, G and B) taken out; what is left is its *colour*
    difference. Averaged over 5×5 pixels, a patch where it exceeds ``threshold`` and covers ``min_area`` pixels or
    more, and lies more than ``clearance`` pixels from every detected object, is a mark. ``(x, y)`` in [0, 1]. On the
    world's own rendered pictures it finds a mark in 2 of 64 held-out scenes (``tests/test_world.py``).
    """
    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image).astype(np.float32)
    h, w, _ = pixels.shape
    difference = pixels - _border_colour(pixels)
    colour = np.linalg.norm(difference - difference.mean(-1, keepdims=True), axis=-1)  # [H, W]: the grey part removed
    local = F.avg_pool2d(torch.from_numpy(colour)[None, None], 5, 1, 2, count_include_pad=False)[0, 0].numpy()
    objects = np.zeros((h, w), dtype=bool)
    for found in detect(pixels.astype(np.uint8), version=version):
        objects |= found.mask
    near = F.max_pool2d(torch.from_numpy(objects.astype(np.float32))[None, None], 2 * clearance + 1, 1, clearance)[0, 0].numpy() > 0
    marks = []
    for part in _components((local > threshold) & ~near):
        if part.sum() >= min_area:
            ys, xs = np.nonzero(part)
            marks.append((int(part.sum()), ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)))
    return sorted(marks, key=lambda m: -m[0])


def invented_marks(round_trips, originals, masks, clearance: int = 4, threshold: float = 8.0, min_area: int = 10) -> dict:
    """What a VAE round trip adds away from the objects, by kind: ``{"coloured": [N], "darker": [N], "lighter": [N]}``,
    each a bool tensor saying which pictures got such a mark.

    ``round_trips``, ``originals`` ``[N, 3, H, W]`` in [-1, 1]; ``masks`` ``[N, objects, H, W]`` (the renderer's). Where
    the original is known, any patch the round trip adds is an invention, whatever its colour, so unlike
    :func:`stray_marks` (which must leave the world's grey shadows and patterns alone) grey counts too: each pixel's
    difference is split into its grey part (the mean of R, G and B: darker or lighter) and what is left (coloured).
    A mark is a patch of ``min_area`` pixels or more where one part, averaged over 5×5 pixels, passes ``threshold``
    grey levels, more than ``clearance`` pixels from every object and 3 from the picture's edge (where decoders err).
    Meant for plain backgrounds: on a textured one, the texture a decoder loses counts as marks too.
    """
    away = _away_from_objects(masks, clearance)
    difference = (round_trips.float() - originals.float()) * 127.5  # [N, 3, H, W] grey levels
    grey = difference.mean(1)  # [N, H, W]
    parts = {"coloured": (difference - grey[:, None]).norm(dim=1), "darker": -grey, "lighter": grey}
    found = {}
    for kind, size in parts.items():
        local = _patch_mean(size)
        found[kind] = torch.tensor([any(part.sum() >= min_area for part in _components(((local[i] > threshold) & away[i]).cpu().numpy()))
                                    for i in range(len(originals))])
    return found


def darkest_addition(round_trips, originals, masks, clearance: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """How much darker a round trip draws its darkest 5×5 patch more than ``clearance`` pixels from every object (and 3
    from the edge), in grey levels: ``([N] levels, [N, 2] (row, column) of the patch's centre)``. The faint marks
    below :func:`invented_marks`' threshold, measured rather than counted (same arguments). A picture with no pixel
    that far from its objects gets ``-inf`` (at row 0, column 0)."""
    darker = _patch_mean(-(round_trips.float() - originals.float()).mean(1) * 127.5)  # [N, H, W]
    darker = darker.masked_fill(~_away_from_objects(masks, clearance), float("-inf")).flatten(1)
    levels, where = darker.max(1)
    return levels, torch.stack([where // originals.shape[-1], where % originals.shape[-1]], dim=1)


def _away_from_objects(masks, clearance: int) -> torch.Tensor:
    """``[N, H, W]`` True more than ``clearance`` pixels from every object of ``masks [N, objects, H, W]`` and 3 from the
    picture's edge (where decoders err on any picture)."""
    covered = masks.sum(1, keepdim=True).clamp(max=1)  # [N, 1, H, W]
    away = F.max_pool2d(covered.float(), 2 * clearance + 1, 1, clearance)[:, 0] == 0  # [N, H, W]
    away[:, :3] = away[:, -3:] = away[:, :, :3] = away[:, :, -3:] = False
    return away


def _patch_mean(size: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` averaged over each pixel's 5×5 neighbourhood (what a mark must pass, not one odd pixel)."""
    return F.avg_pool2d(size[:, None], 5, 1, 2, count_include_pad=False)[:, 0]


def _classify_2(part: np.ndarray) -> str:
    """A version-2 shape: the filled outline decides, and a hole of the right size makes a circle a ring."""
    filled = fill_holes(part)
    shape = classify_shape(filled, [s for s in SHAPES_2 if s != "ring"])
    hole = 1 - part.sum() / filled.sum()
    return "ring" if shape == "circle" and 0.12 <= hole <= 0.5 else shape

"""Random scenes of the world and their captions: what a training example or a test prompt describes."""

import re
from dataclasses import dataclass, field

import numpy as np

from .vocabulary import BACKGROUNDS, COLORS, HELD_OUT, PAIR_FORMS, PAIRS, POSITION_PHRASES, POSITIONS, SHAPES, SINGLE_FORMS, SIZE_WORDS, SIZES


@dataclass
class WorldObject:
    """One object: its words and where it was drawn (``center`` as fractions of the image side)."""

    color: str
    shape: str
    size: str
    position: str
    center: tuple[float, float]


@dataclass
class Scene:
    """A picture of the world: 1–2 objects on a background, and the caption that describes it."""

    objects: list[WorldObject]
    background: str
    gradient: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (strength in RGB levels, direction x, direction y)
    caption: str = ""
    mentioned: dict = field(default_factory=dict)  # which optional attributes the caption states


def _pick(rng, options):
    return options[rng.integers(len(options))]


def sample_scene(rng: np.random.Generator, held_out: bool = False, n_objects: int | None = None, two_objects: float = 0.3) -> Scene:
    """Draw a random scene and caption it.

    Args:
        rng: the random source (``np.random.default_rng(seed)``), so a seed fixes the whole scene.
        held_out: ``False`` never draws a held-out colour+shape pair (training data); ``True`` draws
            only held-out pairs for the one-object scenes (evaluation).
        n_objects: 1 or 2; ``None`` picks 2 with probability ``two_objects``, else 1.
        two_objects: how often ``n_objects=None`` draws two objects (default 30%).
    """
    n_objects = n_objects or (1 if rng.random() < 1 - two_objects else 2)
    background = _pick(rng, list(BACKGROUNDS))
    positions = [_pick(rng, list(POSITIONS))] if n_objects == 1 else list(_pick(rng, PAIRS))
    if n_objects == 2 and rng.random() < 0.5:
        positions.reverse()
    objects = []
    for position in positions:
        while True:
            color, shape = _pick(rng, list(COLORS)), _pick(rng, SHAPES)
            is_held_out = (color, shape) in HELD_OUT
            if color == background == "white":
                continue
            if is_held_out == (held_out and n_objects == 1) or (held_out and n_objects == 2 and not is_held_out):
                break
        size = _pick(rng, list(SIZES))
        cx, cy = POSITIONS[position]
        jitter = rng.uniform(-0.04, 0.04, size=2)
        objects.append(WorldObject(color, shape, size, position, (cx + jitter[0], cy + jitter[1])))
    gradient = (float(rng.uniform(0, 30)) if rng.random() < 0.6 else 0.0, *rng.normal(size=2).tolist())
    scene = Scene(objects, background, gradient)
    scene.caption = caption(scene, rng)
    return scene


def _object_phrase(obj: WorldObject, rng, with_size: bool) -> str:
    words = ([_pick(rng, SIZE_WORDS[obj.size])] if with_size else []) + [obj.color, obj.shape]
    return " ".join(words)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption for ``scene`` in one of the world's sentence forms (sizes are said half the time)."""
    return re.sub(r"\ba (?=[aeiou])", "an ", _caption(scene, rng))  # "a orange" → "an orange"


def _caption(scene: Scene, rng: np.random.Generator) -> str:
    with_size = rng.random() < 0.5
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        form = _pick(rng, SINGLE_FORMS)
        scene.mentioned = {"size": with_size, "position": "{where}" in form, "background": "{bg}" in form}
        return form.format(obj=_object_phrase(obj, rng, with_size), where=_pick(rng, POSITION_PHRASES[obj.position]), bg=scene.background)
    a, b = scene.objects
    form = _pick(rng, PAIR_FORMS)
    scene.mentioned = {"size": with_size, "position": True, "background": "{bg}" in form}
    return form.format(obj1=_object_phrase(a, rng, with_size), where1=_pick(rng, POSITION_PHRASES[a.position]),
                       obj2=_object_phrase(b, rng, with_size), where2=_pick(rng, POSITION_PHRASES[b.position]), bg=scene.background)


def sample_scenes(seed, n: int, held_out: bool = False, n_objects: int | None = None, two_objects: float = 0.3) -> list[Scene]:
    """``n`` scenes, the same ones for the same ``seed`` (an int or a sequence of ints, e.g. ``[run, step]``)."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, held_out, n_objects, two_objects) for _ in range(n)]

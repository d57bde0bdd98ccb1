"""Random scenes of the world and their captions: what a training example or a test prompt describes."""

import re
from dataclasses import dataclass, field

import numpy as np

from .vocabulary import (BACKGROUNDS, COLORS, HELD_OUT, MAX_OBJECTS_2, PAIR_FORMS, PAIRS, PATTERNS, POSITION_PHRASES, POSITIONS, SHAPES,
                         SHAPES_2, SINGLE_FORMS, SIZE_WORDS, SIZE_WORDS_2, SIZES, SIZES_2, STYLES)


@dataclass
class WorldObject:
    """One object: its words and where it was drawn (``center`` as fractions of the image side)."""

    color: str
    shape: str
    size: str
    position: str
    center: tuple[float, float]
    said: tuple[str, ...] | None = None  # version 2: what the caption says of it ("shape", "color", …); () = not mentioned
    texture: tuple[float, ...] = ()  # version 2, painting style: brush-stroke direction and phases


@dataclass
class Scene:
    """A picture of the world: 1–2 objects on a background, and the caption that describes it."""

    objects: list[WorldObject]
    background: str
    gradient: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (strength in RGB levels, direction x, direction y)
    caption: str = ""
    mentioned: dict = field(default_factory=dict)  # which optional attributes the caption states
    pattern: str = "plain"  # version 2: the background's pattern (see vocabulary.PATTERNS) and its parameters
    pattern_params: tuple[float, ...] = ()
    style: str = "flat"  # version 2: how the objects are drawn (see vocabulary.STYLES)
    version: int = 1

    @property
    def named(self) -> list[WorldObject]:
        """The objects the caption mentions (in version 1, all of them)."""
        return [o for o in self.objects if o.said is None or o.said]



def with_articles(text: str) -> str:
    """English's article before a vowel: ``"a orange star"`` → ``"an orange star"`` (every caption goes through this)."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)

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
    return with_articles(_caption(scene, rng))


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


def sample_scenes(seed, n: int, held_out: bool = False, n_objects: int | None = None, two_objects: float | None = None,
                  version: int = 1, name_backgrounds: float | None = None, name_all: float | None = None) -> list[Scene]:
    """``n`` scenes, the same ones for the same ``seed`` (an int or a sequence of ints, e.g. ``[run, step]``).

    ``version=2`` draws the richer world of tiny-sd 2 (:func:`sample_scene_2`).
    ``two_objects`` practises binding: in version 1 it is the share of two-object scenes (default 30%);
    in version 2 it is the share of scenes drawn like the pair prompts instead, two objects that the
    caption names both with colour and place (default none: the world's own mix).
    ``name_backgrounds`` (version 2): the share of scenes whose caption surely names the background's colour (default
    none: the world's own 40% that name the colour, the pattern or both), to practise "on a white background".
    ``name_all`` (version 2): the share of scenes whose caption names every object (default none: the world's own
    captions name a random number of them, so 39% of its scenes hold an object the caption leaves out; a model taught
    on them may add a faint unnamed one to any prompt: the ghost smudges).
    """
    if version not in (1, 2):
        raise ValueError(f"the world has versions 1 and 2 (got {version!r})")
    rng = np.random.default_rng(seed)
    if version == 2:
        scenes = []
        for _ in range(n):
            # no draw at all without a share, so the default mix stays the same scenes for the same seed
            practice = bool(two_objects) and rng.random() < two_objects
            background = bool(name_backgrounds) and rng.random() < name_backgrounds
            every = practice or (bool(name_all) and rng.random() < name_all)
            scenes.append(sample_scene_2(rng, held_out, 2 if practice else n_objects, say_all=every, say_background=background))
        return scenes
    return [sample_scene(rng, held_out, n_objects, 0.3 if two_objects is None else two_objects) for _ in range(n)]


# ---- version 2 -------------------------------------------------------------------------------------------

def _colour_and_shape(rng, background: str, held_out: bool) -> tuple[str, str]:
    """A colour and shape that show on ``background``; held-out pairs only when asked for, never otherwise."""
    while True:
        color, shape = _pick(rng, list(COLORS)), _pick(rng, SHAPES_2)
        if color == background == "white":
            continue
        if ((color, shape) in HELD_OUT) == held_out:
            return color, shape


def sample_scene_2(rng: np.random.Generator, held_out: bool = False, n_objects: int | None = None, say_all: bool = False,
                   say_background: bool = False) -> Scene:
    """Draw a version-2 scene: 1–4 objects that do not touch, a patterned background, a style, and a caption
    that names some of the objects and some of their attributes (see :func:`caption_2`).

    ``held_out=True`` makes the first object a held-out colour+shape pair (for evaluation); training
    scenes never hold one, mentioned or not.
    """
    n = n_objects or int(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15]))
    n = min(n, MAX_OBJECTS_2)
    background = _pick(rng, list(BACKGROUNDS))
    objects = []
    for k in range(n):
        for _ in range(100):  # a free place for it: objects never overlap, so each one's truth is clear
            size, position = _pick(rng, list(SIZES_2)), _pick(rng, list(POSITIONS))
            cx, cy = np.add(POSITIONS[position], rng.uniform(-0.04, 0.04, size=2))
            if all(np.hypot(cx - o.center[0], cy - o.center[1]) >= SIZES_2[size] + SIZES_2[o.size] + 0.03 for o in objects):
                break
        else:
            break
        color, shape = _colour_and_shape(rng, background, held_out and k == 0)
        texture = (float(rng.uniform(0, np.pi)), *rng.uniform(0, 2 * np.pi, size=3).tolist())
        objects.append(WorldObject(color, shape, size, position, (float(cx), float(cy)), said=(), texture=texture))
    pattern = _pick(rng, list(PATTERNS))
    # period (fraction of the side), angle, and phases / frequencies for the pattern, all drawn here so that
    # rendering is a pure function of the scene
    params = (float(rng.uniform(0.06, 0.12)), float(rng.uniform(0, np.pi)), *rng.uniform(0, 2 * np.pi, size=6).tolist(),
              *rng.uniform(6, 22, size=6).tolist(), float(rng.uniform(12, 30)))
    style = str(rng.choice(list(STYLES), p=[0.4, 0.2, 0.2, 0.2]))
    scene = Scene(objects, background, caption="", pattern=pattern, pattern_params=params, style=style, version=2)
    scene.caption = caption_2(scene, rng, say_all, say_background)
    return scene


def caption_2(scene: Scene, rng: np.random.Generator, say_all: bool = False, say_background: bool = False) -> str:
    """A caption that says only part of what ``scene`` shows, and records what it said.

    It names 1 to all of the objects; of each named object always its shape, its colour 80% of the time,
    its place 60%, its size 35%; the style (when not flat) 60% of the time; the background 40%. So "a heart"
    and "a painting of a big purple heart at the top left and a small orange star on a striped
    background" are both captions. Each object's ``said`` lists what was said of it (``()`` = not mentioned).
    ``say_all=True`` names every object with its colour and place, as the pair prompts of the evaluation do.
    ``say_background=True`` always names the background's colour (and its pattern half of the time).
    """
    k = len(scene.objects) if say_all else int(rng.integers(1, len(scene.objects) + 1))
    named = sorted(rng.choice(len(scene.objects), size=k, replace=False).tolist())
    phrases = []
    for i in named:
        obj, said, words = scene.objects[i], ["shape"], []
        if rng.random() < 0.35:
            words.append(_pick(rng, SIZE_WORDS_2[obj.size]))
            said.append("size")
        if rng.random() < 0.8 or say_all:
            words.append(obj.color)
            said.append("color")
        phrase = "a " + " ".join([*words, obj.shape])
        if rng.random() < 0.6 or say_all:
            phrase += " " + _pick(rng, POSITION_PHRASES[obj.position])
            said.append("position")
        obj.said = tuple(said)
        phrases.append(phrase)
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    scene.mentioned = {"style": False, "background": False}
    if (scene.style != "flat" and rng.random() < 0.6) or (scene.style == "flat" and rng.random() < 0.1):
        text = f"{STYLES[scene.style]} {text}"
        scene.mentioned["style"] = True
    if say_background or rng.random() < 0.4:
        say = int(rng.integers(2)) * 2 if say_background else int(rng.integers(3))  # 0: the colour, 1: the pattern, 2: both
        words = [PATTERNS[scene.pattern]] * (say != 0) + [scene.background] * (say != 1)
        text += f" on a {' '.join(words)} background"
        scene.mentioned["background"] = True
    return with_articles(text)

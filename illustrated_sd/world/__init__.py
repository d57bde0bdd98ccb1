"""A synthetic captioned world of coloured shapes, where every caption's ground truth is known.

    scenes = sample_scenes(seed=0, n=4)
    images, masks = render(scenes)          # [4, 3, 128, 128] in [-1, 1], [4, 2, 128, 128]
    scenes[0].caption                       # e.g. "a small red circle on the left"

Version 2 (``sample_scenes(seed, n, version=2)``, tiny-sd 2's world): 1–4 objects of nine shapes on
patterned backgrounds, drawn flat, as outlines, as photos or as paintings, with captions that name
only some of them ("a heart" over a scene that also holds a small green square).
"""

from .render import inside, render, as_uint8
from .scenes import Scene, WorldObject, caption, caption_2, sample_scene, sample_scene_2, sample_scenes
from .vocabulary import BACKGROUNDS, COLORS, HELD_OUT, PATTERNS, POSITIONS, SHAPES, SHAPES_2, SIZES, SIZES_2, STYLES, UNSEEN_SHAPES, known_words, known_words_2

__all__ = ["BACKGROUNDS", "COLORS", "HELD_OUT", "PATTERNS", "POSITIONS", "SHAPES", "SHAPES_2", "SIZES", "SIZES_2", "STYLES", "Scene", "UNSEEN_SHAPES",
           "WorldObject", "as_uint8", "caption", "caption_2", "inside", "known_words", "known_words_2", "render", "sample_scene", "sample_scene_2",
           "sample_scenes"]

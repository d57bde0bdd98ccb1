"""A synthetic captioned world of coloured shapes, where every caption's ground truth is known.

    scenes = sample_scenes(seed=0, n=4)
    images, masks = render(scenes)          # [4, 3, 128, 128] in [-1, 1], [4, 2, 128, 128]
    scenes[0].caption                       # e.g. "a small red circle on the left"
"""

from .render import inside, render
from .scenes import Scene, WorldObject, caption, sample_scene, sample_scenes
from .vocabulary import BACKGROUNDS, COLORS, HELD_OUT, POSITIONS, SHAPES, SIZES, known_words

__all__ = ["BACKGROUNDS", "COLORS", "HELD_OUT", "POSITIONS", "SHAPES", "SIZES", "Scene", "WorldObject", "caption",
           "inside", "known_words", "render", "sample_scene", "sample_scenes"]

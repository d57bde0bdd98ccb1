"""The words of the synthetic world, and the sentence forms its captions are written in."""

# RGB of each object colour; far apart so that a simple detector can tell them apart.
COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (45, 85, 225), "yellow": (240, 210, 40),
    "purple": (145, 60, 190), "orange": (245, 135, 25), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "heart")
# Radius of an object as a fraction of the image side. "large" is a synonym for "big".
SIZES = {"small": 0.10, "big": 0.19}
SIZE_WORDS = {"small": ("small",), "big": ("big", "large")}
# Centre of each named position (x, y) as fractions of the image side; y grows downwards.
POSITIONS = {
    "center": (0.5, 0.5), "left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
    "top left": (0.25, 0.25), "top right": (0.75, 0.25), "bottom left": (0.25, 0.75), "bottom right": (0.75, 0.75),
}
POSITION_PHRASES = {
    "center": ("in the center", "in the middle"), "left": ("on the left",), "right": ("on the right",),
    "top": ("at the top",), "bottom": ("at the bottom",),
    "top left": ("in the top left corner", "at the top left"), "top right": ("in the top right corner", "at the top right"),
    "bottom left": ("in the bottom left corner", "at the bottom left"), "bottom right": ("in the bottom right corner", "at the bottom right"),
}
BACKGROUNDS = {"black": (14, 14, 18), "gray": (118, 118, 122), "white": (246, 246, 242), "navy": (22, 30, 78)}
# Pairs of positions two objects take ("a X on the left and a Y on the right").
PAIRS = (("left", "right"), ("top", "bottom"), ("top left", "bottom right"), ("top right", "bottom left"))

# Colour + shape combinations never shown in training, to measure compositional generalisation.
HELD_OUT = (("purple", "star"), ("orange", "heart"), ("green", "triangle"), ("white", "circle"))

# One-object sentence forms. {obj} is "[size] colour shape", {where} a position phrase, {bg} a background.
SINGLE_FORMS = (
    "a {obj}",
    "a {obj} {where}",
    "a photo of a {obj}",
    "a photo of a {obj} {where}",
    "a {obj} {where} on a {bg} background",
    "a {obj} on a {bg} background",
    "there is a {obj} {where}",
    "a picture of a {obj} {where}",
    "{bg} background with a {obj} {where}",
    "a drawing of a {obj} {where} on a {bg} background",
)
PAIR_FORMS = (
    "a {obj1} {where1} and a {obj2} {where2}",
    "a {obj1} {where1} and a {obj2} {where2} on a {bg} background",
    "a photo of a {obj1} {where1} and a {obj2} {where2}",
)


def known_words() -> list[str]:
    """Every word a caption of the world can contain, sorted."""
    words = set()
    for form in SINGLE_FORMS + PAIR_FORMS:
        words |= {w for w in form.replace("{", " {").split() if not w.startswith("{")}
    words |= {"an"} | set(COLORS) | set(SHAPES) | {w for ws in SIZE_WORDS.values() for w in ws} | set(BACKGROUNDS)
    words |= {w for phrases in POSITION_PHRASES.values() for p in phrases for w in p.split()}
    return sorted(words)


# ---- Version 2 (tiny-sd 2): pictures that their captions describe only in part -------------------------
# Real Stable Diffusion learned from LAION captions that name a few things in a picture and leave the rest
# open; that is what gives classifier-free guidance something to do. A version-2 scene holds 1–4 objects on a
# patterned background, drawn in one of four styles, and its caption may name only some of the objects and
# only some of their attributes. Version 1 above stays as it was (the first tiny-sd was trained on it).
SHAPES_2 = SHAPES + ("ring", "cross", "moon", "diamond")
SIZES_2 = {"small": 0.08, "medium": 0.12, "big": 0.18}
SIZE_WORDS_2 = {"small": ("small", "tiny"), "medium": ("medium",), "big": ("big", "large")}
# Background patterns are grey-level offsets on the background colour (never saturated, so objects stand out
# and the detector can still tell them apart); the word is how a caption says it.
PATTERNS = {"plain": "plain", "gradient": "shaded", "stripes": "striped", "dots": "dotted", "noise": "noisy"}
# How an object is drawn, and the caption prefix that names it ("a photo of …"); "flat" is the default look.
STYLES = {"flat": "a picture of", "drawing": "a drawing of", "photo": "a photo of", "painting": "a painting of"}
MAX_OBJECTS_2 = 4
# Shapes the renderer and the detector know but no training scene ever holds: new concepts for the model to
# learn afterwards (notebook 09, textual inversion). A house is a square body under a wider triangular roof.
UNSEEN_SHAPES = ("house",)


def known_words_2() -> list[str]:
    """Every word a version-2 caption can contain, sorted."""
    words = {"a", "an", "and", "on", "background"} | set(COLORS) | set(SHAPES_2) | set(BACKGROUNDS)
    words |= {w for ws in SIZE_WORDS_2.values() for w in ws} | set(PATTERNS.values())
    words |= {w for prefix in STYLES.values() for w in prefix.split()}
    words |= {w for phrases in POSITION_PHRASES.values() for p in phrases for w in p.split()}
    return sorted(words)

"""Text in figures: a prompt is words, never maths.

matplotlib reads anything between two ``$`` as mathtext, so the prompt ``"$5 and $6"`` would print as
"5and6" in italics, and ``"a red circle $\\frac$"`` would fail only once the figure is drawn, after the
whole generation. Every prompt, token or caption that goes into a figure passes through :func:`literal`.
"""


def literal(text) -> str:
    """``text`` as matplotlib must print it, letter for letter: every ``$`` escaped (``\\$``)."""
    return str(text).replace("$", r"\$")


def quoted(text: str) -> str:
    """A prompt in quotes, as a title shows it: ``repr(text)``, made literal."""
    return literal(repr(text))

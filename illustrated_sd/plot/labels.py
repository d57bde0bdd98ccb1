"""Text in figures: a prompt is words, never maths.

matplotlib reads anything between two ``$`` as mathtext, so the prompt ``"$5 and $6"`` would print as
"5and6" in italics, and ``"a red circle $\\frac$"`` would fail only once the figure is drawn, after the
whole generation. Every prompt, token or caption that goes into a figure passes through :func:`literal`.
"""


def literal(text) -> str:
    """``text`` as matplotlib must print it, letter for letter: every ``$`` escaped (``\\$``)."""
    return str(text).replace("$", r"\$")


def step_label(step: int, num_steps: int) -> str:
    """Which denoising step this is, counted from 0 as the trace's tensors are indexed and as every figure's titles count
    (``trace.pred_x0[0]`` is "step 0"): ``step_label(12, 25)`` → ``"step 12 of steps 0–24"``. The explorer page says the
    same in JavaScript."""
    return f"step {step} of steps 0–{num_steps - 1}"


def quoted(text: str) -> str:
    """A prompt in quotes, as a title shows it: ``repr(text)``, made literal."""
    return literal(repr(text))

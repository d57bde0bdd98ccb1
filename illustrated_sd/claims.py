"""Sentences about outputs, checked by the outputs: the course's rule that words and pictures never disagree.

A notebook states something about what a cell printed or drew ("the swap keeps the layout", "most of the word's
attention lands in the left half"). Numbers move when a model is retrained or a sampler changes, and a sentence
fixed by hand goes stale. So each such sentence gets a check beside it:

    claim("most of <house>'s attention lands in the left half", share > 0.5, share=share)

prints ``✓ most of <house>'s attention lands in the left half (share 0.93)``, and when the output stops supporting
the sentence it raises :class:`ClaimFailed`, which fails the notebook's run (the tests execute every notebook).

After a model is retrained, many sentences may need rewriting at once. With the environment variable
``ISD_CLAIMS=survey`` a failing claim prints ``✗ …`` and the run goes on, so one run lists every sentence to revisit:

    ISD_CLAIMS=survey python scripts/run_notebooks.py notebooks/*.ipynb
"""

import math
import numbers
import os


class ClaimFailed(AssertionError):
    """A sentence of the course no longer holds for the output it describes: rewrite the sentence or fix the output."""


def claim(sentence: str, holds, **numbers_) -> None:
    """Check ``sentence`` against ``holds`` (a bool computed from the output); print ✓ with ``numbers_``, or raise.

    Args:
        sentence: the claim as the notebook states it.
        holds: whether the output supports it (a Python or numpy bool, or a one-element tensor).
        numbers_: the measured values the check used, printed beside it (``name=value``).
    Raises:
        ClaimFailed: naming the sentence and the numbers, when ``holds`` is false (unless ``ISD_CLAIMS=survey``:
            then it prints the same message and returns).
    Example:
        >>> claim("the swap keeps the layout", swapped < plain, swapped=swapped, plain=plain)
    """
    if not isinstance(sentence, str) or not sentence.strip():
        raise TypeError("claim's sentence must be the words the notebook states, e.g. claim('the loss falls', last < first)")
    if hasattr(holds, "item"):
        holds = holds.item()
    if not isinstance(holds, bool):
        raise TypeError(f"claim takes a bool computed from the output (got {holds!r}); e.g. claim('…', share > 0.5)")
    shown = ", ".join(f"{name} {_number(value)}" for name, value in numbers_.items())
    line = f"{sentence} ({shown})" if shown else sentence
    if not holds:
        message = f"✗ no longer true: {line}. The output changed; rewrite the sentence to say what it shows, or fix the output"
        if os.environ.get("ISD_CLAIMS") == "survey":  # list every stale sentence in one run, fail none
            print(message)
            return
        raise ClaimFailed(message)
    print(f"✓ {line}")


def _number(value) -> str:
    """A measured value as a sentence shows it: 3 significant digits for reals, also inside lists and dicts."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_number(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)) and math.isfinite(value):
        return f"{value:.3g}"
    return str(value)

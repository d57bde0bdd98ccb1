"""Checking what a user passes, at the public boundary, with the fix in the message.

Every public entry point (the pipeline, the Trace, the plots, the command lines) refuses bad input
here, before any expensive work, with one line that says what was wrong and what to pass instead.
numpy's integers and floats are welcome wherever Python's are (``np.int64(5)`` is a fine seed), and
come back as plain Python numbers, so that they can be written to JSON later.
"""

import argparse
import math
import numbers
import sys

import torch


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that points at the first caller outside this package.

    A warning about a prompt should name the line of the notebook or script that passed it, however many of
    the package's own functions it went through on the way (a batch goes through more than one prompt does).
    Call it from the function that warns: ``warnings.warn(message, stacklevel=checks.user_stacklevel())``.
    """
    frame, level = sys._getframe(1), 1  # level 1: the function that warns
    # (torch.no_grad() as a decorator puts a wrapper of torch's between our functions: not the user's either)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("illustrated_sd", "torch.utils._contextlib")):
        frame, level = frame.f_back, level + 1
    return level


def whole_number(name: str, value, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> int:
    """``value`` as a Python ``int``; ``TypeError`` unless it is an integer (not a bool, not 2.7), ``ValueError`` out of range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            value = int(value)  # 500.0 means 500; 500.7 is refused below
        else:
            raise TypeError(f"{name} must be a whole number (got {value!r}){_hint(hint)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_range(minimum, maximum)} (got {value}){_hint(hint)}")
    return value


def seed(value, name: str = "seed", hint: str = "any whole number, e.g. 0") -> int:
    """A seed ``torch.Generator.manual_seed`` accepts: a whole number from −2⁶³ to 2⁶⁴ − 1."""
    return whole_number(name, value, minimum=-(2**63), maximum=2**64 - 1, hint=hint)


def is_int(value) -> bool:
    """Whether ``value`` is an integer and not a bool (JSON's ``true`` is not a seed)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """Whether ``value`` is a real, finite number and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def image_side(side: str, size, multiple: int, default: int, why: str = "") -> int:
    """An image's ``height`` or ``width`` in pixels: ``default`` for ``None``, else a whole multiple of ``multiple``
    (the VAE's factor, or the VAE's times the patch's); ``ValueError`` naming the two nearest sizes otherwise."""
    size = default if size is None else size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < multiple or size % multiple:
        near = int(size) if isinstance(size, numbers.Real) and not isinstance(size, bool) and math.isfinite(size) else default
        lower = max(multiple, near // multiple * multiple)
        raise ValueError(f"{side} must be a multiple of {multiple}{why}, at least {multiple} (got {size!r}); try {lower} or {lower + multiple}")
    return int(size)


def real_number(name: str, value, minimum: float | None = None, maximum: float | None = None, hint: str = "") -> float:
    """``value`` as a finite Python ``float``; ``TypeError`` for non-numbers, ``ValueError`` for NaN, ±inf or out of range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number (got {value!r}){_hint(hint)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (got {value}){_hint(hint)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_range(minimum, maximum)} (got {value:g}){_hint(hint)}")
    return value


def text(name: str, value, allow_none: bool = False, hint: str = "") -> str | None:
    """``value`` if it is a string (or ``None`` when allowed); ``TypeError`` otherwise."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string (got {type(value).__name__}){_hint(hint)}")
    return value


def flag(name: str, value) -> bool:
    """``value`` if it is a bool; ``TypeError`` otherwise (``"yes"`` is not ``True``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False (got {value!r})")
    return value


def step_index(value, num_steps: int, what: str = "step") -> int:
    """One index into ``num_steps`` recorded steps, Python style (``-1`` = the last); ``ValueError`` naming the range."""
    step = whole_number(what, value)
    if not -num_steps <= step < num_steps:
        raise ValueError(f"{what} {step} does not exist: this trace has {num_steps} steps, 0–{num_steps - 1} (or -1 for the last)")
    return step % num_steps


def step_indices(value, num_steps: int) -> list[int] | slice:
    """``None`` (all steps), one step, or a non-empty list of steps, checked against ``num_steps``."""
    if value is None:
        return slice(None)
    if hasattr(value, "tolist"):  # a numpy array or tensor, or a numpy scalar
        value = value.tolist()
    if isinstance(value, (list, tuple, range)):
        steps = [step_index(s, num_steps) for s in value]
        if not steps:
            raise ValueError("step is an empty list; pass None for the mean over all steps, or at least one step")
        return steps
    return [step_index(value, num_steps)]


def float_dtype(name: str, value) -> torch.dtype:
    """A floating-point ``torch.dtype``: maps are probabilities, and an integer dtype would round them all to 0."""
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch dtype such as torch.float16 (got {value!r})")
    if not value.is_floating_point:
        raise ValueError(f"{name} must be a floating-point dtype (got {value}): attention probabilities in [0, 1] would "
                         "round to 0; use torch.float16, torch.bfloat16 or torch.float32")
    return value


def _range(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"between {minimum} and {maximum}"
    return f"≥ {minimum}" if minimum is not None else f"≤ {maximum}"


def _hint(hint: str) -> str:
    return f"; {hint}" if hint else ""


def device(name) -> torch.device:
    """``name`` as a ``torch.device`` that exists on this machine, or ``ValueError`` saying what to use instead."""
    if isinstance(name, torch.device):
        name = str(name)
    try:
        found = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {name!r} is not a device torch knows ({err}); use cpu, cuda, cuda:0 or mps") from None
    if found.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA GPU visible"
            raise ValueError(f"device {name}: CUDA is not available here ({build}); use device cpu")
        if found.index is not None and found.index >= torch.cuda.device_count():
            raise ValueError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), cuda:0–cuda:{torch.cuda.device_count() - 1}")
    elif found.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name}: Apple's MPS is not available here; use device cpu")
    return found


# ---- argparse types: the same checks for the command lines, as one clean error line from argparse --------

def _positive(x: float) -> float:
    if x <= 0:
        raise ValueError(f"must be > 0 (got {x:g})")
    return x


def _arg(check):
    def parse(string: str):
        try:
            number = float(string) if any(c in string for c in ".eEn") else int(string)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{string!r} is not a number")
        try:
            return check(number)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err).replace("value ", ""))
    return parse


positive_int = _arg(lambda n: whole_number("value", n, minimum=1))
natural_int = _arg(lambda n: whole_number("value", n, minimum=0))
any_int = _arg(lambda n: whole_number("value", n))
positive_float = _arg(lambda n: _positive(real_number("value", n)))
finite_float = _arg(lambda n: real_number("value", n))

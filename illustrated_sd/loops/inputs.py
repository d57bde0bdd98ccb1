"""Stage 1 of a generation: check what the user passed, before any work, with the fix in every message.

Kept apart from the loop so that ``IllustratedPipeline.__call__`` reads like the generation it is; the
checks come back as one small :class:`Settings` of plain Python numbers (numpy's integers and floats are
accepted on the way in).
"""

import numbers
import re
import warnings
from dataclasses import dataclass

import torch
from PIL import Image
from diffusers import PNDMScheduler

from .. import checks
from ..recording.recorders import RecordOptions


@dataclass(frozen=True)
class Settings:
    """One generation's checked settings: steps ``S``, guidance ``s``, seed (``None`` when a generator was
    given), image size in pixels, DDIM's η, and the recording options."""

    num_inference_steps: int
    guidance_scale: float
    seed: int | None
    height: int
    width: int
    eta: float
    record: RecordOptions


def check_inputs(pipe, prompt, num_inference_steps, guidance_scale, seed, generator, height, width, negative_prompt,
                 eta, record, progress) -> Settings:
    """Refuse bad input to ``pipe`` (an ``IllustratedPipeline``) before any work; return the :class:`Settings`.

    ``height`` and ``width`` ``None`` mean the model's native size; ``record`` ``None`` means ``pipe.record``.
    """
    checks.text("prompt", prompt, hint="a string, or a list of strings for a batch (one trace each)")
    if not prompt.strip():
        raise ValueError("the prompt is empty; describe the image, e.g. pipe('a red circle on the left')")
    checks.text("negative_prompt", negative_prompt, allow_none=True, hint="None means the empty prompt")
    # a sampler visits a subset of the timesteps the model was trained on: at most all of them
    trained = pipe.scheduler.config.num_train_timesteps
    steps = checks.whole_number("num_inference_steps", num_inference_steps, minimum=1, maximum=trained,
                                hint=f"the scheduler has {trained} timesteps; try 20–50")
    if isinstance(pipe.scheduler, PNDMScheduler) and steps < 4:
        raise ValueError(f"PNDM needs at least 4 steps (got {steps}): its multistep formula starts from 4 earlier "
                         "predictions; use more steps, or a one-step sampler: pipe.set_scheduler('ddim')")
    guidance_scale = checks.real_number("guidance_scale", guidance_scale, hint="7.5 is usual, 1 turns guidance off, 0 is the unconditional model")
    eta = checks.real_number("eta", eta, minimum=0, hint="DDIM's η: 0 is deterministic, 1 adds DDPM's noise")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (got {type(generator).__name__}); or pass seed=")
        if seed not in (None, 0):
            raise ValueError("pass either seed= or generator=, not both")
        seed = None  # the generator's own seed is not known
    elif seed is None:
        raise ValueError("seed is None and no generator was given; pass seed=0 (any integer), or generator=torch.Generator().manual_seed(...)")
    else:
        seed = checks.seed(seed, hint="or pass generator=torch.Generator().manual_seed(...)")
    # the VAE shrinks each side by vae_scale_factor
    sizes = [checks.image_side(side, size, pipe.vae_scale_factor, pipe.default_size) for side, size in (("height", height), ("width", width))]
    if record is not None and not isinstance(record, RecordOptions):
        raise TypeError(f"record must be a RecordOptions (got {record!r}); e.g. record=isd.RecordOptions(per_head=True), "
                        "or RecordOptions(cross_attention=False) to record no maps")
    checks.flag("progress", progress)
    if pipe.known_words:
        said = prompt.lower()
        for token in pipe.tokenizer.get_added_vocab():  # words taught after training (textual inversion) are known too
            said = said.replace(token.lower(), " ")
        unknown = sorted({w for w in re.findall(r"[a-z]+", said) if w not in pipe.known_words})
        if unknown:
            warnings.warn(f"the model never saw {unknown} in training, so it cannot draw them; the words it knows are: "
                          f"{', '.join(sorted(pipe.known_words))}", stacklevel=checks.user_stacklevel())
    if negative_prompt is not None and guidance_scale == 1:
        warnings.warn("negative_prompt is ignored when guidance_scale = 1 (guidance is off)", stacklevel=checks.user_stacklevel())
    return Settings(steps, guidance_scale, seed, sizes[0], sizes[1], eta, record or pipe.record)


def check_image(image, name: str, multiple: int) -> Image.Image:
    """An RGB PIL image whose sides are multiples of ``multiple`` (the VAE's factor, 8), or a clear error.

    Other modes are converted, with a warning.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"{name} must be a PIL.Image (got {type(image).__name__}); open a file with PIL.Image.open(path)")
    if image.mode != "RGB":
        warnings.warn(f"{name} is {image.mode}, not RGB; converting it to RGB", stacklevel=checks.user_stacklevel())
        image = image.convert("RGB")
    m = multiple
    if image.width % m or image.height % m or min(image.size) < m:
        raise ValueError(f"{name} is {image.width}×{image.height}; both sides must be multiples of {m}: "
                         f"resize it, e.g. image.resize(({max(m, image.width // m * m)}, {max(m, image.height // m * m)}))")
    return image


def check_mask(mask, image: Image.Image) -> None:
    """An inpainting mask: a PIL image the size of ``image`` (white = repaint, black = keep)."""
    if not isinstance(mask, Image.Image):
        raise TypeError(f"mask must be a PIL.Image (got {type(mask).__name__}): white = repaint, black = keep")
    if mask.size != image.size:
        raise ValueError(f"mask is {mask.width}×{mask.height} but image is {image.width}×{image.height}; they must match")


def paste_kept(picture: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """``picture`` with the pixels outside ``mask`` (black = keep) put back from ``original``: diffusers' remedy for an
    inpainting whose kept region drifted (``VaeImageProcessor.apply_overlay``, what its inpainting pipeline does with
    ``padding_mask_crop``).

    Latent blending keeps the kept region's *latent* exactly, yet its decoded pixels can move: the VAE decoder reads
    the whole latent at once (above all its GroupNorms, which normalise every feature map by the whole picture's
    statistics: ``lessons.decoder_reach`` measures it), so what is painted in the mask leaks into the rest. Pasting the original pixels back makes the kept region exact; the
    seam sits on the mask's edge. ``picture``, ``original``, ``mask``: PIL images of one size; returns an RGB image.

    Example:
        >>> trace = pipe.inpaint("a green star on the right", start, mask)
        >>> fixed = isd.paste_kept(trace.image, start, mask)
    """
    for name, value in (("picture", picture), ("original", original)):
        if not isinstance(value, Image.Image):
            raise TypeError(f"{name} must be a PIL.Image (got {type(value).__name__}); e.g. paste_kept(trace.image, start, mask)")
    if picture.size != original.size:
        raise ValueError(f"picture is {picture.width}×{picture.height} but original is {original.width}×{original.height}; they must match")
    check_mask(mask, original)
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor().apply_overlay(mask.convert("L"), original.convert("RGB"), picture.convert("RGB")).convert("RGB")


def check_strength(strength, num_inference_steps: int) -> int:
    """How many of the ``num_inference_steps`` timesteps ``strength`` ∈ (0, 1] leaves to visit; refuses values that leave none."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:  # (NaN fails too)
        raise ValueError(f"strength must be in (0, 1] (got {strength!r}); 0.3 keeps the picture, 0.9 mostly redraws it")
    visited = min(int(num_inference_steps * strength), num_inference_steps)
    if visited < 1:
        raise ValueError(f"strength × steps = {strength} × {num_inference_steps} leaves no step to take; "
                         f"raise strength to ≥ {1 / num_inference_steps:.2f} or use more steps")
    return visited

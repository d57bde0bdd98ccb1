"""What a word *causes*: generate with and without it, and compare the difference with its heatmap.

A heatmap says where a word's attention went; the causal map says where the picture changes when the word
is taken out (:class:`~illustrated_sd.edits.Remove`, or a :class:`~illustrated_sd.edits.Reweight` of 0).
Where the two agree, attention explains what the word did; where they differ, the word acted elsewhere
(through the tokens after it, or through the layout of the whole picture).

This module generates (it runs the model twice); plots only read its result.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import checks
from .edits import Remove, Reweight
from .trace import Trace


@dataclass
class CausalMap:
    """The effect of taking ``word`` out of one generation, beside its heatmap.

    Attributes:
        word: the word taken out; how: ``"remove"`` or ``"reweight"`` (its cross-attention alone set to 0).
        base, edited: the traces with and without the word (same seed and settings).
        effect: ``[H, W]`` mean |edited − base| over the RGB channels, in [0, 1]: where the picture changed.
        x0_effect: ``[S, h, w]`` mean |x̂₀ edited − x̂₀ base| over the latent channels at every step: when it changed.
        heatmap: ``[H, W]`` the word's cross-attention in the base generation (all steps and layers), upsampled.
        correlation: Pearson correlation of ``effect`` and ``heatmap`` over the pixels.
        iou: overlap (intersection over union) of the ``top`` share of pixels with the largest effect and the
            ``top`` share with the most attention.
        top: that share (0.1 = the top 10% of pixels).
    """

    word: str
    how: str
    base: Trace
    edited: Trace
    effect: torch.Tensor
    x0_effect: torch.Tensor
    heatmap: torch.Tensor
    correlation: float
    iou: float
    top: float


def top_share(values: torch.Tensor, top: float) -> torch.Tensor:
    """``[H, W]`` bool: the ``top`` share of pixels with the largest ``values`` (ties broken by position)."""
    k = max(1, round(top * values.numel()))
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[values.flatten().argsort(descending=True, stable=True)[:k]] = True
    return mask.view_as(values)


def agreement(effect: torch.Tensor, heatmap: torch.Tensor, top: float = 0.1) -> tuple[float, float]:
    """``(Pearson correlation, IoU of the top share)`` of two ``[H, W]`` maps; correlation is 0 where a map is flat."""
    a, b = effect.flatten().double(), heatmap.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    norm = float(a.norm() * b.norm())
    correlation = float((a @ b) / norm) if norm > 0 else 0.0
    x, y = top_share(effect, top), top_share(heatmap, top)
    return correlation, float((x & y).sum() / (x | y).sum())


def causal_map(pipe, prompt: str, word: str, how: str = "remove", top: float = 0.1, base: Trace | None = None, **kwargs) -> CausalMap:
    """Generate ``prompt`` with and without ``word`` and measure where the picture changed (runs the model twice).

    Args:
        pipe: an ``IllustratedPipeline``.
        word: a word of the prompt (as ``trace.cross_attention`` takes it).
        how: ``"remove"`` (default: the word hidden from the later tokens too, :class:`~illustrated_sd.edits.Remove`)
            or ``"reweight"`` (only its own slot's cross-attention set to 0, as prompt-to-prompt does).
        top: the share of pixels the IoU compares (0 < top < 1).
        base: the generation with the word, if already made (same settings as ``kwargs``); else it is made.
        kwargs: the generation's settings (``seed``, ``num_inference_steps``, ``guidance_scale``, …).
    Returns:
        a :class:`CausalMap` (``effect [H, W]``, ``x0_effect [S, h, w]``, ``heatmap [H, W]``, correlation, IoU).
    Example:
        >>> result = isd.causal_map(pipe, "a red circle on the left", "red", seed=0)
        >>> result.correlation, result.iou
    """
    if how not in ("remove", "reweight"):
        raise ValueError(f"how must be 'remove' or 'reweight' (got {how!r}): 'remove' also hides the word from the tokens "
                         "after it, 'reweight' only silences its own slot")
    top = checks.real_number("top", top, minimum=0, maximum=1, hint="the share of pixels to compare, e.g. 0.1")
    if not 0 < top < 1:
        raise ValueError(f"top must be between 0 and 1, exclusive (got {top:g}); e.g. 0.1 for the top 10% of pixels")
    kwargs.setdefault("progress", False)
    base = base if base is not None else pipe(prompt, **kwargs)
    base.token_index(word)  # a word not in the prompt is refused before the second generation, with the prompt's words
    edit = Remove(word) if how == "remove" else Reweight(word, 0.0)
    edited = pipe(prompt, edits=[edit], **kwargs)
    pixels = lambda trace: torch.from_numpy(np.asarray(trace.image.convert("RGB"), dtype=np.float32) / 255)  # noqa: E731
    effect = (pixels(edited) - pixels(base)).abs().mean(-1)  # [H, W]
    x0_effect = (edited.pred_x0.float() - base.pred_x0.float()).abs().mean(1)  # [S, h, w]
    heat = base.cross_attention(word)
    heatmap = F.interpolate(heat[None, None].float(), size=effect.shape, mode="bilinear", align_corners=False)[0, 0]
    correlation, iou = agreement(effect, heatmap, top)
    return CausalMap(word, how, base, edited, effect, x0_effect, heatmap, correlation, iou, top)

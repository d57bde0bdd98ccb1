"""What a word *causes*: generate with and without it, and compare the difference with its heatmap.

A heatmap says where a word's attention went; the causal map says where the picture changes when the word
is taken out (:class:`~illustrated_sd.recording.edits.Remove`, or a :class:`~illustrated_sd.recording.edits.Reweight` of 0).
Where the two agree, attention explains what the word did; where they differ, the word acted elsewhere
(through the tokens after it, or through the layout of the whole picture).

This module generates (it runs the model twice); plots only read its result.
"""

import inspect
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import checks
from ..recording.edits import Remove, Reweight
from ..loops.inputs import check_inputs
from ..loops.unet import IllustratedPipeline
from ..loops.text import tokenize_prompt
from ..trace.unet import Trace, find_slots, require_trace


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
        how: ``"remove"`` (default: the word hidden from the later tokens too, :class:`~illustrated_sd.recording.edits.Remove`)
            or ``"reweight"`` (only its own slot's cross-attention set to 0, as prompt-to-prompt does).
        top: the share of pixels the IoU compares (0 < top < 1).
        base: the generation with the word, if already made: a full text-to-image trace of ``prompt``, without edits,
            made with the settings of ``kwargs`` (else it is refused, saying which differ); ``None``: it is made here.
        kwargs: the generation's settings (``seed``, ``num_inference_steps``, ``guidance_scale``, …, as ``pipe`` takes
            them); not ``edits`` (causal_map makes its own) nor ``generator`` (both generations need the same noise: a ``seed``).
    Returns:
        a :class:`CausalMap` (``effect [H, W]``, ``x0_effect [S, h, w]``, ``heatmap [H, W]``, correlation, IoU).
    Example:
        >>> result = isd.causal_map(pipe, "a red circle on the left", "red", seed=0)
        >>> result.correlation, result.iou
    """
    # Everything is checked before the first generation: each is a whole denoising loop, and a word or a base
    # found wrong only after it would have cost that loop for nothing.
    if not isinstance(pipe, IllustratedPipeline):
        raise TypeError(f"causal_map takes an IllustratedPipeline (got {type(pipe).__name__}); make one with isd.load_pipeline()")
    if not isinstance(prompt, str):
        raise TypeError(f"causal_map takes one prompt, a string (got {type(prompt).__name__} {prompt!r:.60}); call it once per prompt")
    if how not in ("remove", "reweight"):
        raise ValueError(f"how must be 'remove' or 'reweight' (got {how!r}): 'remove' also hides the word from the tokens "
                         "after it, 'reweight' only silences its own slot")
    top = checks.real_number("top", top, minimum=0, maximum=1, hint="the share of pixels to compare, e.g. 0.1")
    if not 0 < top < 1:
        raise ValueError(f"top must be between 0 and 1, exclusive (got {top:g}); e.g. 0.1 for the top 10% of pixels")
    kwargs.setdefault("progress", False)
    call = generation_settings(pipe, prompt, kwargs)
    with warnings.catch_warnings():  # (what is wrong with the prompt is said once, by the generation itself)
        warnings.simplefilter("ignore")
        settings = check_inputs(pipe, prompt, generator=None, **{name: call[name] for name in (
            "num_inference_steps", "guidance_scale", "seed", "height", "width", "negative_prompt", "eta", "record", "progress")})
        tokenized = tokenize_prompt(pipe.tokenizer, prompt)
    find_slots(prompt, tokenized.tokens, tokenized.words, tokenized.input_ids.shape[-1], word)  # refuses a word not in the prompt
    if base is None:
        if not settings.record.cross_attention:
            raise ValueError("causal_map compares the effect with the word's heatmap, so it records cross-attention; drop "
                             "record=RecordOptions(cross_attention=False)")
        base = pipe(prompt, **kwargs)
    else:
        check_base(pipe, base, prompt, call, settings)
    edit = Remove(word) if how == "remove" else Reweight(word, 0.0)
    edited = pipe(prompt, edits=[edit], **kwargs)
    pixels = lambda trace: torch.from_numpy(np.asarray(trace.image.convert("RGB"), dtype=np.float32) / 255)  # noqa: E731
    effect = (pixels(edited) - pixels(base)).abs().mean(-1)  # [H, W]
    x0_effect = (edited.pred_x0.float() - base.pred_x0.float()).abs().mean(1)  # [S, h, w]
    heat = base.cross_attention(word)
    heatmap = F.interpolate(heat[None, None].float(), size=effect.shape, mode="bilinear", align_corners=False)[0, 0]
    correlation, iou = agreement(effect, heatmap, top)
    return CausalMap(word, how, base, edited, effect, x0_effect, heatmap, correlation, iou, top)


def generation_settings(pipe, prompt: str, kwargs: dict) -> dict:
    """Every argument ``pipe(prompt, **kwargs)`` would see, defaults included; ``TypeError`` for one causal_map cannot pass."""
    refused = {"edits": "causal_map makes its own edit (how='remove' or 'reweight'); drop edits=",
               "generator": "both generations must start from the same noise, and a generator moves on after the first: pass seed= instead",
               "num_images_per_prompt": "causal_map compares one picture with one; call it once per seed"}
    for name, why in refused.items():
        if name in kwargs:
            raise TypeError(f"causal_map does not take {name}=: {why}")
    signature = inspect.signature(pipe.__call__)
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown:
        raise TypeError(f"causal_map passes {unknown} on to pipe(...), which takes no such setting; it takes "
                        f"{[p for p in signature.parameters if p != 'prompt' and p not in refused]}")
    call = signature.bind(prompt, **kwargs)
    call.apply_defaults()
    return call.arguments


def check_base(pipe, base, prompt: str, call: dict, settings) -> None:
    """Refuse a ``base`` that is not the generation ``pipe(prompt, **call)`` would make: the difference from the
    edited one would then measure more than the word. ``settings``: the call's checked :class:`~illustrated_sd.loops.inputs.Settings`."""
    require_trace(base, "causal_map's base", every_step=True)
    if base.prompt != prompt:
        raise ValueError(f"base is the generation of {base.prompt!r}, not of {prompt!r}; pass this prompt's trace, or leave "
                         "base out and causal_map makes it")
    if base.edits:
        raise ValueError(f"base was made with edits ({', '.join(e['kind'] for e in base.edits)}); the causal map compares with "
                         "the plain generation: pass one made without edits, or leave base out")
    if base.mode != "text2img" or call["image"] is not None:
        raise ValueError("base must be a text-to-image generation, and then no image= is passed; with an input image, leave "
                         "base out and causal_map makes both generations from it")
    if not base.attention_maps:
        raise ValueError("base has no cross-attention maps, which the heatmap needs; make it with the default "
                         "RecordOptions(), or leave base out")
    # the UNet calls these settings make, counted on a fresh copy of the sampler: some (PNDM, Heun) make more than
    # num_inference_steps, and the pipeline's own sampler is left alone
    sampler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sampler.set_timesteps(settings.num_inference_steps)
    made = {"model": base.model, "scheduler": base.scheduler, "UNet calls": base.num_steps, "seed": base.seed,
            "guidance_scale": base.guidance_scale, "guidance_rescale": base.guidance_rescale,
            "negative_prompt": base.negative_prompt, "height": base.height, "width": base.width}
    asked = {"model": pipe.name, "scheduler": type(pipe.scheduler).__name__, "UNet calls": len(sampler.timesteps),
             "seed": settings.seed, "guidance_scale": settings.guidance_scale, "guidance_rescale": call["guidance_rescale"],
             "negative_prompt": call["negative_prompt"], "height": settings.height, "width": settings.width}
    differ = [f"{name} {made[name]!r} (here {asked[name]!r})" for name in made if made[name] != asked[name]]
    if differ:
        raise ValueError(f"base was made with other settings: {'; '.join(differ)}. Pass the settings base was made with "
                         "(seed=, num_inference_steps=, guidance_scale=, …), or leave base out")

"""Loss guidance: steer a generation with any differentiable score of the picture it is heading for.

Classifier-free guidance steers with a direction the model predicts itself (ε_text − ε_uncond). fast.ai's
*Stable Diffusion Deep Dive* ("Guidance") steers with a loss a user writes, e.g. "make it bluer". At every
``every``-th step:

1. take the model's current guess of the clean latent, x̂₀ = (x_t − √(1−ᾱ)·ε̂)/√ᾱ (notebook 05),
2. decode it to pixels and score them with the loss,
3. take one gradient step on that guess, x̂₀ ← x̂₀ − scale·∇loss, put x_t back together from it and the same
   noise, x_t = √ᾱ·x̂₀ + √(1−ᾱ)·ε̂, and let the scheduler step as usual.

ε̂ is held fixed, as in fast.ai's notebook, so the gradient runs back through the VAE decoder only, never
through the UNet. For DDIM, step 3 is a nudge of x_t down the loss's gradient, x_t ← x_t − scale·ᾱ·∇ₓₜ loss (with
ε̂ fixed, ∇ₓₜ = ∇ₓ̂₀ / √ᾱ). fast.ai weights its nudge by σ² instead, largest at the noisiest steps. On the embedded
model, in our trials of the unweighted nudge x_t ← x_t − scale·∇ₓₜ loss (mean colour toward blue, every step), a
scale of 10 changed nothing and one of 30 tore the picture apart at the first step, where ᾱ ≈ 0.01 magnifies
∇ₓₜ about 11×; a step on x̂₀ is the same size at every step.

The loop is :meth:`IllustratedPipeline.__call__`'s text-to-image loop without the recorders, plus the nudge; at
``scale = 0`` it makes exactly the pipeline's image.
"""

from dataclasses import dataclass

import torch
from PIL import Image

from .. import checks
from ..loops.inputs import check_inputs
from .latent_space import to_pixels
from ..loops.unet import IllustratedPipeline
from ..loops.sampling import alpha_bars_for, classifier_free_guidance, is_sigma_space, pred_x0
from ..loops.starts import start_from_noise
from ..loops.text import encode_prompt


@dataclass
class LossGuided:
    """One loss-guided generation.

    Attributes:
        image: the final picture.
        losses: ``[S + 1]``: the loss of the picture x̂₀ decodes to at each step (before that step's nudge),
            then the final picture's.
        nudged: the steps at which x̂₀ took a step down the loss (none when ``scale`` is 0).
    """

    image: Image.Image
    losses: torch.Tensor
    nudged: list[int]


def loss_guided(pipe: IllustratedPipeline, prompt: str, loss, scale: float, every: int = 5, steps: int = 20,
                seed: int = 0, guidance_scale: float = 7.5) -> LossGuided:
    """Generate ``prompt`` while pushing the picture down ``loss`` (fast.ai's loss guidance).

    Args:
        pipe: an SD 1/2 :class:`IllustratedPipeline` (the embedded model is one).
        prompt: what to draw.
        loss: ``loss(pixels) → 0-d tensor``, with ``pixels [1, 3, H, W]`` in [0, 1]; smaller is wanted. Compute it
            with torch from ``pixels``, so that it has a gradient, e.g. fast.ai's "bluer":
            ``lambda pixels: (pixels[:, 2] - 0.9).abs().mean()``.
        scale: the size of each gradient step on x̂₀ (≥ 0, in latent units per unit of ∇loss); 0 makes the plain
            pipeline's image.
        every: nudge at steps 0, every, 2·every, … (fast.ai uses 5; 1 nudges at every step).
        steps: denoising steps ``S``. seed: the initial noise, as in ``pipe(..., seed=)``.
        guidance_scale: classifier-free guidance ``s``, as in ``pipe``.
    Returns:
        a :class:`LossGuided`: the image, the loss at each step and of the final picture ``[S + 1]``, the steps nudged.
    Example:
        >>> bluer = loss_guided(pipe, "a circle", lambda px: (px[:, 2] - 0.9).abs().mean(), scale=100, every=1)
        >>> bluer.image, bluer.losses[-1]
    """
    # 1. Check the inputs (the pipeline's own checks, then this function's).
    if not isinstance(pipe, IllustratedPipeline) or pipe.is_sdxl:
        raise TypeError(f"loss_guided drives an SD 1/2 IllustratedPipeline (got {type(pipe).__name__}); "
                        "load one with isd.load_pipeline()")
    if not callable(loss):
        raise TypeError(f"loss must be a function of the pixels (got {loss!r:.60}); "
                        "e.g. loss=lambda pixels: (pixels[:, 2] - 0.9).abs().mean()")
    settings = check_inputs(pipe, prompt, steps, guidance_scale, seed, None, None, None, None, 0.0, None, False)
    scale = checks.real_number("scale", scale, minimum=0, hint="0 turns loss guidance off; try 50–200")
    every = checks.whole_number("every", every, minimum=1, hint="nudge every k-th step, e.g. 5, or 1 for every step")
    s, device, unet, scheduler = settings.guidance_scale, pipe.device, pipe.unet, pipe.scheduler
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)

    # 2. Encode the prompt (with guidance, the empty prompt too: the UNet's batch is [unconditional, prompt]).
    guided = s != 1
    context = encode_prompt(pipe.tokenizer, pipe.text_encoder, prompt, None, guided, device).context

    # 3. Start from pure noise; ᾱ at each timestep turns a prediction into x̂₀.
    start = start_from_noise(pipe, settings.num_inference_steps, settings.height, settings.width, generator, context.dtype)
    latents, timesteps = start.latents, start.timesteps
    step_kwargs = pipe.pipeline.prepare_extra_step_kwargs(generator, settings.eta)
    alpha_bars = alpha_bars_for(scheduler, timesteps).to(device)
    # x_t holds x̂₀ times √ᾱ (x_t = √ᾱ·x̂₀ + √(1−ᾱ)·ε̂), or times 1 for a σ-space sampler (x = x̂₀ + σ·ε̂)
    x0_weight = torch.ones_like(alpha_bars) if is_sigma_space(scheduler) else alpha_bars.sqrt()

    # 4. Denoise: predict, guide, score the picture x̂₀ decodes to (and step it downhill), step the scheduler.
    losses, nudged = [], []
    for i, t in enumerate(timesteps):
        with torch.no_grad():
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            noise_pred = unet(model_input, t, encoder_hidden_states=context, return_dict=False)[0]
            if guided:  # ε̂ = ε_u + s·(ε_c − ε_u)
                noise_pred = classifier_free_guidance(*noise_pred.chunk(2), s)
            x0 = pred_x0(scheduler.scale_model_input(latents, t), noise_pred, alpha_bars[i], scheduler.config.prediction_type)
        nudge = scale > 0 and i % every == 0
        x0.requires_grad_(nudge)
        with torch.set_grad_enabled(nudge):  # the gradient runs through the decoder only, with ε̂ held fixed
            score = check_score(loss(unit_pixels(to_pixels(pipe.vae, x0))), nudge)
        losses.append(score.item())
        if nudge:
            (gradient,) = torch.autograd.grad(score, x0)
            # x̂₀ ← x̂₀ − scale·∇loss, with the same noise: x_t moves by the x̂₀ part it holds
            latents = latents - x0_weight[i] * scale * gradient
            nudged.append(i)
        latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]

    # 5. Decode the final latent as the pipeline does, and score the picture.
    with torch.no_grad():
        decoded = to_pixels(pipe.vae, latents)
        losses.append(check_score(loss(unit_pixels(decoded)), False).item())
    image = pipe.pipeline.image_processor.postprocess(decoded, output_type="pil")[0]
    return LossGuided(image, torch.tensor(losses), nudged)


def unit_pixels(decoded: torch.Tensor) -> torch.Tensor:
    """The VAE decoder's output ``[N, 3, H, W]`` (about [-1, 1]) as the picture's pixels in [0, 1]."""
    return (decoded / 2 + 0.5).clamp(0, 1)


def check_score(score, needs_gradient: bool) -> torch.Tensor:
    """The loss's value, refused (with the fix) unless it is one number computed with torch from the pixels."""
    if not isinstance(score, torch.Tensor) or score.numel() != 1:
        raise TypeError(f"loss must return one number as a torch tensor (got {score!r:.60}); reduce the pixels with "
                        "torch, e.g. (pixels[:, 2] - 0.9).abs().mean()")
    if needs_gradient and not score.requires_grad:
        raise ValueError("loss's value has no gradient with respect to the pixels: compute it from them with torch "
                         "operations (not numpy or .item()), e.g. (pixels[:, 2] - 0.9).abs().mean()")
    return score.reshape(())

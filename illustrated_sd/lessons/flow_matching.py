"""Flow matching by hand: the straight path, its velocity, and the σ schedule a Flux sampler walks (notebook 11).

Training takes a clean latent x₀ and noise ε and picks a point on the *straight line* between them,

    x_σ = (1 − σ)·x₀ + σ·ε,        σ ∈ [0, 1],

whose velocity dx_σ/dσ = ε − x₀ is the same at every point of the line. The transformer learns to name that velocity
from x_σ, σ and the prompt (loss ‖v̂ − (ε − x₀)‖²); sampling walks the line back from σ = 1 with Euler steps
x ← x + (σ_next − σ)·v̂. The path tiny-sd 2 was trained on, x_t = √ᾱ·x₀ + √(1 − ᾱ)·ε (notebook 03), mixes the two
ends with weights whose *squares* add to 1: a quarter circle, not a line.
"""

import copy
import math

import numpy as np
import torch
from diffusers import FluxPipeline
from PIL import Image

from ..loops.flux import schedule_mu
from ..loops.inputs import check_image


def _flux(pipe):
    """The diffusers ``FluxPipeline`` of ``pipe`` (an illustrated_sd Flux pipeline, or a ``FluxPipeline`` itself)."""
    if isinstance(pipe, FluxPipeline):
        return pipe
    if getattr(pipe, "family", None) != "flux":
        raise TypeError(f"this lesson runs a Flux transformer (isd.load_pipeline('tiny-flux')); got {pipe!r}")
    return pipe.pipeline


def straight_path(x0: torch.Tensor, noise: torch.Tensor, sigmas) -> torch.Tensor:
    """The points ``x_σ = (1 − σ)·x₀ + σ·ε`` of the straight path, for a clean latent ``x0 [C, h, w]`` and noise of the
    same shape, at each of ``sigmas`` (a list or ``[K]`` tensor in [0, 1]) → ``[K, C, h, w]``."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    s = torch.as_tensor(sigmas, dtype=x0.dtype, device=x0.device).reshape(-1)
    if len(s) == 0 or not torch.all((s >= 0) & (s <= 1)):
        raise ValueError(f"each σ must lie in [0, 1] (0 is the picture, 1 the noise); got {s.tolist()}")
    s = s[:, None, None, None]
    return (1 - s) * x0 + s * noise


@torch.no_grad()
def encode_picture(pipe, image: Image.Image) -> torch.Tensor:
    """A picture → its clean latent x₀ ``[C, h, w]`` (float32): the centre of the VAE's Gaussian (training draws its
    latents around it, mean + std·noise; here none is drawn, so a picture has one x₀), shifted and scaled as Flux's
    pipeline does (``(z − shift)·scale``)."""
    flux = _flux(pipe)
    image = check_image(image, "image", flux.vae_scale_factor * 2)
    pixels = flux.image_processor.preprocess(image).to(pipe.device, flux.vae.dtype)
    config = flux.vae.config
    z = flux.vae.encode(pixels).latent_dist.mode()
    return ((z - (config.shift_factor or 0.0)) * config.scaling_factor)[0].float()


def predict_velocity(pipe, latents: torch.Tensor, sigma, prompt: str | list[str] = "", transformer=None,
                     max_sequence_length: int | None = None, guidance_scale: float | None = None) -> torch.Tensor:
    """Ask a Flux transformer for the velocity v̂ at points ``latents [B, C, h, w]`` (unpacked, as a trace stores
    them) of the path, at noise levels ``sigma`` (a number, or ``[B]``), reading ``prompt`` (one, or ``B``) →
    ``[B, C, h, w]``. What one step of the generation loop does, without guidance: the prompt encoded by CLIP (pooled)
    and T5 (sequence), the latent packed into 2×2 tokens with their (row, column) ids, one transformer call,
    unpacked again. ``transformer`` (default: the pipeline's) may be another of the same layout, e.g. one being trained:
    gradients flow through it (the prompt's encoding does not need them). ``max_sequence_length``: T5's slots, by
    default the model's own (tiny-flux: 64; a generation must use the same number to be compared). ``guidance_scale``:
    for a guidance-distilled transformer (Flux-dev) the number it reads as an input (default: the model's); tiny-flux
    has no such input and ignores it."""
    flux = _flux(pipe)
    transformer = flux.transformer if transformer is None else transformer
    if latents.dim() != 4:
        raise ValueError(f"latents must be [B, C, h, w]; got {tuple(latents.shape)}")
    latents = latents.to(transformer.device, transformer.dtype)  # e.g. encode_picture's float32 into a bf16 model on a GPU
    b, c, h, w = latents.shape
    prompts = [prompt] * b if isinstance(prompt, str) else list(prompt)
    if len(prompts) != b:
        raise ValueError(f"{len(prompts)} prompts for {b} latents: give one prompt, or one per latent")
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=latents.device).reshape(-1).expand(b)
    with torch.no_grad():
        text, pooled, text_ids = flux.encode_prompt(prompts, prompt_2=None, device=latents.device,
                                                    max_sequence_length=max_sequence_length or pipe.call_defaults()["max_sequence_length"])
    packed = flux._pack_latents(latents, b, c, h, w)  # [B, (h/2)(w/2), 4C]
    image_ids = flux._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
    guidance = None
    if transformer.config.guidance_embeds:
        scale = pipe.call_defaults()["guidance_scale"] if guidance_scale is None else guidance_scale
        guidance = torch.full([b], float(scale), device=latents.device)
    velocity = transformer(hidden_states=packed, timestep=sigma, guidance=guidance, pooled_projections=pooled,
                           encoder_hidden_states=text, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
    return flux._unpack_latents(velocity, h * flux.vae_scale_factor, w * flux.vae_scale_factor, flux.vae_scale_factor).float()


def shifted(sigma, mu: float):
    """σ bent toward the noise as the sampler's schedule is: e^μ·σ / (1 + (e^μ − 1)·σ) (0 and 1 stay put; μ = 0 leaves
    σ as it was). Training draws its σ and bends it the same way, so it practises most where sampling will ask."""
    return math.exp(mu) * sigma / (1 + (math.exp(mu) - 1) * sigma)


def mu_at(pipe, size: int) -> float:
    """The μ a generation at ``size``² pixels bends its schedule by (it grows with the number of image tokens).
    ``pipe``: an illustrated_sd Flux pipeline, or diffusers' ``FluxPipeline`` (training draws its σ with this μ)."""
    flux = _flux(pipe)
    if size % (flux.vae_scale_factor * 2):
        raise ValueError(f"size must be a multiple of {flux.vae_scale_factor * 2} pixels (one token's side); got {size}")
    return schedule_mu(flux.scheduler, (size // flux.vae_scale_factor // 2) ** 2)


def sigma_schedule(pipe, steps: int, size: int) -> np.ndarray:
    """The σ values a ``steps``-step generation at ``size``² pixels visits, ``[steps + 1]`` from 1 to 0: evenly spaced,
    then bent toward the noise by the shift μ that grows with the number of image tokens (``loops/flux.py`` step 3;
    the pipeline's own scheduler is left as it was)."""
    mu = mu_at(pipe, size)
    scheduler = copy.deepcopy(_flux(pipe).scheduler)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler.sigmas.numpy().astype(np.float64)


def straightness(latents: torch.Tensor) -> float:
    """How straight a generation's path is: the distance from its start to its end over the length walked,
    ``|x_S − x_0| / Σ_k |x_{k+1} − x_k|`` over ``latents [S + 1, …]`` (a trace's ``latents``, every step kept: a compact
    trace skips steps, and a path with corners cut measures straighter). 1 for a straight line;
    reflow's student walks nearer 1 than its teacher, whose velocity turns as the picture becomes clear."""
    x = latents.flatten(1).double()
    walked = (x[1:] - x[:-1]).norm(dim=1).sum()
    if len(x) < 2 or walked == 0:
        raise ValueError(f"a path needs at least two different points; got {len(x)} point(s) that never move")
    return float((x[-1] - x[0]).norm() / walked)


def path_in_a_plane(latents: torch.Tensor) -> np.ndarray:
    """A path drawn flat: each point of ``latents [S + 1, …]`` as ``(along, across)`` ``[S + 1, 2]``: ``along`` its
    distance along the chord from start to end, ``across`` its distance from that chord in the direction the path strays
    most (the first principal direction of what is left). A straight path lies on ``across = 0``; lengths are true
    along the chord and never more than true across it."""
    x = latents.flatten(1).double()
    x = x - x[0]
    if x[-1].norm() == 0:
        raise ValueError("the path ends where it starts: it has no chord to draw it along")
    chord = x[-1] / x[-1].norm()
    along = x @ chord
    rest = x - along[:, None] * chord
    _, _, v = torch.linalg.svd(rest, full_matrices=False)
    across = rest @ v[0]
    if across.abs().max() > 0 and across[across.abs().argmax()] < 0:
        across = -across  # the side it strays to is drawn up
    return torch.stack([along, across], dim=1).numpy()

"""The other direction: how training makes noisy examples, and what one training step measures.

Training never runs the sampling loop. It takes a clean latent x0, picks a timestep t, and jumps
there in one go with x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε; the UNet is then asked to name ε.
"""

import contextlib
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from .. import checks
from ..loops.inputs import check_image
from .latent_space import to_latent


@dataclass
class ForwardDiffusion:
    """One image noised to several timesteps. ``T`` timesteps, latent ``C×h×w``.

    Attributes:
        latent: ``[C, h, w]`` the clean latent x0 (VAE mean × scaling factor).
        timesteps, alpha_bars: ``[T]``.
        noise: ``[C, h, w]`` the ε added (the same at every t, so only the amount changes).
        noised: ``[T, C, h, w]`` x_t at each timestep.
        images: the noised latents decoded by the VAE, one PIL image per timestep.
    """

    latent: torch.Tensor
    timesteps: torch.Tensor
    alpha_bars: torch.Tensor
    noise: torch.Tensor
    noised: torch.Tensor
    images: list


def _encode(pipe, image: Image.Image) -> torch.Tensor:
    image = check_image(image, "image", pipe.vae_scale_factor)
    pixels = pipe.pipeline.image_processor.preprocess(image).to(pipe.device, pipe.vae.dtype)
    return to_latent(pipe.vae, pixels, centre=True)  # [1, C, h, w]


def _timesteps(pipe, timesteps) -> torch.Tensor:
    """Training timesteps as a ``[T]`` long tensor; each must be a whole number in [0, T_train − 1] (2.7 is refused, not cut to 2)."""
    values = timesteps.tolist() if hasattr(timesteps, "tolist") else timesteps
    values = [values] if isinstance(values, numbers.Number) else list(values)
    n = len(pipe.scheduler.alphas_cumprod)
    if not values:
        raise ValueError(f"timesteps is empty; pass training timesteps in [0, {n - 1}], e.g. [0, 250, 500, 999]")
    hint = f"the model was trained on timesteps 0–{n - 1}"
    return torch.tensor([checks.whole_number("timestep", v, minimum=0, maximum=n - 1, hint=hint) for v in values], dtype=torch.long)


@torch.no_grad()
def forward_diffusion(pipe, image: Image.Image, timesteps=(0, 100, 250, 500, 750, 999), seed: int = 0) -> ForwardDiffusion:
    """Noise ``image`` to each of ``timesteps`` as training does, and decode what that looks like.

    Example:
        >>> fd = forward_diffusion(pipe, trace.image, [0, 250, 500, 999]); fd.images[-1]   # almost pure noise
    """
    t = _timesteps(pipe, timesteps)
    seed = checks.whole_number("seed", seed)
    latent = _encode(pipe, image)[0].float().cpu()
    alpha_bars = pipe.scheduler.alphas_cumprod[t].float()
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    a = alpha_bars[:, None, None, None]
    noised = a.sqrt() * latent + (1 - a).sqrt() * noise  # x_t = √ᾱ·x0 + √(1−ᾱ)·ε for every t at once
    return ForwardDiffusion(latent, t, alpha_bars, noise, noised, pipe.decode_latents(noised))


@torch.no_grad()
def training_step(pipe, image: Image.Image, caption: str, t: int, seed: int = 0) -> dict:
    """The loss of one training example, as Stable Diffusion is trained (no optimizer, nothing changes).

    Returns:
        ``{"loss", "t", "noised" [C, h, w], "target" [C, h, w], "prediction" [C, h, w]}``: the target is
        the noise ε for epsilon models (v = √ᾱ·ε − √(1−ᾱ)·x0 for v-prediction), the loss their mean squared error.
    """
    if not isinstance(t, numbers.Number) or isinstance(t, bool):
        raise TypeError(f"t must be one training timestep, a whole number (got {t!r}); forward_diffusion takes several")
    t_ = _timesteps(pipe, [t])
    checks.text("caption", caption, hint="the text that goes with the image")
    seed = checks.whole_number("seed", seed)
    latent = _encode(pipe, image)
    a = pipe.scheduler.alphas_cumprod[t_].to(pipe.device, latent.dtype)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed)).to(pipe.device, latent.dtype)
    noised = a.sqrt() * latent + (1 - a).sqrt() * noise
    tokens = pipe.tokenizer(caption, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(pipe.device)
    context = pipe.text_encoder(tokens)[0]
    prediction = pipe.unet(noised, t_.to(pipe.device), encoder_hidden_states=context).sample
    target = noise if pipe.scheduler.config.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latent
    return {"loss": F.mse_loss(prediction.float(), target.float()).item(), "t": int(t_[0]), "noised": noised[0].cpu(),
            "target": target[0].cpu(), "prediction": prediction[0].cpu()}


def diffusion_loss(unet, latents: torch.Tensor, context: torch.Tensor, alphas_cumprod: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Stable Diffusion's training objective on a batch, with gradients (this is what training minimises).

    Each example gets its own random timestep t and fresh noise ε, is noised in one jump,
    x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, and the UNet must name the noise: loss = mean ‖ε − ε_θ(x_t, t, text)‖².

    Args:
        unet: an epsilon-predicting ``UNet2DConditionModel``.
        latents: ``[B, C, h, w]`` clean latents (already multiplied by the VAE's scaling factor).
        context: ``[B, 77, D]`` text encoder hidden states of the captions.
        alphas_cumprod: ``[T]`` ᾱ of the noise schedule (``scheduler.alphas_cumprod``).
    Returns:
        the scalar loss (float32).
    """
    device = latents.device
    alphas_cumprod = alphas_cumprod.to(device)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    t = torch.randint(0, len(alphas_cumprod), (len(latents),), generator=generator, device=device)
    a = alphas_cumprod[t][:, None, None, None].to(latents.dtype)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    prediction = unet(noisy, t, encoder_hidden_states=context).sample
    return F.mse_loss(prediction.float(), noise.float())


@contextlib.contextmanager
def cpu_threads(n: int = 1):
    """Run the ``with`` block on ``n`` torch CPU threads, then restore the previous number.

    Why one thread for a small training loop on a laptop: two threads on two cores are faster only while
    nothing else runs. Beside any other busy process they wait for each other at every operation, and a
    step takes several times longer. On the 2-core CI machine, notebook 03's loop took 1.1–1.25 s/step with
    2 threads and 1.8–1.9 with 1 when idle, but 4.3–6.1 against 2.1–2.7 beside one busy process (two runs
    of ``benchmarks/threads.py``). One thread is the choice that never goes badly.
    """
    n = checks.whole_number("n", n, minimum=1, hint="torch CPU threads, e.g. 1")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def encode_examples(pipe, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Training examples as the UNet sees them, through the frozen VAE and text encoder.

    Args:
        images: ``[B, 3, H, W]`` in [-1, 1] (e.g. from ``world.render``); captions: ``B`` strings.
    Returns:
        ``(latents [B, C, H/8, W/8], context [B, 77, D])`` on the pipeline's device.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions; give one caption per image")
    latents = to_latent(pipe.vae, images.to(pipe.device, pipe.vae.dtype), centre=True)
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(pipe.device)
    return latents, pipe.text_encoder(ids)[0]

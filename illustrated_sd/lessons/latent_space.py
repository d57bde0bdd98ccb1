"""The VAE's two doors, with the scaling every pipeline applies on the way in and out.

The UNet works on latents of about unit variance. The VAE's own latents are not: Stable Diffusion
multiplies them by ``scaling_factor`` (0.18215 for SD 1/2, 0.13025 for SDXL) after encoding and divides
before decoding. Some VAEs also store a per-channel mean and std (``latents_mean``, ``latents_std``);
then a latent is standardised channel by channel instead.

SDXL's VAE overflows in float16 (its activations pass 65,504); its pipelines run it in float32 for
the call (``force_upcast``) and put it back. SD 1/2's pipelines do not, so ``upcast`` says which to copy.
"""

import torch


def _channel_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(mean, std)`` as ``[1, C, 1, 1]`` when the VAE's config stores them, else ``None``."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean).view(shape).to(like.device, like.dtype), torch.tensor(std).view(shape).to(like.device, like.dtype))


def _needs_upcast(vae, upcast: bool) -> bool:
    return upcast and vae.dtype == torch.float16 and vae.config.force_upcast


def to_latent(vae, pixels: torch.Tensor, generator=None, upcast: bool = False, centre: bool = False) -> torch.Tensor:
    """``[N, 3, H, W]`` pixels in [-1, 1] → latents ``[N, C, H/8, W/8]``, scaled as the UNet expects.

    The encoder gives a Gaussian per latent value (the *variational* part, notebook 02); like diffusers'
    pipelines, one sample is drawn from it with ``generator``. ``centre=True`` takes the Gaussian's centre
    instead (``latent_dist.mode()``), as training and the forward-diffusion pictures do.
    """
    dtype, upcasting = pixels.dtype, _needs_upcast(vae, upcast)
    if upcasting:
        vae.to(dtype=torch.float32)
        pixels = pixels.float()
    try:
        cloud = vae.encode(pixels).latent_dist
        latents = cloud.mode() if centre else cloud.sample(generator)
    finally:
        if upcasting:
            vae.to(dtype=torch.float16)
    latents = latents.to(dtype)
    stats = _channel_stats(vae, latents)
    if stats is not None:
        return (latents - stats[0]) * vae.config.scaling_factor / stats[1]
    return latents * vae.config.scaling_factor


def to_pixels(vae, latents: torch.Tensor, generator=None, upcast: bool = False) -> torch.Tensor:
    """A latent ``[N, C, h, w]`` (as the UNet makes it) → decoded pixels ``[N, 3, 8h, 8w]``, about in [-1, 1]."""
    upcasting = _needs_upcast(vae, upcast)
    if upcasting:  # as SDXL's pipeline does: the latent goes to float32 before it is unscaled
        vae.to(dtype=torch.float32)
        latents = latents.float()
    try:
        stats = _channel_stats(vae, latents)
        latents = latents * stats[1] / vae.config.scaling_factor + stats[0] if stats is not None else latents / vae.config.scaling_factor
        return vae.decode(latents.to(vae.dtype), return_dict=False, generator=generator)[0]
    finally:
        if upcasting:
            vae.to(dtype=torch.float16)

"""Stage 3 of a generation: where the denoising loop starts, for each mode.

Text-to-image, img2img and inpainting run the same loop; they differ only in what it starts from and
in two small extras. Each function here returns a :class:`Start` that says all of it:

- the start latent ``x_T`` and the timesteps to visit (img2img skips the noisiest ones);
- extra input channels for the UNet (an inpainting UNet reads the mask and the masked image);
- a per-step blend (a plain UNet inpaints by pasting the kept region back after every step).

Every random draw happens in the same order as in diffusers' pipelines, so the images are equal.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from .. import checks
from ..lessons.latent_space import to_latent


@dataclass
class Start:
    """Where one generation's loop starts, and what it adds at each step.

    Attributes:
        mode: ``"text2img"``, ``"img2img"`` or ``"inpaint"``.
        latents: ``[1, C, h, w]``, the loop's first ``x_t``.
        timesteps: ``[S]``, the timesteps the loop visits, noisiest first.
        strength: how far back into the noise an input image was pushed (``None`` for text-to-image).
        init_latents: ``[1, C, h, w]``, the encoded input image before noising (``None`` if there is none).
        skipped_timesteps: ``[S_skipped]``, the noisiest timesteps, not visited (``None`` for text-to-image).
        mask: ``[h, w]``, 1 where inpainting repaints, at latent resolution (``None`` otherwise).
        unet_extra: ``[B, k, h, w]``, channels appended to the UNet's input at every step (``None`` if none).
        blend: ``blend(i, latents) → latents``, applied after the scheduler's step ``i`` (``None`` if none).
    """

    mode: str
    latents: torch.Tensor
    timesteps: torch.Tensor
    strength: float | None = None
    init_latents: torch.Tensor | None = None
    skipped_timesteps: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    unet_extra: torch.Tensor | None = None
    blend: Callable[[int, torch.Tensor], torch.Tensor] | None = None


def latent_shape(pipe, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
    """``(batch, C, h, w)``: the latents of ``height × width`` images (the VAE shrinks each side 8×)."""
    f = pipe.vae_scale_factor
    return (batch, pipe.vae.config.latent_channels, height // f, width // f)


def strength_timesteps(scheduler, num_inference_steps: int, visited: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Skip the noisiest timesteps, as diffusers' ``get_timesteps`` does: ``(visited [S'], skipped [S − S'])``."""
    scheduler.set_timesteps(num_inference_steps, device=device)
    t_start = (num_inference_steps - visited) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start)
    return scheduler.timesteps[t_start:], scheduler.timesteps[:t_start]


def start_from_noise(pipe, num_inference_steps: int, height: int, width: int, generator, dtype, batch: int = 1) -> Start:
    """Text-to-image: pure Gaussian noise in latent space, scaled to the sampler's starting noise level,
    and every timestep from noisy (t ≈ 999) to clean. ``batch`` latents take one generator each (a list)."""
    pipe.scheduler.set_timesteps(num_inference_steps, device=pipe.device)
    latents = randn_tensor(latent_shape(pipe, height, width, batch), generator=generator, device=pipe.device, dtype=dtype)
    return Start("text2img", latents * pipe.scheduler.init_noise_sigma, pipe.scheduler.timesteps)


def start_from_image(pipe, image: Image.Image, strength: float, num_inference_steps: int, visited: int, generator, dtype) -> Start:
    """img2img: encode the picture, then jump straight to the first visited timestep by forward diffusion,
    x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (``scheduler.add_noise``, in the scheduler's own parametrisation)."""
    timesteps, skipped = strength_timesteps(pipe.scheduler, num_inference_steps, visited, pipe.device)
    pixels = pipe.pipeline.image_processor.preprocess(image).to(device=pipe.device, dtype=dtype)  # [1, 3, H, W] in [-1, 1]
    init_latents = to_latent(pipe.vae, pixels, generator, upcast=pipe.is_sdxl)  # SDXL runs its VAE in float32
    noise = randn_tensor(init_latents.shape, generator=generator, device=pipe.device, dtype=dtype)
    latents = pipe.scheduler.add_noise(init_latents, noise, timesteps[:1])
    return Start("img2img", latents, timesteps, float(strength), init_latents, skipped)


def start_for_inpainting(pipe, image: Image.Image, mask: Image.Image, strength: float, num_inference_steps: int,
                         visited: int, generator, dtype, guided: bool) -> Start:
    """Inpainting: the masked region starts from noise (or from the noised image, with ``strength`` < 1).

    A dedicated inpainting UNet (9 input channels, as in SD inpainting checkpoints) reads
    ``[x_t, mask, masked image]``; any other UNet inpaints by *latent blending*: after every step the
    kept region is replaced by the original latent noised to the next timestep.
    """
    device, scheduler = pipe.device, pipe.scheduler
    height, width = image.height, image.width
    nine_channels = pipe.unet.config.in_channels == 9
    timesteps, skipped = strength_timesteps(scheduler, num_inference_steps, visited, device)

    pixels = pipe.pipeline.image_processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
    mask_processor = VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor, do_normalize=False, do_binarize=True,
                                       do_convert_grayscale=True)  # as diffusers' inpainting pipeline makes it
    mask_pixels = mask_processor.preprocess(mask, height=height, width=width)  # [1, 1, H, W] in {0, 1}
    share = float(mask_pixels.mean())
    if share == 0:
        warnings.warn("the mask is all black: nothing will be repainted (white marks what to repaint)", stacklevel=checks.user_stacklevel())
    elif share == 1:
        warnings.warn("the mask is all white: the whole image is repainted, as text-to-image would", stacklevel=checks.user_stacklevel())

    # The same random draws, in the same order, as diffusers: image latent, noise, masked-image latent.
    image_latents = None
    if not nine_channels or strength < 1:
        # contiguous, as diffusers' copy of it is: the VAE hands back a channels-last tensor, and
        # the UNet's convolutions round differently on the two layouts
        image_latents = to_latent(pipe.vae, pixels.to(device, dtype), generator).contiguous()
    shape = latent_shape(pipe, height, width)
    noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    latents = noise * scheduler.init_noise_sigma if strength == 1 else scheduler.add_noise(image_latents, noise, timesteps[:1])
    masked_latents = to_latent(pipe.vae, (pixels * (mask_pixels < 0.5)).to(device, dtype), generator)
    mask_latent = F.interpolate(mask_pixels, size=shape[-2:]).to(device, dtype)  # [1, 1, h, w]

    unet_extra, blend = None, None
    if nine_channels:  # the inpainting UNet sees [x_t, mask, masked image] stacked as 9 channels
        repeat = 2 if guided else 1
        unet_extra = torch.cat([mask_latent.repeat(repeat, 1, 1, 1), masked_latents.repeat(repeat, 1, 1, 1)], dim=1)
    else:
        next_timesteps = timesteps.cpu()  # read once here: indexing a GPU tensor in the loop would wait for the GPU

        def blend(i, latents):
            # keep the unmasked region on the original image's own noisy trajectory:
            # there x_{t_next} = √ᾱ·x0_image + √(1−ᾱ)·ε, only the masked region is left to the model
            known = image_latents
            if i < len(timesteps) - 1:
                known = scheduler.add_noise(image_latents, noise, next_timesteps[i + 1 : i + 2])
            # (.contiguous: broadcasting the [1, 1, h, w] mask can yield a channels-last tensor, see above)
            return ((1 - mask_latent) * known + mask_latent * latents).contiguous()

    return Start("inpaint", latents, timesteps, float(strength), image_latents, skipped, mask_latent[0, 0].float(), unet_extra, blend)

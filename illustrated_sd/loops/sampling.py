"""The small pieces of diffusion math the pipeline and the notebooks share.

Every scheduler in diffusers keeps a noisy latent ``x_t`` and asks the UNet for a prediction. What
the UNet predicts (``prediction_type``) and how ``x_t`` is scaled differ between schedulers; these
functions turn any of them into the one quantity a student can look at: the clean latent ``x0`` the
model currently believes in.
"""

import torch

# Schedulers written in the variance-exploding form of Karras et al. (Euler, Heun, LMS, DPM2, ...)
# keep x = x0 + σ·ε instead of x = √ᾱ·x0 + √(1−ᾱ)·ε. They start from noise with std > 1
# (`init_noise_sigma` = σ_max or √(σ_max² + 1)) and divide the UNet's input by √(σ² + 1).


def is_sigma_space(scheduler) -> bool:
    """True when the scheduler keeps its latent as x0 + σ·ε (Euler-style) rather than √ᾱ·x0 + √(1−ᾱ)·ε."""
    return float(scheduler.init_noise_sigma) > 1.0


def alpha_bars_for(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """ᾱ (the fraction of signal variance left) at each timestep the sampler visits.

    Args:
        scheduler: a diffusers scheduler after ``set_timesteps``.
        timesteps: ``[S]`` the timesteps the loop will visit (``scheduler.timesteps``, maybe a tail of it).
    Returns:
        ``[S]`` float32 on the CPU. For sigma-space schedulers ᾱ = 1 / (1 + σ²), using the σ the
        scheduler itself uses at that step (which may sit between two integer timesteps).
    """
    if is_sigma_space(scheduler):
        # sigmas has one entry per visited timestep (plus a final 0); img2img starts part-way in
        begin = getattr(scheduler, "begin_index", None) or (len(scheduler.timesteps) - len(timesteps))
        sigmas = scheduler.sigmas[begin : begin + len(timesteps)].float().cpu()
        return 1.0 / (1.0 + sigmas**2)
    return scheduler.alphas_cumprod[timesteps.cpu().long()].float()


def pred_x0_from_epsilon(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The clean latent implied by a noise prediction.

    x_t = √ᾱ·x0 + √(1−ᾱ)·ε   ⇒   x0 = (x_t − √(1−ᾱ)·ε) / √ᾱ
    """
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def pred_x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The clean latent implied by a velocity prediction (SD 2.x 768-v models).

    v = √ᾱ·ε − √(1−ᾱ)·x0   ⇒   x0 = √ᾱ·x_t − √(1−ᾱ)·v
    """
    return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v


def pred_x0(model_input: torch.Tensor, model_output: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean latent x0 the model currently believes in, whatever it was trained to predict.

    Args:
        model_input: ``[B, C, h, w]`` the latent as the UNet saw it, i.e. after ``scale_model_input``
            (for every scheduler that is √ᾱ·x0 + √(1−ᾱ)·ε).
        model_output: ``[B, C, h, w]`` the (guided) UNet output.
        alpha_bar: scalar tensor ᾱ_t for this step (see :func:`alpha_bars_for`).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
    Returns:
        ``[B, C, h, w]`` float32.
    """
    x_t, out, alpha_bar = model_input.float(), model_output.float(), alpha_bar.float()
    if prediction_type == "epsilon":
        return pred_x0_from_epsilon(x_t, out, alpha_bar)
    if prediction_type == "v_prediction":
        return pred_x0_from_v(x_t, out, alpha_bar)
    if prediction_type == "sample":
        return out
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected 'epsilon', 'v_prediction' or 'sample'")


def classifier_free_guidance(noise_uncond: torch.Tensor, noise_text: torch.Tensor, scale: float) -> torch.Tensor:
    """ε̂ = ε_uncond + s·(ε_text − ε_uncond): start from the unconditional prediction and move s times
    further along the direction the prompt pulls it. s = 1 is the plain conditional model."""
    return noise_uncond + scale * (noise_text - noise_uncond)


def rescale_guidance(noise_cfg: torch.Tensor, noise_text: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale φ (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4).

    A large ``s`` inflates ε̂'s spread far beyond any noise the model was trained on, and the picture
    over-saturates. Rescaling ε̂ to ε_text's standard deviation (per sample) undoes that; mixing by φ keeps
    some of guidance's contrast: ε̂' = φ·ε̂·σ(ε_text)/σ(ε̂) + (1 − φ)·ε̂.

    Args:
        noise_cfg: ``[B, C, h, w]`` the guided prediction ε̂. noise_text: ``[B, C, h, w]`` ε_text.
        rescale: φ in [0, 1]; 0 returns ``noise_cfg`` unchanged.
    """
    dims = list(range(1, noise_text.ndim))
    std_text = noise_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    return rescale * (noise_cfg * (std_text / std_cfg)) + (1 - rescale) * noise_cfg

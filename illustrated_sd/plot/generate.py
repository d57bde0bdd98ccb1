"""Figures that have to run the model to exist: each says so in its name and docstring."""

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from PIL import Image

from ..loops.text import encode_tokens, tokenize_prompt
from .denoising import _as_rgb
from .labels import literal, quoted


def guidance_sweep(pipe, prompt: str, scales=(1.0, 3.0, 7.5, 12.0), seed: int = 0, steps: int = 25):
    """Generates ``prompt`` once per guidance scale, same seed, and shows the images side by side.

    Returns:
        ``(figure, traces)``: a Figure with one panel per scale, and the traces it made.
    """
    scales = list(scales)
    if not scales:
        raise ValueError("scales is empty; pass the guidance scales to compare, e.g. (1.0, 3.0, 7.5)")
    traces = [pipe(prompt, num_inference_steps=steps, seed=seed, progress=False, **pipe.guidance_option(s)) for s in scales]
    fig, axes = plt.subplots(1, len(scales), figsize=(2.4 * len(scales), 2.8), squeeze=False, layout="constrained")
    for ax, s, trace in zip(axes[0], scales, traces):
        ax.imshow(trace.image)
        ax.set_title(f"guidance {s:g}" + {1: " (off)", 0: " (no prompt)"}.get(s, ""), fontsize=10)
        ax.set_axis_off()
    fig.suptitle(f"classifier-free guidance: ε̂ = ε_uncond + s·(ε_text − ε_uncond) — {quoted(prompt)}, seed {seed}", fontsize=10)
    return fig, traces


@torch.no_grad()
def vae_roundtrip(pipe, image: Image.Image):
    """Runs the VAE: image → latent (4 channels at 1/8 size) → reconstruction, and the error.

    Returns:
        a Figure with four panels: the image, the latent's channels 0–2 as RGB, the reconstruction,
        and the absolute error in grey levels (0–255; the PSNR in the title).
    """
    processor = pipe.pipeline.image_processor
    size = pipe.default_size
    pixels = processor.preprocess(image.convert("RGB").resize((size, size))).to(pipe.device, pipe.vae.dtype)  # [1, 3, H, W] in [-1, 1]
    latent = pipe.vae.encode(pixels).latent_dist.mode()
    recon = pipe.vae.decode(latent).sample.clamp(-1, 1)
    original, rebuilt = ((pixels[0].float().cpu() + 1) / 2), ((recon[0].float().cpu() + 1) / 2)
    error = (original - rebuilt).abs().mean(0) * 255  # [H, W], in grey levels, the unit the course measures pixels in
    psnr = 10 * torch.log10(1 / F.mse_loss(rebuilt, original)).item()
    fig, axes = plt.subplots(1, 4, figsize=(11, 3), layout="constrained")
    panels = [(original.permute(1, 2, 0), f"image 3×{size}×{size}"), (torch.from_numpy(_as_rgb(latent[0].cpu())), f"latent {tuple(latent.shape[1:])} (ch 0–2)"),
              (rebuilt.permute(1, 2, 0), "reconstruction"), (error, f"|error|, PSNR {psnr:.1f} dB")]
    for ax, (data, title) in zip(axes, panels):
        im = ax.imshow(data.numpy(), cmap="magma" if data.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.colorbar(im, ax=axes[-1], shrink=0.8, label="|error| (grey levels, 0–255)")
    ratio = pixels[0].numel() / latent[0].numel()
    fig.suptitle(f"the VAE compresses {pixels[0].numel()} numbers into {latent[0].numel()} ({ratio:.0f}×) and back", fontsize=11)
    return fig


@torch.no_grad()
def prompt_similarity(pipe, prompts: list[str]):
    """Runs the text encoder on each prompt and shows the cosine similarity of their embeddings
    (the 77 × D matrices flattened) as a heat map on the cosine's whole scale, −1 to 1.

    Returns:
        a Figure with one ``len(prompts) × len(prompts)`` panel, prompts as tick labels.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) < 2 or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt_similarity compares at least two prompts (strings); got {prompts!r}")
    vectors = []
    for prompt in prompts:
        emb, _ = encode_tokens(pipe.text_encoder, tokenize_prompt(pipe.tokenizer, prompt), pipe.device)
        vectors.append(emb[0].flatten().float().cpu())
    unit = F.normalize(torch.stack(vectors), dim=-1)
    sim = (unit @ unit.T).numpy()
    fig, ax = plt.subplots(figsize=(1.2 * len(prompts) + 3, 0.8 * len(prompts) + 2), layout="constrained")
    # the full range of a cosine, −1 … 1, so that two figures' colours mean the same and "far apart" looks far
    im = ax.imshow(sim, cmap="viridis", vmin=-1, vmax=1)
    labels = [literal(p) for p in prompts]
    ax.set_xticks(range(len(prompts)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(prompts)), labels, fontsize=8)
    for i in range(len(prompts)):
        for j in range(len(prompts)):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if sim[i, j] < 0.4 else "black")
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_title("how alike the text encoder finds the prompts")
    return fig

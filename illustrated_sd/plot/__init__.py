"""Matplotlib figures drawn from a Trace. Every helper only reads the trace and returns the Figure
(``denoising_filmstrip`` runs the VAE decoder only when you hand it a ``decode`` function)."""

from .attention import attention_grid, token_heatmaps
from .denoising import denoising_filmstrip, latent_channels, noise_schedule
from .text import text_embeddings

__all__ = ["attention_grid", "denoising_filmstrip", "latent_channels", "noise_schedule", "text_embeddings", "token_heatmaps"]

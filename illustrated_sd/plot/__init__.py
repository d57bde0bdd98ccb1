"""Matplotlib figures drawn from a Trace. Helpers that read a trace never run a model
(``denoising_filmstrip`` and ``animate`` run the VAE decoder only when you hand them ``decode``);
``guidance_sweep``, ``vae_roundtrip`` and ``prompt_similarity`` take a pipeline and say that they run it.

Beside the figures, modules of their own (not re-exported as isd.plot functions):

    widgets.py    ipywidgets around a trace: TraceExplorer, PromptPlayground, GuidanceSlider (isd.widgets, loaded on request)
    explorer.py   the report's explorer: a trace as data for assets/explorer/ (step slider, tokens, hover)
    report.py     an explained generation as one self-contained HTML page
    heatmaps.py   a word's heatmap against an object's mask: DAAM's IoU and the pointing game
"""

from .animation import animate
from .attention import attention_grid, attention_shares, heatmaps_against_masks, self_attention, token_heatmaps
from .denoising import denoising_filmstrip, latent_channels, latent_parts, latent_roads, noise_schedule
from .guidance import guidance_map
from .images import image_row
from .intervention import intervention
from .joint import concept_maps, joint_attention
from .overview import pipeline_diagram
from .generate import guidance_sweep, prompt_similarity, vae_roundtrip
from .text import similarity_matrix, text_embeddings

__all__ = ["animate", "attention_grid", "attention_shares", "concept_maps", "denoising_filmstrip", "guidance_map", "guidance_sweep", "heatmaps_against_masks", "image_row", "intervention", "joint_attention", "latent_channels", "latent_parts",
           "latent_roads", "noise_schedule", "pipeline_diagram", "prompt_similarity", "self_attention", "similarity_matrix", "text_embeddings", "token_heatmaps",
           "vae_roundtrip"]

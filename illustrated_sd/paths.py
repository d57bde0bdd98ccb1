"""Files that ship inside the package: the CLIP tokenizer and the embedded models."""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
TINY_SD = ASSETS / "tiny-sd"  # the embedded default model (a diffusers pipeline folder)
# The real CLIP BPE tokenizer (vocab.json + merges.txt made by scripts/convert_clip_tokenizer.py), kept once: in the
# embedded model's folder, where diffusers looks for it; the random test pipelines read it from there too
CLIP_TOKENIZER = TINY_SD / "tokenizer"
TINY_FLUX = ASSETS / "tiny-flux"  # the embedded diffusion transformer: shares tiny-sd's VAE and CLIP tower
TINY_FLUX_FAST = ASSETS / "tiny-flux-fast"  # tiny-flux distilled to jump (reflow, guidance baked in): its transformer alone
# The embedded models by name (isd.load_pipeline(name)), each with one line on what it is (isd.embedded_models())
EMBEDDED = {
    "tiny-sd": (TINY_SD, "tiny-sd 2 (the default): a UNet with cross-attention, ε-prediction, CLIP text; SD 1/2's design"),
    "tiny-flux": (TINY_FLUX, "a Flux-style diffusion transformer: joint attention, flow matching, a T5 text encoder; "
                             "the same VAE and latents as tiny-sd"),
    "tiny-flux-fast": (TINY_FLUX_FAST, "tiny-flux distilled to jump: reflow straightens its paths (1–4 steps) and a guidance "
                                       "input replaces the second pass"),
}

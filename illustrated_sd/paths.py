"""Files that ship inside the package: the CLIP tokenizer and the embedded default model."""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
CLIP_TOKENIZER = ASSETS / "clip_tokenizer"  # vocab.json + merges.txt made by scripts/convert_clip_tokenizer.py
TINY_SD = ASSETS / "tiny-sd"  # the embedded default model (a diffusers pipeline folder), once trained

"""Turn a training checkpoint into a standard diffusers pipeline folder (the embedded default model)."""

import json
import shutil
from pathlib import Path

import torch

from ..architectures import build_random_pipeline
from ..paths import CLIP_TOKENIZER
from ..world import HELD_OUT, known_words
from .checkpoint import load_weights, read_log, save_weights

MAX_SHARD = "14MB"  # keeps every file under 15 MiB


def export(ckpt: Path, folder: Path) -> Path:
    """Write ``folder`` (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) from ``ckpt``.

    Weights are stored in float16 (half the size); ``load_pipeline`` reads them back as float32.
    ``illustrated_sd.json`` beside them lists the words the model knows and the held-out combinations;
    ``clip/`` keeps the image tower of the contrastive stage for the notebooks; ``train_log.json`` the
    loss curves.
    """
    from .stages import ClipHead, ImageTower

    pipe = build_random_pipeline("tiny-sd")
    for module, name in ((pipe.text_encoder, "text_encoder"), (pipe.vae, "vae"), (pipe.unet, "unet")):
        if not load_weights(module, ckpt, name):
            raise FileNotFoundError(f"{ckpt} has no {name} weights; train that stage first")
    log = read_log(ckpt)
    pipe.vae.register_to_config(scaling_factor=log["vae_scaling_factor"])
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True, max_shard_size=MAX_SHARD)
    for name in ("vocab.json", "merges.txt"):  # the classic SD tokenizer files, for older transformers
        shutil.copy(CLIP_TOKENIZER / name, tmp / "tokenizer" / name)
    clip = tmp / "clip"
    clip.mkdir()
    for module, name in ((ImageTower(), "clip_image_tower"), (ClipHead(pipe.text_encoder.config.hidden_size), "clip_head")):
        if load_weights(module, ckpt, name):
            for path in sorted(ckpt.glob(f"{name}-*.safetensors")):
                shutil.copy(path, clip / path.name)
    shutil.copy(ckpt / "train_log.json", tmp / "train_log.json")
    (tmp / "illustrated_sd.json").write_text(json.dumps({"known_words": known_words(), "held_out": HELD_OUT, "image_size": 128}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def import_folder(folder: Path, ckpt: Path) -> Path:
    """The inverse of :func:`export`: a checkpoint to resume training from, made from a pipeline folder."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    for module, name in ((pipe.text_encoder, "text_encoder"), (pipe.vae, "vae"), (pipe.unet, "unet")):
        save_weights(module, ckpt, name)
    for path in (folder / "clip").glob("*.safetensors"):
        shutil.copy(path, ckpt / path.name)
    shutil.copy(folder / "train_log.json", ckpt / "train_log.json")
    return ckpt

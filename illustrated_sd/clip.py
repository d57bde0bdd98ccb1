"""The tiny CLIP the embedded model's text encoder came from, for showing how CLIP learns.

CLIP trains two towers, one for images and one for text, so that a picture and its caption land
close together in a shared space and apart from every other caption. The text tower is the text
encoder Stable Diffusion later reads from. The embedded model ships both towers, so a notebook can
compare the image–caption similarity matrix before training (random towers) and after it.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .architectures import build_random_pipeline
from .paths import TINY_SD
from .train.checkpoint import load_weights
from .train.stages import ClipHead, ImageTower, text_features


@dataclass
class Clip:
    """Both towers of the tiny CLIP: ``text_encoder`` (a ``CLIPTextModel``), ``tokenizer``, ``image_tower``, ``head``."""

    text_encoder: torch.nn.Module
    tokenizer: object
    image_tower: ImageTower
    head: ClipHead


def load_clip(trained: bool = True, seed: int = 0) -> Clip:
    """The embedded model's CLIP, trained, or with the random weights it started from (``trained=False``).

    Raises:
        FileNotFoundError: if the model folder lacks the ``clip/`` towers (a hand-made folder).
    """
    pipe = build_random_pipeline("tiny-sd", seed=seed)
    tower, head = ImageTower(), ClipHead(pipe.text_encoder.config.hidden_size)
    if trained:
        from .loading import load_pipeline

        pipe = load_pipeline(TINY_SD).pipeline
        for module, name in ((tower, "clip_image_tower"), (head, "clip_head")):
            if not load_weights(module, TINY_SD / "clip", name):
                raise FileNotFoundError(f"{TINY_SD / 'clip'} has no {name} weights; reinstall illustrated_sd")
    modules = (pipe.text_encoder, tower.float(), head.float())
    for module in modules:
        module.eval()
    return Clip(*modules[:1], pipe.tokenizer, *modules[1:])


@torch.no_grad()
def clip_similarity(clip: Clip, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Cosine similarity of every image with every caption in CLIP's shared space.

    Args:
        images: ``[N, 3, 128, 128]`` in [-1, 1], as ``world.render`` makes them.
        captions: ``M`` strings.
    Returns:
        ``[N, M]`` in [-1, 1]; after training, image ``i`` should be most similar to its own caption ``i``.
    """
    if images.ndim != 4 or images.shape[1:] != (3, 128, 128):
        raise ValueError(f"images must be [N, 3, 128, 128] in [-1, 1], got {list(images.shape)}")
    ids = clip.tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    image_emb = F.normalize(clip.image_tower(images.float()), dim=-1)
    text_emb = F.normalize(text_features(clip.text_encoder, clip.head, ids), dim=-1)
    return image_emb @ text_emb.T

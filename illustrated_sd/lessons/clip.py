"""The tiny CLIP the embedded model's text encoder came from, for showing how CLIP learns.

CLIP trains two towers, one for images and one for text, so that a picture and its caption land
close together in a shared space and apart from every other caption. The text tower is the text
encoder Stable Diffusion later reads from. The embedded model ships both towers, so a notebook can
compare the image–caption similarity matrix before training (random towers) and after it.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.unet import build_random_pipeline
from ..trace.files import load_weights
from ..paths import TINY_SD


class ImageTower(torch.nn.Module):
    """CLIP's image side, small: strided convolutions down to 4×4, then a linear map to the shared space.

    Flattening the 4×4 grid (instead of pooling it away) keeps *where* things are, which the captions
    talk about. ``[B, 3, 128, 128]`` → ``[B, dim]``.
    """

    def __init__(self, dim: int = 128):
        super().__init__()
        layers, ch = [], 3
        for out in (32, 64, 128, 128, 128):  # 128 → 4
            layers += [torch.nn.Conv2d(ch, out, 3, stride=2, padding=1), torch.nn.GroupNorm(8, out), torch.nn.SiLU()]
            ch = out
        self.features = torch.nn.Sequential(*layers)
        self.proj = torch.nn.Linear(128 * 4 * 4, dim)

    def forward(self, images):
        return self.proj(self.features(images).flatten(1))


class ClipHead(torch.nn.Module):
    """The text projection and the learned temperature of CLIP's contrastive loss."""

    def __init__(self, text_dim: int, dim: int = 128):
        super().__init__()
        self.text_projection = torch.nn.Linear(text_dim, dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def text_features(text_encoder, head, ids):
    """CLIP's text embedding: the hidden state at the end-of-text token, projected. ``[B, 77]`` → ``[B, dim]``."""
    out = text_encoder(ids)
    return head.text_projection(out.pooler_output)


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
    with torch.random.fork_rng():  # the random towers are the same on every run (a notebook's counts stay put)
        torch.manual_seed(seed)
        tower, head = ImageTower(), ClipHead(pipe.text_encoder.config.hidden_size)
    if trained:
        from ..models.loading import load_pipeline

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

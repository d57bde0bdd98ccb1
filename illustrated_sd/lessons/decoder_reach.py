"""Why an inpainted picture's kept half still moves: what in the VAE decoder carries one half of a latent into the
pixels of the other.

Inpainting keeps the kept half's *latent* exactly, yet its pixels change. Three parts of the decoder could carry the
painted half across:

- the convolutions: each reaches one pixel further, and stacked (nine at the latent's own 16 × 16 alone) they could
  reach across most of the latent;
- the middle block's self-attention, where every pixel reads every latent pixel;
- every GroupNorm, which subtracts the mean of the *whole* picture's features and divides by their standard deviation
  (per group of channels): paint a navy background on the right and the statistics the left half is normalised by
  change too.

:func:`kept_change` decodes a painted latent and its original with the middle attention switched off, or with every
GroupNorm's statistics taken from the original's decoding, so a notebook can measure which path carries the change.
The switches are forward hooks installed for one call; the decoder's weights and modules are never touched.

    change = kept_change(pipe.vae, painted, original, kept)                          # [N·K] grey levels, as decoded
    change = kept_change(pipe.vae, painted, original, kept, mid_attention=False)     # without the middle attention
    change = kept_change(pipe.vae, painted, original, kept, norms_of_original=True)  # statistics of the original
"""

import itertools
from contextlib import contextmanager

import torch

from .latent_space import to_pixels


def _group_statistics(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and variance GroupNorm divides by: over each group's channels and every position, ``[N, groups, 1]``."""
    flat = x.reshape(len(x), groups, -1)
    return flat.mean(-1, keepdim=True), flat.var(-1, unbiased=False, keepdim=True)


# Which GroupNorms replay the original's statistics, by how many channels share one group's statistics. A group of one
# channel (tiny-sd 2's 32-channel layers at full resolution, with 32 groups) is an *instance* norm: its statistics are
# that one feature map's over the whole picture. A group of several can be held still by one channel the decoder keeps
# large and constant, which no single channel can do for itself.
WHICH_NORMS = {"all": lambda per_group: True, "single-channel": lambda per_group: per_group == 1,
               "multi-channel": lambda per_group: per_group > 1}
# Which of a replaying GroupNorm's two statistics are the original's: the mean it subtracts, the spread it divides by,
# or both. (In the shipped decoder holding only one of the two moves the kept half further than holding none:
# scripts/decoder_locality.py --paths.)
STATISTICS = ("both", "mean", "spread")


@contextmanager
def _switches(vae, mid_attention: bool = True, norms=None, which_norms: str = "all", statistics: str = "both"):
    """Hooks on ``vae.decoder`` for one ``with`` block. ``mid_attention=False``: the middle block's attention returns its
    input (it adds its own residual, so this skips it whole). ``norms``: ``None`` leaves the GroupNorms alone; a list
    records each GroupNorm's statistics into it (in call order); a filled list makes the GroupNorms ``which_norms``
    chooses (see :func:`kept_change`) use the recorded ones (``statistics``: both, or only the mean or the spread)."""
    if which_norms not in WHICH_NORMS:
        raise ValueError(f"which_norms is one of {', '.join(map(repr, WHICH_NORMS))} (got {which_norms!r})")
    handles = []
    try:
        if not mid_attention:
            for attention in vae.decoder.mid_block.attentions:
                if attention is not None:
                    handles.append(attention.register_forward_hook(lambda module, args, output: args[0]))
        if norms is not None:
            replaying, calls = bool(norms), itertools.count()  # the n-th GroupNorm call replays the n-th recorded

            def hook(module, args, output):
                x = args[0]
                if not replaying:
                    norms.append(_group_statistics(x, module.num_groups))
                    return output
                mean, var = norms[next(calls)]
                if not WHICH_NORMS[which_norms](module.num_channels // module.num_groups):
                    return output
                own_mean, own_var = _group_statistics(x, module.num_groups)
                mean, var = (mean, own_var) if statistics == "mean" else (own_mean, var) if statistics == "spread" else (mean, var)
                y = ((x.reshape(len(x), module.num_groups, -1) - mean) / torch.sqrt(var + module.eps)).reshape(x.shape)
                shape = (1, -1) + (1,) * (x.dim() - 2)  # the channel axis: 4-d feature maps, or the attention's [N, C, HW]
                return y * module.weight.view(shape) + module.bias.view(shape) if module.affine else y

            for module in vae.decoder.modules():
                if isinstance(module, torch.nn.GroupNorm):
                    handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def kept_change(vae, painted: torch.Tensor, original: torch.Tensor, kept: torch.Tensor, mid_attention: bool = True,
                norms_of_original: bool = False, which_norms: str = "all", statistics: str = "both") -> torch.Tensor:
    """How far the kept pixels move when ``painted`` is decoded instead of ``original``, in grey levels (0–255).

    Args:
        vae: an ``AutoencoderKL``.
        painted, original: scaled latents ``[N, C, h, w]`` (as the UNet sees them) that agree where ``kept`` is true.
        kept: ``[H, W]`` booleans at pixel resolution: the pixels to compare.
        mid_attention: ``False`` decodes both without the decoder's middle self-attention.
        norms_of_original: decode ``painted`` with every GroupNorm's statistics taken from ``original``'s decoding.
        which_norms: with ``norms_of_original``, which GroupNorms take them: ``"all"``, ``"single-channel"`` (those
            whose groups hold one channel each: instance norms) or ``"multi-channel"`` (the rest).
        statistics: with ``norms_of_original``, which of them the original gives: ``"both"``, or only the ``"mean"`` (the
            spread is the painted picture's own) or the ``"spread"``.
    Returns:
        ``[N·K]``: for each kept pixel, the largest change of its R, G and B.
    """
    if which_norms not in WHICH_NORMS:
        raise ValueError(f"which_norms is one of {', '.join(map(repr, WHICH_NORMS))} (got {which_norms!r})")
    if statistics not in STATISTICS:
        raise ValueError(f"statistics is one of {', '.join(map(repr, STATISTICS))} (got {statistics!r})")
    if (which_norms != "all" or statistics != "both") and not norms_of_original:
        raise ValueError(f"which_norms={which_norms!r} and statistics={statistics!r} choose what the GroupNorms take from the "
                         "original: add norms_of_original=True")
    norms = [] if norms_of_original else None
    with _switches(vae, mid_attention, norms):
        before = to_pixels(vae, original)  # with norms_of_original, this decoding records the statistics …
    with _switches(vae, mid_attention, norms, which_norms, statistics):
        after = to_pixels(vae, painted)  # … and this one uses them
    grey = lambda x: (x.clamp(-1, 1) + 1) * 127.5  # noqa: E731  [-1, 1] → grey levels
    return (grey(after) - grey(before)).abs().amax(1)[:, kept.to(after.device)].flatten()

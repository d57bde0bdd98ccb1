"""An optional stage after the UNet: fine-tune the VAE's *decoder* only, so the pictures get sharper
without retraining anything else.

Why this works: the UNet learned to produce latents like the ones the VAE's *encoder* makes. Freeze
the encoder and those latents stay exactly as they were, so the trained UNet (and the grounding stage)
stays valid while the decoder learns to turn the same latents into better pixels. Stable Diffusion's
own VAE was improved this way after release (``sd-vae-ft-mse``: "fine-tuned the decoder only, so it
is a drop-in replacement for the existing autoencoder").

What the decoder is taught here: the objects are a small part of each picture, so a plain
pixel loss is mostly a background loss, and the first VAE stage drew small stars and hearts as
blobs. The world knows where every object is, so pixels on and around an object weigh 10× more.
With ``equal_objects`` a small object weighs as much in all as a big one (its pixels up to 4× more):
tiny-sd 2's round trip lost small outline drawings far more often than anything else.

With ``local`` the decoder is also taught to stay *local*: half of each batch is decoded from spliced latents (the
part beyond a random cut comes from another picture, as after inpainting), and each side of the cut must look like
its own picture. A decoder whose middle block attends over every latent pixel otherwise learns to spread one half's
background over the other (notebook 07 measures it), since no single picture ever asked it not to.

With ``clean`` the decoder is also taught not to leave *ghost smudges*: faint patches of colour a few grey levels off
the background, away from every object (``world.detect.stray_marks`` found them in two of three VAE round trips of
part 7's decoder). Under the pixel loss such a patch costs almost nothing (8 grey levels squared is 0.004 on the [-1, 1]
scale, spread over a few dozen pixels of 16,384), so nothing pushed them away. The ``stray_colour`` term prices them as
the detector sees them: the error's colour (its grey part taken out), averaged over 5×5 pixels, and only its worst
1% away from the objects counted, so one smudge weighs as much as a whole picture's worth of small errors. A decoder
trained so (part 12, 2026-12-05) took most coloured marks out of its round trips (73% → 5% of plain-background
pictures) but left the faint *dark* ones away from the objects as common as before (11%) and drew more near them
(11% → 20%, counting from 2 px; ``scripts/decoder_marks.py``): a term that looks only at colour mends only colour. ``clean_grey`` prices the grey part too, in training, where the original is known (a
world picture's own shadows and patterns are in ``images``, so a grey error there is the decoder's, not the world's).

With ``object_colour`` the decoder is also held to each object's *colour* as the detector reads it: the mean colour
over the object's pixels. A decoder trained with ``local`` and ``clean`` (part 8, 2026-12-05) drew orange objects
yellow in a quarter of the pictures while its per-pixel loss barely moved: a shift of every pixel of one object by a
few levels in one channel is a small error per pixel but a different colour word. ``object_colour_error`` prices it.

With ``keep_generated`` the decoder is held to the colours it gave the *UNet's* latents when the stage began. Every term
above trains on the encoder's latents, and part 8 showed that this is not enough: its round trips read orange as
orange (71 of 72 objects, as before), yet in generated pictures it drew orange as yellow, because the UNet's latents
sit a little off the encoder's and nothing held the decoder there. So before the first step the UNet draws a bank of
latents for world captions, the starting decoder pictures them and the detector finds their objects; each step then
decodes part of the bank and prices each object's mean colour against the starting decoder's
(``object_colour_error``), while the other terms mend the rest. With ``colour_reference`` the bank's pictures come from
another folder's decoder instead: a decoder that already mends the rest (part 8's) can then take its colours from one
that draws them right (part 7's), rather than keep its own.

With ``local_teacher`` the spliced half's targets are the *starting decoder's own pictures* of each side (or the
``colour_reference``'s), not the world's pictures: what ``scripts/decoder_locality.py`` measures (a kept side should
look as the starting decoder drew it before the splice). The plain term still asks for the world's pictures, so the
spliced term is the one that holds the decoder to its starting colours. With the world's pictures as targets (parts
8, 13 and 15) the spliced term asked for every other change too, and each such decoder lost orange. The starting
decoder is the checkpoint's as the stage begins: a part started again from its own checkpoint is held to its partly
trained decoder (pass ``colour_reference`` to pin one). With
``keep_generated`` the bank's latents are spliced too, their targets the bank's pictures: the UNet's latents, where
orange was lost, are where the decoder is held hardest. It did not keep orange either: part 16 (2026-12-06, 314 steps on
an H100, the term weighed 3) took the locality from 73.6 to 15.5 grey levels and held-out colour from 91.7% to 86.1%,
as part 15 had done (17.3, 86.1%; part 13 lost orange too). Why a decoder leaks at all: each GroupNorm divides by
statistics of the whole picture (notebook 07, ``lessons.decoder_reach``), so the decoder must learn features whose
statistics a stranger's half does not move, and four of its five full-resolution GroupNorms hold one channel per group,
which no other channel can steady.
"""

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler

from ..models.unet import build_random_pipeline
from ..world import render, sample_scenes, as_uint8
from ..trace.files import load_weights
from .checkpoint import read_log, save_weights
from .stages import Budget, _autocast, _run

OBJECT_WEIGHT = 10.0  # a pixel on or near an object counts this much more than a background pixel
EDGE = 4  # pixels around each object that count as "near": the anti-aliased edge the shape lives in
BIG_AREA = 1000  # pixels a big object covers at 128²; with equal_objects, smaller ones weigh more...
MAX_BOOST = 4.0  # ...up to this factor (a small object covers about 200 pixels)
STRAY_SHARE = 0.01  # the share of each picture's background pixels (the worst) that the stray_colour term averages
NEAR_WORST = 20  # the pixels per picture (the worst) that impossible_colour averages: about one smudge's
NEAR_REACH = 6  # pixels around each object that impossible_colour looks at: its soft edge and its shadow (6 px below right)
RING_TRUST = 6 / 127.5  # how far (6 grey levels) a background painted in may miss the picture for ring_fill to trust it
RING_EDGE = 2  # pixels next to an object that the ring loss leaves out: its soft edge, which decoders blur a little
SHADOW_SHIFT, SHADOW_BLUR = 3, 3  # at 128 px, the photo style's shadow: cast 3 px down and right, blurred (world.render)
# per picture, a feature map's peak norm over its mean above which droplet_loss prices it, for the decoder's
# second-to-last and last up blocks: with the decoder shipped on 2026-12-07, 64 round trips of rendered objects gave
# 7-9 and 19.5-23 where no spike was drawn, 13-22 and 47-73 where one was (the speckle)
DROPLET_LIMITS = (10.0, 25.0)
SPREAD_PIXELS = 25 / 128**2  # the share of a picture's pixels (25 at 128²) whose part of a group's spread spread_loss weighs
SPREAD_LIMIT = 0.1  # ... and the part of the spread they may supply before it costs (at 128², 25 pixels like any others: 0.15%)
SEAM = 1  # latent pixels on each side of a cut where the decoder may blend the two pictures (8 px each side at 128²)


def object_weights(masks: torch.Tensor, equal_objects: bool = False) -> torch.Tensor:
    """Per-pixel loss weights from object coverage ``[B, K, H, W]``: ``[B, 1, H, W]``, 1 on the
    background and ``OBJECT_WEIGHT`` on every object grown by ``EDGE`` pixels. With ``equal_objects``
    the excess weight of object k is multiplied by ``BIG_AREA / area_k``, between 1 and ``MAX_BOOST``."""
    near = F.max_pool2d(masks, 2 * EDGE + 1, stride=1, padding=EDGE) > 0  # [B, K, H, W]
    boost = torch.ones(masks.shape[:2], device=masks.device)
    if equal_objects:
        area = masks.sum((2, 3)).clamp(min=1)
        boost = (BIG_AREA / area).clamp(1, MAX_BOOST)
    excess = (near.float() * boost[:, :, None, None]).amax(1, keepdim=True)  # overlapping objects: the larger boost
    return 1 + (OBJECT_WEIGHT - 1) * excess


def spliced(latents: torch.Tensor, images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator):
    """What an inpainting hands the decoder: latents ``[B, C, h, w]`` whose part beyond a random vertical or horizontal
    cut comes from the next picture of the batch (``roll``), the pixels ``[B, 3, H, W]`` it should then draw (each side
    its own picture), their object masks ``[B, K, H, W]``, and a weight ``[B, 1, H, W]`` that is 0 within ``SEAM``
    latent pixels of the cut, where blending the two is fair."""
    batch, _, h, w = latents.shape
    device, scale = latents.device, images.shape[-1] // w
    vertical = torch.rand(batch, generator=gen, device=device) < 0.5
    cut = torch.randint(SEAM + 1, min(h, w) - SEAM, (batch,), generator=gen, device=device)  # between pixels cut − 1 and cut
    flip = torch.rand(batch, generator=gen, device=device) < 0.5  # which side is the other picture's
    rows, columns = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    where = torch.where(vertical[:, None, None], columns, rows)  # [B, h, w]: the coordinate across the cut
    other = ((where >= cut[:, None, None]) ^ flip[:, None, None]).float()[:, None]  # [B, 1, h, w]
    far = ((where.float() + 0.5 - cut[:, None, None]).abs() > SEAM).float()[:, None]
    grow = lambda m: F.interpolate(m, scale_factor=scale, mode="nearest")  # noqa: E731  latent grid → pixels
    mix = lambda a, m: a * (1 - m) + a.roll(1, 0) * m  # noqa: E731
    pixels_other = grow(other)
    return mix(latents, other), mix(images, pixels_other), mix(masks, pixels_other), grow(far)


def decoder_loss(recon: torch.Tensor, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The VAE stage's MSE + ½·L1, averaged with per-pixel ``weights``: images ``[B, 3, H, W]``,
    weights ``[B, 1, H, W]`` → a scalar."""
    per_pixel = ((recon - images) ** 2 + 0.5 * (recon - images).abs()).mean(1, keepdim=True)
    return (weights * per_pixel).sum() / weights.sum()


def worst_error(recon: torch.Tensor, target: torch.Tensor, worst: int = NEAR_WORST) -> torch.Tensor:
    """The worst-pixels loss: decoded ``recon`` against ``target`` ``[B, 3, H, W]`` → a scalar: per picture, the mean
    of its ``worst`` pixels' errors (each pixel's largest error over R, G and B), averaged over the pictures.

    Why: the speckle the decoder draws at an object's edge is about twenty pixels a hundred grey levels off, which
    the per-pixel loss (``decoder_loss``) averages with sixteen thousand others (20 pixels are 0.12% of a picture); here it
    is the loss. It prices any mark against a clean target (``regroup --truth``: the world's own pictures), near an
    object or far from it, in any colour, grey included."""
    error = (recon - target).abs().amax(1).flatten(1)  # [B, H·W]
    return error.topk(min(worst, error.shape[1]), dim=1).values.mean()


def stray_colour(recon: torch.Tensor, images: torch.Tensor, masks: torch.Tensor, grey: float = 0.0) -> torch.Tensor:
    """The ghost-smudge loss: decoded ``recon`` against ``images`` ``[B, 3, H, W]``, object coverage ``masks``
    ``[B, K, H, W]`` → a scalar. Per pixel, the error's colour (the error minus its mean over R, G, B: the detector
    takes a grey-level offset for a pattern or a shadow, not a smudge) as a length, averaged over 5×5 pixels as
    ``stray_marks`` does, plus ``grey`` times the size of the grey part's own 5×5 average (0: the detector's view; 1: a
    dark or light patch costs as much as a coloured one); on pixels more than ``EDGE`` from every object, the mean of
    each picture's worst ``STRAY_SHARE``."""
    error = recon - images
    offset = error.mean(1, keepdim=True)  # [B, 1, H, W]: the grey part, signed
    blur = lambda x: F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)  # noqa: E731
    # the grey part is averaged *before* its size is taken: a texture the decoder draws a little off (errors both
    # ways, as on noise and stripes) averages out, a dark or light patch does not (world.detect.invented_marks too)
    local = blur((error - offset).norm(dim=1, keepdim=True)) + grey * blur(offset).abs()  # [B, 1, H, W]
    away = F.max_pool2d(masks.amax(1, keepdim=True), 2 * EDGE + 1, stride=1, padding=EDGE) == 0
    worst = max(1, round(STRAY_SHARE * local[0].numel()))
    return (local * away).flatten(1).topk(worst, dim=1).values.mean()


def impossible_colour(recon: torch.Tensor, pictures: torch.Tensor, masks: torch.Tensor, reach: int = NEAR_REACH) -> torch.Tensor:
    """The near-object smudge loss, for pictures with no clean original (the UNet's latents): decoded ``recon`` and the
    reference ``pictures`` ``[B, 3, H, W]`` in [-1, 1] (whose border gives the background's colour and whose ``masks``
    ``[B, K, H, W]`` give each object's), → a scalar.

    Around an object the world draws only its soft edge (the object's colour blended with the background's) and its
    shadow (the background darkened): every such colour is a mix ``a·background + b·object`` with a, b ≥ 0, a plane
    through black in RGB. The speckled green-and-purple patch the UNet's latents decode to at an object's lower edge
    lies off that plane. Per pixel within ``reach`` pixels of object k (outside every object), its distance from k's
    plane (along ``background × object``, normalised; objects whose colour lies on the background's line, a grey on
    grey, have no plane and are left out), averaged over 3×3 pixels; per picture the mean of its worst ``NEAR_WORST``
    pixels (a smudge is a few pixels of a ring of hundreds), averaged over the batch. It asks nothing else of a pixel:
    the other terms hold the decoder to its teacher's picture. On 32 of the UNet's pictures (tiny-sd 2, part 17's
    decoder, seed 5) it reads 0.067 where the detector finds a mark within 2 px of an object (24), 0.020 where it finds
    none, and 0.010 on 32 of the world's own renders (their grey patterns on a coloured background)."""
    x, ref = (recon + 1) / 2, (pictures + 1) / 2
    frame = torch.ones_like(ref[:, :1])
    frame[..., 3:-3, 3:-3] = 0  # the outermost 3 pixels: where world.detect reads the background's colour
    background = (ref * frame).sum((2, 3)) / frame.sum((2, 3))  # [B, 3]
    area = masks.sum((2, 3))  # [B, K]
    colour = torch.einsum("bchw,bkhw->bkc", ref, masks) / area.clamp(min=1)[..., None]  # [B, K, 3]
    normal = torch.linalg.cross(background[:, None].expand_as(colour), colour, dim=-1)  # [B, K, 3]
    length = normal.norm(dim=-1, keepdim=True)
    valid = ((area > 0) & (length[..., 0] > 0.05)).float()  # [B, K]: present, and not on the background's line
    inside = masks.amax(1, keepdim=True) > 0  # [B, 1, H, W]
    ring = (F.max_pool2d(masks, 2 * reach + 1, stride=1, padding=reach) > 0) & ~inside  # [B, K, H, W]
    off = torch.einsum("bchw,bkc->bkhw", x, normal / length.clamp(min=1e-6)).abs()  # the distance from each plane
    off = F.avg_pool2d(off * ring * valid[..., None, None], 3, stride=1, padding=1)  # [B, K, H, W]
    return off.amax(1).flatten(1).topk(NEAR_WORST, dim=1).values.mean()


def speckle_ring(masks: torch.Tensor, reach: int = NEAR_REACH, edge: int = 0) -> torch.Tensor:
    """``[B, 1, H, W]`` bool: the background within ``reach`` pixels of an object (coverage ``masks`` ``[B, K, H, W]``),
    where the decoders draw their speckle, less the ``edge`` pixels next to the object."""
    grown = lambda by: F.max_pool2d(masks.amax(1, keepdim=True), 2 * by + 1, stride=1, padding=by) > 0  # noqa: E731
    return grown(reach) & ~grown(edge)


def _fill(pictures: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``pictures`` ``[B, 3, H, W]`` with the pixels not ``known`` (``[B, 1, H, W]`` bool) painted in from their known
    neighbours, one ring of pixels a step, each the mean of the 3×3 pixels already painted or known (an onion peel:
    a smooth background, gradients included, is continued; a pattern or a shadow is not), until every pixel is."""
    value, weight = pictures * known, known.float()
    for _ in range(max(pictures.shape[-2:])):  # a pixel in a hollow between objects may lie far from the known ones
        total, count = F.avg_pool2d(value, 3, stride=1, padding=1), F.avg_pool2d(weight, 3, stride=1, padding=1)
        new = (weight == 0) & (count > 0)
        if not new.any():
            break
        value = torch.where(new, total / count.clamp(min=1e-6), value)
        weight = torch.where(new, torch.ones_like(weight), weight)
    return value


def ring_fill(pictures: torch.Tensor, masks: torch.Tensor, reach: int = NEAR_REACH, edge: int = RING_EDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """A clean target for the ring around the objects of pictures that have no clean original (the UNet's latents as a
    decoder draws them): ``pictures`` ``[B, 3, H, W]`` in [-1, 1] and the detector's object ``masks`` ``[B, K, H, W]`` →
    ``(target [B, 3, H, W], where [B, 1, H, W] bool)``: the pixels where the target can be trusted.

    In the world nothing of an object reaches past its soft edge but the photo style's shadow, cast 3 pixels down and
    right and blurred over 2 more (``world.render``): the rest of the ring of ``reach`` pixels around it is plain
    background. So the target there is the background beyond the ring, painted in (``_fill``), and ``where`` is the
    ring less the pixels a shadow may darken and the ``edge`` pixels next to the object (the detector's mask may leave
    out an object's soft edge, and the target would then ask to erase it); elsewhere the target is the picture.
    Whether the background beyond is smooth enough to be continued is tested on the picture: the band of ``reach``
    pixels beyond the ring is painted in the same way from farther out, and a picture where any 3×3 patch of that band
    comes out more than ``RING_TRUST`` off (a pattern, or a mark) has no ``where``; a gradient passes. (Part 27's
    decoder, trained with it, moved some of the ring's error into those ``edge`` pixels: a slightly darker rim hugging
    each outline, ``scripts/edge_darkening.py``.)"""
    inside = masks.amax(1, keepdim=True) > 0
    ring = speckle_ring(masks, reach)
    near = speckle_ring(masks, 2 * reach) | inside
    band = near & ~ring & ~inside
    tried = _fill(pictures, ~near)
    miss = F.avg_pool2d((tried - pictures).abs().amax(1, keepdim=True), 3, stride=1, padding=1) * band  # [B, 1, H, W]
    trusted = miss.flatten(1).amax(1) < RING_TRUST  # [B]
    cast = F.pad(masks.amax(1, keepdim=True), (SHADOW_SHIFT, 0, SHADOW_SHIFT, 0))[..., :masks.shape[-2], :masks.shape[-1]]
    shadow = F.max_pool2d(cast, 2 * SHADOW_BLUR + 1, stride=1, padding=SHADOW_BLUR) > 0
    target = torch.where(ring, _fill(pictures, ~ring & ~inside), pictures)
    return target, speckle_ring(masks, reach, edge) & ~shadow & trusted[:, None, None, None]


def ring_error(recon: torch.Tensor, target: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The ring loss: decoded ``recon`` against a ``target`` ``[B, 3, H, W]`` that is clean on the pixels ``where``
    (``[B, 1, H, W]`` bool: the ring around the objects, ``speckle_ring``, against the world's own picture, or
    ``ring_fill``'s) → a scalar: per picture, the mean of its ``NEAR_WORST`` worst pixels there (each pixel's largest
    error over R, G and B, averaged over 3×3 pixels), averaged over the pictures that have any such pixel.

    Why: what stays of the speckle (part 26's decoder) is a soft dark or pink blot of about twenty pixels at one
    corner of an object: a few pixels among sixteen thousand for the per-pixel loss, grey for ``impossible_colour``
    (a darker background lies on its plane), and in the ring that ``stray_colour`` leaves to the objects. Here the
    ring alone is priced, against a picture that has no blot."""
    error = F.avg_pool2d((recon - target).abs().amax(1, keepdim=True), 3, stride=1, padding=1) * where
    worst = error.flatten(1).topk(min(NEAR_WORST, error[0].numel()), dim=1).values.mean(1)  # [B]
    keep = where.flatten(1).any(1).float()
    return (worst * keep).sum() / keep.sum().clamp(min=1)


class _Probe:
    """Forward hooks on ``modules`` for one ``with`` block, keeping ``keep(module, args, output)`` of every call in
    ``held``; removed on leaving, so the model is the library's own again (the recorders' way: observe, change
    nothing)."""

    def __init__(self, modules, keep):
        self.modules, self._keep, self.held, self._hooks = list(modules), keep, [], []

    def __enter__(self):
        self.held.clear()
        self._hooks = [m.register_forward_hook(lambda m, args, out: self.held.append(self._keep(m, args, out)))
                       for m in self.modules]
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()


class DropletProbe(_Probe):
    """Holds the decoder's full-resolution feature maps (the outputs of its last two up blocks, ``[B, C, H, W]``, in
    ``features``) while installed (``with DropletProbe(vae.decoder) as probe: vae.decode(z)``), for :func:`droplet_loss`.

    Why: a GroupNorm divides every pixel of a group by statistics of the whole picture, so a network that wants to
    set a picture's overall strength can do it by drawing one strong, local spike that dominates those statistics:
    StyleGAN's "water droplets" (Karras et al. 2020, section 2), which they traced to instance normalisation. tiny-sd
    2's decoder of part 17 spiked where it drew the green-and-purple speckle at an object's lower edge: its last up block's
    feature norm peaks at a median 56 times its mean in round trips with a mark, 21 in those without
    (``scripts/decoder_droplets.py``). Pricing that peak (part 21) brought it down and left the marks. The spike
    lived in the full-resolution groups of 2 channels, too few to hold one channel large and constant instead
    (:func:`constant_share`); regrouped to 4 groups (parts 25 and 26) the decoder draws none, and the
    green-and-purple speckle pales (a third less colour off the plane around the objects) without going; what stayed
    went with the ring around each object priced (part 27, which ships: :func:`ring_error`)."""

    def __init__(self, decoder):
        super().__init__(decoder.up_blocks[-2:], lambda module, args, out: out)

    @property
    def features(self) -> list[torch.Tensor]:
        return self.held


def droplet_loss(features: list[torch.Tensor], limits: tuple[float, ...] = DROPLET_LIMITS) -> torch.Tensor:
    """The droplet loss: a :class:`DropletProbe`'s feature maps ``[B, C, H, W]`` (one list entry per up block and
    decode call, in order) → a scalar. Per picture and map, the norm over channels at each pixel; its peak over its
    mean, as a share beyond the block's limit (2 = twice the limit), squared; averaged over pictures and maps. A
    spike that carries a picture's strength past the GroupNorms costs; an object's edge, a few times the mean, costs
    nothing."""
    costs = []
    for f, limit in zip(features, limits * (len(features) // len(limits))):
        norm = f.float().norm(dim=1).flatten(1)  # [B, H·W]
        costs.append(F.relu(norm.amax(1) / norm.mean(1).clamp(min=1e-6) / limit - 1).pow(2).mean())
    return torch.stack(costs).mean()


class GroupNormProbe(_Probe):
    """Holds ``(norm, input [B, C, H, W])`` for each GroupNorm in the decoder's last two up blocks and its
    ``conv_norm_out`` (``inputs``) while installed (``with GroupNormProbe(vae.decoder) as probe: vae.decode(z)``), for
    :func:`spread_loss`: what those norms divide by, where the decoder's spike builds up. ``everywhere=True`` holds
    every GroupNorm of the decoder instead (the middle attention's input ``[B, C, H·W]`` among them), for
    :func:`steady_loss`."""

    def __init__(self, decoder, everywhere: bool = False):
        blocks = (decoder,) if everywhere else (*decoder.up_blocks[-2:], decoder.conv_norm_out)
        norms = [m for block in blocks for m in block.modules() if isinstance(m, torch.nn.GroupNorm)]
        super().__init__(norms, lambda module, args, out: (module, args[0]))

    @property
    def norms(self) -> list[torch.nn.GroupNorm]:
        return self.modules

    @property
    def inputs(self) -> list[tuple]:
        return self.held


def spread_share(norm: torch.nn.GroupNorm, x: torch.Tensor, pixels: float = SPREAD_PIXELS) -> torch.Tensor:
    """A GroupNorm's input ``x [B, C, H, W]`` → ``[B, G]``: the share of each group's spread (its squared deviation
    from the group's mean, summed over the picture) that its ``pixels`` share of pixels deviating most supply. A
    droplet is a few pixels that supply most of it, and so set what every other pixel is divided by."""
    b, c, h, w = x.shape
    x = x.float().view(b, norm.num_groups, c // norm.num_groups, h * w)
    deviation = (x - x.mean((2, 3), keepdim=True)).pow(2).sum(2)  # [B, G, H·W]
    top = deviation.topk(max(1, round(pixels * h * w)), dim=-1).values.sum(-1)
    return top / deviation.sum(-1).clamp(min=1e-12)


def constant_share(norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """A GroupNorm's input ``x [B, C, H, W]`` → ``[B, G]``: the share of each group's spread that its channels' own
    means supply (how far each channel's mean over the picture lies from the group's mean), the rest being how each
    channel varies across the picture. A channel held large and constant sets its group's spread as a droplet does,
    with no spike to draw: part 17's decoder's groups of 4 channels and more held a third to two thirds of their spread
    that way, its groups of 2 almost none (``scripts/decoder_droplets.py``)."""
    b, c, h, w = x.shape
    x = x.float().view(b, norm.num_groups, c // norm.num_groups, h * w)
    channel_means = x.mean(-1)  # [B, G, C/G]
    between = (channel_means - channel_means.mean(-1, keepdim=True)).pow(2).mean(-1)
    return between / x.var((2, 3), unbiased=False).clamp(min=1e-12)


def spread_loss(inputs: list, limit: float = SPREAD_LIMIT) -> torch.Tensor:
    """The spread loss: a :class:`GroupNormProbe`'s ``(norm, input)`` pairs → a scalar. Per picture, norm and group,
    the :func:`spread_share` beyond ``limit``, squared, averaged. Unlike :func:`droplet_loss`, which reads the norm
    over all channels, it reads what each group's statistics are taken from: a spike in one group's channels, small
    beside the other channels, still costs."""
    return torch.stack([F.relu(spread_share(norm, x) - limit).pow(2).mean() for norm, x in inputs]).mean()


def steady_loss(inputs: list) -> torch.Tensor:
    """The steady loss: a :class:`GroupNormProbe`'s ``(norm, input [B, C, …])`` pairs (``everywhere=True``) → a scalar:
    how much each group's statistics differ from picture to picture in the batch. Per norm and group, the variance
    over the batch of the group's mean (divided by the group's average spread, so a layer's scale does not matter)
    plus that of the log of its spread; averaged.

    Why: a GroupNorm's statistics are the whole picture's, which is how an inpainting's painted half moves the kept
    half (``lessons.decoder_reach``: with every norm given the kept picture's statistics, the splices' kept half
    moves half as much). A decoder whose statistics were the same for every picture would normalise each one by the
    same numbers: the norms would be fixed per-channel scales and shifts, and could carry nothing across. Pricing
    the statistics' variation asks for that directly, at every norm, where the splicing term (``spliced``) asks it
    only of the output."""
    terms = []
    for norm, x in inputs:
        flat = x.float().reshape(len(x), norm.num_groups, -1)
        mean, var = flat.mean(-1), flat.var(-1, unbiased=False)  # [B, G]
        terms.append((mean.var(0) / var.mean(0).clamp(min=1e-6)).mean() + torch.log(var + 1e-6).var(0).mean())
    return torch.stack(terms).mean()


def object_colour_error(recon: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The object-colour loss: decoded ``recon`` against ``images`` ``[B, 3, H, W]``, object coverage ``masks``
    ``[B, K, H, W]`` → a scalar. Each object's mean colour (R, G, B over its coverage) in the decoded picture against the
    original's, the squared distance averaged over the objects present (slots with no coverage are left out)."""
    area = masks.sum((2, 3))  # [B, K]
    mean = lambda x: torch.einsum("bchw,bkhw->bkc", x, masks) / area.clamp(min=1)[..., None]  # noqa: E731  [B, K, 3]
    present = (area > 0).float()
    return (((mean(recon) - mean(images)) ** 2).sum(-1) * present).sum() / present.sum().clamp(min=1)


def bank_captions(n: int, seed: int, world: int, colours: tuple[str, ...] = ()) -> list[str]:
    """``n`` world captions for a bank of generated latents; with ``colours`` (say ``("orange", "yellow")``) half of them
    name one of those colours: more of the bank where two colours lie close and a decoder most easily moves one into
    the other. Never a held-out pair (``sample_scenes`` leaves them out). ``ValueError`` if too few captions name them."""
    scenes = sample_scenes([seed, 11], n, version=world)
    if colours:  # an object whose caption names its colour
        naming = [s for s in sample_scenes([seed, 12], 20 * n, version=world)
                  if any(o.color in colours and "color" in (o.said or ()) for o in s.objects)]
        if len(naming) < n // 2:
            raise ValueError(f"only {len(naming)} of {20 * n} world captions name {', '.join(colours)}: fewer than half a bank of {n}")
        scenes = scenes[:n - n // 2] + naming[:n // 2]
    return [scene.caption for scene in scenes]


@torch.no_grad()
def _bank(latents: torch.Tensor, vae, world: int) -> tuple:
    """A bank from generated ``latents`` ``[n, 4, h, w]`` (unscaled): ``(latents, pictures [n, 3, H, W] in [-1, 1] as
    ``vae`` draws them, the detector's object masks in those pictures [n, 4, H, W])`` (zeros where fewer were found)."""
    from ..world.detect import detect  # (the detector reads numpy pictures; only the banks need it)

    pictures = torch.cat([vae.decode(chunk).sample.float().clamp(-1, 1) for chunk in latents.split(128)])
    masks = np.zeros((len(latents), 4, *pictures.shape[-2:]), dtype=np.float32)
    for i, picture in enumerate(as_uint8(pictures)):
        for j, found in enumerate(detect(picture, version=world)[:4]):
            masks[i, j] = found.mask
    return latents, pictures, torch.from_numpy(masks).to(latents.device)


def generated_bank(pipe, vae, n: int, device, seed: int, world: int, batch: int = 128, steps: int = 20,
                   colours: tuple[str, ...] = ()) -> tuple:
    """What the UNet of ``pipe`` (a trained tiny-sd pipeline) makes for ``n`` world captions (``bank_captions``), guided
    (7.5, DDIM with ``steps`` steps), and how ``vae``'s decoder (the one being trained, as it starts, or a
    ``colour_reference``) draws it: ``latents [n, 4, h, w]`` (unscaled, as the decoder takes them), ``pictures [n, 3, H, W]``
    in [-1, 1] and the detector's object masks in them ``[n, 4, H, W]`` (zeros where fewer objects were found)."""
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    captions, latents = bank_captions(n, seed, world, colours), []
    for start in range(0, n, batch):
        generator = torch.Generator(device).manual_seed(seed * 1_000_003 + start)
        with torch.no_grad():
            latents.append(pipe(captions[start:start + batch], num_inference_steps=steps, guidance_scale=7.5,
                                generator=generator, output_type="latent").images / vae.config.scaling_factor)
    return _bank(torch.cat(latents), vae, world)


def flux_bank(flux, vae, n: int, device, seed: int, world: int, batch: int = 64, steps: int = 25, guidance: float = 4.0,
              size: int = 128, colours: tuple[str, ...] = ()) -> tuple:
    """As ``generated_bank``, from tiny-flux's transformer (``flux``: a diffusers ``FluxPipeline`` whose latents are
    tiny-sd 2's), drawn as its pipeline draws them (``steps`` Euler steps, real CFG ``guidance`` against ""), ``size`` px
    a side: the same triple. Why a second bank: tiny-flux shares the decoder, and its latents sit elsewhere than the
    UNet's; every local decoder held to the UNet's bank alone (parts 13 to 20) drew tiny-flux's orange yellower."""
    flux.set_progress_bar_config(disable=True)
    captions, latents = bank_captions(n, seed + 1, world, colours), []  # other captions than the UNet bank's
    shift = vae.config.shift_factor or 0.0  # SD 1/2's VAE has none; Flux's pipeline reads (z − shift)·scale
    for start in range(0, n, batch):
        prompts = captions[start:start + batch]
        generator = torch.Generator(device).manual_seed(seed * 1_000_003 + start)
        with torch.no_grad():
            packed = flux(prompt=prompts, negative_prompt=[""] * len(prompts), true_cfg_scale=guidance, num_inference_steps=steps,
                          height=size, width=size, generator=generator, output_type="latent", max_sequence_length=64).images
        latents.append(flux._unpack_latents(packed, size, size, flux.vae_scale_factor) / vae.config.scaling_factor + shift)
    return _bank(torch.cat(latents).to(vae.dtype), vae, world)


def decoder_lr(batch_size: int) -> float:
    """The decoder stage's learning rate: 2e-4 at the GPU's batch of 256 or more, and smaller for smaller batches, as
    √(batch / 256) (a batch 16 times smaller has gradients about 4 times noisier). At 2e-4 a fine-tune with batches of 16 on
    a CPU (2026-12-05) saw its loss climb from 0.078 to 0.215 in 150 steps; at 5e-5 it fell, 0.080 → 0.060 in 484."""
    return 2e-4 * min(1.0, (batch_size / 256) ** 0.5)


BANK = 1024  # generated latents kept for keep_generated (250 MB with their pictures and masks)


def train_decoder(ckpt: Path, minutes: float, batch_size: int, device, seed: int, max_steps=None, log_every=20,
                  anneal: bool = True, world: int = 1, equal_objects: bool = False, local: float = 0.0, clean: float = 0.0,
                  clean_grey: float = 0.0, object_colour: float = 0.0, keep_generated: float = 0.0, bank_size: int = BANK, colour_reference: Path | None = None,
                  local_teacher: bool = False):
    """Fine-tune ``vae.decoder`` and ``vae.post_quant_conv`` on world pictures; the encoder stays frozen.

    Each step encodes a fresh batch, *samples* a latent from the posterior (the UNet's latents are never
    exactly the posterior mean either) and decodes it. The learning rate falls over the second half.
    ``equal_objects``: weigh every object about the same, however small (see ``object_weights``). ``local``: the weight
    of the spliced half of the loss (see ``spliced``; 0 = off). ``clean``: the weight of the ghost-smudge term (see
    ``stray_colour``; 0 = off), ``clean_grey`` its grey part's weight within it (0 = coloured marks only). ``object_colour``: the weight of the object-colour term (see ``object_colour_error``;
    0 = off). ``keep_generated``: the weight of the term that keeps the colours of the UNet's own latents (see
    ``generated_bank``; 0 = off): ``bank_size`` of them, a quarter of a batch decoded each step. ``colour_reference``: a
    pipeline folder whose VAE draws the bank's pictures (default: the decoder being trained, as it starts).
    ``local_teacher``: the spliced half's targets are that same decoder's pictures of each side, and with
    ``keep_generated`` the bank is spliced too (see the module's docstring).
    """
    # The clock starts before the bank is drawn: ``minutes`` is the stage's whole wall time, as a machine lent for a
    # fixed time needs it (part 10 drew its bank of 1,024 for about 2.5 minutes on an H100, outside its 6, and a device
    # call's time limit cut it off before its export, twice)
    budget = Budget(minutes, max_steps)
    pipe = build_random_pipeline("tiny-sd", seed=seed)
    vae = pipe.vae.to(device)
    if not load_weights(vae, ckpt, "vae"):
        raise RuntimeError(f"{ckpt} has no trained VAE yet: run the vae stage first")
    vae.float().train()
    for frozen in (vae.encoder, vae.quant_conv):
        frozen.eval().requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    if keep_generated:  # the UNet's own latents, and the colours the decoder gives them now (before any step)
        for module, name in ((pipe.text_encoder, "text_encoder"), (pipe.unet, "unet")):
            if not load_weights(module, ckpt, name):
                raise RuntimeError(f"{ckpt} has no trained {name} yet: keep_generated needs the UNet's latents (run the unet stage first)")
            module.to(device).eval()
        vae.eval()
        painter = vae if colour_reference is None else AutoencoderKL.from_pretrained(Path(colour_reference) / "vae").to(device).eval()
        bank = generated_bank(pipe, painter, bank_size, device, seed, world)
        del painter  # a reference VAE's memory is free again once the bank is drawn
        vae.train()
        for frozen in (vae.encoder, vae.quant_conv):
            frozen.eval()
    teacher = None
    if local_teacher:  # the decoder as the stage begins (or the colour reference's): what each spliced side should look like
        source = AutoencoderKL.from_pretrained(Path(colour_reference) / "vae") if colour_reference is not None else vae
        teacher = copy.deepcopy(source).to(device).float().eval().requires_grad_(False)

    @torch.no_grad()
    def pictured(latents):  # the teacher's pictures, in float32 outside autocast, as decoder_locality.py decodes
        with torch.autocast(device.type, enabled=False):
            return teacher.decode(latents.float()).sample.clamp(-1, 1)

    budget.begin_steps()
    gen = torch.Generator(device).manual_seed(seed * 1_000_003 + 5 + len(read_log(ckpt).get("decoder", {}).get("step", [])))

    def step_fn(step):
        images, masks = render(sample_scenes([seed, 5, step], batch_size, version=world), device=device)
        with _autocast(device):
            with torch.no_grad():  # the frozen half: image → posterior → a latent sample
                latents = vae.encode(images).latent_dist.sample(generator=gen)
            if not local:
                recon = vae.decode(latents).sample.float()
            else:
                mixed, targets, target_masks, far = spliced(latents, images if teacher is None else pictured(latents), masks, gen)
                recon, recon_mixed = vae.decode(torch.cat([latents, mixed])).sample.float().chunk(2)
        loss = decoder_loss(recon, images, object_weights(masks, equal_objects))
        if local:
            loss = loss + local * decoder_loss(recon_mixed, targets, far * object_weights(target_masks, equal_objects))
        if clean:
            loss = loss + clean * stray_colour(recon, images, masks, grey=clean_grey)
        if object_colour:
            loss = loss + object_colour * object_colour_error(recon, images, masks)
        if keep_generated:
            pick = torch.randint(0, bank_size, (max(1, batch_size // 4),), generator=gen, device=device)
            with _autocast(device):
                kept = vae.decode(bank[0][pick]).sample.float()
            loss = loss + keep_generated * object_colour_error(kept, bank[1][pick], bank[2][pick])
            if teacher is not None:  # the UNet's latents spliced too, each side held to the bank's picture of it
                bank_mixed, bank_targets, bank_masks, bank_far = spliced(bank[0][pick], bank[1][pick], bank[2][pick], gen)
                with _autocast(device):
                    bank_recon = vae.decode(bank_mixed).sample.float()
                loss = loss + local * decoder_loss(bank_recon, bank_targets, bank_far * object_weights(bank_masks, equal_objects))
        return loss

    steps = _run("decoder", step_fn, params, decoder_lr(batch_size), ckpt, budget, log_every, anneal=anneal,
                 save=lambda: save_weights(vae, ckpt, "vae"))
    save_weights(vae, ckpt, "vae")  # the encoder's weights are saved unchanged beside the new decoder
    return steps

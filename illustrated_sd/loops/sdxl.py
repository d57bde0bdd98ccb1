"""What SDXL adds to Stable Diffusion's loop: a second conditioning path beside cross-attention.

SD 1/2's UNet hears the prompt only through cross-attention. SDXL's UNet also adds two things to its
*timestep embedding* (the vector every ResNet block receives, see notebook 04):

- the **pooled text vector**: the second text encoder's summary of the whole prompt, ``[1, 1280]``;
- the **micro-conditioning** ``time_ids``: six numbers about the picture itself. SDXL was trained on
  images of every size, upscaled and cropped; it was told each image's original size, the crop's top-left
  corner and the target size, so that at sampling time one can ask for "an image that was 1024×1024
  and not cropped" and get a centred, sharp picture. Each number is embedded like a timestep (sinusoids,
  256 wide) and the 6 × 256 + 1280 values go through the UNet's ``add_embedding`` MLP.

A refiner says "how good it looked" instead of the target size: an aesthetic score (6 for the prompt,
2.5 for the negative row, diffusers' defaults).
"""

import torch

TIME_ID_NAMES = ("original height", "original width", "crop top", "crop left", "target height", "target width")
AESTHETIC_TIME_ID_NAMES = ("original height", "original width", "crop top", "crop left", "aesthetic score")
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5  # diffusers' defaults for a refiner


def is_sdxl(pipeline) -> bool:
    """Whether a diffusers pipeline is one of the SDXL family (it has a second text encoder slot)."""
    return hasattr(pipeline, "text_encoder_2")


def uses_aesthetic_score(pipeline) -> bool:
    """A refiner is conditioned on an aesthetic score instead of the target size."""
    return bool(getattr(pipeline.config, "requires_aesthetics_score", False))


def time_ids(pipeline, height: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """The micro-conditioning of a ``height × width`` picture, uncropped, as diffusers' defaults make it.

    Returns:
        ``(prompt_ids [1, k], negative_ids [1, k], names)``: ``k`` = 6 (base) or 5 (refiner), ``names`` what
        each number means (``TIME_ID_NAMES`` or ``AESTHETIC_TIME_ID_NAMES``).
    Raises:
        ValueError: the UNet's ``add_embedding`` expects a different number of values (the config is not SDXL's).
    """
    size, crop = [height, width], [0, 0]
    if uses_aesthetic_score(pipeline):
        ids, negative, names = size + crop + [AESTHETIC_SCORE], size + crop + [NEGATIVE_AESTHETIC_SCORE], AESTHETIC_TIME_ID_NAMES
    else:
        ids = negative = size + crop + size
        names = TIME_ID_NAMES
    unet = pipeline.unet
    projection = pipeline.text_encoder_2.config.projection_dim if pipeline.text_encoder_2 is not None else None
    if projection is not None:
        expected = unet.add_embedding.linear_1.in_features
        given = unet.config.addition_time_embed_dim * len(ids) + projection
        if given != expected:
            raise ValueError(f"the UNet's add_embedding takes {expected} values, but {len(ids)} time ids and a "
                             f"{projection}-wide pooled text vector make {given}: the UNet and text encoder configs do not fit "
                             "together (a refiner's UNet needs requires_aesthetics_score=True, a base UNet False)")
    return torch.tensor([ids], dtype=dtype), torch.tensor([negative], dtype=dtype), names


def added_conditioning(text, ids: torch.Tensor, negative_ids: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """The UNet's ``added_cond_kwargs`` for every call of the loop: rows in the same order as the context.

    Args:
        text: an :class:`~illustrated_sd.loops.text.EncodedPrompt` from ``encode_prompt_xl`` (``pooled [1, P]``).
        ids, negative_ids: ``[1, k]`` from :func:`time_ids`.
    Returns:
        ``{"text_embeds": [B, P], "time_ids": [B, k]}`` with ``B`` = 2 with guidance (unconditional row first), else 1.
    """
    pooled, time = text.pooled, ids
    if text.guided:
        pooled, time = torch.cat([text.uncond_pooled, pooled]), torch.cat([negative_ids, ids])
    return {"text_embeds": pooled.to(device), "time_ids": time.to(device)}

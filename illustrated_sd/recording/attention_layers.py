"""Where the attention layers of a Stable Diffusion UNet are, and the grid each one works on.

A UNet2DConditionModel has, in every transformer block, a self-attention layer ``attn1`` (pixels
look at pixels) and a cross-attention layer ``attn2`` (pixels look at the 77 prompt tokens). The
down blocks halve the latent grid, the up blocks double it back, so the layers of SD 1.5 at 512 px
work on 64×64, 32×32, 16×16 and (the middle block) 8×8 grids.
"""

import re

from diffusers.models.attention_processor import Attention


def attention_layers(unet) -> dict[str, dict[str, Attention]]:
    """The UNet's attention layers by kind, in the order the UNet runs them.

    Returns:
        ``{"cross": {name: Attention}, "self": {name: Attention}}`` with names such as
        ``"down_blocks.0.attentions.0.transformer_blocks.0.attn2"``.
    """
    # named_modules() lists the modules in the order they were made, and diffusers makes the up blocks before the
    # middle one: sort down → mid → up, the way a latent travels through the U
    part = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    found = [(name, module) for name, module in unet.named_modules() if isinstance(module, Attention)]
    found.sort(key=lambda item: part.get(item[0].split(".")[0], 3))  # a stable sort: within a part, the model's order
    layers = {"cross": {}, "self": {}}
    for name, module in found:
        layers["cross" if module.is_cross_attention else "self"][name] = module
    return layers


def halvings(name: str, unet) -> int:
    """How many times the latent grid has been halved where layer ``name`` sits."""
    deepest = len(unet.config.down_block_types) - 1
    if match := re.match(r"down_blocks\.(\d+)\.", name):
        return int(match.group(1))
    if match := re.match(r"up_blocks\.(\d+)\.", name):
        return deepest - int(match.group(1))
    if name.startswith("mid_block."):
        return deepest
    raise ValueError(f"{name!r} is not an attention layer of a UNet2DConditionModel")


def halve(size: int, times: int) -> int:
    """A size after ``times`` stride-2 downsamplings (each rounds up: 13 → 7)."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


def layer_grid(name: str, unet, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of the grid layer ``name`` attends over, for a latent of size ``latent_hw``."""
    k = halvings(name, unet)
    return halve(latent_hw[0], k), halve(latent_hw[1], k)


def grid_from_queries(n_queries: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of a layer from its number of queries ``H·W`` (the latent, halved until it fits)."""
    h, w = latent_hw
    while h * w > n_queries:
        h, w = halve(h, 1), halve(w, 1)
    if h * w != n_queries:
        raise ValueError(f"{n_queries} queries do not form a grid of a {latent_hw} latent")
    return h, w


def short_name(name: str) -> str:
    """A compact label for plots: ``"down_blocks.1.attentions.0.transformer_blocks.0.attn2"`` → ``"down1.0"``."""
    block = re.match(r"(down|up)_blocks\.(\d+)\.attentions\.(\d+)", name)
    tb = re.search(r"transformer_blocks\.(\d+)", name)
    suffix = f".t{tb.group(1)}" if tb and tb.group(1) != "0" else ""
    if block:
        return f"{block.group(1)}{block.group(2)}.{block.group(3)}{suffix}"
    if name.startswith("mid_block"):
        return "mid" + suffix
    return name

"""What a recording will cost, known before it is made.

A trace grows with steps × layers × heads × pixels × tokens. For SD 1.5 at 512 px and 50 steps the
head-averaged cross-attention maps of all 16 layers take about 200 MiB in float16; keeping the 8
heads separately multiplies that by 8, and one self-attention map at 64×64 is 4096 × 4096 per head
and step (over 25 GiB for a whole generation). So the pipeline adds up the bill first and refuses a
recording over ``RecordOptions.memory_budget_gib``, with the changes that would make it fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .attention_layers import attention_layers, layer_grid

if TYPE_CHECKING:  # (recorders imports this module: its recording checks the budget first)
    from .recorders import RecordOptions

GiB = 2**30


class TraceBudgetError(ValueError):
    """A recording would exceed ``RecordOptions.memory_budget_gib``; the message says what to change."""


@dataclass
class TraceEstimate:
    """The bytes a trace will hold, by part.

    Attributes:
        cross_attention: ``{layer: bytes}`` of the cross-attention maps ``[S, heads or 1, H, W, 77]``.
        self_attention: ``{layer: bytes}`` of the self-attention maps ``[S, heads or 1, H, W, H·W]``.
        steps: bytes of the per-step latents, noise predictions and predicted x0.
        text: bytes of the token embeddings and the text encoder's hidden states.
        num_steps, heads: the step count and the largest head count, for the advice.
        batch: the traces this is the bill of (prompts drawn together), each ``1 / batch`` of it.
    """

    cross_attention: dict[str, int]
    self_attention: dict[str, int]
    steps: int
    text: int
    num_steps: int
    heads: int
    batch: int = 1

    @property
    def total(self) -> int:
        return sum(self.cross_attention.values()) + sum(self.self_attention.values()) + self.steps + self.text

    def summary(self) -> str:
        cross, self_ = sum(self.cross_attention.values()), sum(self.self_attention.values())
        parts = [f"cross-attention maps {_gib(cross)} ({len(self.cross_attention)} layers)"]
        if self.self_attention:
            parts.append(f"self-attention maps {_gib(self_)} ({len(self.self_attention)} layers)")
        parts.append(f"latents and noise {_gib(self.steps)}")
        return f"{_gib(self.total)}: " + ", ".join(parts)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 100 else f"{n / 2**20:.1f} MiB"


def estimate_trace(unet, text_encoders, record: RecordOptions, latent_shape: tuple[int, int, int], num_steps: int,
                   guided: bool, text_length: int = 77, prompt_tokens: int | None = None, batch: int = 1) -> TraceEstimate:
    """Add up what recording one generation with ``record`` will store.

    Args:
        unet, text_encoders: the pipeline's models (only their configs are read); one text encoder, or a
            list of them (SDXL has two, each of whose layers the trace keeps).
        record: what will be recorded.
        latent_shape: ``(C, h, w)`` of one latent.
        num_steps: UNet calls of the loop (``len(scheduler.timesteps)``).
        guided: classifier-free guidance on (adds the unconditional prediction and embeddings).
        text_length: tokens per prompt (77 for CLIP).
        prompt_tokens: the prompt's own tokens, markers included (a compact trace keeps their maps and one
            for the padding); ``None`` counts all ``text_length`` slots, an upper bound.
        batch: prompts generated together; every part of the bill is per prompt, so the total is ``batch`` times one.
    Returns:
        a :class:`TraceEstimate`; ``.total`` is within a few hundred bytes of the finished trace.
    """
    model_bytes = torch.empty((), dtype=unet.dtype).element_size()
    map_bytes = torch.empty((), dtype=record.dtype_for(unet.dtype)).element_size()
    layers = attention_layers(unet)
    hw = tuple(latent_shape[1:])

    def maps(names, keys_for) -> dict[str, int]:
        out = {}
        for name in names:
            h, w = layer_grid(name, unet, hw)
            heads = layers["cross"].get(name, layers["self"].get(name)).heads if record.per_head else 1
            out[name] = num_steps * heads * h * w * keys_for(h, w) * map_bytes
        return out

    cross = {}
    if record.cross_attention:
        cross = maps(record.layers if record.layers is not None else list(layers["cross"]), lambda h, w: text_length)
        if record.compact:  # one map per grid, the mean over the steps and the layers there
            grids = {layer_grid(name, unet, hw) for name in cross}
            keys = text_length if prompt_tokens is None else prompt_tokens + 1
            cross = {f"{h}×{w}": h * w * keys * map_bytes for h, w in grids}
    self_names = [n for n in layers["self"] if layer_grid(n, unet, hw)[0] in record.self_attention_resolutions]
    self_ = maps(self_names, lambda h, w: h * w)

    per_step = math.prod(latent_shape) * model_bytes
    kept = min(num_steps, record.keep_steps) if record.compact else num_steps  # a compact trace keeps a few steps
    # latents (S + 1), noise_pred, noise_pred_text, pred_x0, and noise_pred_uncond with guidance
    steps = per_step * ((kept + 1) + 3 * kept + (kept if guided else 0))
    encoders = text_encoders if isinstance(text_encoders, (list, tuple)) else [text_encoders]
    # every layer of every encoder, and the context the UNet reads (prompt, and negative with guidance)
    kept_layers = (lambda e: 1) if record.compact else (lambda e: e.config.num_hidden_layers + 1)  # compact: the last layer only
    layers_width = sum(kept_layers(e) * e.config.hidden_size for e in encoders if e is not None)
    context_width = unet.config.cross_attention_dim
    text = text_length * model_bytes * (layers_width + context_width * (2 if guided else 1))
    text += text_length * 8 * (len(encoders) - 1)  # a second tokenizer's int64 ids (SDXL)
    if unet.config.addition_embed_type == "text_time":  # SDXL: the pooled vector(s) and the time ids
        pooled = encoders[-1].config.projection_dim
        n_ids = (unet.add_embedding.linear_1.in_features - pooled) // unet.config.addition_time_embed_dim
        text += model_bytes * (pooled * (2 if guided else 1) + n_ids)
    all_heads = [a.heads for a in (*layers["cross"].values(), *layers["self"].values())] or [1]
    return TraceEstimate({k: v * batch for k, v in cross.items()}, {k: v * batch for k, v in self_.items()}, steps * batch,
                         text * batch, num_steps, max(all_heads), batch)


def check_budget(estimate: TraceEstimate, record: RecordOptions) -> None:
    """Raise :class:`TraceBudgetError` when ``estimate`` is over ``record.memory_budget_gib``, naming the fixes."""
    budget = record.memory_budget_gib
    if budget is None or estimate.total <= budget * GiB:
        return
    where = "host (CPU) memory" if record.to_cpu else "GPU memory"
    fixes = []
    if estimate.batch > 1:
        fixes.append(f"draw fewer prompts at once (these {estimate.batch} traces take {_gib(estimate.total // estimate.batch)} each; "
                     "illustrated-sd batch: --batch-size)")
    if record.per_head and estimate.heads > 1:
        fixes.append(f"average the heads (RecordOptions(per_head=False): about {estimate.heads}× smaller maps)")
    if estimate.self_attention:
        fixes.append(f"drop self-attention (self_attention_resolutions=(): saves {_gib(sum(estimate.self_attention.values()))})")
    if len(estimate.cross_attention) > 1:
        small = min(estimate.cross_attention.values())
        few = [n for n, b in estimate.cross_attention.items() if b == small]
        fixes.append(f"record fewer layers (e.g. RecordOptions(layers={few[:3]}), {_gib(small)} each)")
    fixes.append(f"take fewer steps (the trace grows linearly with the {estimate.num_steps} steps)")
    fixes.append("or raise RecordOptions(memory_budget_gib=...) if the memory is there")
    raise TraceBudgetError(
        f"this recording would need {estimate.summary()}, over the budget of {budget:g} GiB of {where}. "
        "Nothing was generated. To fit: " + "; ".join(fixes)
    )

"""Interventions: change what one word does during a generation, and see what it *causes*.

A heatmap (notebook 04) shows where a word's attention goes; it does not show that the word causes what is
drawn there. An edit changes that attention for one call, and the picture answers. prompt-to-prompt
(Hertz et al., 2022) is the anchor:

- :class:`Reweight` scales one word's share of every pixel's attention: 0 removes the word, 2 doubles it.
- :class:`Remove` takes a word out completely: the text encoder's later tokens cannot read it either (a
  causal text encoder copies "red" into every token after it, notebook 01), and no pixel attends to its slot.
- :class:`Swap` generates a new prompt while the pixels keep the *source* generation's cross-attention maps
  for the first steps, so the layout stays and only the swapped word changes.

Edits are passed to one call, ``pipe(prompt, edits=[...])``. For that call only, the pipeline wraps the
UNet's own attention processors on the layers an edit touches (:func:`editing`); the wrapped processor
still runs PyTorch's fused ``scaled_dot_product_attention``, given an additive bias on the logits. The
UNet's processors are put back afterwards, also after an error. Each edit is recorded in ``trace.edits``,
and the trace's attention maps are the attention the model used, edits included.
"""

import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from einops import rearrange

from .. import checks
from .attention_layers import attention_layers, layer_grid
from ..trace.unet import find_slots, require_trace


@dataclass
class Reweight:
    """Scale the attention that every pixel gives ``word`` by ``factor``, then renormalise each pixel's row.

    For pixel query q and token keys k_j: p_j = softmax_j(q·k_j/√d + b_j) with b = log(factor) at the word's
    slots and 0 elsewhere, i.e. the word's probability times ``factor``, the row renormalised to sum to 1.

    Args:
        word: a word of the prompt (``"red"``, ``"top left"``) or a slot index, as ``trace.cross_attention`` takes.
        factor: ≥ 0. 0 removes the word from every pixel's attention, 1 changes nothing, 2 doubles its weight. Several
            Reweights of one word multiply. Any finite factor is allowed: a huge one gives the word almost all the attention.
        steps: which denoising steps to edit: ``None`` = all, an int ``n`` = the first ``n``, or a list or
            ``range`` of step indices (0 … S − 1).
        layers: names of the cross-attention layers to edit (``pipe.cross_attention_layers``); ``None`` = all.
    Example:
        >>> trace = pipe("a red circle on the left", edits=[isd.edits.Reweight("red", 0)])   # no red
    """

    word: str | int
    factor: float
    steps: int | list[int] | range | None = None
    layers: list[str] | None = None

    def __post_init__(self):
        if isinstance(self.factor, numbers.Real) and not isinstance(self.factor, bool) and math.isnan(self.factor):
            raise ValueError("factor is NaN; pass a number ≥ 0: 0 removes the word, 1 leaves it, 2 doubles it")
        self.factor = checks.real_number("factor", self.factor, hint="0 removes the word, 1 leaves it, 2 doubles it")
        if self.factor < 0:
            raise ValueError(f"factor must be ≥ 0 (got {self.factor:g}): it multiplies a probability, and a negative share "
                             "of attention has no meaning; 0 removes the word, 1 leaves it, 2 doubles it")
        if not isinstance(self.word, (str, numbers.Integral)) or isinstance(self.word, bool):
            raise TypeError(f"word must be a word of the prompt or a slot index (got {self.word!r})")

    def describe(self, slots: list[int], steps: list[int], layers: list[str]) -> dict:
        return {"kind": "reweight", "word": self.word, "slots": slots, "factor": self.factor, "steps": steps, "layers": layers}


@dataclass
class Remove:
    """Take ``word`` out of the prompt's meaning without moving any other token.

    A :class:`Reweight` of 0 silences the word's own slot, but CLIP's text encoder is causal: every token
    after "red" has read "red" and carries some of it on. ``Remove`` also hides the word from those later
    tokens (the text encoder's attention mask is 0 at its slots), then gives its slot no attention in the UNet
    (factor 0 in every step and layer). The picture is then the prompt as if the word had never been said,
    with every other word in its place.

    Example:
        >>> trace = pipe("a red circle on the left", edits=[isd.edits.Remove("red")])
    """

    word: str | int

    def __post_init__(self):
        if not isinstance(self.word, (str, numbers.Integral)) or isinstance(self.word, bool):
            raise TypeError(f"word must be a word of the prompt or a slot index (got {self.word!r})")

    def describe(self, slots: list[int], steps: list[int], layers: list[str]) -> dict:
        return {"kind": "remove", "word": self.word, "slots": slots, "factor": 0.0, "steps": steps, "layers": layers}


def check_edits(edits) -> list:
    """``edits`` as a list of edit objects (``None`` → ``[]``); ``TypeError`` naming what an edit is otherwise."""
    if edits is None:
        return []
    if isinstance(edits, EDITS) or not isinstance(edits, (list, tuple)):
        raise TypeError(f"edits must be a list of edits, e.g. edits=[isd.edits.Reweight('red', 0)] (got {edits!r})")
    for edit in edits:
        if not isinstance(edit, EDITS):
            raise TypeError(f"edits must be isd.edits.Reweight, Remove or Swap objects (got {edit!r})")
    return list(edits)


def hidden_words(edits: list) -> list:
    """The words the text encoder must not let later tokens read (those of :class:`Remove` edits)."""
    return [edit.word for edit in edits if isinstance(edit, Remove)]


@dataclass
class Swap:
    """prompt-to-prompt's word swap: this call's prompt, drawn with the cross-attention maps of ``source``.

    For the first ``steps`` steps each edited layer's prompt row uses the source's attention probabilities
    (its pixels "ask the same questions" as in the source) with this prompt's values, so the source's layout
    stays while the swapped word brings its own meaning. Later steps attend freely, to draw the details.

    Args:
        source: the trace of the source generation (same model, size and steps), recorded with the layers to edit.
            Its prompt must have as many tokens as this call's, so that slot j plays the same part in both:
            swap one word for one word ("a red circle" → "a red square"). Record it with
            ``RecordOptions(per_head=True)`` to inject every head's own map, as prompt-to-prompt does; a
            head-averaged source gives every head the mean map (the layout then holds a little less well).
        steps: how many first steps take the source's maps; ``None`` = half of them, rounded.
        layers: names of the cross-attention layers to edit; ``None`` = every layer the source recorded.
    On SD3 and Flux the source is a ``FlowTrace`` of the same pipeline whose text layout matches this prompt's token for
    token, and the patches' image→text probabilities are swapped in their joint softmax (:mod:`illustrated_sd.recording.flow_edits`).
    Example:
        >>> source = pipe("a red circle on the left", seed=0, record=isd.RecordOptions(per_head=True))
        >>> trace = pipe("a red square on the left", seed=0, edits=[isd.edits.Swap(source)])
    """

    source: object
    steps: int | None = None
    layers: list[str] | None = None

    def __post_init__(self):
        from ..trace.flow import FlowTrace  # (here: the transformer side imports this module)

        if not isinstance(self.source, FlowTrace):  # SD3 and Flux: their pipeline checks the FlowTrace (FlowEditPlan)
            require_trace(self.source, "edits.Swap", every_step=True)
        if self.steps is not None:
            self.steps = checks.whole_number("steps", self.steps, minimum=1, hint="how many first steps take the source's maps")

    def describe(self, steps: list[int], layers: list[str]) -> dict:
        return {"kind": "swap", "source_prompt": self.source.prompt, "source_seed": self.source.seed, "steps": steps, "layers": layers}


def _step_list(steps, num_steps: int) -> list[int]:
    """An edit's ``steps`` as a sorted list of indices in 0 … num_steps − 1."""
    if steps is None:
        return list(range(num_steps))
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        if not 1 <= steps <= num_steps:
            raise ValueError(f"steps={steps} first steps is out of range: this generation has {num_steps} steps (1–{num_steps})")
        return list(range(int(steps)))
    if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
        raise TypeError(f"steps must be None, a number of first steps, or a list / range of step indices (got {steps!r})")
    chosen = list(steps)
    bad = [i for i in chosen if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < num_steps]
    if bad or not chosen:
        raise ValueError(f"steps {bad or '[]'} are out of range: this generation's steps are 0–{num_steps - 1}")
    return sorted(set(int(i) for i in chosen))


def _layer_list(layers, available: list[str], what: str = "the UNet's cross-attention layers") -> list[str]:
    if layers is None:
        return list(available)
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
        raise TypeError(f"layers must be a list of layer names (got {layers!r}), e.g. layers=[pipe.cross_attention_layers[0]]")
    unknown = [n for n in layers if n not in available]
    if unknown or not layers:
        raise ValueError(f"unknown layers {unknown or '[]'}; {what} are: {available}")
    return list(layers)


class EditPlan:
    """The edits of one call, resolved against its prompt, steps and layers. The loop tells it the step
    (:meth:`at`); the wrapped processors and the attention recorder ask it what to change there."""

    def __init__(self, edits, prompt: str, tokens: list[str], words, slots: int, num_steps: int, latent_hw,
                 layers: dict[str, tuple[int, int, int]], rows: int = 2, device="cpu", dtype=torch.float32):
        """``layers``: ``{name: (heads, H, W)}``, each cross-attention layer's heads and the grid it works on at ``latent_hw``."""
        self.step = 0
        self.bias: dict[tuple[str, int], torch.Tensor] = {}  # (layer, step) → [keys] log-factors
        self.maps: dict[tuple[str, int], torch.Tensor] = {}  # (layer, step) → source maps [heads or 1, queries, keys]
        self.records: list[dict] = []
        for edit in edits:
            if isinstance(edit, (Reweight, Remove)):
                where = find_slots(prompt, tokens, words, slots, edit.word)
                factor = edit.factor if isinstance(edit, Reweight) else 0.0
                steps = _step_list(getattr(edit, "steps", None), num_steps)
                names = _layer_list(getattr(edit, "layers", None), list(layers))
                if factor != 1:  # factor 1 changes nothing: the UNet's own processor runs, bit for bit
                    for name in names:
                        for i in steps:
                            b = self.bias.setdefault((name, i), torch.zeros(slots))
                            b[where] += math.log(factor) if factor > 0 else -math.inf
                self.records.append(edit.describe(where, steps, names))
            elif isinstance(edit, Swap):
                source = require_trace(edit.source, "edits.Swap on an SD 1/2 or SDXL pipeline", every_step=True)  # not a FlowTrace
                if len(source.tokens) != len(tokens):
                    raise ValueError(
                        f"a Swap needs prompts of the same token count, so that slot j plays the same part in both: the source "
                        f"{source.prompt!r} has {len(source.tokens) - 2} tokens {source.tokens[1:-1]}, this prompt {prompt!r} has "
                        f"{len(tokens) - 2} {tokens[1:-1]}; swap one single-token word for another")
                if tuple(source.latent_hw) != tuple(latent_hw) or source.num_steps != num_steps:
                    raise ValueError(f"the Swap's source was made with {source.num_steps} steps at latent {list(source.latent_hw)}, this "
                                     f"call has {num_steps} at {list(latent_hw)}; generate both with the same steps and size")
                names = _layer_list(edit.layers, [n for n in layers if n in source.attention_maps],
                                    "the layers the source trace recorded")
                if not names:
                    raise ValueError("the Swap's source recorded no cross-attention maps; make it with the default recording")
                for name in names:  # a source from another model can share a layer's name, not its heads or grid
                    heads, h, w = layers[name]
                    shape = source.attention_maps[name].shape  # [S, heads or 1, H, W, keys]
                    if shape[1] not in (1, heads) or tuple(shape[2:]) != (h, w, slots):
                        raise ValueError(f"the Swap's source has maps [heads, H, W, slots] = {list(shape[1:])} in {name}, where this "
                                         f"model's layer needs [1 or {heads}, {h}, {w}, {slots}]: the source was made by another "
                                         "model; make it with this pipeline")
                steps = _step_list(edit.steps if edit.steps is not None else max(1, round(num_steps / 2)), num_steps)
                for name in names:  # on the device once, as the biases below: not a host copy in every UNet call
                    maps = source.attention_maps[name]  # [S, heads or 1, H, W, keys]
                    self.maps.update({(name, i): rearrange(maps[i], "h y x m -> h (y x) m").to(device, dtype) for i in steps})
                self.records.append(edit.describe(steps, names))
        self.injected = {name for name, _ in self.maps}  # the layers a Swap writes maps into
        self.layers = sorted({name for name, _ in self.bias} | self.injected)
        # Everything a UNet call needs is made once, on the model's device: a copy from the host in every
        # layer at every step would make the CPU wait for the GPU each time. Layers and steps with the
        # same edit share one tensor.
        made, self.logit_bias, self.scale = {}, {}, {}
        for key, b in self.bias.items():
            values = tuple(b.tolist())
            if values not in made:
                check_bias(b, key, tokens, dtype)
                bias = torch.zeros(rows, 1, slots)
                bias[-1, 0] = b  # the prompt is the last row: [unconditional, prompt] with guidance
                # the maps are scaled by e^(b − max b), not e^b: the renormalisation divides the constant e^(−max b)
                # out again, and a scale ≤ 1 cannot overflow float32 (e^b does from a factor of 3.4e38 on)
                made[values] = (bias.to(device, dtype), (b - b.max()).exp().to(device))  # [rows, 1, keys]; [keys] for the maps
            self.logit_bias[key], self.scale[key] = made[values]
        for key, source in self.maps.items():  # a Swap's maps reweighted: every pixel must keep some attention
            scale = self.scale.get(key)
            if scale is not None and not ((source * scale).sum(-1) > 0).all():
                raise ValueError(f"at step {key[1]} of {key[0]} the Swap's source maps are 0 at every slot these Reweights leave "
                                 "open (as after a Reweight of 0 in the source), so a pixel would attend to nothing; leave open a "
                                 "slot the source attends to")

    def at(self, step: int) -> None:
        """The loop is about to make the UNet call of ``step``."""
        self.step = step

    def logits_bias(self, name: str) -> torch.Tensor | None:
        """``[rows, 1, keys]``: what the layer adds to its attention logits now (the prompt's row only), or ``None``."""
        return self.logit_bias.get((name, self.step))

    def source_maps(self, name: str) -> torch.Tensor | None:
        """``[heads or 1, queries, keys]``: the source's probabilities for this layer and step, or ``None``."""
        return self.maps.get((name, self.step))

    def adjust(self, names: tuple[str, ...], step: int, probs: torch.Tensor) -> torch.Tensor:
        """Recorded maps ``[L, heads or 1, queries, keys]`` of layers ``names`` → the attention the model used at ``step``."""
        for i, name in enumerate(names):
            source = self.maps.get((name, step))
            if source is not None:
                source = source.to(probs)
                probs[i] = source.mean(0, keepdim=True) if probs.shape[1] == 1 else source  # per-head maps, or their mean
            scale = self.scale.get((name, step))
            if scale is not None:  # softmax(logits + b) = p·e^b, renormalised
                probs[i] = probs[i] * scale
                probs[i] = probs[i] / probs[i].sum(-1, keepdim=True)
        return probs


def check_bias(b: torch.Tensor, key: tuple[str, int], tokens: list[str], dtype: torch.dtype) -> None:
    """Refuse a layer's and step's log-factors ``b`` ``[keys]`` that would put a non-finite number into the attention.

    softmax over a row that is −∞ at every key is 0/0: a pixel needs at least one slot left open. And the bias is
    added to the logits in the model's dtype, so the log of the factors' product must fit it (65504 in float16).
    """
    name, step = key
    if (b == -math.inf).all():
        raise ValueError(f"these edits silence all {len(b)} text slots at step {step} of {name} (the markers and the padding "
                         "are slots too), so a pixel's attention would have nowhere to go; leave at least one slot at a factor "
                         f"> 0, e.g. the start marker {tokens[0]!r}")
    largest = b[b.isfinite()].abs().max()
    if largest > torch.finfo(dtype).max:
        slot = int((b.abs() == largest).nonzero()[0, 0])
        raise ValueError(f"the Reweights of slot {slot} ({tokens[slot] if slot < len(tokens) else 'padding'!r}) multiply to "
                         f"e^{float(b[slot]):.0f}, and a logit bias of {float(b[slot]):.0f} does not fit this {dtype} model "
                         f"(at most {torch.finfo(dtype).max:g}); use fewer or smaller factors")


class EditedAttention:
    """One cross-attention layer's processor during an edited call: the UNet's own processor, told what to change.

    A reweight becomes an additive bias on the logits, passed as the ``attention_mask`` that diffusers'
    processors already hand to ``scaled_dot_product_attention``, so the fused kernel still runs. An injected
    map replaces the prompt row's probabilities: out = P_source · V (then the layer's output projection).
    """

    def __init__(self, name: str, original, plan: EditPlan):
        self.name, self.original, self.plan = name, original, plan

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        bias = self.plan.logits_bias(self.name)
        if bias is not None:
            attention_mask = bias if attention_mask is None else attention_mask + bias
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        probs = self.plan.source_maps(self.name)
        if probs is None:
            return out
        scale = self.plan.scale.get((self.name, self.plan.step))
        if scale is not None:  # a reweight on top of the injected maps, as prompt-to-prompt combines them
            probs = probs.to(scale) * scale
            probs = probs / probs.sum(-1, keepdim=True)
        value = rearrange(attn.to_v(encoder_hidden_states[-1:]), "b m (h d) -> b h m d", h=attn.heads)  # the prompt's row
        mixed = rearrange(probs.to(value)[None] @ value, "b h n d -> b n (h d)")  # [1, queries, heads·d]
        out = out.clone()
        out[-1:] = attn.to_out[1](attn.to_out[0](mixed))
        return out


@contextmanager
def editing(unet, edits, prompt: str, tokenized, num_steps: int, latent_hw, guided: bool):
    """Install ``edits`` on ``unet`` for one ``with`` block; yields their :class:`EditPlan` (one that changes nothing without edits).

    Every edit is checked against the prompt (``tokenized``, a ``TokenizedPrompt``), the number of steps and
    the latent's ``(h, w)`` before the UNet runs (``guided``: the UNet's batch is [unconditional, prompt]); the original processors are put back when the block exits,
    even on error.
    """
    edits = check_edits(edits)
    cross = attention_layers(unet)["cross"]
    layers = {name: (attn.heads, *layer_grid(name, unet, latent_hw)) for name, attn in cross.items()}
    plan = EditPlan(edits, prompt, tokenized.tokens, tokenized.words, tokenized.input_ids.shape[-1], num_steps, latent_hw, layers,
                    rows=2 if guided else 1, device=unet.device, dtype=unet.dtype)
    originals = {}
    try:
        for name in plan.layers:
            attn = cross[name]
            if name in plan.injected and (attn.group_norm is not None or attn.residual_connection or attn.rescale_output_factor != 1):
                raise NotImplementedError(f"{name} is not a plain cross-attention layer; a Swap cannot inject maps into it")
            originals[name] = attn.processor
            attn.set_processor(EditedAttention(name, attn.processor, plan))
        yield plan
    finally:
        for name, processor in originals.items():
            cross[name].set_processor(processor)


EDITS = (Reweight, Remove, Swap)

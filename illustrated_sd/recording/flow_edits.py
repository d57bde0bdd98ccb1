"""Edits on a diffusion transformer's image→text attention: ``isd.edits.Reweight``, ``Remove`` and ``Swap`` for SD3 and Flux.

As for SD 1/2 (:mod:`illustrated_sd.recording.edits`), a reweight is an additive bias b = log(factor) on the logits of the
word's slots, here only in the rows of the image's queries (where the picture looks for the word), so that the fused
kernel still runs: softmax(q·k/√d + b) scales the word's probability by the factor and renormalises each row over all
keys, the picture's patches among them. ``Remove`` is a reweight of 0 in every step and block: the picture no longer
reads the word. (Unlike SD 1/2's, where CLIP is causal, T5 reads both ways, and the text's own tokens keep reading
the word through text→text attention: the word is gone from the picture's reading, not from the prompt.)

``Swap`` is prompt-to-prompt's word swap. For its first steps, each edited layer's image queries (of the prompt's row)
take the *source* generation's image→text probabilities instead of their own, with this prompt's values: the layout
stays, the swapped word brings its own meaning. In a joint attention the row of a patch spreads one softmax over the
picture's patches *and* the text, so a swapped row is

    p = [ (1 − s)·a_image ,  p_source(kept tokens) ,  p_source(padding)·a_padding ]

with s the source's whole text share, a_image this row's own softmax over the image keys alone (the picture keeps its
own self-attention, scaled to what the text leaves) and a_padding its own softmax over the padding slots (the source
recorded the padding as one summed column). Slot j must play the same part in both prompts: the two text layouts must
match token for token ("a red circle" → "a blue circle"). The text's own queries are not swapped.
"""

import math

import torch

from .edits import EDITS, Remove, Reweight, Swap, _layer_list, _step_list, check_edits
from .joint_attention import fused_attention, probabilities


class FlowEditPlan:
    """The edits of one call, resolved against its text layout, steps and layers; the loop tells it the step
    (``step``), and the processors ask it for each layer's additive mask (:meth:`mask`) and swapped rows (:meth:`swap`).

    ``tokens``: the call's kept tokens' labels (for messages); ``heads``: the transformer's attention heads (a Swap's
    source must have as many, or their mean).
    """

    def __init__(self, edits, words: list[tuple[str, list[int]]], kept: torch.Tensor, layout_length: int, image_len: int,
                 text_first: bool, steps: int, layers: list[str], device, dtype, rows: int = 1, tokens: list[str] | None = None,
                 heads: int | None = None):
        edits = check_edits(edits)
        self.step, self.active, self.records, self.bias = 0, True, [], {}  # (layer, step) → [T] log-factors over the text slots
        self.maps = {}  # (layer, step) → a Swap's source maps [heads or 1, N, n + 1], on the device
        self.rows = rows  # the batch's rows; the prompt's is the last (CFG puts the unconditional row first)
        self.text_len, self.image_len, self.text_first, self.device, self.dtype = layout_length, image_len, text_first, device, dtype
        self.kept = kept.to(device)
        is_padding = torch.ones(layout_length, dtype=torch.bool)
        is_padding[kept] = False
        self.padding = is_padding.nonzero()[:, 0].to(device)  # the slots the source's last column sums
        for edit in edits:
            if isinstance(edit, Swap):
                self._add_swap(edit, kept, tokens, steps, layers, heads)
                continue
            places = _places(edit.word, words, len(kept))
            slots = [int(kept[i]) for i in places]
            factor = 0.0 if isinstance(edit, Remove) else edit.factor
            chosen_steps = _step_list(getattr(edit, "steps", None), steps)
            names = _layer_list(getattr(edit, "layers", None), layers, "the transformer's joint-attention layers")
            if factor != 1:  # factor 1 changes nothing: the model's own attention runs
                for name in names:
                    for i in chosen_steps:
                        b = self.bias.setdefault((name, i), torch.zeros(layout_length))
                        b[slots] += math.log(factor) if factor > 0 else -math.inf
            self.records.append(edit.describe(slots, chosen_steps, names))
        self.layers = sorted({name for name, _ in self.bias} | {name for name, _ in self.maps})
        self._made = {}

    def _add_swap(self, edit: Swap, kept: torch.Tensor, tokens, steps: int, layers: list[str], heads: int | None) -> None:
        """Check a Swap's source against this call (``FlowPipeline`` has checked its family and size) and put the source's
        image→text maps of the swapped layers and steps on the device, once (not a host copy in every block)."""
        source = edit.source
        if source.text_length != self.text_len or not torch.equal(source.kept_slots.cpu(), kept.cpu()):
            raise ValueError(f"a Swap needs prompts whose text layouts match token for token: the source {source.prompt!r} keeps "
                             f"{len(source.tokens)} tokens {source.tokens} in {source.text_length} slots, this prompt "
                             f"{len(kept)} {tokens if tokens is not None else ''} in {self.text_len}; swap a word for one of as "
                             "many tokens ('red' → 'blue'), with the same max_sequence_length")
        maps = source.attention.get("image_to_text")
        if maps is None:
            raise ValueError("the Swap's source recorded no image_to_text attention; make it with the default recording, "
                             "e.g. record=isd.RecordOptions(per_head=True)")
        names = _layer_list(edit.layers, [n for n in layers if n in source.layers], "the layers the source trace recorded")
        shape = tuple(maps.shape)  # [S, L, heads or 1, N, n + 1]
        if shape[0] != steps or shape[1] != len(source.layers) or shape[2] not in (1, heads) or shape[3:] != (self.image_len, len(kept) + 1):
            raise ValueError(f"the Swap's source has image_to_text maps [steps, layers, heads, N, n + 1] = {list(shape)}, where this "
                             f"call needs [{steps}, {len(source.layers)}, 1 or {heads}, {self.image_len}, {len(kept) + 1}]: make the "
                             "source with this pipeline, the same number of steps and the full recording")
        chosen = _step_list(edit.steps if edit.steps is not None else max(1, round(steps / 2)), steps)
        for name in names:
            layer = source.layers.index(name)
            self.maps.update({(name, i): maps[i, layer].to(self.device) for i in chosen})  # in the source's dtype
        self.records.append(edit.describe(chosen, names))

    def mask(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(mask [rows, 1, L, L], bias [T])`` of layer ``name`` now: the additive mask holds the bias in the prompt row's
        image queries and text keys, 0 elsewhere; ``(None, None)`` where nothing is reweighted. Made once per distinct
        bias, on the model's device."""
        bias = self.bias.get((name, self.step)) if self.active else None
        if bias is None:
            return None, None
        key = tuple(bias.tolist())
        if key not in self._made:
            T, N = self.text_len, self.image_len
            mask = torch.zeros(self.rows, 1, T + N, T + N)
            rows, columns = (slice(T, None), slice(0, T)) if self.text_first else (slice(0, N), slice(N, None))
            mask[-1, 0, rows, columns] = bias
            # the bias as the mask holds it (rounded to the model's dtype), so that the maps use the values the attention did
            self._made[key] = (mask.to(self.device, self.dtype), bias.to(self.dtype).to(self.device, torch.float32))
        return self._made[key]

    def _factors(self, name: str) -> torch.Tensor:
        """``[n]`` the kept tokens' factors e^b of layer ``name`` now, made once per layer and step on the device."""
        key = (name, self.step, "factors")
        if key not in self._made:
            self._made[key] = self.bias[(name, self.step)][self.kept.cpu()].exp().to(self.device)
        return self._made[key]

    def swap(self, name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, recording=None,
             layer: int | None = None) -> torch.Tensor:
        """Layer ``name``'s attention output ``out [B, heads, L, d]`` with the prompt row's image rows swapped, if a Swap
        edits this layer now (else ``out`` itself). ``q, k, v [B, heads, L, d]`` are the call's. When the layer is
        recorded (``recording``, its layer ``layer``), its image rows are then overwritten with the maps the model used.

        No explicit softmax over the sequence: the fused kernel over the image keys alone gives a_image·V_image (and its
        log-sum-exp), over the padding keys alone a_padding·V_padding; only the kept tokens' [N, n] products are explicit.
        """
        source = self.maps.get((name, self.step)) if self.active else None
        if source is None:
            return out
        T, N = self.text_len, self.image_len
        text, image = (slice(0, T), slice(T, None)) if self.text_first else (slice(N, None), slice(0, N))
        q_image, k_image, v_image = (x[-1:, :, image] for x in (q, k, v))  # [1, heads, N, d]: the prompt's row
        k_text, v_text = k[-1:, :, text], v[-1:, :, text]  # [1, heads, T, d]
        p = source.float().expand(q.shape[1], -1, -1)  # [heads, N, n + 1]: the source's kept tokens, then its padding
        p_kept, p_padding = p[..., :-1], p[..., -1:]
        image_share = (1 - p.sum(-1, keepdim=True)).clamp_min(0)  # [heads, N, 1]: what the source's text leaves the picture
        bias = self.bias.get((name, self.step))
        if bias is not None:  # a Reweight on top, as prompt-to-prompt combines them: p_j·factor_j (Reweights name kept slots only)
            p_kept = p_kept * self._factors(name)
        total = image_share + p_kept.sum(-1, keepdim=True) + p_padding  # [heads, N, 1]: 1 unless reweighted
        own_image, lse_image = fused_attention(q_image, k_image, v_image)  # a_image·V_image [1, heads, N, d]
        mixed = image_share * own_image[0].float() + p_kept @ v_text[0].index_select(1, self.kept).float()
        if len(self.padding):
            own_padding = fused_attention(q_image, k_text.index_select(2, self.padding), v_text.index_select(2, self.padding))[0]
            mixed = mixed + p_padding * own_padding[0].float()
        out = out.clone()
        out[-1, :, image] = (mixed / total).to(out.dtype)
        if recording is not None and layer is not None and recording.active:
            used = {"image_to_text": torch.cat([p_kept, p_padding], -1) / total}  # [heads, N, n + 1]
            if "image_to_image" in recording.buffers:  # a_image·(1 − s)/total = exp(q·k·scale − lse_image − log(total/(1 − s)))
                used["image_to_image"] = probabilities(q_image[0], k_image[0], lse_image[0] + (total / image_share).log()[..., 0])
            for quadrant, maps in used.items():
                if quadrant in recording.buffers:
                    recording.buffers[quadrant][recording.step, layer] = maps if recording.per_head else maps.mean(0, keepdim=True)
        return out


def _places(word, words: list[tuple[str, list[int]]], n: int) -> list[int]:
    """The kept tokens of ``word`` (every encoder's), or token ``word`` when it is an index; ``ValueError`` naming the words."""
    if isinstance(word, int):
        if not 0 <= word < n:
            raise ValueError(f"token {word} does not exist: this prompt keeps {n} tokens, 0–{n - 1}")
        return [word]
    found = [i for w, places in words if w.lower() == word.strip().lower() for i in places]
    if not found:
        raise ValueError(f"{word!r} is not a word of the prompt; its words are {sorted({w for w, _ in words})}")
    return found


__all__ = ["EDITS", "FlowEditPlan", "Remove", "Reweight", "Swap"]

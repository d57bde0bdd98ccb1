"""Edits on a diffusion transformer's image→text attention: ``isd.edits.Reweight`` and ``Remove`` for SD3 and Flux.

As for SD 1/2 (:mod:`illustrated_sd.edits`), a reweight is an additive bias b = log(factor) on the logits of the
word's slots, here only in the rows of the image's queries (where the picture looks for the word), so that the fused
kernel still runs: softmax(q·k/√d + b) scales the word's probability by the factor and renormalises each row over all
keys, the picture's patches among them. ``Remove`` is a reweight of 0 in every step and block: the picture no longer
reads the word. (Unlike SD 1/2's, where CLIP is causal, T5 reads both ways, and the text's own tokens keep reading
the word through text→text attention: the word is gone from the picture's reading, not from the prompt.)
"""

import math

import torch

from ..edits import EDITS, Remove, Reweight, Swap, _layer_list, _step_list, check_edits


class FlowEditPlan:
    """The edits of one call, resolved against its text layout, steps and layers; the loop tells it the step
    (``step``), and the processors ask it for each layer's additive mask (:meth:`mask`)."""

    def __init__(self, edits, words: list[tuple[str, list[int]]], kept: torch.Tensor, layout_length: int, image_len: int,
                 text_first: bool, steps: int, layers: list[str], device, dtype, rows: int = 1):
        edits = check_edits(edits)
        self.step, self.active, self.records, self.bias = 0, True, [], {}  # (layer, step) → [T] log-factors over the text slots
        self.rows = rows  # the batch's rows; the prompt's is the last (CFG puts the unconditional row first)
        self.text_len, self.image_len, self.text_first, self.device, self.dtype = layout_length, image_len, text_first, device, dtype
        for edit in edits:
            if isinstance(edit, Swap):
                raise NotImplementedError("Swap is written for SD 1/2's cross-attention so far; on SD3 and Flux use Reweight or Remove")
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
        self.layers = sorted({name for name, _ in self.bias})
        self._made = {}

    def mask(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(mask [rows, 1, L, L], bias [T])`` of layer ``name`` now: the additive mask holds the bias in the prompt row's
        image queries and text keys, 0 elsewhere; ``(None, None)`` where nothing is edited. Made once per distinct bias,
        on the model's device."""
        bias = self.bias.get((name, self.step)) if self.active else None
        if bias is None:
            return None, None
        key = tuple(bias.tolist())
        if key not in self._made:
            T, N = self.text_len, self.image_len
            mask = torch.zeros(self.rows, 1, T + N, T + N)
            rows, columns = (slice(T, None), slice(0, T)) if self.text_first else (slice(0, N), slice(N, None))
            mask[-1, 0, rows, columns] = bias
            self._made[key] = (mask.to(self.device, self.dtype), bias.to(self.device, torch.float32))
        return self._made[key]


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


__all__ = ["EDITS", "FlowEditPlan", "Remove", "Reweight"]

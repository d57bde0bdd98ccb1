"""Which slots of a diffusion transformer's text sequence hold which encoder's tokens, and which words.

The transformer reads one text sequence: Flux, T5's tokens alone (512 slots for dev, 256 for schnell; CLIP only gives
a pooled vector); SD3, CLIP-L's and CLIP-G's 77 slots side by side (the same tokens, their features concatenated)
followed by T5's. Most slots are padding. A :class:`TextLayout` says where each encoder's real tokens sit, so that
the attention recorders keep those columns and sum the padding into one.
"""

import warnings
from dataclasses import dataclass

import torch

from .. import checks
from .text import tokenize_prompt

PADDING = "padding"  # the label of the column that sums every padding slot


@dataclass
class TextLayout:
    """The text part of a joint sequence.

    Attributes:
        length: slots of the text sequence the transformer reads (e.g. 77 + 256 for SD3).
        kept: ``[n]`` the slots that hold real tokens (markers included), in order.
        tokens: ``n`` readable labels of those tokens (T5's "▁" word marks dropped: "red", not "▁red").
        sources: ``n`` names of the encoder each came from (``"clip"``, ``"t5"``).
        words: ``(word, [i, …])``: each word of the prompt and its tokens' places among ``tokens``, per encoder.
        encoders: ``{name: (first slot, end slot)}`` each encoder's part of the sequence.
        truncated: ``{name: text}`` what did not fit into an encoder's slots and was dropped.
    """

    length: int
    kept: torch.Tensor
    tokens: list[str]
    sources: list[str]
    words: list[tuple[str, list[int]]]
    encoders: dict[str, tuple[int, int]]
    truncated: dict[str, str]


def t5_tokens(tokenizer, prompt: str, slots: int) -> tuple[list[str], list[tuple[str, int, int]], str]:
    """T5's real tokens of ``prompt`` as labels, its words ``(word, first, end)`` and what was dropped past ``slots``.

    A piece that starts with "▁" starts a word (SentencePiece marks the space before it). Warns when the prompt is
    longer than ``slots``, naming the dropped words, as diffusers only logs.
    """
    ids = tokenizer(prompt, padding="max_length", max_length=slots, truncation=True).input_ids
    full = tokenizer(prompt, truncation=False, verbose=False).input_ids
    dropped = ""
    if len(full) > slots:
        dropped = tokenizer.decode(full[slots - 1:-1], skip_special_tokens=True).strip()
        warnings.warn(f"the prompt is longer than T5's {slots} tokens; these words were dropped: {dropped.split()}. Shorten the "
                      "prompt, or pass a larger max_sequence_length (up to 512)",
                      stacklevel=checks.user_stacklevel())
    pieces = tokenizer.convert_ids_to_tokens(ids)
    n = next((i + 1 for i, p in enumerate(pieces) if p == tokenizer.eos_token), len(pieces))  # up to and with </s>
    labels, words = [], []
    for i, piece in enumerate(pieces[:n]):
        if piece.startswith("▁") or not words or piece == tokenizer.eos_token:
            words.append([piece.lstrip("▁"), i, i + 1])
        else:  # the rest of a word spelled in pieces
            words[-1][0] += piece
            words[-1][2] = i + 1
        labels.append(piece.lstrip("▁") or "▁")
    return labels, [tuple(w) for w in words if w[0] and w[0] != tokenizer.eos_token], dropped


def flux_layout(pipeline, prompt: str, max_sequence_length: int) -> TextLayout:
    """Flux: T5's slots only."""
    labels, words, dropped = t5_tokens(pipeline.tokenizer_2, prompt, max_sequence_length)
    return TextLayout(length=max_sequence_length, kept=torch.arange(len(labels)), tokens=labels, sources=["t5"] * len(labels),
                      words=[(w, list(range(a, b))) for w, a, b in words], encoders={"t5": (0, max_sequence_length)},
                      truncated={"t5": dropped} if dropped else {})


def sd3_layout(pipeline, prompt: str, max_sequence_length: int) -> TextLayout:
    """SD3: CLIP's 77 slots (L and G read the same tokens), then T5's."""
    clip = tokenize_prompt(pipeline.tokenizer, prompt)  # (warns itself about a prompt longer than 77 tokens)
    clip_len = pipeline.tokenizer_max_length
    labels, words, dropped = t5_tokens(pipeline.tokenizer_3, prompt, max_sequence_length) if pipeline.text_encoder_3 is not None else ([], [], "")
    n = len(clip.tokens)
    kept = torch.cat([torch.arange(n), clip_len + torch.arange(len(labels))])
    return TextLayout(length=clip_len + max_sequence_length, kept=kept, tokens=clip.tokens + labels,
                      sources=["clip"] * n + ["t5"] * len(labels),
                      words=[(w, list(range(a, b))) for w, a, b in clip.words] + [(w, list(range(n + a, n + b))) for w, a, b in words],
                      encoders={"clip": (0, clip_len), "t5": (clip_len, clip_len + max_sequence_length)},
                      truncated={k: v for k, v in (("clip", clip.truncated_text), ("t5", dropped)) if v})

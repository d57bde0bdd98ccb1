"""From a prompt to the 77 vectors the UNet listens to.

CLIP's tokenizer splits text into byte-pair-encoding pieces (a word-final piece carries ``</w>``),
wraps them in ``<|startoftext|>`` … ``<|endoftext|>`` and pads the sequence to 77 slots. The text
encoder turns each slot into a vector; Stable Diffusion's UNet attends to all 77.
"""

import warnings
from dataclasses import dataclass

import torch

START, END = "<|startoftext|>", "<|endoftext|>"


@dataclass
class TokenizedPrompt:
    """A prompt as CLIP sees it.

    Attributes:
        input_ids: ``[1, 77]`` token ids, padded (and truncated) as diffusers does.
        attention_mask: ``[1, 77]`` 1 for real tokens, 0 for padding (only a few text encoders use it).
        tokens: readable pieces from the start marker up to and including the end marker,
            e.g. ``["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]``.
        truncated_text: the part of the prompt that did not fit into 77 slots (``""`` if none).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list[str]
    truncated_text: str


def readable(token: str) -> str:
    """``"circle</w>"`` → ``"circle"``: drop CLIP's end-of-word marker."""
    return token[: -len("</w>")] if token.endswith("</w>") else token


def tokenize_prompt(tokenizer, prompt: str) -> TokenizedPrompt:
    """Tokenize ``prompt`` exactly as ``StableDiffusionPipeline`` does, keeping what a student wants to see.

    Warns (``UserWarning``) when the prompt is longer than the tokenizer's 77 slots, listing the
    words that were dropped, as diffusers would silently log.
    """
    max_length = tokenizer.model_max_length
    inputs = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    ids = inputs.input_ids
    full = tokenizer(prompt, truncation=False).input_ids  # start, pieces…, end
    truncated_text = ""
    if len(full) > max_length:
        truncated_text = tokenizer.decode(full[max_length - 1 : -1]).strip()
        warnings.warn(
            f"the prompt is longer than CLIP's {max_length} tokens; these words were dropped: {truncated_text.split()}. "
            "Shorten the prompt to keep them.",
            stacklevel=4,
        )
    pieces = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    end = pieces.index(END) if END in pieces else len(pieces) - 1
    return TokenizedPrompt(ids, inputs.attention_mask, [readable(p) for p in pieces[: end + 1]], truncated_text)


@torch.no_grad()
def encode_tokens(text_encoder, prompt: TokenizedPrompt, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the text encoder on a tokenized prompt, keeping every layer.

    Args:
        prompt: from :func:`tokenize_prompt` (``input_ids [1, 77]``).
    Returns:
        ``(embeddings [1, 77, D], hidden_states [layers + 1, 77, D])``. ``embeddings`` is the final
        layer after CLIP's last LayerNorm (what the UNet gets); ``hidden_states[0]`` is token +
        position embeddings, ``hidden_states[i]`` the output of transformer layer ``i``.
    """
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    mask = prompt.attention_mask.to(device) if use_mask else None  # SD's CLIP never masks the padding
    out = text_encoder(prompt.input_ids.to(device), attention_mask=mask, output_hidden_states=True)
    return out[0], torch.stack([h[0] for h in out.hidden_states])

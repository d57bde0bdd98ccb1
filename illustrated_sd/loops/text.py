"""From a prompt to the 77 vectors the UNet listens to.

CLIP's tokenizer splits text into byte-pair-encoding pieces (a word-final piece carries ``</w>``),
wraps them in ``<|startoftext|>`` … ``<|endoftext|>`` and pads the sequence to 77 slots. The text
encoder turns each slot into a vector; Stable Diffusion's UNet attends to all 77.
"""

import warnings
from dataclasses import dataclass

import torch

from .. import checks
from ..trace.unet import find_slots

START, END = "<|startoftext|>", "<|endoftext|>"


@dataclass
class TokenizedPrompt:
    """A prompt as CLIP sees it.

    Attributes:
        input_ids: ``[1, 77]`` token ids, padded (and truncated) as diffusers does.
        attention_mask: ``[1, 77]`` 1 for real tokens, 0 for padding (only a few text encoders use it).
        tokens: readable pieces from the start marker up to and including the end marker,
            e.g. ``["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]``.
        words: the prompt's words and the slots their pieces fill, ``(word, first, end)`` with ``end``
            exclusive: ``("cercle", 2, 4)`` for the pieces ``"cer"``, ``"cle"``.
        truncated_text: the part of the prompt that did not fit into 77 slots (``""`` if none).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list[str]
    words: list[tuple[str, int, int]]
    truncated_text: str


def _byte_table() -> dict[str, int]:
    """CLIP's (and GPT-2's) byte-level BPE writes each of the 256 bytes as one printable character:
    printable ASCII and Latin-1 bytes stand for themselves, the other 68 are moved to U+0100 onwards.
    So 'à' (bytes C3 A0) is the piece 'Ãł', and the emoji '🔴' (F0 9F 94 B4) is 'ðŁĶ´'."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {chr(b): b for b in kept} | {chr(256 + i): b for i, b in enumerate(moved)}


_CHAR_TO_BYTE = _byte_table()


def readable(token: str) -> str:
    """``"circle</w>"`` → ``"circle"``: drop CLIP's end-of-word marker."""
    return token[: -len("</w>")] if token.endswith("</w>") else token


def piece_bytes(piece: str) -> bytes:
    """The UTF-8 bytes a BPE piece stands for: ``"Ãł</w>"`` → ``b"\\xc3\\xa0"`` (``"à"``)."""
    return bytes(_CHAR_TO_BYTE[c] for c in readable(piece))


def readable_pieces(pieces: list[str]) -> tuple[list[str], list[tuple[str, int, int]]]:
    """Turn CLIP's byte-level pieces into text a person can read, and group them into words.

    A piece that is whole characters is shown as them (``"ðŁĶ´</w>"`` → ``"🔴"``). A character whose bytes
    are split over ``n`` pieces (rare emoji) is shown on each of them as ``"🦩[1/2]"``, ``"🦩[2/2]"``.
    The start and end markers stay as they are and belong to no word.

    Returns:
        ``(labels, words)``: one label per piece, and ``(word, first, end)`` for each word (a word
        ends at a piece carrying ``</w>``).
    """
    labels, words = list(pieces), []
    run, run_bytes = [], b""  # pieces whose bytes do not yet decode on their own
    word_start, word_bytes = None, b""
    for i, piece in enumerate(pieces):
        if piece in (START, END):
            if word_start is not None:  # a word cut short by truncation or by a marker
                words.append((word_bytes.decode("utf-8", "replace"), word_start, i))
                word_start, word_bytes = None, b""
            continue
        data = piece_bytes(piece)
        word_start = i if word_start is None else word_start
        word_bytes += data
        run.append(i)
        run_bytes += data
        try:
            decoded = run_bytes.decode("utf-8")
        except UnicodeDecodeError:
            if not piece.endswith("</w>"):
                continue
            decoded = run_bytes.decode("utf-8", "replace")  # a word cannot end inside a character; be safe anyway
        for k, j in enumerate(run):
            labels[j] = decoded if len(run) == 1 else f"{decoded}[{k + 1}/{len(run)}]"
        run, run_bytes = [], b""
        if piece.endswith("</w>"):
            words.append((word_bytes.decode("utf-8", "replace"), word_start, i + 1))
            word_start, word_bytes = None, b""
    return labels, words


def tokenize_prompt(tokenizer, prompt: str) -> TokenizedPrompt:
    """Tokenize ``prompt`` exactly as ``StableDiffusionPipeline`` does, keeping what a student wants to see.

    Warns (``UserWarning``) when the prompt is longer than the tokenizer's 77 slots, listing the
    words that were dropped, as diffusers would silently log; and when the prompt spells out one of
    CLIP's markers, which the tokenizer reads as the marker itself.
    """
    max_length = tokenizer.model_max_length
    inputs = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    ids = inputs.input_ids
    full = tokenizer(prompt, truncation=False, verbose=False).input_ids  # start, pieces…, end (the warning below says more)
    truncated_text = ""
    if len(full) > max_length:
        truncated_text = tokenizer.decode(full[max_length - 1 : -1]).strip()
        warnings.warn(
            f"the prompt is longer than CLIP's {max_length} tokens; these words were dropped: {truncated_text.split()}. "
            "Shorten the prompt to keep them.",
            stacklevel=checks.user_stacklevel(),
        )
    for marker in (START, END):
        if marker in prompt:
            warnings.warn(
                f"the prompt spells out {marker!r}, which CLIP's tokenizer reads as its own "
                f"{'start' if marker == START else 'end'} marker (id {tokenizer.convert_tokens_to_ids(marker)}), not as text. "
                "The words after it are still encoded and the UNet still reads them, but CLIP's pooled text "
                "embedding is taken at the first end marker. Remove it unless that is what you want to see.",
                stacklevel=checks.user_stacklevel(),
            )
    pieces = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    # Real tokens are the unmasked ones (SD 1's tokenizer pads with the end marker itself, so the first end
    # marker is not always the end: a prompt may spell one out).
    n = int(inputs.attention_mask[0].sum())
    labels, words = readable_pieces(pieces[:n])
    return TokenizedPrompt(ids, inputs.attention_mask, labels, words, truncated_text)


@torch.no_grad()
def encode_tokens(text_encoder, prompts: TokenizedPrompt | list[TokenizedPrompt], device,
                  hide: list[int] | list[list[int]] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the text encoder on tokenized prompts, all ``B`` of them in one call, keeping every layer.

    Args:
        prompts: one prompt from :func:`tokenize_prompt` (``input_ids [1, 77]``), or a list of ``B``.
        hide: slots that no other token may read (attention mask 0 there): how ``edits.Remove`` keeps a
            word's meaning out of the tokens after it. With a list of prompts, one list of slots per prompt.
    Returns:
        ``(embeddings [B, 77, D], hidden_states [layers + 1, B, 77, D])`` (``[layers + 1, 77, D]`` for one
        prompt not in a list). ``embeddings`` is the final layer after CLIP's last LayerNorm (what the UNet
        gets); ``hidden_states[0]`` is token + position embeddings, ``hidden_states[i]`` the output of
        transformer layer ``i``.
    """
    single = isinstance(prompts, TokenizedPrompt)
    prompts, hide = ([prompts], [hide]) if single else (prompts, list(hide) or [()] * len(prompts))
    # B prompts in one call, as diffusers encodes a batch: on a GPU the rounding of a matrix product can
    # depend on how many rows it has, so this is what keeps a batch equal to diffusers' batched call.
    ids = torch.cat([p.input_ids for p in prompts]).to(device)
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    mask = torch.cat([p.attention_mask for p in prompts]).to(device) if use_mask else None  # SD's CLIP never masks the padding
    if any(len(slots) for slots in hide):
        mask = mask.clone() if mask is not None else torch.ones_like(ids)
        for row, slots in enumerate(hide):
            mask[row, list(slots)] = 0
    out = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
    hidden_states = torch.stack(out.hidden_states)  # [layers + 1, B, 77, D]
    return out[0], (hidden_states[:, 0] if single else hidden_states)


@dataclass
class EncodedPrompt:
    """The text side of one generation.

    Attributes:
        tokenized: the prompt as CLIP sees it (the first tokenizer's view, for SDXL).
        embeddings: ``[1, 77, D]``, the prompt's vectors the UNet reads.
        hidden_states: ``[layers + 1, 77, D₁]``, every layer of the (first) text encoder on the prompt.
        uncond: ``[1, 77, D]``, the negative (or empty) prompt's vectors; ``None`` without guidance.
        context: what the UNet reads: ``[uncond; prompt]`` ``[2, 77, D]`` with guidance, else the prompt's ``[1, 77, D]``.
        guided: whether the UNet runs both rows (classifier-free guidance).
        SDXL only (``None`` for SD 1/2):
        token_ids_2: ``[1, 77]`` what the second tokenizer made (same pieces; it pads with ``"!"``, id 0).
        hidden_states_2: ``[layers₂ + 1, 77, D₂]``, every layer of the second text encoder.
        pooled, uncond_pooled: ``[1, P]``, the second encoder's projected end-of-text vector of the prompt
            and of the negative prompt (zeros when none was given, as SDXL-base asks).
        split: the context's first ``split`` columns come from encoder 1, the rest from encoder 2.
    """

    tokenized: TokenizedPrompt
    embeddings: torch.Tensor
    hidden_states: torch.Tensor
    uncond: torch.Tensor | None
    context: torch.Tensor
    guided: bool
    token_ids_2: torch.Tensor | None = None
    hidden_states_2: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    uncond_pooled: torch.Tensor | None = None
    split: int | None = None


def encode_prompt(tokenizer, text_encoder, prompt: str, negative_prompt: str | None, guided: bool, device, hide=()) -> EncodedPrompt:
    """Tokenize and encode ``prompt``, and with guidance the negative (or empty) prompt too, as diffusers does.

    Guidance doubles the UNet's batch: row 0 answers "what does an image look like?", row 1 "…of this prompt?".
    ``hide``: words of the prompt that later tokens may not read (``edits.Remove``).
    """
    return encode_prompts(tokenizer, text_encoder, [prompt], negative_prompt, guided, device, hide)[0]


def encode_prompts(tokenizer, text_encoder, prompts: list[str], negative_prompt: str | None, guided: bool, device,
                   hide=()) -> list[EncodedPrompt]:
    """:func:`encode_prompt` for ``B`` prompts at once: one text-encoder call for the prompts and, with guidance,
    one for ``B`` copies of the negative prompt, as ``StableDiffusionPipeline.encode_prompt`` batches them.

    Returns:
        one :class:`EncodedPrompt` per prompt (``embeddings [1, 77, D]``, ``hidden_states [layers + 1, 77, D]``).
    """
    texts = [tokenize_prompt(tokenizer, prompt) for prompt in prompts]
    slots = [hidden_slots(prompt, text, hide) for prompt, text in zip(prompts, texts)]
    embeddings, hidden_states = encode_tokens(text_encoder, texts, device, slots)
    embeddings = embeddings.to(text_encoder.dtype)
    uncond = [None] * len(prompts)
    if guided:
        negative = tokenize_prompt(tokenizer, negative_prompt or "")
        uncond = encode_tokens(text_encoder, [negative] * len(prompts), device)[0].to(text_encoder.dtype).split(1)
    return [EncodedPrompt(text, embeddings[b:b + 1], hidden_states[:, b], uncond[b],
                          torch.cat([uncond[b], embeddings[b:b + 1]]) if guided else embeddings[b:b + 1], guided)
            for b, text in enumerate(texts)]


def hidden_slots(prompt: str, text: TokenizedPrompt, words) -> list[int]:
    """The slots of ``words`` (words of ``prompt`` or slot indices) in ``text``; ``ValueError`` listing the words otherwise."""
    return sorted({slot for word in words for slot in find_slots(prompt, text.tokens, text.words, text.input_ids.shape[-1], word)})


@torch.no_grad()
def _encode_xl(tokenizers, text_encoders, prompt: str, device, warn: bool, hide=()):
    """One prompt through SDXL's encoders: ``(context [1, 77, D₁ + D₂], pooled [1, P], hidden states per encoder,
    tokenized per encoder)``.

    SDXL reads each encoder's *penultimate* layer (the last one is tuned for CLIP's contrastive loss, not
    for describing), side by side; the pooled vector comes from the encoder with a projection (the second).
    """
    parts, states, tokenized, pooled = [], [], [], None
    for i, (tokenizer, encoder) in enumerate(zip(tokenizers, text_encoders)):
        if warn and i == 0:
            tokens = tokenize_prompt(tokenizer, prompt)
        else:  # the same words: warn about truncation once
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tokens = tokenize_prompt(tokenizer, prompt)
        mask = None
        if hide:  # the same pieces in both tokenizers, so the same slots
            mask = torch.ones_like(tokens.input_ids, device=device)
            mask[0, hidden_slots(prompt, tokens, hide)] = 0
        out = encoder(tokens.input_ids.to(device), attention_mask=mask, output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds [1, P] come first
            pooled = out[0]
        parts.append(out.hidden_states[-2])
        states.append(torch.stack([h[0] for h in out.hidden_states]))
        tokenized.append(tokens)
    return torch.cat(parts, dim=-1), pooled, states, tokenized


def encode_prompt_xl(pipeline, prompt: str, negative_prompt: str | None, guided: bool, device, hide=()) -> EncodedPrompt:
    """SDXL's text side, exactly as ``StableDiffusionXLPipeline.encode_prompt`` makes it.

    Two CLIP text encoders read the same tokens (CLIP ViT-L, 768 wide, and OpenCLIP bigG, 1280 wide);
    their penultimate layers, side by side, make the 2048-wide context cross-attention reads. The second
    encoder's pooled, projected end-of-text vector summarises the whole prompt in one ``[1, 1280]``
    vector, which joins the timestep embedding instead (see :mod:`illustrated_sd.loops.sdxl`). A refiner has
    only the second encoder. With no negative prompt, SDXL-base sends zeros as the unconditional row
    (``force_zeros_for_empty_prompt``) instead of encoding "".
    """
    pairs = [(t, e) for t, e in ((pipeline.tokenizer, pipeline.text_encoder), (pipeline.tokenizer_2, pipeline.text_encoder_2))
             if e is not None]
    tokenizers, encoders = zip(*pairs)
    dtype = encoders[-1].dtype
    embeddings, pooled, states, tokenized = _encode_xl(tokenizers, encoders, prompt, device, warn=True, hide=hide)
    embeddings = embeddings.to(dtype)
    uncond = uncond_pooled = None
    if guided:
        if negative_prompt is None and pipeline.config.force_zeros_for_empty_prompt:
            uncond, uncond_pooled = torch.zeros_like(embeddings), torch.zeros_like(pooled)
        else:
            uncond, uncond_pooled, _, _ = _encode_xl(tokenizers, encoders, negative_prompt or "", device, warn=False)
            uncond = uncond.to(dtype)
    context = torch.cat([uncond, embeddings]) if guided else embeddings
    two = len(encoders) == 2
    return EncodedPrompt(
        tokenized[0], embeddings, states[0], uncond, context, guided,
        token_ids_2=tokenized[1].input_ids if two else None,
        hidden_states_2=states[1] if two else None,
        pooled=pooled, uncond_pooled=uncond_pooled,
        split=states[0].shape[-1] if two else None,
    )

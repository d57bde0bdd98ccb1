"""Textual inversion (Gal et al., 2022): teach a frozen model a new word by learning that one word's embedding.

Nothing the model knows changes: the text encoder, the UNet and the VAE stay frozen. A new token is added to
the tokenizer, its row of the token-embedding table starts as a word the model already knows, and the
ordinary diffusion loss (notebook 03) moves that one vector until the UNet, asked for "a red <house>", draws
what it was shown. The model can only be *pointed* at pictures it can already make; the vector is the
pointer (notebook 09).

    scenes = concept_scenes("house", 64, placeholder="<house>")
    learned = learn_word(pipe, scenes, "<house>", init_word="square")     # pipe now knows "<house>"
    trace = pipe("a red <house> on the left", seed=0)
"""

import re

import numpy as np
import torch
from tqdm.auto import tqdm

from ..forward_diffusion import diffusion_loss
from ..latent_space import to_latent
from ..world import Scene, render, sample_scene_2


def concept_scenes(shape: str, n: int, seed: int = 0, placeholder: str | None = None) -> list[Scene]:
    """``n`` one-object version-2 scenes whose object is ``shape``, captioned with ``placeholder`` for its name.

    Colours, sizes, places, styles and backgrounds vary as in the training world; every caption names the
    object with its colour and place ("a drawing of a red <house> on the left").
    """
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        scene = sample_scene_2(rng, n_objects=1, say_all=True)
        obj = scene.objects[0]
        scene.caption = re.sub(rf"\b{obj.shape}\b", placeholder or shape, scene.caption)
        obj.shape = shape
        scenes.append(scene)
    return scenes


def learn_word(pipe, scenes: list[Scene], word: str, init_word: str, steps: int = 300, batch_size: int = 16, lr: float = 5e-3,
               seed: int = 0, progress: bool = True) -> dict:
    """Add ``word`` to ``pipe``'s tokenizer and learn its input embedding from ``scenes``, whose captions use it.

    Args:
        pipe: an ``IllustratedPipeline`` with an ε-predicting UNet (the embedded model); its tokenizer and text
            encoder gain the word and keep it afterwards.
        scenes: pictures of the concept (:func:`concept_scenes`), drawn once and encoded once by the VAE.
        word: the new token, e.g. ``"<house>"`` (not yet in the tokenizer).
        init_word: a one-token word the model knows, whose embedding the new one starts from.
    Returns:
        ``{"token_id": int, "embedding": [D] float32, "start": [D] (the init word's), "losses": [steps]}``.
    """
    tokenizer, encoder, unet, device = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.device
    pieces = tokenizer.tokenize(word)
    if len(pieces) == 1:  # "red" is the token "red</w>": its row is a word the model knows, not a new one
        raise ValueError(f"{word!r} is already a token of this tokenizer ({pieces[0]!r}); textual inversion needs a new one, "
                         f"e.g. '<{word.strip('<>')}-2>'")
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if len(init_ids) != 1:
        raise ValueError(f"init_word must be one token of the tokenizer; {init_word!r} is {len(init_ids)}: pick a single known word")
    if not scenes:
        raise ValueError("scenes is empty: pass pictures of the concept, e.g. concept_scenes('house', 64, placeholder=word)")
    missing = [s.caption for s in scenes if word not in s.caption]
    if missing:
        raise ValueError(f"every caption must use {word!r}, so that its embedding is what is learned; e.g. {missing[0]!r} does not")

    # 1. A new row in the token-embedding table, starting as a word the model already knows
    tokenizer.add_tokens(word)
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # its row is set from init_word below
    table = encoder.get_input_embeddings()  # nn.Embedding [vocabulary + 1, D]
    token_id = tokenizer.convert_tokens_to_ids(word)
    start = table.weight[init_ids[0]].detach().float().clone()

    # 2. The pictures once through the frozen VAE, the captions once through the tokenizer
    images, _ = render(scenes)  # [N, 3, 128, 128] in [-1, 1]
    with torch.no_grad():
        latents = to_latent(pipe.vae, images.to(device, pipe.vae.dtype), centre=True).to(unet.dtype)  # [N, 4, 16, 16]
    ids = tokenizer([s.caption for s in scenes], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)  # [N, 77]

    # 3. Only the new word's vector learns: a hook puts it wherever the token appears, so that the rest of the
    #    table (and every other weight) is never touched
    vector = torch.nn.Parameter(start.clone().to(device))
    hook = table.register_forward_hook(
        lambda module, args, out: torch.where((args[0] == token_id)[..., None], vector.to(out.dtype), out))
    frozen = {p: p.requires_grad for m in (unet, encoder) for p in m.parameters()}
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW([vector], lr=lr, weight_decay=0.0)
    generator = torch.Generator(device).manual_seed(seed)
    losses = []
    try:
        for _ in tqdm(range(steps), desc=f"learning {word}", disable=not progress):
            batch = torch.randint(0, len(scenes), (batch_size,), generator=generator, device=device)
            context = encoder(ids[batch])[0]  # [B, 77, D]: the captions, with the current vector in them
            loss = diffusion_loss(unet, latents[batch], context, pipe.scheduler.alphas_cumprod, generator=generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        hook.remove()
        for p, flag in frozen.items():
            p.requires_grad_(flag)
    with torch.no_grad():
        table.weight[token_id] = vector.to(table.weight.dtype)
    return {"token_id": token_id, "embedding": vector.detach().float().cpu(), "start": start.cpu(), "losses": losses}


def nearest_words(pipe, vector: torch.Tensor, words: list[str], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` of ``words`` whose input embeddings point most nearly the way ``vector`` ``[D]`` does (cosine)."""
    table = pipe.text_encoder.get_input_embeddings().weight.detach().float().cpu()
    ids = [pipe.tokenizer(w, add_special_tokens=False).input_ids for w in words]
    kept = [(w, i[0]) for w, i in zip(words, ids) if len(i) == 1]
    rows = table[[i for _, i in kept]]  # [W, D]
    similarity = torch.nn.functional.cosine_similarity(rows, vector.detach().float().cpu()[None], dim=-1)
    order = similarity.argsort(descending=True)[:k]
    return [(kept[i][0], round(float(similarity[i]), 3)) for i in order]

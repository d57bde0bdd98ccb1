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

import copy
import re

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AddedToken

from .. import checks
from ..lessons.forward_diffusion import diffusion_loss
from ..lessons.latent_space import to_latent
from ..loops.unet import IllustratedPipeline
from ..loops.text import END, START
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

    Every argument is checked first, and the tokenizer and the token table change only once the vector is learned:
    after a refusal, an error or an interruption (Ctrl-C) the pipeline is as it was, and the call can be made again.

    Args:
        pipe: an SD 1/2 ``IllustratedPipeline`` with an ε-predicting UNet (the embedded model); its tokenizer and text
            encoder gain the word and keep it afterwards.
        scenes: pictures of the concept (:func:`concept_scenes`), drawn once and encoded once by the VAE.
        word: the new token, one word without spaces, e.g. ``"<house>"`` (not yet in the tokenizer).
        init_word: a one-token word the model knows, whose embedding the new one starts from.
        steps, batch_size: optimiser steps and pictures per step (≥ 1); lr: AdamW's learning rate (> 0); seed: the
            batches' and the noise's.
    Returns:
        ``{"token_id": int, "embedding": [D] float32, "start": [D] (the init word's), "losses": [steps]}``.
    """
    init_id, steps, batch_size, lr, seed = check_arguments(pipe, scenes, word, init_word, steps, batch_size, lr, seed, progress)
    tokenizer, encoder, unet, device = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.device

    # 1. The captions as the tokenizer will read them once it knows the word. A copy of it reads them, so that
    #    the pipeline's own tokenizer is changed only after training, in step 4.
    reader = copy.deepcopy(tokenizer)
    reader.add_tokens(new_token(word))
    token_id = reader.convert_tokens_to_ids(word)
    ids = reader([s.caption for s in scenes], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                 return_tensors="pt").input_ids.to(device)  # [N, 77]
    missing = [s.caption for s, row in zip(scenes, ids) if token_id not in row]
    if missing:
        raise ValueError(f"every caption must use {word!r} as a word of its own, within CLIP's {tokenizer.model_max_length} tokens, "
                         f"so that its embedding is what is learned; e.g. {missing[0]!r} does not")
    placed = ids == token_id  # [N, 77]: where the new vector goes
    known = ids.masked_fill(placed, init_id)  # the table has no row for the word yet: those slots read init_word's row

    # 2. The pictures once through the frozen VAE
    images, _ = render(scenes)  # [N, 3, 128, 128] in [-1, 1]
    with torch.no_grad():
        latents = to_latent(pipe.vae, images.to(device, pipe.vae.dtype), centre=True).to(unet.dtype)  # [N, 4, 16, 16]

    # 3. Only the new word's vector learns: a hook puts it wherever the word stands in this step's captions
    #    (``where``, set before each step), so that the table (and every other weight) is never touched
    table = encoder.get_input_embeddings()  # nn.Embedding [vocabulary, D]
    start = table.weight[init_id].detach().float().clone()
    vector = torch.nn.Parameter(start.clone().to(device))
    optimizer = torch.optim.AdamW([vector], lr=lr, weight_decay=0.0)
    generator = torch.Generator(device).manual_seed(seed)
    losses = []
    frozen = {p: p.requires_grad for m in (unet, encoder) for p in m.parameters()}
    hook = table.register_forward_hook(lambda module, args, out: torch.where(where[..., None], vector.to(out.dtype), out))
    try:  # (from the hook on: whatever happens, the finally below puts the hook and the flags back)
        for p in frozen:
            p.requires_grad_(False)
        for _ in tqdm(range(steps), desc=f"learning {word}", disable=not progress):
            batch = torch.randint(0, len(scenes), (batch_size,), generator=generator, device=device)
            where = placed[batch]
            context = encoder(known[batch])[0]  # [B, 77, D]: the captions, with the current vector in them
            loss = diffusion_loss(unet, latents[batch], context, pipe.scheduler.alphas_cumprod, generator=generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        hook.remove()
        for p, flag in frozen.items():
            p.requires_grad_(flag)

    # 4. Now the word joins the tokenizer, and its learned vector the table as a new row
    tokenizer.add_tokens(new_token(word))
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # its row is set just below
    table = encoder.get_input_embeddings()  # a new nn.Embedding [vocabulary + 1, D]
    with torch.no_grad():
        table.weight[token_id] = vector.to(table.weight.dtype)
    return {"token_id": token_id, "embedding": vector.detach().float().cpu(), "start": start.cpu(), "losses": losses}


def new_token(word: str) -> AddedToken:
    """``word`` as a token to add. ``single_word``: it is read only where it stands alone, so that an added "irc" does
    not cut "circle" into "c", "irc", "le" (every other prompt keeps its tokens)."""
    return AddedToken(word, single_word=True)


def check_arguments(pipe, scenes, word, init_word, steps, batch_size, lr, seed, progress) -> tuple[int, int, int, float, int]:
    """Refuse what :func:`learn_word` cannot learn from, before anything is changed; ``(init_id, steps, batch_size, lr, seed)``."""
    if not isinstance(pipe, IllustratedPipeline):
        raise TypeError(f"pipe must be an IllustratedPipeline (got {type(pipe).__name__}); make one with isd.load_pipeline()")
    if pipe.is_sdxl:
        raise ValueError("learn_word teaches SD 1/2's one text encoder, and an SDXL pipeline reads two; use an SD 1/2 "
                         "pipeline, such as the embedded one (isd.load_pipeline())")
    prediction = pipe.scheduler.config.prediction_type
    if prediction != "epsilon":
        raise ValueError(f"learn_word trains with the ε-prediction loss (diffusion_loss), and this model predicts {prediction!r}: the "
                         "word would learn the wrong target; use an ε-predicting model, such as the embedded one (isd.load_pipeline())")
    tokenizer = pipe.tokenizer
    checks.text("word", word, hint="the new word, e.g. '<house>'")
    if not word.strip():
        raise ValueError(f"word is empty or only spaces ({word!r}); name the new word, e.g. '<house>'")
    if any(c.isspace() for c in word):
        raise ValueError(f"word must be one word, without spaces (got {word!r}); e.g. {'-'.join(word.split())!r}")
    for marker in (START, END):
        if marker in word.lower():
            raise ValueError(f"word {word!r} holds CLIP's marker {marker!r}, which the tokenizer always reads as the marker; "
                             "pick a word without it, e.g. '<house>'")
    if word.lower() in (added.lower() for added in tokenizer.get_added_vocab()):
        raise ValueError(f"{word!r} was already added to this tokenizer (by an earlier learn_word?), and its vector is learned; "
                         f"pick a new word, e.g. '<{word.strip('<>')}-2>', or start again from isd.load_pipeline()")
    pieces = tokenizer.tokenize(word)
    if len(pieces) == 1:  # "red" is the token "red</w>": its row is a word the model knows, not a new one
        raise ValueError(f"{word!r} is already a token of this tokenizer ({pieces[0]!r}); textual inversion needs a new one, "
                         f"e.g. '<{word.strip('<>')}-2>'")
    checks.text("init_word", init_word, hint="a word the model knows, e.g. 'square'")
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if len(init_ids) != 1:
        raise ValueError(f"init_word must be one token of the tokenizer; {init_word!r} is {len(init_ids)} tokens: pick a single known word")
    if init_ids[0] in tokenizer.convert_tokens_to_ids([START, END]):
        raise ValueError(f"init_word {init_word!r} is CLIP's marker, not a word; start from a word the model knows, e.g. 'square'")
    if not isinstance(scenes, (list, tuple)):
        raise TypeError(f"scenes must be a list of world Scenes (got {type(scenes).__name__}); e.g. "
                        "concept_scenes('house', 64, placeholder=word)")
    odd = [s for s in scenes if not isinstance(s, Scene)]
    if odd:
        raise TypeError(f"scenes must hold world Scenes, and {odd[0]!r:.60} is a {type(odd[0]).__name__}; e.g. "
                        "concept_scenes('house', 64, placeholder=word)")
    if not scenes:
        raise ValueError("scenes is empty: pass pictures of the concept, e.g. concept_scenes('house', 64, placeholder=word)")
    steps = checks.whole_number("steps", steps, minimum=1, hint="optimiser steps, e.g. 300")
    batch_size = checks.whole_number("batch_size", batch_size, minimum=1, hint="pictures per step, e.g. 16")
    lr = checks.real_number("lr", lr, hint="AdamW's learning rate, e.g. 5e-3")
    if lr <= 0:
        raise ValueError(f"lr must be > 0 (got {lr:g}); e.g. 5e-3")
    seed = checks.whole_number("seed", seed, minimum=-(2**63), maximum=2**64 - 1, hint="any integer, e.g. 0")
    checks.flag("progress", progress)
    return init_ids[0], steps, batch_size, lr, seed


def nearest_words(pipe, vector: torch.Tensor, words: list[str], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` of ``words`` whose input embeddings point most nearly the way ``vector`` ``[D]`` does (cosine)."""
    table = pipe.text_encoder.get_input_embeddings().weight.detach().float().cpu()
    ids = [pipe.tokenizer(w, add_special_tokens=False).input_ids for w in words]
    kept = [(w, i[0]) for w, i in zip(words, ids) if len(i) == 1]
    rows = table[[i for _, i in kept]]  # [W, D]
    similarity = torch.nn.functional.cosine_similarity(rows, vector.detach().float().cpu()[None], dim=-1)
    order = similarity.argsort(descending=True)[:k]
    return [(kept[i][0], round(float(similarity[i]), 3)) for i in order]

"""tiny-flux: a diffusion transformer trained with flow matching on the same world and the same latents as tiny-sd 2.

Two stages, as Flux was built (its text encoders were trained by others, then frozen):

1. ``t5``: a tiny T5 (``T5ForConditionalGeneration``: an encoder and a one-layer decoder) trained on the world's
   captions alone with T5's own objective, *span corruption*: spans of a caption are cut out and replaced by
   sentinels (``a <extra_id_0> circle on the <extra_id_1>``) and the decoder must say what was cut
   (``<extra_id_0> big red <extra_id_1> left``). It never sees a picture. Its encoder is kept: a word's vector is
   made from the words on *both* sides of it (CLIP's causal tower sees only the words before).
2. ``flux``: diffusers' ``FluxTransformer2DModel`` (double-stream blocks, then single-stream blocks, RoPE) learns
   the *velocity* of the straight path between a picture's latent x₀ and noise ε,

       x_σ = (1 − σ)·x₀ + σ·ε,      v = dx_σ/dσ = ε − x₀,      loss = ‖v̂(x_σ, σ, text) − v‖²,

   on tiny-sd 2's latents (its VAE encoder frozen, so the decoder is shared), with T5's token sequence and the
   pooled vector of tiny-sd 2's CLIP tower (both frozen unless ``tune_t5``), as FluxPipeline hands them to the transformer. 10% of
   captions are dropped to "" so that classifier-free guidance works (``true_cfg_scale``). σ is drawn
   logit-normal (SD3's choice: most training where the middle noise levels are hard), then bent toward the noise
   by the same μ as the sampler's schedule.

   With ``token_loss`` or ``binding`` > 0 the stage also *grounds* the words, as tiny-sd 2's ``ground`` stage does for the UNet
   (TokenCompose's token loss, :mod:`.grounding`): the world knows every object's mask, so the share of an object word's
   image→text attention (the picture's tokens reading that word, in every joint-attention layer) that falls inside
   the object's mask is pushed toward 1. Flux's own attention is never told where a word's object is; without this
   tiny-flux's pictures read their words from the right places only about a third of the time on single objects and
   one time in twelve on pairs (before part 3; model card).

   With ``tune_t5`` the flow-matching loss trains T5's encoder too (the pictures teach it what span corruption
   could not). Flux gives every text token the same RoPE position (``txt_ids`` are zeros), so the transformer reads
   the words as a *set*: which colour belongs to which shape must already be written into T5's vectors. Span
   corruption on the world's captions does not write it, because the world draws colours and shapes independently:
   a caption's colour says nothing about the shape beside it, so T5 has no reason to mix them into each other's vectors. Measured on the
   part-2 model (``scripts/t5_binding.py`` → docs/t5_binding.json): the vector of "circle" in "a red circle … and a
   blue square …" and in "a blue circle … and a red square …" had a cosine of 1.000, and "red" of the circle against
   "red" of the square 0.998, so the transformer was handed nearly one set of vectors for both prompts (and drew the
   colours on either side at random: pairs 1.7%). Tuned with the transformer, T5 writes each colour's place in the
   sentence into the colour word (0.70) and the pairs are drawn right (93%). Real T5 learned its context from the
   internet's text; the world's captions hold none to learn.

   With ``t5_consistency`` > 0 (and ``tune_t5``) T5 is also asked to keep each colour word's vector the same whichever
   shape word follows it (:func:`colour_consistency`). The binding needs the colour's *place* in the sentence (first
   object or second), not the shape beside it. It was tried (part 5, session 35) on a lead that did not hold:
   with T5 reading "an orange circle" where the prompt says "an orange heart", tiny-flux drew the held-out colours
   right far more often, but it also drew the seen pair's shape; with T5's colour word alone taken from the seen
   pair, the colours hardly moved (``scripts/held_out_text_swap.py``). T5's colour word alone is not where the colour
   slips, and part 5 (3,247 more steps with the term) drew the held-out colours no better (model card).

    python -m illustrated_sd.train run --stages t5,flux --minutes 2,8 --world 2 --out checkpoints/tiny-flux
    python -m illustrated_sd.train export checkpoints/tiny-flux illustrated_sd/assets/tiny-flux
"""

import functools
import json
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from tqdm.auto import tqdm
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration, T5Tokenizer

from ..lessons.flow_matching import mu_at, shifted
from ..models.transformers import TINY_FLUX, t5_style_tokenizer
from ..paths import TINY_SD
from ..recording.joint_attention import FluxRecordingProcessor, joint_layers
from ..trace.files import load_weights
from ..world import COLORS, HELD_OUT, SHAPES_2, known_words, known_words_2, render, sample_scenes
from ..world.vocabulary import MAX_OBJECTS_2
from .checkpoint import read_log, save_weights
from .grounding import binding_loss, grounding_loss, grounding_targets
from .stages import Budget, _autocast, _run, _run_averaged

SIZE = 128  # pixels per side: tiny-sd 2's pictures, 16 × 16 latents, 8 × 8 tokens
SPAN_DENSITY, MEAN_SPAN = 0.15, 3.0  # T5's: 15% of the tokens cut out, in spans of 3 on average
SHARED = ("vae", "text_encoder", "tokenizer")  # what tiny-flux takes from tiny-sd 2 instead of shipping its own
# The attention kernels the transformer trains with: all but cuDNN's. On an H100 with torch 2.11, cuDNN's attention
# (PyTorch's first choice there) crashed the backward pass of the flux stage ("illegal memory access",
# "CUBLAS_STATUS_EXECUTION_FAILED"); the flash and memory-efficient kernels compute the same attention.
TRAIN_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def world_t5_tokenizer() -> T5Tokenizer:
    """tiny-flux's T5 tokenizer: a piece per word of the world's captions (both versions), characters for anything
    else, and ``TINY_FLUX["sentinels"]`` span-corruption sentinels. ``<pad>`` 0, ``</s>`` 1."""
    return t5_style_tokenizer(sorted(set(known_words()) | set(known_words_2())), extra_ids=TINY_FLUX["sentinels"])


def span_corruption(ids: list[int], rng: np.random.Generator, sentinels: list[int], eos: int) -> tuple[list[int], list[int]]:
    """T5's pre-training example from one caption's token ids (without ``</s>``): ``(inputs, targets)``.

    About ``SPAN_DENSITY`` of the tokens (at least one) are cut out in spans of ``MEAN_SPAN`` on average, each span
    replaced in the input by the next sentinel; the target lists each sentinel followed by what it replaced:

        ids      a  big  red  circle  on  the  left
        inputs   a  <extra_id_0>  circle  on  the  <extra_id_1>  </s>
        targets  <extra_id_0>  big  red  <extra_id_1>  left  </s>
    """
    n = len(ids)
    cut = min(n, max(1, round(SPAN_DENSITY * n)))
    spans = max(1, min(len(sentinels), round(cut / MEAN_SPAN), n - cut if n > cut else 1))
    cut_lengths = _partition(cut, spans, rng, allow_empty=False)
    kept_lengths = _partition(n - cut, spans, rng, allow_empty=True)  # the kept run before each span (may be empty)
    inputs, targets, at = [], [], 0
    for sentinel, kept, gone in zip(sentinels, kept_lengths, cut_lengths):
        inputs += ids[at:at + kept] + [sentinel]
        targets += [sentinel] + ids[at + kept:at + kept + gone]
        at += kept + gone
    return inputs + ids[at:] + [eos], targets + [eos]


def _partition(total: int, parts: int, rng: np.random.Generator, allow_empty: bool) -> list[int]:
    """``total`` split into ``parts`` random lengths that add up to it, each ≥ 1 (or ≥ 0 with ``allow_empty``)."""
    if allow_empty:  # cut points anywhere, repeats allowed
        cuts = sorted(rng.integers(0, total + 1, parts - 1).tolist())
    else:  # distinct cut points strictly inside
        cuts = sorted(rng.choice(np.arange(1, total), size=parts - 1, replace=False).tolist())
    return np.diff([0, *cuts, total]).tolist()


def new_t5(tokenizer) -> T5ForConditionalGeneration:
    """tiny-flux's T5 with random weights: ``TINY_FLUX["t5"]``, a vocabulary of ``len(tokenizer)``."""
    return T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), is_encoder_decoder=True, **TINY_FLUX["t5"]))


def _pad(rows: list[list[int]], length: int, value: int) -> torch.Tensor:
    return torch.tensor([row[:length] + [value] * (length - len(row[:length])) for row in rows])


def train_t5(ckpt: Path, minutes: float, batch_size: int, device, seed: int, max_steps=None, log_every=20, world: int = 2):
    """Stage ``t5``: span corruption on fresh world captions each step (no pictures), as T5 was trained on text.

    The encoder reads the corrupted caption as FluxPipeline will hand it the prompt: padded with ``<pad>`` to
    ``TINY_FLUX["max_sequence_length"]`` slots and *without* an attention mask (so it learns to read past padding)."""
    tokenizer = world_t5_tokenizer()
    model = new_t5(tokenizer).to(device).train()
    if load_weights(model, ckpt, "t5"):
        model.float()
    sentinels = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(TINY_FLUX["sentinels"])])
    length = TINY_FLUX["max_sequence_length"]

    def step_fn(step):
        rng = np.random.default_rng([seed, 6, step])
        captions = [s.caption for s in sample_scenes([seed, 6, step], batch_size, version=world)]
        pairs = [span_corruption(ids, rng, sentinels, tokenizer.eos_token_id)
                 for ids in tokenizer(captions, add_special_tokens=False).input_ids]
        inputs = _pad([p[0] for p in pairs], length, tokenizer.pad_token_id).to(device)
        labels = _pad([p[1] for p in pairs], max(len(p[1]) for p in pairs), -100).to(device)  # -100: not scored
        with _autocast(device):
            return model(input_ids=inputs, labels=labels).loss.float()

    steps = _run("t5", step_fn, list(model.parameters()), 1e-3, ckpt, Budget(minutes, max_steps), log_every, warmup=100, anneal=True,
                 save=lambda: save_weights(model, ckpt, "t5"))
    save_weights(model, ckpt, "t5")
    return steps


def t5_encoder(ckpt: Path) -> T5EncoderModel:
    """The trained T5's encoder alone (what Flux keeps), read from the checkpoint's ``t5`` weights."""
    tokenizer = world_t5_tokenizer()
    full = new_t5(tokenizer)
    if not load_weights(full, ckpt, "t5"):
        raise RuntimeError(f"{ckpt} has no trained T5 yet: run the t5 stage first (--stages t5)")
    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), is_encoder_decoder=False, use_cache=False,
                                      **{k: v for k, v in TINY_FLUX["t5"].items() if k != "num_decoder_layers"}))
    encoder.load_state_dict({k: v for k, v in full.state_dict().items() if k.startswith(("shared.", "encoder."))})
    return encoder.float().eval()


def tiny_flux_pipeline(ckpt: Path, seed: int = 0) -> FluxPipeline:
    """A ``FluxPipeline`` of tiny-flux's layout: tiny-sd 2's VAE, CLIP tower and tokenizer (the shipped model), the
    checkpoint's T5 encoder, the world T5 tokenizer, a transformer with seeded random weights, Flux's scheduler."""
    from ..models.loading import load_pipeline  # the shipped tiny-sd 2, loaded as a user would

    sd = load_pipeline(TINY_SD).pipeline
    sd.vae.register_to_config(shift_factor=0.0)  # Flux's latents are (z − shift)·scale; tiny-sd 2's have no shift
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**TINY_FLUX["transformer"])
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**TINY_FLUX["scheduler"]), vae=sd.vae, text_encoder=sd.text_encoder,
                        tokenizer=sd.tokenizer, text_encoder_2=t5_encoder(ckpt), tokenizer_2=world_t5_tokenizer(), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def encode_world_flux(pipe: FluxPipeline, seed: int, n: int, device, world: int = 2, chunk: int = 1000, grounded: bool = False,
                      two_objects: float | None = None, name_backgrounds: float | None = None, name_all: float | None = None) -> dict:
    """Draw ``n`` scenes once and keep what the transformer needs, on ``device``: the VAE posterior of each picture
    (``mean``, ``std`` ``[n, 4, 16, 16]``), and its caption as FluxPipeline encodes a prompt: T5's ``text [n, 64, 96]``
    and CLIP's ``pooled [n, 128]``; plus the empty prompt's (``empty_text``, ``empty_pooled``) for dropped captions.
    ``ids [n, 64]`` are the T5 token ids behind ``text`` (``empty_ids [1, 64]`` the empty prompt's), for a stage that
    runs T5 itself. ``grounded`` adds each scene's object ``masks [n, 4, 16, 16]`` (at latent resolution) and where each object's
    colour and shape words sit among T5's 64 slots, ``slots [n, 4, 2]`` (-1 where the caption does not say it).
    ``two_objects``, ``name_backgrounds`` and ``name_all`` change the mix of scenes (see ``world.sample_scenes``)."""
    length = TINY_FLUX["max_sequence_length"]
    means, stds, texts, pooled, token_ids, masks, slots = [], [], [], [], [], [], []
    store = torch.bfloat16 if device.type == "cuda" else torch.float32
    for start in tqdm(range(0, n, chunk), desc="encoding the world", unit="chunk"):
        scenes = sample_scenes([seed, 7, start], min(chunk, n - start), version=world, two_objects=two_objects,
                               name_backgrounds=name_backgrounds, name_all=name_all)
        captions = [s.caption for s in scenes]
        images, object_masks = render(scenes, device=device)
        posterior = pipe.vae.encode(images).latent_dist
        text, pool, _ = pipe.encode_prompt(captions, prompt_2=None, device=device, max_sequence_length=length)
        # the same ids FluxPipeline gave T5 above (its _get_t5_prompt_embeds pads and cuts the same way)
        ids = t5_ids(pipe, captions)
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
        texts.append(text.to(store))
        pooled.append(pool.to(store))
        token_ids.append(ids.to(device))
        if grounded:
            chunk_masks, chunk_slots = grounding_targets(scenes, object_masks, ids, pipe.tokenizer_2, posterior.mean.shape[-2:],
                                                         MAX_OBJECTS_2)
            masks.append(chunk_masks)
            slots.append(chunk_slots)
    empty_text, empty_pooled, _ = pipe.encode_prompt([""], prompt_2=None, device=device, max_sequence_length=length)
    data = dict(mean=torch.cat(means), std=torch.cat(stds), text=torch.cat(texts), pooled=torch.cat(pooled),
                empty_text=empty_text.to(store), empty_pooled=empty_pooled.to(store), ids=torch.cat(token_ids),
                empty_ids=t5_ids(pipe, [""]).to(device))
    if grounded:
        data.update(masks=torch.cat(masks), slots=torch.cat(slots))
    return data


def t5_ids(pipe: FluxPipeline, captions: list[str]) -> torch.Tensor:
    """T5's input ids ``[len(captions), 64]`` as ``FluxPipeline`` makes them: padded with ``<pad>`` to
    ``TINY_FLUX["max_sequence_length"]`` slots, cut there, no attention mask."""
    length = TINY_FLUX["max_sequence_length"]
    return pipe.tokenizer_2(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


class GroundedAttention(FluxRecordingProcessor):
    """Flux's joint attention computed in the open, softmax(q·kᵀ/√d)·v, so that the probabilities of the picture's
    tokens reading the text, ``[B·heads, image tokens, text tokens]``, are kept in ``store[name]`` with their gradients
    (for the token loss). Training only: generation keeps the fused kernel and the recorders."""

    def __init__(self, store: dict, name: str, text_len: int):
        super().__init__(None, None, name=name)
        self.store, self.text_len = store, text_len

    def joint_attention(self, query, key, value):
        # the logits in float32 even under autocast, which would run this matmul in bfloat16 (the fused kernels keep
        # their scores in float32 too)
        with torch.autocast(query.device.type, enabled=False):
            probs = (query.float() @ key.float().transpose(-1, -2) * query.shape[-1] ** -0.5).softmax(-1)  # [B, heads, L, L], text first
        self.store[self.name] = probs[:, :, self.text_len:, :self.text_len].flatten(0, 1)  # image rows, text columns
        return probs.to(value.dtype) @ value


@contextmanager
def grounded_attention(transformer, text_len: int):
    """Install :class:`GroundedAttention` on every joint-attention layer (double- and single-stream) for one ``with``
    block; yields the store the layers refill at each call (``{layer: [B·heads, 64, text_len]}``). The model's own
    processors are back afterwards."""
    store, layers = {}, joint_layers(transformer)
    originals = {name: attn.processor for name, attn in layers.items()}
    try:
        for name, attn in layers.items():
            attn.set_processor(GroundedAttention(store, name, text_len))
        yield store
    finally:
        for name, attn in layers.items():
            attn.set_processor(originals[name])


def flow_matching_loss(transformer, x0: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor, image_ids: torch.Tensor,
                       text_ids: torch.Tensor, mu: float, generator: torch.Generator, location: float = 0.0) -> torch.Tensor:
    """One flow-matching step's loss: packed clean latents ``x0 [B, N, 16]``, T5 states ``text [B, T, D]``, CLIP's
    ``pooled [B, P]``, RoPE ids ``image_ids [N, 3]``, ``text_ids [T, 3]`` → the scalar ‖v̂ − (ε − x₀)‖² (mean).

    σ = shifted(sigmoid(n), μ) with n ~ N(``location``, 1): SD3's logit-normal (location 0), and below 0 more of the
    training at the lower noise levels where a picture's details (and, for held-out pairs, its colour) are settled."""
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    logit = location + torch.randn(len(x0), generator=generator, device=x0.device)
    sigma = shifted(torch.sigmoid(logit), mu)  # logit-normal, bent toward the noise as the sampler's schedule is
    s = sigma[:, None, None]
    x_sigma = (1 - s) * x0 + s * noise  # the straight path, one jump
    velocity = transformer(hidden_states=x_sigma, encoder_hidden_states=text, pooled_projections=pooled, timestep=sigma,
                           img_ids=image_ids, txt_ids=text_ids, return_dict=False)[0]
    return F.mse_loss(velocity.float(), noise - x0)


@functools.lru_cache(maxsize=4)
def _world_word_ids(tokenizer) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """The token ids of the world's shape words, its colour words and its held-out (colour, shape) pairs: one piece per
    world word (``world_t5_tokenizer``). Cached: the flux stage asks every step."""
    word = lambda w: tokenizer(w, add_special_tokens=False).input_ids[0]  # noqa: E731
    return [word(s) for s in SHAPES_2], [word(c) for c in COLORS], [(word(c), word(s)) for c, s in HELD_OUT]


def shape_swapped(ids: torch.Tensor, tokenizer, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 token ids ``[B, T]`` with every shape word replaced by a shape drawn at random (kept where the draw would make
    a held-out pair with the colour word before it: no caption training reads may name one), and ``[B, T]`` booleans
    marking the colour words that stand right before a shape word: the slots whose next word changed."""
    shape_ids, colour_ids, held_out_ids = _world_word_ids(tokenizer)
    shapes, colours = torch.tensor(shape_ids, device=ids.device), torch.tensor(colour_ids, device=ids.device)
    drawn = shapes[torch.randint(0, len(shapes), ids.shape, generator=generator, device=ids.device)]
    before = F.pad(ids, (1, 0))[:, :-1]  # the word before each slot
    held_out = torch.zeros_like(ids, dtype=torch.bool)
    for colour, shape in held_out_ids:
        held_out |= (before == colour) & (drawn == shape)
    is_shape = torch.isin(ids, shapes)
    swapped = torch.where(is_shape & ~held_out, drawn, ids)
    after = F.pad(is_shape, (0, 1))[:, 1:]  # is the next word a shape?
    return swapped, torch.isin(ids, colours) & after


def colour_consistency(t5, ids: torch.Tensor, states: torch.Tensor, tokenizer, generator: torch.Generator) -> torch.Tensor:
    """How much T5's colour-word vectors depend on the shape word that follows: the captions' ids ``[B, T]`` (their
    encoder ``states [B, T, D]``, already computed) read again with their shapes swapped (:func:`shape_swapped`), and
    at every colour word before a shape, ‖h − h_swapped‖² / ‖h‖², averaged → a scalar (0 when no caption has one)."""
    swapped, slots = shape_swapped(ids, tokenizer, generator)
    if not slots.any():
        return states.sum() * 0
    again = t5(swapped)[0]
    here, there = states[slots].float(), again[slots].float()
    return ((here - there).pow(2).sum(-1) / here.pow(2).sum(-1).clamp_min(1e-6)).mean()


def train_flux(ckpt: Path, minutes: float, batch_size: int, device, seed: int, max_steps=None, log_every=20, ema_decay=0.999,
               dataset_size: int = 100_000, drop_caption: float = 0.1, anneal: bool = False, world: int = 2, compile: bool = False,
               token_loss: float = 0.0, binding: float = 0.0, two_objects: float | None = None, name_backgrounds: float | None = None,
               name_all: float | None = None, tune_t5: bool = False, t5_consistency: float = 0.0,
               sigma_location: float = 0.0):
    """Stage ``flux``: the transformer learns the velocity on ``dataset_size`` scenes encoded once (see the module).

    ``token_loss`` and ``binding`` weigh the grounding terms of :mod:`.grounding` on the image→text attention of every
    joint-attention layer (0: off; either turns grounding on, and the logged loss then includes the terms);
    ``two_objects``, ``name_backgrounds`` and ``name_all`` change the mix of scenes (``world.sample_scenes``).
    Grounding computes the attention in the open (its probabilities are needed), so it runs uncompiled.
    ``tune_t5`` trains T5's encoder with the transformer (same optimiser, same average of weights) and saves it back
    into the checkpoint's ``t5`` weights (the decoder, which Flux does not keep, is left as the t5 stage left it).
    ``t5_consistency`` (with ``tune_t5``) weighs :func:`colour_consistency`: a colour word's vector kept whichever shape
    follows it. ``sigma_location`` moves the logit-normal draw of σ (:func:`flow_matching_loss`; 0: SD3's).
    """
    if t5_consistency and not tune_t5:
        raise ValueError("--t5-consistency shapes the T5 that --tune-t5 trains: add --tune-t5")
    grounded = token_loss > 0 or binding > 0
    pipe = tiny_flux_pipeline(ckpt, seed=seed).to(device)
    data = encode_world_flux(pipe, seed, dataset_size, device, world=world, grounded=grounded, two_objects=two_objects,
                             name_backgrounds=name_backgrounds, name_all=name_all)
    transformer, scaling, mu = pipe.transformer.train(), pipe.vae.config.scaling_factor, mu_at(pipe, SIZE)
    load_weights(transformer, ckpt, "transformer")
    transformer.float()
    if compile and grounded:  # GroundedAttention's store is Python state that a compiled graph would break at
        print("flux: grounding runs uncompiled (--compile ignored)", flush=True)
    forward = torch.compile(transformer) if compile and device.type == "cuda" and not grounded else transformer
    heads = {name: attn.heads for name, attn in joint_layers(transformer).items()}
    t5 = pipe.text_encoder_2.train() if tune_t5 else None
    trained = torch.nn.ModuleDict(dict(transformer=transformer, t5=t5)) if tune_t5 else transformer
    side = SIZE // pipe.vae_scale_factor  # 16 latent pixels
    image_ids = pipe._prepare_latent_image_ids(1, side // 2, side // 2, device, torch.float32)  # [64, 3]: (0, row, column)
    text_ids = torch.zeros(TINY_FLUX["max_sequence_length"], 3, device=device)  # Flux gives every text token position 0
    gen = torch.Generator(device).manual_seed(seed * 1_000_003 + 11 + len(read_log(ckpt).get("flux", {}).get("step", [])))

    grounding = grounded_attention(transformer, TINY_FLUX["max_sequence_length"]) if grounded else nullcontext({})
    with grounding as store:  # grounded: every transformer call refills `store` with each layer's image→text attention
        def step_fn(step):
            idx = torch.randint(0, len(data["mean"]), (batch_size,), generator=gen, device=device)
            latents = (data["mean"][idx] + data["std"][idx] * torch.randn(data["mean"][idx].shape, generator=gen, device=device)) * scaling
            x0 = FluxPipeline._pack_latents(latents, batch_size, latents.shape[1], side, side)  # [B, 64, 16]: 2×2 latent pixels per token
            dropped = (torch.rand(batch_size, generator=gen, device=device) < drop_caption)
            pooled = torch.where(dropped[:, None], data["empty_pooled"], data["pooled"][idx])
            with _autocast(device), sdpa_kernel(TRAIN_ATTENTION):  # the backward pass uses the kernel chosen here
                if tune_t5:  # T5 reads the caption afresh each step, as FluxPipeline calls it: ids in, last states out
                    ids = torch.where(dropped[:, None], data["empty_ids"], data["ids"][idx])
                    text = t5(ids)[0]
                else:
                    text = torch.where(dropped[:, None, None], data["empty_text"], data["text"][idx])
                loss = flow_matching_loss(forward, x0, text, pooled, image_ids, text_ids, mu, gen, sigma_location)
                if t5_consistency:  # a colour word's vector, whichever shape follows it
                    loss = loss + t5_consistency * colour_consistency(t5, ids, text, pipe.tokenizer_2, gen)
                if grounded:
                    words = data["slots"][idx].masked_fill(dropped[:, None, None], -1)  # a dropped caption has no words
                    masks = data["masks"][idx]
                    loss = loss + token_loss * grounding_loss(store, heads, words, masks)
                    if binding:
                        loss = loss + binding * binding_loss(store, heads, words, masks)
                return loss

        return _run_averaged("flux", step_fn, trained, "transformer", 3e-4, ckpt, Budget(minutes, max_steps), log_every,
                             ema_decay, anneal=anneal, write=_write_with_t5(ckpt) if tune_t5 else None)


def _write_with_t5(ckpt: Path):
    """A ``write`` for :func:`_run_averaged` of ``{transformer, t5}``: the transformer's weights as ``transformer``, the
    encoder's put into the full T5 the t5 stage saved (so :func:`t5_encoder` and the t5 stage read them back).

    T5 ties one token table to four names (``shared``, both ``embed_tokens`` and the ``lm_head``): the table is copied
    into the module, whose tie carries it to every name, rather than into a state dict, where the untouched names would
    keep the old table and overwrite the new one when the checkpoint is loaded. (Session 26's part 4 was saved before
    this was mended: its shipped T5 has part 3's table under part 4's blocks, and was graded as it is.) The two
    components are written one after the other, each atomically."""
    full = new_t5(world_t5_tokenizer())
    load_weights(full, ckpt, "t5")

    def write(state: dict) -> None:
        transformer = {key.removeprefix("transformer."): value for key, value in state.items() if key.startswith("transformer.")}
        encoder = {key.removeprefix("t5."): value for key, value in state.items() if key.startswith("t5.")}
        with torch.no_grad():
            full.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in encoder.items() if k.startswith("encoder.")})
            full.shared.weight.copy_(encoder["shared.weight"])  # last: the tie carries it to every name
        save_weights(full, ckpt, "t5")
        save_weights(transformer, ckpt, "transformer")

    return write


def import_flux(folder: Path, ckpt: Path) -> Path:
    """The inverse of :func:`export_flux`: a checkpoint the flux stage trains on from, made from an exported tiny-flux
    folder (its transformer, and its T5 encoder put into a full T5 whose decoder starts afresh: Flux keeps no decoder,
    and only the t5 stage would train one). The optimiser starts afresh too; the log is the folder's."""
    from .checkpoint import write_log
    from ..models.loading import load_pipeline

    pipe = load_pipeline(folder).pipeline
    full = new_t5(world_t5_tokenizer())
    with torch.no_grad():  # the encoder's blocks by name, the token table last (the tie carries it to every name)
        full.encoder.load_state_dict({k.removeprefix("encoder."): v.float() for k, v in pipe.text_encoder_2.state_dict().items()
                                      if k.startswith("encoder.")})
        full.shared.weight.copy_(pipe.text_encoder_2.shared.weight.float())
    save_weights(full, ckpt, "t5")
    save_weights(pipe.transformer.float(), ckpt, "transformer")
    write_log(ckpt, read_log(folder))
    return ckpt


def export_flux(ckpt: Path, folder: Path) -> None:
    """Write tiny-flux's pipeline folder (``folder`` was checked by the caller): ``model_index.json``, ``transformer/``,
    ``text_encoder_2/``, ``tokenizer_2/``, ``scheduler/`` in float16, without the parts it shares with tiny-sd 2
    (``SHARED``: ``illustrated_sd.json`` says where they are; ``load_pipeline("tiny-flux")`` puts them in)."""
    from .export import write_atomically

    pipe = tiny_flux_pipeline(ckpt)
    if not load_weights(pipe.transformer, ckpt, "transformer"):
        raise FileNotFoundError(f"{ckpt} has no transformer weights; train the flux stage first (--stages flux)")

    def write(tmp: Path) -> None:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        for name in SHARED:
            shutil.rmtree(tmp / name)
        shutil.copy(ckpt / "train_log.json", tmp / "train_log.json")
        info = {"known_words": known_words_2(), "held_out": HELD_OUT, "image_size": SIZE, "world": 2,
                "shares": {name: "tiny-sd" for name in SHARED},
                "defaults": {"num_inference_steps": 25, "true_cfg_scale": 4.0, "negative_prompt": "",
                             "max_sequence_length": TINY_FLUX["max_sequence_length"]}}
        (tmp / "illustrated_sd.json").write_text(json.dumps(info, indent=1))

    write_atomically(folder, write)

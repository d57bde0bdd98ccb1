"""Stage 4 (optional): teach the UNet to look at each word where its object is (and, through the same losses,
tiny-flux's transformer: ``train.flux``'s ``--token-loss``).

The synthetic world knows every object's mask, so the cross-attention of an object's colour and shape
tokens can be *supervised*: the share of a token's attention that falls inside its object's mask
should be 1. This is TokenCompose's token loss (Wang et al., CVPR 2024), added to the usual denoising
loss while the UNet is fine-tuned:

    L = ‖ε − ε̂‖²  +  λ · mean over layers, objects, tokens of (1 − Σ_mask P / Σ P)²

The causal text encoder makes this needed for colour words: "red" comes before "circle", so its
vector cannot say which object it colours, and without supervision the UNet learned to read colour
from the shape token instead (see the model card's pointing game).

The token loss looks from each word: where does "red" look? In two-object scenes colours still
leaked ("a red triangle and an orange circle" drew two orange objects). An optional *binding* term looks
from the pixels: inside each object, of the attention on the two objects' words, how much goes to the
*other* object's words? It is penalised as ``share²``, with weight ``binding``.
"""

from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from tqdm.auto import tqdm

from ..models.unet import build_random_pipeline
from ..recording.attention_layers import attention_layers
from ..world import render, sample_scenes
from ..world.vocabulary import MAX_OBJECTS_2
from ..trace.files import load_weights
from .checkpoint import read_log
from ..lessons.forward_diffusion import diffusion_loss
from .stages import Budget, _autocast, _run_averaged, empty_context


def object_token_slots(ids: torch.Tensor, scenes, tokenizer, objects: int = 2) -> torch.Tensor:
    """Where each object's colour and shape words sit among the text slots (CLIP's 77, tiny-flux's T5 64).

    Captions say "<colour> <shape>" next to each other. In world 1 every object is named with both, so
    the pair is found by its two token ids. In world 2 a caption names only some objects, in the order
    of ``scene.objects``, always by their shape and sometimes by their colour ("a heart and a red star"),
    so each named object's shape word is the next one of its kind, and its colour word (when said) the
    token before it. Returns ``[B, objects, 2 (colour, shape)]`` slot indices, ``-1`` where absent (an
    unnamed object, a colour not said). ``tokenizer``: CLIP's (``red</w>``) or tiny-flux's T5 (``▁red``): every
    world word is one piece in both.
    """
    word = _word_ids(tokenizer)
    slots = torch.full((len(scenes), objects, 2), -1, dtype=torch.long)
    for b, scene in enumerate(scenes):
        row = ids[b].tolist()
        if scene.version == 2:
            cursor = 0
            for k, obj in enumerate(scene.objects):
                if not obj.said:
                    continue
                j = row.index(word(obj.shape), cursor)
                color = j - 1 if "color" in obj.said else -1
                slots[b, k] = torch.tensor([color, j])
                cursor = j + 1
            continue
        used = set()
        for k, obj in enumerate(scene.objects):
            color, shape = word(obj.color), word(obj.shape)
            for j in range(len(row) - 1):
                if row[j] == color and row[j + 1] == shape and j not in used:
                    slots[b, k] = torch.tensor([j, j + 1])
                    used.add(j)
                    break
    return slots


def _word_ids(tokenizer):
    """``word → its token id`` for ``tokenizer``, each word tokenized once; a world word must be one piece."""
    ids = {}

    def word(w: str) -> int:
        if w not in ids:
            pieces = tokenizer.tokenize(w)
            if len(pieces) != 1:
                raise ValueError(f"the world word {w!r} is {len(pieces)} pieces for this tokenizer ({pieces}); a slot needs one")
            ids[w] = tokenizer.convert_tokens_to_ids(pieces[0])
        return ids[w]

    return word


def grounding_targets(scenes, object_masks: torch.Tensor, ids: torch.Tensor, tokenizer, latent_hw, objects: int):
    """What the grounding losses compare the attention with, for rendered ``scenes``: their ``object_masks``
    ``[B, K', H, W]`` (the renderer's) pooled to the latent's ``latent_hw`` and padded to ``objects`` → ``[B, objects, h, w]``,
    and where each object's words sit among the caption's token ``ids [B, T]`` → ``[B, objects, 2]``
    (:func:`object_token_slots`), on the masks' device."""
    pooled = F.adaptive_avg_pool2d(object_masks, latent_hw)  # [B, K', h, w], K' = most objects in this batch of scenes
    masks = F.pad(pooled, (0, 0, 0, 0, 0, objects - pooled.shape[1]))
    return masks, object_token_slots(ids, scenes, tokenizer, objects).to(object_masks.device)


@contextmanager
def attention_with_gradients(unet):
    """Run the cross-attention layers on the classic path and keep their probabilities, gradients included.

    Yields ``{layer: [B·heads, H·W, 77]}``, refilled by every UNet call. Training only: generation keeps
    the fused kernel and the recorders.
    """
    store = {}
    cross = attention_layers(unet)["cross"]
    for name, attn in cross.items():
        attn.set_processor(AttnProcessor())
        original = attn.get_attention_scores

        def keep(query, key, attention_mask=None, original=original, name=name):
            store[name] = original(query, key, attention_mask)
            return store[name]

        attn.get_attention_scores = keep
    try:
        yield store
    finally:
        for attn in cross.values():
            del attn.get_attention_scores
            attn.set_processor(AttnProcessor2_0())


def _word_maps(store: dict, heads: dict[str, int], slots: torch.Tensor, masks: torch.Tensor):
    """For each layer of ``store`` (``{layer: [B·heads, n, T]}``: how each of the ``n`` pixels or image tokens
    attends to the ``T`` text slots): the heads-averaged maps of each object's colour and shape words,
    ``[B, 2K (colour₀, shape₀, colour₁, shape₁, …), n]`` (zero for an absent word), and the ``K`` object
    masks pooled to that layer's ``n = h·w`` pixels, ``[B, K, n]``."""
    index = slots.clamp_min(0).flatten(1)  # [B, 2K]; absent words read slot 0 (any word) …
    present = (slots >= 0).flatten(1)[:, :, None]  # … and are zeroed here
    for name, probs in store.items():
        probs = probs.float().unflatten(0, (-1, heads[name])).mean(1)  # [B, n, T], heads averaged
        n = probs.shape[1]
        h = w = int(n**0.5)
        grid = F.adaptive_avg_pool2d(masks, (h, w)).flatten(2)  # [B, K, n]
        yield torch.gather(probs, 2, index[:, None, :].expand(-1, n, -1)).transpose(1, 2) * present, grid


def grounding_loss(store: dict, heads: dict[str, int], slots: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token loss, averaged over layers and the (object, token) pairs present.

    Args:
        store: ``{layer: [B·heads, n, T]}``, from :func:`attention_with_gradients` after a UNet call on ``B`` examples
            (or ``train.flux.grounded_attention`` after a transformer call).
        heads: each layer's head count.
        slots: ``[B, K, 2]`` from :func:`object_token_slots` (on the device).
        masks: ``[B, K, H, W]`` object coverage in [0, 1] at latent resolution.
    """
    valid = slots >= 0  # [B, K, 2]
    losses = []
    for token_maps, grid in _word_maps(store, heads, slots, masks):
        object_masks = grid.repeat_interleave(2, dim=1)  # [B, 4, n]: the colour and shape token share the mask
        inside = (token_maps * object_masks).sum(-1) / token_maps.sum(-1).clamp_min(1e-8)
        losses.append(((1 - inside) ** 2)[valid.flatten(1)])
    losses = torch.cat(losses)
    return losses.mean() if losses.numel() else masks.new_zeros(())  # no word to ground (every caption dropped): nothing


def binding_loss(store: dict, heads: dict[str, int], slots: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Attribute binding, seen from the pixels, averaged over the named objects of scenes naming two or more.

    At object k's pixels (weighted by its mask), the attention on object k's colour and shape words is
    ``own`` and on the other named objects' words ``other``; the loss is ``(other / (own + other))²``.
    Same arguments as :func:`grounding_loss`; zero when no scene names two objects.
    """
    named = slots[:, :, 1] >= 0  # [B, K]: the caption says this object's shape
    counted = named & (named.sum(1, keepdim=True) >= 2)
    losses = []
    for words, grid in _word_maps(store, heads, slots, masks):
        per_object = words.unflatten(1, (-1, 2)).sum(2)  # [B, K, n]: attention on each object's words
        own = (grid * per_object).sum(-1)  # [B, K]: at object k's pixels, attention on k's words
        other = (grid * (per_object.sum(1, keepdim=True) - per_object)).sum(-1)  # … and on the others' words
        share = other / (own + other).clamp_min(1e-8)
        losses.append((share**2)[counted])
    losses = torch.cat(losses)
    return losses.mean() if losses.numel() else masks.new_zeros(())


@torch.no_grad()
def encode_grounded_world(vae, text_encoder, tokenizer, seed, n: int, device, latent_hw, chunk: int = 1000,
                          two_objects: float | None = None, world: int = 1, name_backgrounds: float | None = None,
                          name_all: float | None = None):
    """Like ``stages.encode_world``, plus each example's object masks ``[n, K, h, w]`` and token slots
    ``[n, K, 2]`` (``K`` = 2 in world 1, 4 in world 2).

    ``two_objects`` practises binding (see ``world.sample_scenes``): world 1's share of two-object scenes
    (default 30%), or world 2's share of scenes of two objects both named with colour and place (default 0).
    ``name_backgrounds`` (world 2): the share of captions that surely name the background's colour; ``name_all``: the
    share that name every object.
    """
    objects = MAX_OBJECTS_2 if world == 2 else 2
    means, stds, contexts, masks, slots = [], [], [], [], []
    for start in tqdm(range(0, n, chunk), desc="encoding the world with masks", unit="chunk"):
        scenes = sample_scenes([seed, 4, start], min(chunk, n - start), two_objects=two_objects, version=world,
                               name_backgrounds=name_backgrounds, name_all=name_all)
        images, object_masks = render(scenes, device=device)
        ids = tokenizer([s.caption for s in scenes], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with _autocast(device):
            posterior = vae.encode(images).latent_dist
            contexts.append(text_encoder(ids.to(device))[0].float())
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
        chunk_masks, chunk_slots = grounding_targets(scenes, object_masks, ids, tokenizer, latent_hw, objects)
        masks.append(chunk_masks)
        slots.append(chunk_slots)
    return (torch.cat(means), torch.cat(stds), torch.cat(contexts), torch.cat(masks), torch.cat(slots),
            empty_context(text_encoder, tokenizer, device).float())


def train_grounding(ckpt: Path, minutes: float, batch_size: int, device, seed: int, max_steps=None, log_every=20,
                    ema_decay=0.999, dataset_size: int = 50_000, weight: float = 0.05, anneal: bool = False,
                    binding: float = 0.0, two_objects: float | None = None, world: int = 1, name_backgrounds: float | None = None,
                    name_all: float | None = None):
    """Fine-tune the trained UNet: denoising loss + ``weight`` × token loss + ``binding`` × binding loss.

    A share ``two_objects`` of the scenes practises binding, a share ``name_backgrounds`` the background's colour word,
    a share ``name_all`` captions that leave no object out (see ``encode_grounded_world``). World 2 keeps the caption
    dropout of the UNet stage (10% of examples see the empty prompt and have no words to ground), so
    that the unconditional model that guidance needs is not forgotten while the words are taught.
    """
    drop_caption = 0.1 if world == 2 else 0.0  # world 1's shipped weights were fine-tuned without it
    pipe = build_random_pipeline("tiny-sd", seed=seed)
    unet, vae, text_encoder, tokenizer, scheduler = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    if not all(load_weights(m, ckpt, name) for m, name in ((vae, "vae"), (text_encoder, "text_encoder"), (unet, "unet"))):
        raise RuntimeError(f"{ckpt} has no trained VAE, text encoder and UNet: the grounding stage fine-tunes them")
    scaling = read_log(ckpt)["vae_scaling_factor"]
    vae, text_encoder = vae.to(device).float().eval(), text_encoder.to(device).float().eval()
    latent_hw = (unet.config.sample_size, unet.config.sample_size)
    means, stds, contexts, masks, slots, empty = encode_grounded_world(vae, text_encoder, tokenizer, seed, dataset_size, device,
                                                                        latent_hw, two_objects=two_objects, world=world,
                                                                        name_backgrounds=name_backgrounds, name_all=name_all)
    del vae, text_encoder
    unet = unet.to(device).float().train()
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    heads = {name: attn.heads for name, attn in attention_layers(unet)["cross"].items()}
    gen = torch.Generator(device).manual_seed(seed * 1_000_003 + 7 + len(read_log(ckpt).get("ground", {}).get("step", [])))

    with attention_with_gradients(unet) as store:
        def step_fn(step):
            idx = torch.randint(0, len(means), (batch_size,), generator=gen, device=device)
            latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen, device=device)) * scaling
            context, words = contexts[idx], slots[idx]
            if drop_caption:
                dropped = torch.rand(batch_size, generator=gen, device=device) < drop_caption
                context = torch.where(dropped[:, None, None], empty, context)
                words = words.masked_fill(dropped[:, None, None], -1)
            with _autocast(device):  # the UNet call of the denoising loss also fills `store` with its attention
                denoising = diffusion_loss(unet, latents, context, alphas_cumprod, generator=gen)
                ground = weight * grounding_loss(store, heads, words, masks[idx])
                if binding:
                    ground = ground + binding * binding_loss(store, heads, words, masks[idx])
            return denoising + ground

        return _run_averaged("ground", step_fn, unet, "unet", 1e-4, ckpt, Budget(minutes, max_steps), log_every, ema_decay,
                             warmup=50, anneal=anneal)
